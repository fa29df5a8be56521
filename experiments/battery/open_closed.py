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

Reported: the exact terminal ergotropy ℰ(τ) (units ω_0) of each repetition, mean ± 95% CI
(:func:`run_open_closed` writes ``open_closed.csv/.md/.png``).
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qhil.drivers import Experiment, MeasurementSchedule, ValidationError, create_backend
from qhil.envs import DickeBattery

from ..reports import pyplot
from ..runner import LocalExecutor, failed_message, run_specs
from ..stats import t_half_width
from .measurement import (MeasurementRun, StudyConfig, finished_runs, grape_protocol, load_policy, play_policy,
                          write_tables)

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

    from qhil.agents.grape import ChargingProblem
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


def parse_levels(text: str | None) -> list[tuple[str, float]]:
    """"none:0,shots:100,drift:0.05" → [(kind, level), …]; empty: :data:`DEFAULT_LEVELS`."""
    if not text:
        return list(DEFAULT_LEVELS)
    out = []
    for item in text.split(","):
        kind, _, lvl = item.partition(":")
        if kind not in PERTURBATIONS:
            raise ValidationError("levels", f"unknown perturbation {kind!r}", ", ".join(PERTURBATIONS))
        try:
            out.append((kind, float(lvl or 0)))
        except ValueError:
            raise ValidationError("levels", f"{item!r}", "kind:level, e.g. drift:0.05") from None
        check_perturbation(*out[-1])
    return out


class PolicyNotTrained(RuntimeError):
    """The closed-loop policy's study configuration failed to train (its log says why)."""


#: The table's columns.
REPORT_COLUMNS = ["perturbation", "level", "open_mean", "open_ci95", "closed_mean", "closed_ci95",
                  "closed_minus_open", "diff_ci95", "n_rep", "oracle_gain", "oracle_gain_ci95", "n_oracle"]


def run_open_closed(cfg: StudyConfig, levels: Sequence[tuple[str, float]], work_dir: str | Path,
                    out_dir: str | Path, n_rep: int = 32, n_oracle: int = 5,
                    results: str | Path = "docs/results") -> list[dict[str, Any]]:
    """Compare the GRAPE protocol of ``cfg.env`` with the policy of study configuration ``cfg``
    (trained first through the runner if ``work_dir`` has not finished it) under ``levels``;
    write ``open_closed.csv/.md/.png`` under ``out_dir``; return the rows."""
    if isinstance(n_rep, bool) or not (isinstance(n_rep, int) and n_rep >= 2):
        raise ValidationError("reps", f"{n_rep}", "≥ 2")
    for kind, level in levels:
        check_perturbation(kind, level, n_rep)
    g = grape_protocol(cfg.env, results)              # before training: it is needed after
    outcomes = run_specs([MeasurementRun(cfg)], work_dir, LocalExecutor(1))
    msg = failed_message(outcomes, work_dir)
    if msg:
        raise PolicyNotTrained(f"the closed-loop policy did not train: {msg}")
    summary = finished_runs(work_dir)[cfg.name]
    agent = load_policy(cfg, work_dir)
    rows = compare(agent, cfg, g["protocol"], levels, n_rep=n_rep, seed=0, dt=g["tau"] / g["n_steps"],
                   n_oracle=n_oracle)
    for r in rows:
        r["policy"] = cfg.name
        print(f"{r['perturbation']:12} {r['level']:>8g}: open {r['open_mean']:.4f} ± {r['open_ci95']:.4f}   closed "
              f"{r['closed_mean']:.4f} ± {r['closed_ci95']:.4f}   closed − open {r['closed_minus_open']:+.4f} ± "
              f"{r['diff_ci95']:.4f}", file=sys.stderr, flush=True)
    note = (f"Open loop: the GRAPE protocol of docs/results/grape_{cfg.env}.json. Closed loop: the deterministic "
            f"SAC policy of study configuration `{cfg.name}` (trained {summary['steps']} steps; nominal "
            f"evaluation {summary['eval_mean']:.4f}). {n_rep} repetitions per row, mean ± 95% Student-t; the "
            "difference is paired (same drift draws). shots: the policy's observations per setting (the open "
            "loop measures nothing); depolarizing: Aer channel, probability per step and qubit; drift: ω_j → "
            "ω_j(1 + level·ξ_j), ξ_j ~ N(0,1) per repetition, ergotropy of the drifted battery. `oracle_gain`: "
            "GRAPE re-optimised on the drifted battery (its ω_j known) minus the nominal GRAPE protocol, paired, "
            "on the first `n_oracle` draws: the most that any feedback or recalibration could add.")
    out = write_tables(out_dir, "open_closed", rows, REPORT_COLUMNS,
                       "Open loop (GRAPE) against closed loop (SAC) under perturbations: exact terminal ergotropy", note)
    plot(rows, out / "open_closed.png")
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Open and closed loop against the level, one panel per perturbation (nominal dotted)."""
    plt = pyplot()
    kinds = list(dict.fromkeys(r["perturbation"] for r in rows if r["perturbation"] != "none"))
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(4.2 * max(1, len(kinds)), 3.8), squeeze=False)
    nominal = [r for r in rows if r["perturbation"] == "none"]
    for ax, kind in zip(axes[0], kinds):
        rs = [r for r in rows if r["perturbation"] == kind]
        x = list(range(len(rs)))
        ax.errorbar(x, [r["open_mean"] for r in rs], [r["open_ci95"] for r in rs], marker="s", capsize=3,
                    label="open loop (GRAPE)")
        ax.errorbar(x, [r["closed_mean"] for r in rs], [r["closed_ci95"] for r in rs], marker="o", capsize=3,
                    label="closed loop (SAC)")
        for r in nominal:
            ax.axhline(r["open_mean"], color="C0", lw=0.6, ls=":")
            ax.axhline(r["closed_mean"], color="C1", lw=0.6, ls=":")
        ax.set_xticks(x, [f"{r['level']:g}" for r in rs])
        ax.set_xlabel({"shots": "shots per setting", "depolarizing": "depolarizing p per step",
                       "drift": "relative ω_j drift σ"}.get(kind, kind))
        ax.set_ylabel("terminal ergotropy ℰ(τ) (ω_0)")
        ax.set_title(kind)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
