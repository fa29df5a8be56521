"""Charging with per-episode random TLS frequencies: domain randomisation (seed 000, Sec. V (ii)).

A device's ω_j drift between charges. :class:`RandomisedChargingEnv` draws new frequencies
at every :meth:`~RandomisedChargingEnv.reset`, either

* ``omega_range=(lo, hi)``: ω_j ~ U[lo, hi] independently (the paper's disorder model is
  U[0.5, 1.5], Sec. IV A), or
* ``omega_spread=s``: ω_j ~ ω_j⁰ (1 + U[−s, s]) around the nominal battery's ω_j⁰,

as a function of ``omega_seed`` and the round number (env steps so far ÷ (B·K)), so a
run's sequence of realisations is reproducible and a resumed run (whose step count the
checkpoint restores) continues it. The agent is not told ω: it sees the same observation as in
:class:`~qhil.envs.charging.ChargingVectorEnv` (E_j = ω_j (1 − ⟨Z_j⟩)/2 etc.). All B
batteries of a round share one draw. Everything else (reward, schedule, info) is the plain
env's; ``info`` of :meth:`reset` also carries the drawn ``omegas`` (B, N).

Cost on the exact backend (``benchmarks/bench_randomised.py``, N = 4, n_max = 40, second
order, 2 shared cores): 72 ms per episode with a fixed ω, 151 ms with a new ω per episode,
≈ 58 ms of it building the new propagator; the driver keeps at most 64 propagators (LRU),
so memory stays bounded.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from qhil.drivers import ValidationError

from .charging import ChargingVectorEnv
from .dicke import DickeBattery

#: TLS frequencies accepted by :class:`~qhil.envs.dicke.DickeBattery` (units ω_0).
OMEGA_MAX = 100.0


def draw_omegas(rng: np.random.Generator, n: int, omega_range: tuple[float, float] | None = None,
                nominal: tuple[float, ...] | None = None, spread: float | None = None) -> np.ndarray:
    """One disorder realisation: (n,) frequencies (units ω_0) from ``omega_range`` or
    ``nominal`` × (1 + U[−spread, spread])."""
    if omega_range is not None:
        return rng.uniform(omega_range[0], omega_range[1], size=n)
    return np.asarray(nominal, dtype=float) * (1.0 + rng.uniform(-spread, spread, size=n))


def check_omega_options(omega_range: Any, omega_spread: Any) -> tuple[tuple[float, float] | None, float | None]:
    """Validate the randomisation options; exactly one must be given."""
    if (omega_range is None) == (omega_spread is None):
        raise ValidationError("omega_range/omega_spread", "give exactly one of them",
                              "omega_range=(lo, hi) with 0 < lo < hi ≤ 100, or omega_spread in (0, 1)")
    if omega_range is not None:
        try:
            lo, hi = (float(x) for x in omega_range)
        except (TypeError, ValueError):
            raise ValidationError("omega_range", f"expected two numbers (lo, hi), got {omega_range!r}",
                                  "0 < lo < hi ≤ 100") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < hi <= OMEGA_MAX):
            raise ValidationError("omega_range", f"({lo}, {hi})", "0 < lo < hi ≤ 100 (units ω_0)")
        return (lo, hi), None
    try:
        s = float(omega_spread)
    except (TypeError, ValueError):
        raise ValidationError("omega_spread", f"expected a number, got {omega_spread!r}",
                              "a relative spread in (0, 1)") from None
    if isinstance(omega_spread, bool) or not (math.isfinite(s) and 0.0 < s < 1.0):
        raise ValidationError("omega_spread", f"{omega_spread!r}", "a relative spread in (0, 1)")
    return None, s


class RandomisedChargingEnv(ChargingVectorEnv):
    """:class:`ChargingVectorEnv` whose battery gets new ω_j at every reset.

    battery:       the nominal battery (default Env1): cutoff, cavity, coupling bound and,
                   with ``omega_spread``, the centre of the draws
    omega_range:   (lo, hi), ω_j ~ U[lo, hi] (units ω_0), 0 < lo < hi ≤ 100
    omega_spread:  s in (0, 1), ω_j ~ ω_j⁰ (1 + U[−s, s])
    omega_seed:    seed of the draws (None: fresh entropy)
    other keyword arguments: as :class:`ChargingVectorEnv`.
    """

    def __init__(self, battery: DickeBattery | None = None, *, omega_range: tuple[float, float] | None = None,
                 omega_spread: float | None = None, omega_seed: int | None = None, **kwargs: Any) -> None:
        from qhil.drivers.backend import check_seed
        self.omega_range, self.omega_spread = check_omega_options(omega_range, omega_spread)
        check_seed(omega_seed, "omega_seed")
        super().__init__(battery=battery, **kwargs)
        self.nominal = self.battery
        self.omega_seed = int(np.random.default_rng(omega_seed).integers(2**63))   # None: fresh entropy
        self._round, self._repeat = -1, 0
        n = self.battery.n_qubits
        top = self.omega_range[1] if self.omega_range else max(self.nominal.omegas) * (1 + self.omega_spread)
        if self.regime != "full_state":              # E_j ∈ [0, ω_j]: widen to the largest ω drawable
            self.obs_high = self.obs_high.copy()
            self.obs_high[:n] = np.float32(top)

    def draw(self) -> np.ndarray:
        """The realisation ω (N,), units ω_0, of the round that starts now (round =
        ``n_step`` ÷ (n_envs · n_steps)): the same at the same point of a run, resumed or not.
        Repeated resets within one round draw further realisations."""
        rnd = self.n_step // (self.n_envs * self.n_steps)
        self._repeat = self._repeat + 1 if rnd == self._round else 0    # resets without steps in between
        self._round = rnd
        rng = np.random.default_rng([self.omega_seed, rnd, self._repeat])
        return draw_omegas(rng, self.nominal.n_qubits, self.omega_range, self.nominal.omegas, self.omega_spread)

    def reset(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """New ω for this round's batteries, then the k = 0 measurement."""
        omegas = tuple(float(w) for w in self.draw())
        self.battery = dataclasses.replace(self.nominal, omegas=omegas)
        obs, info = super().reset()
        info["omegas"] = np.tile(np.asarray(omegas), (self.n_envs, 1))
        return obs, info


def heldout_realisations(n: int, seed: int, omega_range: tuple[float, float] = (0.5, 1.5),
                         n_tls: int = 4) -> list[tuple[float, ...]]:
    """``n`` disorder realisations ω ~ U[omega_range]^N from ``seed``: a held-out set when
    ``seed`` differs from the training draws' (continuous draws never coincide)."""
    from qhil.drivers import checks as check
    from qhil.drivers.backend import check_seed
    check.integer("n", n, 0, 1_000_000)
    check.integer("n_tls", n_tls, 1, 10)
    rng = np.random.default_rng(check_seed(seed))
    lo, hi = check_omega_options(omega_range, None)[0]
    return [tuple(float(w) for w in rng.uniform(lo, hi, size=n_tls)) for _ in range(n)]

