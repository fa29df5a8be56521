"""Pulse devices: the hardware interface the lab server fronts, and its emulators.

A :class:`PulseDevice` plays a piecewise-constant schedule on named channels and measures
its qubits in given local bases with a number of shots. Measurement is destructive, so an
observation after k steps is its own prepare–play(0..k−1)–measure repetition ("prefix
replay"); :meth:`PulseDevice.execute` does that for every measured step and setting.

:class:`EmulatorDevice` is the stand-in for hardware: a pulse-level solve of a qhil model
with qiskit-dynamics (``Solver`` + ``DiscreteSignal``, ``method="scipy_expm"`` with
``max_dt`` equal to the sample length, exact for piecewise-constant signals), plus
hardware-like imperfections, each off by default.
"""
from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from qhil.drivers import ControlChannel, Model
from qhil.drivers.measure import qubit_density
from qhil.drivers.pauli import outcome_probabilities, qubit_bits


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
        """Duration estimate, seconds: overhead + solve_step·K + step·played + shot·shots."""
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


class EmulatorDevice(ModelDevice):
    """A pulse-level emulator of ``model`` on qiskit-dynamics, imperfections off by default.

    rise_time:        first-order low-pass time constant τ of every channel (1/ω_0); the
                      output follows dy/dt = (u − y)/τ from y = 0, sampled ``oversample``
                      times per step. 0 = ideal steps.
    amplitude_error:  relative calibration error ε (one value, or one per channel): the
                      device plays (1 + ε)·u.
    frequency_drift:  standard deviation σ (ω_0) of a random walk of every qubit's frequency,
                      one step per experiment: H0 → H0 + Σ_j δ_j |e_j⟩⟨e_j|.
    readout_error:    P(read 1 | 0) and P(read 0 | 1), one value for both, or a pair, or one
                      pair per qubit.
    allow_exact:      accept shots=None and return exact outcome probabilities (testing).
    fault_next:       fail the next N executions with a DeviceFault (fault injection).
    Shot noise is always on (multinomial sampling per setting).
    """

    name = "emulator"

    def __init__(self, model: Model, *, rise_time: float = 0.0, oversample: int = 8,
                 amplitude_error: float | list[float] = 0.0, frequency_drift: float = 0.0,
                 readout_error: float | list = 0.0, allow_exact: bool = False,
                 fault_next: int = 0, seed: int | None = None) -> None:
        self.model = model
        super().__init__()
        from qiskit_dynamics import Solver   # heavy import: only when an emulator is built
        nc = len(model.controls)
        self.rise_time = float(rise_time)
        if self.rise_time < 0:
            raise ValueError("rise_time must be ≥ 0")
        self.oversample = int(oversample) if self.rise_time > 0 else 1
        self.amplitude_scale = 1.0 + np.broadcast_to(np.asarray(amplitude_error, dtype=float), (nc,)).copy()
        self.frequency_drift = float(frequency_drift)
        self.frequency_offsets = np.zeros(model.n_qubits)
        ro = np.asarray(readout_error, dtype=float)
        ro = np.broadcast_to(ro if ro.ndim == 2 else (ro if ro.ndim == 1 else np.array([ro, ro])),
                             (model.n_qubits, 2)).copy()
        if np.any(ro < 0) or np.any(ro > 0.5):
            raise ValueError("readout_error must lie in [0, 0.5]")
        self.readout = ro
        self.exact_expectations = bool(allow_exact)
        self.fault_next = int(fault_next)
        self._drift_rng = np.random.default_rng(seed)
        self.episodes = 0
        h0 = model.drift().toarray().astype(complex)
        ops = [h.toarray().astype(complex) for h in model.control_operators()]
        if self.frequency_drift > 0:          # |e_j⟩⟨e_j| ⊗ 1_aux for each qubit
            n, aux = model.n_qubits, model.aux_dim
            bits = qubit_bits(n)
            ops += [np.diag(np.repeat(bits[:, j], aux).astype(complex)) for j in range(n)]
        self._solver = Solver(static_hamiltonian=h0, hamiltonian_operators=ops)
        self._psi0 = model.initial_state()
        self._solve_step_s = 0.0
        t0 = time.perf_counter()
        warm = self._states(np.zeros((2, nc)), 0.1, np.array([0, 1, 2]))   # warm up, time a solve
        self._solve_step_s = (time.perf_counter() - t0) / 2
        self._measure(warm, ("Z" * model.n_qubits,), 1, np.random.default_rng(0))

    def timing(self) -> dict[str, float]:
        return {"overhead_s": 0.005, "solve_step_s": max(self._solve_step_s, 1e-4) * self.oversample,
                "step_s": 0.0, "shot_s": 2e-7}

    def calibration(self) -> dict[str, Any]:
        return {"rise_time": self.rise_time, "oversample": self.oversample,
                "amplitude_scale": self.amplitude_scale.tolist(),
                "frequency_drift": self.frequency_drift,
                "frequency_offsets": self.frequency_offsets.tolist(),
                "readout_error": self.readout.tolist(), "episodes": self.episodes}

    def begin_episode(self, rng: np.random.Generator) -> None:
        self.episodes += 1
        if self.frequency_drift > 0:
            self.frequency_offsets = self.frequency_offsets + self._drift_rng.normal(
                0.0, self.frequency_drift, self.n_qubits)

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

    def _states(self, controls: np.ndarray, dt: float, steps: np.ndarray) -> np.ndarray:
        """Full states (M, dim) after each measured step."""
        from qiskit_dynamics import DiscreteSignal
        steps = np.asarray(steps, dtype=int)
        kmax = int(steps.max()) if len(steps) else 0
        out = np.empty((len(steps), self.model.dim), dtype=complex)
        if kmax == 0:
            out[:] = self._psi0
            return out
        samples, h = self.played_samples(controls[:kmax], dt)
        sigs = [DiscreteSignal(dt=h, samples=samples[:, c]) for c in range(samples.shape[1])]
        if self.frequency_drift > 0:
            sigs += [DiscreteSignal(dt=h, samples=np.full(len(samples), d)) for d in self.frequency_offsets]
        t_eval = np.unique(np.concatenate([[0.0], steps * dt]))
        res = self._solver.solve(t_span=[0.0, kmax * dt], y0=self._psi0, signals=sigs, t_eval=t_eval,
                                 method="scipy_expm", max_dt=h)
        ys = np.asarray(res.y)
        for i, k in enumerate(steps):
            out[i] = ys[int(np.searchsorted(t_eval, k * dt - 1e-12 * max(1.0, kmax * dt)))]
        return out

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
        with self.lock:
            self._check_fault()
            self.executions += 1
            states = self._states(controls, dt, steps)
            if len(controls):
                self.levels = np.asarray(controls[-1] * self.amplitude_scale, dtype=float)
        return self._measure(states, settings, shots, rng)

    def acquire(self, controls: np.ndarray, dt: float, setting: str, shots: int | None,
                rng: np.random.Generator) -> np.ndarray:
        with self.lock:
            self._check_fault()
            states = self._states(controls, dt, np.array([len(controls)]))
        return self._measure(states, (setting,), shots, rng)[0, 0]

    def _measure(self, states: np.ndarray, settings: tuple[str, ...], shots: int | None,
                 rng: np.random.Generator) -> np.ndarray:
        rho = qubit_density(states, self.n_qubits, self.model.aux_dim)
        assignment = None
        if np.any(self.readout > 0):   # A_q[m, t] = P(read m | true t)
            p01, p10 = self.readout[:, 0], self.readout[:, 1]
            assignment = np.stack([np.array([[1 - a, b], [a, 1 - b]]) for a, b in zip(p01, p10)])
        probs = np.stack([outcome_probabilities(r, settings, assignment) for r in rho])
        if shots is None:
            return probs
        return np.stack([[rng.multinomial(shots, p) for p in ps] for ps in probs]).astype(np.int64)


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
    """A device by name: ``"emulator"`` (qiskit-dynamics) or ``"null"`` (overhead tests)."""
    if kind not in DEVICES:
        raise ValueError(f"unknown device {kind!r} (allowed: {', '.join(DEVICES)})")
    return DEVICES[kind](model, **options)
