"""Pulse devices: the hardware interface the lab server fronts, and its emulators.

A :class:`PulseDevice` plays a piecewise-constant schedule on named channels and measures
its qubits in given local bases with a number of shots. Measurement is destructive, so an
observation after k steps is its own prepare–play(0..k−1)–measure repetition ("prefix
replay"); :meth:`PulseDevice.execute` does that for every measured step and setting.

:class:`EmulatorDevice` is the stand-in for hardware: a pulse-level solve of a qhil model
with qiskit-dynamics (``Solver`` + ``DiscreteSignal``; by default ``method="lanczos_diag"``
on sparse operators with a Krylov dimension and sub-step count chosen from an a priori error
bound, or the original dense ``method="scipy_expm"``; both step inside one sample at a time,
exact for piecewise-constant signals), plus hardware-like imperfections, each off by default.
Its timing figures are measured (warm-up solve, then a moving average over executions).
"""
from __future__ import annotations

import copy
import inspect
import math
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from qhil.drivers import ControlChannel, Model, ValidationError
from qhil.drivers import checks as check
from qhil.drivers.measure import qubit_density
from qhil.drivers.pauli import qubit_bits


class DeviceFault(RuntimeError):
    """The instrument failed while executing (the server puts it in its safe state)."""


class PulseDevice(ABC):
    """An instrument that prepares |ψ0⟩, plays piecewise-constant controls, and measures.

    Subclasses set ``name`` and implement :attr:`channels`, :attr:`n_qubits` and
    :meth:`acquire` (one prepare–play–measure circuit), and may override :meth:`execute`
    when they can serve several prefixes at once (an emulator can; hardware cannot).
    """

    name: str = "device"
    #: shots=None (exact outcome probabilities) is possible only on emulators, for testing.
    exact_expectations: bool = False
    max_steps: int = 100_000
    max_shots: int = 1_000_000
    max_settings: int = 4096
    max_dt: float = 1_000.0

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.levels = np.zeros(len(self.channels))  # what the outputs hold now
        self.safe_calls = 0
        self.faults = 0
        self.executions = 0

    # -- what a device provides ---------------------------------------------------------
    @property
    @abstractmethod
    def channels(self) -> tuple[ControlChannel, ...]:
        """Control channels, in the column order of a controls array."""

    @property
    @abstractmethod
    def n_qubits(self) -> int:
        """Number of measurable qubits (qubit 0 = most significant bit of an outcome)."""

    @abstractmethod
    def acquire(self, controls: np.ndarray, dt: float, setting: str, shots: int | None,
                rng: np.random.Generator) -> np.ndarray:
        """Prepare, play ``controls`` (K, C) for K·dt, measure in ``setting`` (one of XYZ per
        qubit) ``shots`` times. Returns counts (2^n,) int64, or probabilities (2^n,) float64
        when shots is None."""

    def calibration(self) -> dict[str, Any]:
        """The current calibration snapshot (saved with every run)."""
        return {}

    def model_description(self) -> dict[str, Any] | None:
        """``model.to_dict()`` of the physics this device runs, if it is a model (emulators)."""
        return None

    def timing(self) -> dict[str, float]:
        """Duration estimate, seconds: overhead + solve_step·K + step·played + circuit·circuits
        + shot·shots (keys overhead_s, solve_step_s, step_s, circuit_s (optional), shot_s)."""
        return {"overhead_s": 0.01, "solve_step_s": 0.0, "step_s": 1e-6, "shot_s": 1e-4}

    # -- provided ----------------------------------------------------------------------
    def safe(self) -> None:
        """Put every output in its safe state: 0 (no coupling), clipped into the bounds."""
        with self.lock:
            self.levels = np.array([min(max(0.0, c.lower), c.upper) for c in self.channels])
            self.safe_calls += 1

    @property
    def is_safe(self) -> bool:
        return bool(np.all(self.levels == np.array([min(max(0.0, c.lower), c.upper) for c in self.channels])))

    def begin_episode(self, rng: np.random.Generator) -> None:
        """Called once before each experiment (drifts evolve between episodes)."""

    def state_dict(self) -> dict[str, Any]:
        """What evolves from experiment to experiment in a simulated device (an emulator's drift
        walk), for a training checkpoint; {} for a device whose state is physics, not ours."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (a device with none accepts only {})."""
        if state:
            raise ValidationError("device_state", f"{self.name} keeps no state to restore", "{}")

    def execute(self, controls: np.ndarray, dt: float, steps: np.ndarray, settings: tuple[str, ...],
                shots: int | None, rng: np.random.Generator) -> np.ndarray:
        """Every measured step k and setting: prepare, play controls[:k], measure. Returns
        counts (M, S, 2^n) int64 (probabilities float64 when shots is None)."""
        out = np.zeros((len(steps), len(settings), 2 ** self.n_qubits),
                       dtype=np.float64 if shots is None else np.int64)
        for i, k in enumerate(steps):
            for s, setting in enumerate(settings):
                out[i, s] = self.acquire(controls[:k], dt, setting, shots, rng)
        return out

    def describe(self) -> dict[str, Any]:
        """Channels, bounds, qubits, calibration, limits and timing."""
        return {"name": self.name, "n_qubits": self.n_qubits,
                "channels": [{**c.to_dict(), "safe": min(max(0.0, c.lower), c.upper)} for c in self.channels],
                "exact_expectations": self.exact_expectations,
                "limits": {"max_steps": self.max_steps, "max_shots": self.max_shots,
                           "max_settings": self.max_settings, "max_dt": self.max_dt},
                "timing": self.timing(), "calibration": self.calibration(),
                "model": self.model_description(),
                "state": {"levels": self.levels.tolist(), "safe": self.is_safe,
                          "safe_calls": self.safe_calls, "faults": self.faults,
                          "executions": self.executions}}


