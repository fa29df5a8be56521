"""Open loop against closed loop: when does feedback pay for its measurements?

From the fixed initial state |g…g⟩⊗|N⟩ the dynamics are deterministic, so one optimal
open-loop protocol exists (GRAPE, :mod:`qhil.agents.grape`). A closed-loop policy can only
beat it when the real device differs from the model. Both are played, many repetitions,
under one perturbation at a time:

* ``none``:         the nominal model;
* ``shots``:        the policy's observations are shot estimates (``level`` shots per setting);
                    the open-loop protocol measures nothing, so it is unaffected;
* ``depolarizing``: an Aer depolarizing channel of probability ``level`` per step and qubit
                    (the policy observes the noisy state, exactly);
* ``drift``:        every ω_j scaled by (1 + level·ξ_j), ξ_j ~ N(0, 1), a new draw per
                    repetition, the same draws for both controllers (paired); the
                    ergotropy is that of the drifted battery's own H_B.

Reported: the exact terminal ergotropy ℰ(τ) (units ω_0) of each repetition, mean ± 95% CI.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from qhil.drivers import Experiment, MeasurementSchedule, ValidationError, create_backend
from qhil.envs import DickeBattery

from .measurement_study import StudyConfig, play_policy, t_half_width

PERTURBATIONS = ("none", "shots", "depolarizing", "drift")
#: The default grid: (kind, level).
DEFAULT_LEVELS: tuple[tuple[str, float], ...] = (
    ("none", 0.0), ("shots", 1000), ("shots", 100), ("shots", 10),
    ("depolarizing", 0.002), ("depolarizing", 0.01), ("depolarizing", 0.03),
    ("drift", 0.01), ("drift", 0.03), ("drift", 0.1))


def drifted_batteries(battery: DickeBattery, level: float, n_rep: int, seed: int) -> list[DickeBattery]:
    """``n_rep`` copies with ω_j → ω_j (1 + level ξ_j), ξ_j ~ N(0, 1) (clipped to stay > 0)."""
    rng = np.random.default_rng(seed)
    om = np.asarray(battery.omegas)
    return [replace(battery, omegas=tuple(np.maximum(om * (1 + level * rng.standard_normal(len(om))), 1e-3)))
            for _ in range(n_rep)]


def check_perturbation(kind: str, level: float, n_rep: int = 1) -> None:
    """Raise a ValidationError naming the bad perturbation, level or repetition count."""
    if kind not in PERTURBATIONS:
        raise ValidationError("kind", f"unknown perturbation {kind!r}", ", ".join(PERTURBATIONS))
    if kind == "shots" and not (float(level).is_integer() and 1 <= level <= 10_000_000):
        raise ValidationError("level", f"{level} shots", "an integer number of shots in [1, 10^7]")
    if kind == "depolarizing" and not 0 <= level <= 1:
        raise ValidationError("level", f"depolarizing probability {level}", "[0, 1] per step")
    if kind == "drift" and not 0 <= level <= 0.5:
        raise ValidationError("level", f"relative drift {level}", "[0, 0.5]")
    if not (isinstance(n_rep, int) and n_rep >= 1):
        raise ValidationError("n_rep", f"{n_rep!r}", "an integer ≥ 1")


def open_loop(battery: DickeBattery, protocol: Sequence[float], dt: float, kind: str, level: float,
              n_rep: int = 32, seed: int = 0) -> np.ndarray:
    """(n_rep,) exact ℰ(τ) of a fixed protocol λ (units ω_0) under one perturbation."""
    check_perturbation(kind, level, n_rep)
    lam = np.asarray(protocol, float).reshape(-1, 1)
    sched = MeasurementSchedule("energies", final_only=True)
    if kind == "drift":
        bats = drifted_batteries(battery, level, n_rep, seed)
        be = create_backend("statevector")
        return np.array([float(b.ergotropy(be.run([Experiment(b, lam, dt, sched)])[0].qubit_density[-1]))
                         for b in bats])
    be = (create_backend("aer", noise=[("depolarizing", float(level))]) if kind == "depolarizing"
          else create_backend("statevector"))
    [res] = be.run([Experiment(battery, lam, dt, sched)])
    return np.full(n_rep, float(battery.ergotropy(res.qubit_density[-1])))   # deterministic


def closed_loop(agent: Any, cfg: StudyConfig, kind: str, level: float, n_rep: int = 32,
                seed: int = 0) -> np.ndarray:
    """(n_rep,) exact ℰ(τ) of a trained policy (observing as in ``cfg``) under one perturbation."""
    check_perturbation(kind, level, n_rep)
    if kind == "drift":
        bats = drifted_batteries(cfg.battery(), level, n_rep, seed)
        out = []
        for i, b in enumerate(bats):
            env = cfg.make_env(n_envs=1, battery=b, weight=0.0)
            out.append(float(play_policy(agent, env, seed=seed + i)["ergotropy"][0]))
        return np.array(out)
    if kind == "shots":
        env = cfg.make_env(n_envs=n_rep, shots=int(level), weight=0.0)
    elif kind == "depolarizing":
        be = create_backend("aer", noise=[("depolarizing", float(level))], cache_size=max(64, 2 * n_rep))
        env = cfg.make_env(n_envs=n_rep, backend=be, weight=0.0)
    else:
        env = cfg.make_env(n_envs=n_rep, weight=0.0)
    return play_policy(agent, env, seed=seed)["ergotropy"]


def reoptimise(battery: DickeBattery, protocol: Sequence[float], dt: float = 0.2, maxiter: int = 150) -> float:
    """ℰ(τ) of GRAPE re-run on ``battery`` (e.g. a drifted one, its ω_j known), warm-started
    from ``protocol``: the ceiling of any controller, feedback or calibration included."""
    from scipy.optimize import minimize

    from .grape import ChargingProblem
    prob = ChargingProblem(battery, dt)
    lo, hi = prob.bounds
    mid, half = 0.5 * (hi + lo), 0.5 * (hi - lo)
    x0 = np.arcsin(np.clip((np.asarray(protocol, float) - mid) / half, -0.98, 0.98))   # off the flat bounds

    def neg(x: np.ndarray) -> tuple[float, np.ndarray]:
        v, g = prob.value_and_grad(mid + half * np.sin(x))
        return -v, -g * half * np.cos(x)

    res = minimize(neg, x0, jac=True, method="L-BFGS-B", options={"maxiter": maxiter, "ftol": 1e-12})
    return max(-float(res.fun), prob.ergotropy(protocol))


def _ci(x: np.ndarray) -> float:
    return t_half_width(x) if len(x) > 1 and x.std() > 0 else 0.0


def compare(agent: Any, cfg: StudyConfig, protocol: Sequence[float], levels: Sequence[tuple[str, float]],
            n_rep: int = 32, seed: int = 0, dt: float = 0.2, n_oracle: int = 0) -> list[dict[str, Any]]:
    """One row per (kind, level): open-loop and closed-loop mean ± CI95 and the paired difference.
    For drift rows with ``n_oracle`` > 0: GRAPE re-optimised on the first ``n_oracle`` drifted
    batteries (:func:`reoptimise`) and the open loop on the same draws (``oracle_*``)."""
    rows = []
    for kind, level in levels:
        o = open_loop(cfg.battery(), protocol, dt, kind, level, n_rep, seed)
        c = closed_loop(agent, cfg, kind, level, n_rep, seed)
        d = c - o
        row = {"perturbation": kind, "level": level, "n_rep": n_rep,
               "open_mean": float(o.mean()), "open_ci95": _ci(o),
               "closed_mean": float(c.mean()), "closed_ci95": _ci(c),
               "closed_minus_open": float(d.mean()), "diff_ci95": _ci(d),
               "oracle_mean": float("nan"), "oracle_gain": float("nan"), "oracle_gain_ci95": float("nan"),
               "n_oracle": 0}
        if kind == "drift" and n_oracle > 0:
            bats = drifted_batteries(cfg.battery(), level, min(n_oracle, n_rep), seed)
            orc = np.array([reoptimise(b, protocol, dt) for b in bats])
            gain = orc - o[:len(orc)]
            row.update(oracle_mean=float(orc.mean()), oracle_gain=float(gain.mean()), oracle_gain_ci95=_ci(gain),
                       n_oracle=len(orc))
        rows.append(row)
    return rows
