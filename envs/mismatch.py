"""Charging with domain randomisation over the device mismatch (issue 14, part 3).

A device is never the model. :class:`~qhil.lab.device.EmulatorDevice` models four errors;
:class:`MismatchRandomisedEnv` trains on the exact simulator while drawing them afresh, per
episode and per battery b, from given ranges:

    amplitude error   ε_b   ~ U[−a, a]         the device plays (1 + ε) u
    rise time         τ_b   ~ U[0, r]          first order, dy/dt = (u − y)/τ from y = 0 (1/ω_0)
    frequency offset  δ_bj  ~ N(0, σ²)          H0 → H0 + Σ_j δ_j |e_j⟩⟨e_j|, i.e. ω_j → ω_j + δ_j
                                               (clipped at ±4σ, so ω_j + δ_j stays > 0; ω_0)
    readout error     p_b   ~ U[0, p_max]      each measured bit flipped with probability p

What the agent commands stays nominal: its action a_k ∈ [λ_min, λ_max], the a_{k−1} entry of
the observation and :attr:`~MismatchRandomisedEnv.controls` are the commanded λ. The battery
plays, for the piecewise-constant input u_k = (1 + ε) a_k and the output y_k at the start of
step k, the step average of the first-order response (exact for dy/dt = (u − y)/τ):

    ȳ_k     = u_k + (y_k − u_k) (τ/Δt)(1 − e^{−Δt/τ}),     y_{k+1} = u_k + (y_k − u_k) e^{−Δt/τ},

ȳ = u for τ = 0 (:func:`first_order_average`). The emulator samples the same response at
``oversample`` points per step instead of averaging it: the same pulse area per step, to
O((Δt/τ)²) the same dynamics. ȳ is a convex combination of (1 + ε) a's, so |ȳ| ≤ (1 + a) λ_max:
the simulated batteries carry that wider coupling bound (same cutoff n_max).

Observations are what a device with readout error p reports on average: every Pauli
expectation on w qubits is contracted by (1 − 2p)^w (exact for symmetric independent bit
flips), and E_j = ω_j (1 − ⟨Z_j⟩)/2 is computed from the contracted ⟨Z_j⟩ with the NOMINAL ω_j,
as the lab computes it. With ``shots``, the bit flips act on the outcome probabilities of every
setting before the multinomial sampling (the emulator's assignment matrix), so the shot noise is
that of the noisy readout. The reward stays exact: Eq. (11) on the simulator's state of the
mismatched dynamics, with the nominal battery Hamiltonian H_B (the figure the sim-to-real
study scores a device's true final state with); ``info`` figures likewise.

The draws are a function of ``mismatch_seed`` and the round number (env steps ÷ (B·K)), as in
:class:`~qhil.envs.robust.RandomisedChargingEnv`, so a resumed run (whose step count the
checkpoint restores) continues the same sequence; the shot-noise generator (:meth:`seed`) is
untouched by them. All ranges zero (and no ``fixed``) is the plain
:class:`~qhil.envs.charging.ChargingVectorEnv`, bit for bit.

Cost: with ``frequency_spread`` > 0 every battery is its own model, so each episode builds B
propagators (~32 ms each for N = 4, n_max = 40) and the B batteries are propagated one by one;
the other three errors keep the batch together.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from qhil.drivers import Experiment, MeasurementSchedule, Result, ValidationError
from qhil.drivers import checks as check
from qhil.drivers.measure import measure_density
from qhil.drivers.pauli import parse_pauli

from .charging import ChargingVectorEnv
from .dicke import DickeBattery

#: Allowed ranges (closed): amplitude error a, rise time r (1/ω_0), frequency spread σ (ω_0),
#: readout error p_max. σ is further capped at min_j ω_j / 5 (ω_j + δ_j > 0 after the ±4σ clip).
RANGES = {"amplitude_error": (0.0, 0.5), "rise_time": (0.0, 10.0),
          "frequency_spread": (0.0, 0.1), "readout_error": (0.0, 0.5)}
#: Keys of ``fixed``: one value for every battery instead of the draw.
FIXED_KEYS = ("amplitude_error", "rise_time", "frequency_offset", "readout_error")
#: Frequency offsets are clipped at this many standard deviations.
FREQUENCY_CLIP = 4.0


def first_order_average(u: np.ndarray, rise_time: np.ndarray | float, dt: float) -> np.ndarray:
    """Step averages ȳ (B, K) of a first-order output dy/dt = (u − y)/τ, y(0) = 0, driven by
    piecewise-constant inputs ``u`` (B, K) held for ``dt`` each; ``rise_time`` τ (B,) or one
    value (1/ω_0); τ = 0 plays u itself."""
    u = np.atleast_2d(np.asarray(u, dtype=float))
    tau = np.broadcast_to(np.asarray(rise_time, dtype=float), (u.shape[0],))
    x = np.divide(dt, tau, out=np.full(tau.shape, np.inf), where=tau > 0)        # Δt/τ
    keep_end = np.exp(-x)                                                        # e^{−Δt/τ}
    keep_avg = np.divide(-np.expm1(-x), x, out=np.zeros(tau.shape), where=tau > 0)   # (τ/Δt)(1 − e^{−Δt/τ})
    y = np.zeros(u.shape[0])
    out = np.empty_like(u)
    for k in range(u.shape[1]):
        out[:, k] = u[:, k] + (y - u[:, k]) * keep_avg
        y = u[:, k] + (y - u[:, k]) * keep_end
    return out


def _check_ranges(ranges: Mapping[str, Any], omegas: tuple[float, ...]) -> dict[str, float]:
    out = {}
    for name, value in ranges.items():
        lo, hi = RANGES[name]
        if name == "frequency_spread":
            hi = min(hi, min(omegas) / (FREQUENCY_CLIP + 1.0))
        out[name] = check.finite_float(name, value, lo, hi)
    return out


class MismatchRandomisedEnv(ChargingVectorEnv):
    """:class:`ChargingVectorEnv` on a device mismatch drawn per episode and per battery.

    battery:          the nominal battery (default Env1): the agent's bounds, the observation's
                      ω_j and the reward's H_B
    amplitude_error:  a in [0, 0.5]: ε ~ U[−a, a]
    rise_time:        r in [0, 10] (1/ω_0): τ ~ U[0, r]
    frequency_spread: σ in [0, min(0.1, min_j ω_j/5)] (ω_0): δ_j ~ N(0, σ²) clipped at ±4σ
    readout_error:    p_max in [0, 0.5]: p ~ U[0, p_max]
    mismatch_seed:    seed of the draws (None: fresh entropy; the resolved seed is
                      :attr:`mismatch_seed`, which a run must record to resume exactly)
    fixed:            {name: value} replacing a draw by one value for every battery (tests,
                      evaluation on a known device): ``amplitude_error`` ε in (−1, 1],
                      ``rise_time`` τ in [0, 10], ``frequency_offset`` δ (one value or N values,
                      ω_j + δ_j in (0, 100]), ``readout_error`` p in [0, 0.5]
    other keyword arguments: as :class:`ChargingVectorEnv` (``reward="tomography_terminal"``
    only without mismatch; readout error needs a backend that returns the qubit density).

    ``reset`` adds the drawn ``amplitude_error`` (B,), ``rise_time`` (B,), ``frequency_offset``
    (B, N) and ``readout_error`` (B,) to its ``info``; :attr:`played` is the coupling the
    batteries actually got.
    """

    def __init__(self, battery: DickeBattery | None = None, *, amplitude_error: float = 0.0,
                 rise_time: float = 0.0, frequency_spread: float = 0.0, readout_error: float = 0.0,
                 mismatch_seed: int | None = None, fixed: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        from qhil.drivers.backend import check_seed
        if battery is not None and not isinstance(battery, DickeBattery):
            raise ValidationError("battery", f"expected a DickeBattery, got {type(battery).__name__}")
        nominal = battery if battery is not None else DickeBattery()
        self.ranges = _check_ranges({"amplitude_error": amplitude_error, "rise_time": rise_time,
                                     "frequency_spread": frequency_spread, "readout_error": readout_error},
                                    nominal.omegas)
        self.fixed = self._check_fixed(fixed, nominal)
        check_seed(mismatch_seed, "mismatch_seed")
        super().__init__(battery=nominal, **kwargs)
        self.nominal = self.battery
        self.plain = not any(self.ranges.values()) and not any(np.any(v != 0) for v in self.fixed.values())
        if not self.plain and self.reward_mode != "exact":
            raise ValidationError("reward", f"{self.reward_mode!r} with a device mismatch",
                                  "exact (the terminal tomography would not see the mismatch)")
        readout = self.ranges["readout_error"] > 0 or np.any(self.fixed.get("readout_error", 0.0) > 0)
        if readout and self.regime == "full_state":
            raise ValidationError("readout_error", "has no meaning for the full_state regime (no readout)",
                                  "0 with regime='full_state'")
        if readout and not self.has_density:
            raise ValidationError("readout_error", f"needs the qubit density, which the {self.backend.name} "
                                  "driver does not return", "0, or an exact simulator backend")
        per_battery = self.ranges["frequency_spread"] > 0
        limit = getattr(self.backend, "MAX_PROPAGATORS", None)
        if per_battery and limit is not None and self.n_envs > limit:
            raise ValidationError("n_envs", f"{self.n_envs} batteries with frequency_spread > 0",
                                  f"≤ {limit} (one propagator per battery; the driver keeps {limit})")
        # the simulated batteries: the nominal one with room for the largest (1 + ε) λ
        top = max(self.ranges["amplitude_error"], abs(float(self.fixed.get("amplitude_error", 0.0))))
        wide = self.nominal.coupling_bound * (1.0 + top)
        self.played_battery = self.nominal if top == 0 else dataclasses.replace(self.nominal, coupling_bound=wide)
        self.mismatch_seed = int(np.random.default_rng(mismatch_seed).integers(2**63))   # None: fresh entropy
        self._round, self._repeat = -1, 0
        self._set(self._zero_draw())

    # -- options ---------------------------------------------------------------------------
    @staticmethod
    def _check_fixed(fixed: Mapping[str, Any] | None, nominal: DickeBattery) -> dict[str, Any]:
        if fixed is None:
            return {}
        if not isinstance(fixed, Mapping):
            raise ValidationError("fixed", f"expected a mapping, got {type(fixed).__name__}",
                                  "{name: value} with names " + ", ".join(FIXED_KEYS))
        out: dict[str, Any] = {}
        for name, value in fixed.items():
            if name == "amplitude_error":
                out[name] = check.finite_float(name, value, -1.0, 1.0, lo_open=True)
            elif name == "rise_time":
                out[name] = check.finite_float(name, value, *RANGES["rise_time"])
            elif name == "readout_error":
                out[name] = check.finite_float(name, value, *RANGES["readout_error"])
            elif name == "frequency_offset":
                n = nominal.n_qubits
                vals = (check.float_vector(name, value, -100.0, 100.0, n, n) if np.ndim(value)
                        else (check.finite_float(name, value, -100.0, 100.0),) * n)
                shifted = np.asarray(nominal.omegas) + np.asarray(vals)
                if np.any(shifted <= 0) or np.any(shifted > 100):
                    raise ValidationError(name, f"{list(vals)} moves ω_j to {shifted.tolist()}",
                                          "offsets with ω_j + δ_j in (0, 100] (ω_0)")
                out[name] = np.asarray(vals, dtype=float)
            else:
                raise ValidationError("fixed", f"unknown key {name!r}", ", ".join(FIXED_KEYS))
        return out

    def config(self) -> dict[str, Any]:
        """What a run records to rebuild this env's draws exactly (with the env's step count)."""
        return {**self.ranges, "mismatch_seed": self.mismatch_seed,
                "fixed": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.fixed.items()} or None}

    # -- the draws ---------------------------------------------------------------------------
    def _zero_draw(self) -> dict[str, np.ndarray]:
        b, n = self.n_envs, self.nominal.n_qubits
        return {"amplitude_error": np.zeros(b), "rise_time": np.zeros(b),
                "frequency_offset": np.zeros((b, n)), "readout_error": np.zeros(b)}

    def draw(self) -> dict[str, np.ndarray]:
        """The mismatch of this round's B batteries (round = ``n_step`` ÷ (B·K)): ε (B,),
        τ (B,) in 1/ω_0, δ (B, N) in ω_0, p (B,); the same at the same point of a run, resumed
        or not. Repeated resets within one round draw further ones."""
        rnd = self.n_step // (self.n_envs * self.n_steps)
        self._repeat = self._repeat + 1 if rnd == self._round else 0
        self._round = rnd
        rng = np.random.default_rng([self.mismatch_seed, rnd, self._repeat])
        a, r = self.ranges["amplitude_error"], self.ranges["rise_time"]
        s, p = self.ranges["frequency_spread"], self.ranges["readout_error"]
        b, n = self.n_envs, self.nominal.n_qubits
        drawn = {"amplitude_error": rng.uniform(-a, a, b), "rise_time": rng.uniform(0.0, r, b),
                 "frequency_offset": np.clip(rng.normal(0.0, s, (b, n)), -FREQUENCY_CLIP * s, FREQUENCY_CLIP * s),
                 "readout_error": rng.uniform(0.0, p, b)}
        for name, value in self.fixed.items():
            drawn[name] = np.broadcast_to(value, drawn[name].shape).astype(float)
        return drawn

    def _set(self, drawn: dict[str, np.ndarray]) -> None:
        self.mismatch = drawn
        offsets = drawn["frequency_offset"]
        if np.any(offsets != 0):
            om = np.asarray(self.nominal.omegas)
            self._models = [dataclasses.replace(self.played_battery, omegas=tuple(float(w) for w in om + d))
                            for d in offsets]
        else:
            self._models = [self.played_battery] * self.n_envs

    # -- physics ------------------------------------------------------------------------------
    @property
    def played(self) -> np.ndarray:
        """(B, k) the coupling the batteries got so far, units ω_0 (:func:`first_order_average`
        of (1 + ε) × :attr:`controls`)."""
        return self._played(self._controls)

    def _played(self, commanded: np.ndarray) -> np.ndarray:
        u = (1.0 + self.mismatch["amplitude_error"])[:, None] * commanded
        return first_order_average(u, self.mismatch["rise_time"], self.dt)

    def _measure(self, controls: np.ndarray, schedule: MeasurementSchedule | None = None) -> list[Result]:
        """Run the commanded ``controls`` (B, k) as played on each battery's mismatched model;
        the readout error contracts (exact) or flips (shots) what is reported."""
        if self.plain:
            return super()._measure(controls, schedule)
        schedule = schedule or self.schedule
        played = self._played(controls)
        p = self.mismatch["readout_error"]
        noisy = bool(np.any(p > 0)) and bool(schedule.labels(self.nominal.n_qubits))
        run_schedule = schedule
        if noisy and schedule.shots is not None:       # shots drawn here, after the bit flips
            run_schedule = MeasurementSchedule(schedule.observables, final_only=True, shots=None)
        exps = [Experiment(m, c.reshape(-1, 1), self.dt, run_schedule) for m, c in zip(self._models, played)]
        seed = int(self._rng.integers(2**63)) if schedule.shots is not None else None
        results = self.backend.run(exps, seed=None if run_schedule.shots is None else seed)
        if not noisy:
            return results
        if schedule.shots is None:                     # ⟨P⟩ → (1 − 2p)^w ⟨P⟩
            weight = np.array([len(parse_pauli(lab, self.nominal.n_qubits)) for lab in results[0].labels])
            return [dataclasses.replace(r, values=r.values * (1.0 - 2.0 * pb) ** weight)
                    for r, pb in zip(results, p)]
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(results))]
        n, out = self.nominal.n_qubits, []
        settings = schedule.settings(n)
        for r, pb, rng in zip(results, p, rngs):
            flip = np.tile(np.array([[1.0 - pb, pb], [pb, 1.0 - pb]]), (n, 1, 1))   # A[m, t] = P(m | t)
            values, stderr, counts, sets = measure_density(r.qubit_density, r.labels, settings,
                                                           schedule.shots, rng, n, assignment=flip)
            out.append(dataclasses.replace(r, values=values, stderr=stderr, counts=counts, settings=sets))
        return out

    # -- the episode --------------------------------------------------------------------------
    def reset(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """New mismatch for this round's batteries, then the k = 0 measurement."""
        drawn = self.draw()
        self._set(drawn)
        obs, info = super().reset()
        info.update({k: np.array(v) for k, v in drawn.items()})
        return obs, info