class ModelDevice(PulseDevice):
    """A device whose channels and qubits are those of a qhil model (emulators, test doubles)."""

    model: Model

    @property
    def channels(self) -> tuple[ControlChannel, ...]:
        return self.model.controls

    @property
    def n_qubits(self) -> int:
        return self.model.n_qubits

    def model_description(self) -> dict[str, Any]:
        if not hasattr(self, "_model_dict"):
            self._model_dict = self.model.to_dict()
        return self._model_dict


#: Solver methods of :class:`EmulatorDevice`: Krylov (Lanczos) steps on sparse operators
#: (default, fast), or the dense matrix exponential of every sample (the original path).
SOLVER_METHODS = ("lanczos_diag", "scipy_expm")
#: The warm-up solve that seeds the timing figures: steps per method, sample length dt (1/ω_0).
WARMUP_STEPS = {"lanczos_diag": 3, "scipy_expm": 1}
WARMUP_DT = 0.2
#: Weight of the newest execution in the exponential moving averages of the timing figures.
TIMING_ALPHA = 0.3
_MAX_SUBSTEPS = 64
_MAX_FIXED_SUBSTEPS = 100_000
_MAX_KRYLOV = 120

# Single-qubit rotations mapping the ±1 eigenvectors of X / Y / Z onto |0⟩ / |1⟩.
_LOCAL_ROTATIONS = {"Z": np.eye(2, dtype=complex),
                    "X": np.array([[1, 1], [1, -1]], dtype=complex) / np.sqrt(2),     # H
                    "Y": np.array([[1, -1j], [1, 1j]], dtype=complex) / np.sqrt(2)}   # H S†


def lanczos_error_bound(k_dim: int, rho_tau: float) -> float:
    """A priori error of a Krylov (Lanczos) approximation of exp(−iτH)v, ‖v‖ = 1, when the
    spectrum of H lies in an interval of length 4ρ (Hochbruck & Lubich 1997, Thm. 4):
    ≤ 12 exp(−(ρτ)²/m) (eρτ/m)^m for m ≥ 2ρτ; +inf when m < 2ρτ (no bound)."""
    m, x = float(k_dim), float(rho_tau)
    if x <= 0.0:
        return 0.0
    if m < 2.0 * x:
        return math.inf
    return math.exp(math.log(12.0) - x * x / m + m * (1.0 + math.log(x) - math.log(m)))


def _gershgorin_interval(op: sp.spmatrix) -> tuple[float, float]:
    """An interval holding every eigenvalue of the Hermitian ``op`` (Gershgorin discs)."""
    a = sp.csr_matrix(op)
    d = np.real(a.diagonal())
    radius = np.asarray(abs(a).sum(axis=1)).ravel() - np.abs(d)
    return float(np.min(d - radius)), float(np.max(d + radius))


