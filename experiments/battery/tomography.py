"""The tomography study: bias and spread of the ergotropy estimated from local-basis state
tomography of the 4 qubits (81 settings), against the exact value.

States: prefixes of the GRAPE protocol (after k steps) and a constant λ = 0.3 for K = 28 steps,
on the statevector simulator. Per state, shots per setting and estimator (``projected``: linear
inversion projected onto the physical states; ``linear_inversion``: ρ_LI itself) the row holds
the statistics of :func:`qhil.envs.measurement.tomography_ergotropy_stats` over ``reps``
independent tomographies. :func:`write_report` writes ``tomography_ergotropy.csv/.md/.png``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qhil.drivers import ValidationError, create_backend
from qhil.envs import DickeBattery, ENVIRONMENTS
from qhil.envs.measurement import tomography_ergotropy_stats

from ..reports import pyplot
from .measurement import grape_protocol, write_tables

#: The table's columns.
REPORT_COLUMNS = ["state", "estimator", "shots_per_setting", "exact", "mean", "bias", "std", "bias_over_stderr",
                  "rmse", "total_shots", "played_steps"]


def parse_steps(steps: str | Sequence[int], n_steps: int) -> list[int]:
    """GRAPE prefixes k, "7,14" or a list, each in 1..``n_steps``."""
    try:
        ks = [int(k) for k in (steps.split(",") if isinstance(steps, str) else steps)]
    except ValueError:
        raise ValidationError("steps", f"{steps!r}", f"comma-separated integers in 1..{n_steps}") from None
    if not all(1 <= k <= n_steps for k in ks):
        raise ValidationError("steps", f"{ks}", f"integers in 1..{n_steps}")
    return ks


def tomography_rows(env: str, shots: Sequence[int | None], reps: int, steps: str | Sequence[int],
                    seed: int = 0, results: str | Path = "docs/results", log: bool = True) -> list[dict[str, Any]]:
    """One row per (state, shots per setting, estimator); ``shots`` None = exact expectation
    values. The GRAPE protocol is read from ``<results>/grape_<env>.json``."""
    if isinstance(reps, bool) or not (isinstance(reps, int) and reps >= 2):
        raise ValidationError("reps", f"{reps}", "≥ 2")
    g = grape_protocol(env, results)
    lam, dt = np.asarray(g["protocol"]), g["tau"] / g["n_steps"]
    ks = parse_steps(steps, len(lam))
    battery, backend = DickeBattery(omegas=ENVIRONMENTS[env]), create_backend("statevector")
    states = [(f"GRAPE k={k}", lam[:k]) for k in ks] + [("constant λ=0.3, k=28", np.full(len(lam), 0.3))]
    rows = []
    for name, prot in states:
        for s in shots:
            for physical in (True, False):
                st = tomography_ergotropy_stats(battery, backend, prot, dt, s, n_rep=reps, seed=seed,
                                                physical=physical)
                rows.append({"state": name, "k": len(prot), "estimator": "projected" if physical else "linear_inversion",
                             "shots_per_setting": "exact" if s is None else s, "exact": st["exact"],
                             "mean": st["mean"], "bias": st["bias"], "std": st["std"], "stderr": st["stderr"],
                             "bias_over_stderr": st["bias_over_stderr"], "rmse": st["rmse"], "n_rep": st["n_rep"],
                             "settings": st["cost"]["settings"], "total_shots": st["cost"]["total_shots"],
                             "played_steps": st["cost"]["played_steps"]})
                if log:
                    print(f"{name:22} {rows[-1]['estimator']:17} shots {rows[-1]['shots_per_setting']!s:>6}: exact "
                          f"{st['exact']:.4f} mean {st['mean']:.4f} bias {st['bias']:+.4f} std {st['std']:.4f} "
                          f"(bias/SE {st['bias_over_stderr']:+.1f})", file=sys.stderr, flush=True)
    return rows


def write_report(rows: list[dict[str, Any]], out_dir: str | Path, env: str, reps: int, seed: int) -> None:
    """``tomography_ergotropy.csv/.md/.png`` under ``out_dir``."""
    out = write_tables(out_dir, "tomography_ergotropy", rows, REPORT_COLUMNS,
                       "Ergotropy from local-basis tomography of the 4 qubits (81 settings): bias and spread",
                       f"{reps} independent tomographies per row (statevector simulator, {env}), seed {seed}. "
                       "`projected`: linear inversion then projection onto the physical states "
                       "(qhil.drivers.tomography); `linear_inversion`: ρ_LI itself (may be unphysical). `std`: spread "
                       "of ONE estimate; `bias_over_stderr`: bias in units of the standard error of the mean. "
                       "`total_shots`, `played_steps`: hardware cost of ONE estimate (81 settings × shots; × k "
                       "replayed steps).")
    plot(rows, out / "tomography_ergotropy.png")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Bias and spread against shots per setting; solid projected, dashed linear inversion."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for est, ls in (("projected", "-"), ("linear_inversion", "--")):
        for i, state in enumerate(dict.fromkeys(r["state"] for r in rows)):
            rs = [r for r in rows if r["state"] == state and r["estimator"] == est and r["shots_per_setting"] != "exact"]
            if not rs:
                continue
            x = [r["shots_per_setting"] for r in rs]
            c = plt.cm.tab10(i)
            axes[0].plot(x, [r["bias"] for r in rs], ls=ls, marker="o", color=c, label=f"{state} ({est})")
            axes[1].plot(x, [r["std"] for r in rs], ls=ls, marker="o", color=c)
    for ax, lab in zip(axes, ("bias  E[ℰ̂] − ℰ  (ω_0)", "std of one estimate (ω_0)")):
        ax.set_xscale("log")
        ax.set_xlabel("shots per setting (81 settings)")
        ax.set_ylabel(lab)
        ax.axhline(0, color="k", lw=0.6)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=6)
    fig.suptitle("Tomography ergotropy estimator: solid = projected (physical), dashed = linear inversion")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