class EmulatorDevice(ModelDevice):
    """A pulse-level emulator of ``model`` on qiskit-dynamics, imperfections off by default.

    rise_time:        first-order low-pass time constant τ of every channel (1/ω_0), in
                      [0, 1000]; the output follows dy/dt = (u − y)/τ from y = 0, sampled
                      ``oversample`` times per step. 0 = ideal steps (then oversample = 1).
    oversample:       samples per control step when rise_time > 0, integer in [1, 1024].
    amplitude_error:  relative calibration error ε in (−1, 1) (one value, or one per
                      channel): the device plays (1 + ε)·u.
    frequency_drift:  standard deviation σ (ω_0) in [0, 10] of a random walk of every qubit's
                      frequency, one step per experiment: H0 → H0 + Σ_j δ_j |e_j⟩⟨e_j|.
    readout_error:    P(read 1 | 0) and P(read 0 | 1) in [0, 0.5], one value for both, or a
                      pair, or one pair per qubit.
    allow_exact:      accept shots=None and return exact outcome probabilities (testing).
    fault_next:       fail the next N executions with a DeviceFault (fault injection).
    seed:             seed of the frequency drift (None: fresh entropy).
    method:           ``"lanczos_diag"`` (default): qiskit-dynamics Krylov steps on sparse
                      operators (``array_library="scipy_sparse"``); ``"scipy_expm"``: the dense
                      matrix exponential of every sample (the original path, ~200× slower at
                      dim 656: benchmarks/bench_emulator.py).
    krylov_dim:       Lanczos Krylov dimension, integer in [2, dim]; None (default) chooses it
                      with the number of sub-steps per sample from an a priori error bound.
    krylov_tol:       a priori bound on the state error (2-norm) per played sample of the
                      Lanczos path, in [1e-15, 1e-6] (default 1e-12).

    Both methods are exact for piecewise-constant controls: every solver step lies inside one
    sample, where H is constant. For Lanczos, the number of sub-steps s and the Krylov
    dimension m are the cheapest pair with s·12 e^{−(ρτ)²/m}(eρτ/m)^m ≤ krylov_tol, τ = h/s
    (Hochbruck & Lubich 1997), where 4ρ bounds the spectral width of H(t) by Gershgorin
    intervals of H0 and the operators, weighted by the channel bounds; m = dim is exact.

    Timing: :meth:`timing` reports measured seconds (a warm-up solve at construction, then an
    exponential moving average over every execution); :meth:`calibration` shows the basis.
    Shot noise is always on (multinomial sampling per setting).
    """

    name = "emulator"

    def __init__(self, model: Model, *, rise_time: float = 0.0, oversample: int = 8,
                 amplitude_error: float | list[float] = 0.0, frequency_drift: float = 0.0,
                 readout_error: float | list = 0.0, allow_exact: bool = False,
                 fault_next: int = 0, seed: int | None = None, method: str = "lanczos_diag",
                 krylov_dim: int | None = None, krylov_tol: float = 1e-12) -> None:
        if not isinstance(model, Model):
            raise ValidationError("model", f"expected a qhil Model, got {type(model).__name__}")
        nc, n = len(model.controls), model.n_qubits
        # -- every option is checked before any work ---------------------------------------
        self.rise_time = check.finite_float("rise_time", rise_time, 0.0, 1000.0)
        over = check.integer("oversample", oversample, 1, 1024)
        self.amplitude_scale = 1.0 + self._per_channel("amplitude_error", amplitude_error, nc)
        self.frequency_drift = check.finite_float("frequency_drift", frequency_drift, 0.0, 10.0)
        self.readout = self._readout_matrix(readout_error, n)
        if not isinstance(allow_exact, (bool, np.bool_)):
            raise ValidationError("allow_exact", f"expected true or false, got {allow_exact!r}", "true, false")
        self.fault_next = check.integer("fault_next", fault_next, 0, 1_000_000)
        if seed is not None:
            seed = check.integer("seed", seed, 0, 2 ** 63 - 1)
        if method not in SOLVER_METHODS:
            raise ValidationError("method", f"unknown solver method {method!r}", ", ".join(SOLVER_METHODS))
        if krylov_dim is not None:
            krylov_dim = check.integer("krylov_dim", krylov_dim, 2, model.dim)
            if method != "lanczos_diag":
                raise ValidationError("krylov_dim", "only the Lanczos method takes a Krylov dimension",
                                      "None unless method='lanczos_diag'")
        self.krylov_tol = check.finite_float("krylov_tol", krylov_tol, 1e-15, 1e-6)
        # -- build --------------------------------------------------------------------------
        self.model = model
        super().__init__()
        from qiskit_dynamics import Solver   # heavy import: only when an emulator is built
        self.oversample = over if self.rise_time > 0 else 1
        self.method = method
        self.krylov_dim = krylov_dim
        self.frequency_offsets = np.zeros(n)
        self.exact_expectations = bool(allow_exact)
        self._drift_rng = np.random.default_rng(seed)
        self.episodes = 0
        h0 = sp.csr_matrix(model.drift(), dtype=complex)
        ops = [sp.csr_matrix(h, dtype=complex) for h in model.control_operators()]
        # diag of |e_j⟩⟨e_j| ⊗ 1_aux for each qubit j (frequency drift)
        self._excited = qubit_bits(n).repeat(model.aux_dim, axis=0).T.astype(float)   # (n, dim)
        lo, hi = _gershgorin_interval(h0)
        self._h0_width = hi - lo
        self._op_radius = np.array([max(abs(a) for a in _gershgorin_interval(o)) for o in ops])
        self._channel_bound = np.array([max(abs(c.lower), abs(c.upper)) if math.isfinite(c.lower)
                                        and math.isfinite(c.upper) else 0.0 for c in model.controls])
        self._plans: dict[tuple, tuple[int, int]] = {}
        self._h0, self._ops = h0, ops
        self._drifted: tuple[tuple, Any] | None = None
        if method == "lanczos_diag":
            # the drift offsets are constant within an episode: they go into the static part
            # (a solver per episode, built in ~1 ms) rather than n more operators per step
            self._solver = Solver(static_hamiltonian=h0, hamiltonian_operators=ops or None,
                                  array_library="scipy_sparse")
        else:                                  # original: drift as n extra operators
            if self.frequency_drift > 0:
                ops = ops + [sp.diags(self._excited[j].astype(complex), format="csr") for j in range(n)]
            self._solver = Solver(static_hamiltonian=h0.toarray(),
                                  hamiltonian_operators=[o.toarray() for o in ops] or None)
        self._psi0 = model.initial_state()
        self._rotations: dict[str, np.ndarray] = {}
        self._assignment = self._assignment_matrix()
        self._warm_up()

    # -- option parsing ------------------------------------------------------------------
    @staticmethod
    def _per_channel(name: str, value: Any, nc: int) -> np.ndarray:
        arr = np.asarray(value, dtype=object)
        if arr.ndim == 0:
            return np.full(nc, check.finite_float(name, value, -1.0, 1.0, lo_open=True))
        vals = check.float_vector(name, value, -1.0, 1.0, min_len=nc, max_len=nc, lo_open=True)
        return np.array(vals)

    @staticmethod
    def _readout_matrix(value: Any, n: int) -> np.ndarray:
        """(n, 2) [P(1|0), P(0|1)] per qubit from one value, a pair, or n pairs."""
        allowed = "[0, 0.5]: one value, a pair [P(1|0), P(0|1)], or one pair per qubit"
        try:
            ro = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise ValidationError("readout_error", f"expected numbers, got {value!r}", allowed) from None
        if ro.ndim == 0:
            ro = np.array([ro, ro])
        if not (ro.shape == (2,) or ro.shape == (n, 2)):
            raise ValidationError("readout_error", f"has shape {ro.shape}", allowed)
        if not np.all(np.isfinite(ro)) or np.any(ro < 0) or np.any(ro > 0.5):
            raise ValidationError("readout_error", f"{ro.tolist()} is not in [0, 0.5]", allowed)
        return np.broadcast_to(ro, (n, 2)).copy()

    def _assignment_matrix(self) -> np.ndarray | None:
        """(n, 2, 2) A_q[m, t] = P(read m | true t) per qubit; None without readout error."""
        if not np.any(self.readout > 0):
            return None
        return np.stack([np.array([[1 - p01, p10], [p01, 1 - p10]]) for p01, p10 in self.readout])

    # -- timing: measured, not guessed ----------------------------------------------------
    def _warm_up(self) -> None:
        """Time a realistic solve (WARMUP_STEPS steps of WARMUP_DT at the real oversample,
        controls at half the channel bound) and a measurement; seed the timing figures."""
        nc, n = len(self.channels), self.n_qubits
        level = np.array([min(max(0.5 * b if b > 0 else 0.1, c.lower), c.upper)
                          for b, c in zip(self._channel_bound, self.channels)])
        if self.method == "lanczos_diag":     # first call pays one-off imports and caches
            self._states(np.tile(level, (1, 1)), WARMUP_DT, np.array([1]))
        k = WARMUP_STEPS[self.method]
        settings = tuple(c * n for c in "ZXY")
        t0 = time.perf_counter()
        states = self._states(np.tile(level, (k, 1)).reshape(k, nc), WARMUP_DT, np.arange(k + 1))
        t1 = time.perf_counter()
        self._measure(states, settings, 100, np.random.default_rng(0))
        t2 = time.perf_counter()
        self._states(np.zeros((0, nc)), WARMUP_DT, np.array([0]))   # the rest of an execution
        t3 = time.perf_counter()
        circuits = len(states) * len(settings)
        self._timing = {"overhead_s": t3 - t2, "solve_step_s": (t1 - t0) / k, "step_s": 0.0,
                        "shot_s": (t2 - t1) / (100 * circuits), "circuit_s": (t2 - t1) / circuits}
        self._timing_basis = {
            "source": "warm-up", "executions_timed": 0, "ema_alpha": TIMING_ALPHA, "method": self.method,
            "warmup": {"steps": k, "dt": WARMUP_DT, "oversample": self.oversample,
                       "solve_s": t1 - t0, "measure_s": t2 - t1, "overhead_s": t3 - t2,
                       "circuits": circuits, "shots": 100},
            "last": None}

    def _record_timing(self, total_s: float, solve_s: float, solved_steps: int, measure_s: float,
                       circuits: int, shots: int | None) -> None:
        """Fold one execution's measured seconds into the moving averages."""
        a = TIMING_ALPHA
        with self.lock:
            t = self._timing
            t["overhead_s"] = (1 - a) * t["overhead_s"] + a * max(total_s - solve_s - measure_s, 0.0)
            if solved_steps > 0:
                t["solve_step_s"] = (1 - a) * t["solve_step_s"] + a * solve_s / solved_steps
            if circuits > 0:
                t["circuit_s"] = (1 - a) * t["circuit_s"] + a * measure_s / circuits
                if shots:
                    t["shot_s"] = (1 - a) * t["shot_s"] + a * measure_s / (circuits * shots)
            b = self._timing_basis
            b["source"] = "executions"
            b["executions_timed"] += 1
            b["last"] = {"total_s": total_s, "solve_s": solve_s, "solved_steps": solved_steps,
                         "measure_s": measure_s, "circuits": circuits, "shots": shots}

    def timing(self) -> dict[str, float]:
        """Measured seconds: overhead per execution, solve per control step (all samples and
        sub-steps included), 0 per played step (prefix replay is free here), measurement per
        shot (circuit_s: per measured step and setting, which the emulator really pays)."""
        with self.lock:
            return {k: float(v) for k, v in self._timing.items()}

    def calibration(self) -> dict[str, Any]:
        with self.lock:
            basis = copy.deepcopy(self._timing_basis)
        return {"rise_time": self.rise_time, "oversample": self.oversample,
                "amplitude_scale": self.amplitude_scale.tolist(),
                "frequency_drift": self.frequency_drift,
                "frequency_offsets": self.frequency_offsets.tolist(),
                "readout_error": self.readout.tolist(), "episodes": self.episodes,
                "solver": {"method": self.method, "krylov_dim": self.krylov_dim,
                           "krylov_tol": self.krylov_tol},
                "timing_basis": basis}

    def state_dict(self) -> dict[str, Any]:
        """The drift walk: frequency offsets (ω_0), experiments so far, the walk's generator."""
        with self.lock:
            return {"frequency_offsets": self.frequency_offsets.tolist(), "episodes": self.episodes,
                    "drift_rng": copy.deepcopy(self._drift_rng.bit_generator.state)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            offsets = np.array(state["frequency_offsets"], dtype=float)
            episodes, rng_state = int(state["episodes"]), dict(state["drift_rng"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError("device_state", f"not an emulator state ({exc!r})",
                                  "frequency_offsets, episodes, drift_rng") from None
        if offsets.shape != (self.n_qubits,) or not np.all(np.isfinite(offsets)):
            raise ValidationError("device_state.frequency_offsets", f"{offsets.tolist()}",
                                  f"{self.n_qubits} finite numbers")
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = rng_state
        except (TypeError, ValueError, KeyError) as exc:
            raise ValidationError("device_state.drift_rng", f"{exc!r}", "a PCG64 generator state") from None
        with self.lock:
            self.frequency_offsets, self.episodes, self._drift_rng = offsets, episodes, rng

    def begin_episode(self, rng: np.random.Generator) -> None:
        self.episodes += 1
        if self.frequency_drift > 0:
            self.frequency_offsets = self.frequency_offsets + self._drift_rng.normal(
                0.0, self.frequency_drift, self.n_qubits)

    # -- physics ---------------------------------------------------------------------------
    def played_samples(self, controls: np.ndarray, dt: float) -> tuple[np.ndarray, float]:
        """What the outputs actually play: (samples (K·m, C), sample length dt/m)."""
        u = np.asarray(controls, dtype=float) * self.amplitude_scale
        m = self.oversample
        if self.rise_time <= 0 or len(u) == 0:
            return u, dt
        h = dt / m
        y = np.zeros(u.shape[1])
        decay_mid, decay_end = np.exp(-0.5 * h / self.rise_time), np.exp(-h / self.rise_time)
        out = np.empty((len(u) * m, u.shape[1]))
        for k in range(len(u)):
            for j in range(m):      # exact first-order response, sampled at sub-step midpoints
                out[k * m + j] = u[k] + (y - u[k]) * decay_mid
                y = u[k] + (y - u[k]) * decay_end
        return out, h

    def _h0_width_bound(self, amplitudes: np.ndarray | float) -> float:
        """Upper bound on the spectral width of H(t) while |u_c| ≤ max(amplitudes[c], channel
        bound·(1 + ε_c)): Gershgorin width of H0 + 2|u_c|·(radius of H_c) + Σ_j |δ_j|."""
        umax = np.maximum(np.abs(amplitudes), self._channel_bound * np.abs(self.amplitude_scale))
        return (self._h0_width + 2.0 * float(umax @ self._op_radius)
                + float(np.sum(np.abs(self.frequency_offsets))))

    def krylov_plan(self, h: float, amplitudes: np.ndarray) -> tuple[int, int]:
        """(Krylov dimension m, sub-steps s per sample) for samples of length ``h`` with
        |u_c| ≤ amplitudes[c]: the cheapest s·(m + 2) whose a priori error bound per sample,
        s · lanczos_error_bound(m, ρh/s), is ≤ krylov_tol (m = dim is exact)."""
        width = self._h0_width_bound(amplitudes)
        key = (h, width, self.krylov_dim)
        if key not in self._plans:
            if len(self._plans) >= 256:       # drifting offsets make a new key every episode
                self._plans.clear()
            dim = self.model.dim
            rho_h = 0.25 * width * h
            best: tuple[float, int, int] | None = None
            if self.krylov_dim:              # fixed m: the fewest sub-steps that keep the bound
                m = self.krylov_dim
                s = 1
                while m < dim and s * lanczos_error_bound(m, rho_h / s) > self.krylov_tol:
                    s += max(1, s // 8)
                    if s > _MAX_FIXED_SUBSTEPS:
                        raise ValidationError("dt", f"samples of {h:g} need over {_MAX_FIXED_SUBSTEPS} "
                                              f"Lanczos sub-steps with krylov_dim={m}", "a shorter dt, "
                                              "or a larger or automatic (None) krylov_dim")
                best = (0.0, m, s)
            for s in range(1, _MAX_SUBSTEPS + 1) if best is None else ():
                if best is not None and s * 4 >= best[0]:
                    break
                for m in range(2, min(dim, _MAX_KRYLOV) + 1):
                    if m >= dim or s * lanczos_error_bound(m, rho_h / s) <= self.krylov_tol:
                        if best is None or s * (m + 2) < best[0]:
                            best = (s * (m + 2), m, s)
                        break
            if best is None:     # a huge spectral width: the largest Krylov space, sub-steps as needed
                m, s = _MAX_KRYLOV, _MAX_SUBSTEPS
                while s * lanczos_error_bound(m, rho_h / s) > self.krylov_tol:
                    s *= 2
                best = (0.0, m, s)
            self._plans[key] = (best[1], best[2])
        return self._plans[key]

    def states(self, controls: np.ndarray, dt: float, steps: np.ndarray) -> np.ndarray:
        """Full state vectors (M, dim) after each step k in ``steps`` of ``controls`` (K, C)
        played for dt each, imperfections included: an emulator-only diagnostic."""
        with self.lock:
            return self._states(controls, dt, steps)

    def _states(self, controls: np.ndarray, dt: float, steps: np.ndarray) -> np.ndarray:
        """Full states (M, dim) after each measured step."""
        from qiskit_dynamics import DiscreteSignal
        steps = np.asarray(steps, dtype=int)
        kmax = int(steps.max()) if len(steps) else 0
        out = np.empty((len(steps), self.model.dim), dtype=complex)
        if kmax == 0:
            out[:] = self._psi0
            return out
        samples, h = self.played_samples(np.asarray(controls, dtype=float)[:kmax], dt)
        sigs = [DiscreteSignal(dt=h, samples=samples[:, c]) for c in range(samples.shape[1])]
        uniq = np.unique(np.concatenate([[0], steps]))
        t_eval = uniq * dt
        solver = self._solver
        if self.method == "lanczos_diag":
            k_dim, sub = self.krylov_plan(h, np.max(np.abs(samples), axis=0))
            extra = {"k_dim": k_dim}
            if self.frequency_drift > 0:
                solver = self._drifted_solver()
        else:
            sub, extra = 1, {}
            if self.frequency_drift > 0:
                sigs += [DiscreteSignal(dt=h, samples=np.full(len(samples), d)) for d in self.frequency_offsets]
        # Each interval between evaluation times is cut into ceil(Δ/max_dt) equal steps; the
        # 1e-9 margin makes that exactly (steps · samples/step · sub), so no step straddles a
        # sample edge whatever the rounding of k·dt.
        res = solver.solve(t_span=[0.0, kmax * dt], y0=self._psi0, signals=sigs or None,
                                 t_eval=t_eval, method=self.method, max_dt=h / sub * (1 + 1e-9), **extra)
        ys = np.asarray(res.y)
        out[:] = ys[np.searchsorted(uniq, steps)]
        return out

    def _drifted_solver(self) -> Any:
        """The Lanczos solver with H0 + Σ_j δ_j |e_j⟩⟨e_j| ⊗ 1 as its static part (this episode's δ)."""
        from qiskit_dynamics import Solver
        key = tuple(self.frequency_offsets.tolist())
        if self._drifted is None or self._drifted[0] != key:
            h0 = self._h0 + sp.diags((self.frequency_offsets @ self._excited).astype(complex), format="csr")
            self._drifted = (key, Solver(static_hamiltonian=h0.tocsr(), hamiltonian_operators=self._ops or None,
                                         array_library="scipy_sparse"))
        return self._drifted[1]

    def _check_fault(self) -> None:
        if self.fault_next > 0:
            self.fault_next -= 1
            self.faults += 1
            raise DeviceFault("injected fault: arbitrary waveform generator stopped responding")

    def execute(self, controls: np.ndarray, dt: float, steps: np.ndarray, settings: tuple[str, ...],
                shots: int | None, rng: np.random.Generator) -> np.ndarray:
        """Prefix replay, emulated: the physics is deterministic within an episode and the
        filter causal, so one solve serves every prefix; each (step, setting) still gets its
        own independent shots."""
        t0 = time.perf_counter()
        with self.lock:
            self._check_fault()
            self.executions += 1
            t1 = time.perf_counter()
            states = self._states(controls, dt, steps)
            t2 = time.perf_counter()
            if len(controls):
                self.levels = np.asarray(controls[-1] * self.amplitude_scale, dtype=float)
        t3 = time.perf_counter()
        out = self._measure(states, settings, shots, rng)
        t4 = time.perf_counter()
        self._record_timing(t4 - t0, t2 - t1, int(np.max(steps, initial=0)), t4 - t3,
                            len(states) * len(settings), shots)
        return out

    def acquire(self, controls: np.ndarray, dt: float, setting: str, shots: int | None,
                rng: np.random.Generator) -> np.ndarray:
        with self.lock:
            self._check_fault()
            states = self._states(controls, dt, np.array([len(controls)]))
        return self._measure(states, (setting,), shots, rng)[0, 0]

    def _rotation(self, setting: str) -> np.ndarray:
        if setting not in self._rotations:
            u = np.ones((1, 1), dtype=complex)
            for c in setting:
                u = np.kron(u, _LOCAL_ROTATIONS[c])
            self._rotations[setting] = u
        return self._rotations[setting]

    def outcome_probabilities(self, states: np.ndarray, settings: tuple[str, ...]) -> np.ndarray:
        """(M, S, 2^n) probabilities of each read bitstring, per state and setting, after the
        readout (assignment) errors: p'(m) = Σ_t (⊗_q A_q)[m, t] p(t)."""
        rho = qubit_density(np.asarray(states), self.n_qubits, self.model.aux_dim)
        p = np.empty((len(rho), len(settings), rho.shape[-1]))
        for s, setting in enumerate(settings):     # p[i] = ⟨i|U ρ U†|i⟩, batched over states
            u = self._rotation(setting)
            p[:, s] = np.real(np.sum((u @ rho) * u.conj(), axis=-1))
        np.clip(p, 0.0, None, out=p)
        if self._assignment is not None:        # apply A_q along qubit q's bit (qubit 0 = most significant)
            n = self.n_qubits
            t = p.reshape((-1,) + (2,) * n)
            for q, a in enumerate(self._assignment):
                t = np.moveaxis(np.tensordot(a, t, axes=([1], [q + 1])), 0, q + 1)
            p = t.reshape(p.shape)
        return p / p.sum(axis=-1, keepdims=True)

    def _measure(self, states: np.ndarray, settings: tuple[str, ...], shots: int | None,
                 rng: np.random.Generator) -> np.ndarray:
        probs = self.outcome_probabilities(states, settings)
        if shots is None:
            return probs
        return rng.multinomial(shots, probs).astype(np.int64)


class NullDevice(ModelDevice):
    """A device that does nothing and always reads |0…0⟩: for measuring the bridge's own
    overhead (``qhil lab serve --device null``)."""

    name = "null"
    exact_expectations = True

    def __init__(self, model: Model) -> None:
        self.model = model
        super().__init__()

    def timing(self) -> dict[str, float]:
        return {"overhead_s": 1e-4, "solve_step_s": 0.0, "step_s": 0.0, "shot_s": 0.0}

    def execute(self, controls, dt, steps, settings, shots, rng):  # noqa: D102
        self.executions += 1
        out = np.zeros((len(steps), len(settings), 2 ** self.n_qubits),
                       dtype=np.float64 if shots is None else np.int64)
        out[:, :, 0] = 1.0 if shots is None else shots
        return out

    def acquire(self, controls, dt, setting, shots, rng):  # noqa: D102
        out = np.zeros(2 ** self.n_qubits, dtype=np.float64 if shots is None else np.int64)
        out[0] = 1.0 if shots is None else shots
        return out


DEVICES = {"emulator": EmulatorDevice, "null": NullDevice}


def create_device(kind: str, model: Model, **options: Any) -> PulseDevice:
    """A device by name: ``"emulator"`` (qiskit-dynamics), ``"null"`` (overhead tests), or
    ``"exec:PATH"`` (an external program driven by :class:`qhil.lab.exec_device.ExecDevice`)."""
    if isinstance(kind, str) and kind.startswith("exec:"):
        from .exec_device import ExecDevice
        return ExecDevice(model, program=kind[5:], **options)
    if kind not in DEVICES:
        raise ValidationError("device", f"unknown device {kind!r}", ", ".join(DEVICES) + ", exec:PATH")
    params = inspect.signature(DEVICES[kind].__init__).parameters
    unknown = sorted(set(options) - set(params) - {"self", "model"})
    if unknown:
        raise ValidationError("options", f"unknown option(s) {unknown} for the {kind} device",
                              ", ".join(p for p in params if p not in ("self", "model")) or "none")
    return DEVICES[kind](model, **options)
