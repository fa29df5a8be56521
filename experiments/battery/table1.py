"""Seed 000's Table 1 and Figs. 1–2: 3 environments × 4 observation regimes × seeds of a
charging run each (:class:`~.training.ChargingRunSpec`).

``table1.csv`` (env, regime, mean, ci_half_width, n_seeds, grape_ceiling, deterministic_mean):
``mean`` is the paper's metric, the best terminal ergotropy explored during training averaged
over finished seeds with a 95 % Student-t half-width; ``deterministic_mean`` averages the
trained policies' deterministic episodes. Figures: ``fig1_learning_curves.png`` (EMA γ_G = 0.9
of the return, mean ± std over seeds) and ``fig2_best_protocols.png`` (Env1: best protocol per
regime and its ergotropy trajectory).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..reports import pyplot, write_csv
from ..stats import ema, t_half_width
from . import paper
from .records import RunSummary, Window, finished_summaries, open_store, runs_by_cell, same_memory, table1_name
from .training import ChargingRunSpec


def table1_specs(envs: Sequence[str], regimes: Sequence[str], seeds: int, windows: dict[str, Window],
                 sac: Any, fields: dict[str, Any] | None = None) -> list[ChargingRunSpec]:
    """The runs of Table 1, seed-major; ``sac(seed)`` gives each seed's SAC options and
    ``fields`` the other spec fields every run shares (e.g. n_envs; over the windows, as
    ``--train-args`` flags came last)."""
    out = []
    for s in range(seeds):
        for e in envs:
            for r in regimes:
                kw = {**(windows[r].spec_fields() if r in windows else {}), **(fields or {})}
                out.append(ChargingRunSpec(env=e, regime=r, sac=sac(s), run=table1_name(e, r, s), **kw))
    return out


def cell_summaries(envs: Sequence[str], regimes: Sequence[str], work: Path, n_seeds: int,
                   windows: dict[str, Window]) -> dict[tuple[str, str], list[RunSummary]]:
    """(env, regime) → summaries of the finished runs of seeds < n_seeds with the set-up's window."""
    done = finished_summaries(work)
    out: dict[tuple[str, str], list[RunSummary]] = {}
    for env in envs:
        for regime in regimes:
            found = [done[n] for s in range(n_seeds) if (n := table1_name(env, regime, s)) in done]
            out[(env, regime)] = [r for r in found if same_memory(r.config, windows)]
    return out


def write_table(envs: Sequence[str], regimes: Sequence[str], work: Path, out: Path, n_seeds: int,
                grape_dir: Path, windows: dict[str, Window]) -> list[dict[str, Any]]:
    """``<out>/table1.csv`` from the finished runs; returns its rows."""
    rows = []
    for (env, regime), runs in cell_summaries(envs, regimes, work, n_seeds, windows).items():
        best = [r.best_explored for r in runs]
        det = [r.deterministic for r in runs]
        g = Path(grape_dir) / f"grape_{env}.json"
        rows.append({"env": env, "regime": regime, "mean": float(np.mean(best)) if best else float("nan"),
                     "ci_half_width": t_half_width(best), "n_seeds": len(best),
                     "grape_ceiling": json.loads(g.read_text())["ergotropy"] if g.exists() else float("nan"),
                     "deterministic_mean": float(np.mean(det)) if det else float("nan")})
    write_csv(Path(out) / "table1.csv", rows)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """Ours beside the paper's Table 1 and the GRAPE ceiling."""
    print(f"{'env':5} {'regime':13} {'best explored (ours)':>22} {'paper':>17} {'n':>2} "
          f"{'GRAPE':>7} {'%GRAPE':>7} {'deterministic':>13}")
    for r in rows:
        pm, pc = paper.TABLE1.get((r["env"], r["regime"]), paper.NAN2)
        pct = 100 * r["mean"] / r["grape_ceiling"] if r["grape_ceiling"] == r["grape_ceiling"] else float("nan")
        print(f"{r['env']:5} {r['regime']:13} {r['mean']:10.4f} ± {r['ci_half_width']:<8.4f}  "
              f"{pm:7.4f} ± {pc:<6.4f} {r['n_seeds']:2d} {r['grape_ceiling']:7.4f} {pct:6.1f}% "
              f"{r['deterministic_mean']:13.4f}")


def print_unfinished(work: Path) -> None:
    """Runs still training (not in the table): steps so far and best explored ergotropy so far."""
    store = open_store(work)
    if store is None:
        return
    for name, v in sorted(store.runs().items()):
        if v["status"] != "done":
            ep = store.episodes(name)
            if ep["step"]:
                print(f"in progress: {name}: {ep['step'][-1]} of {v['config']['sac']['total_steps']} steps, "
                      f"best explored so far {ep['best'][-1]:.4f}")
    store.close()


def write_figures(envs: Sequence[str], regimes: Sequence[str], work: Path, out: Path, grape_dir: Path,
                  windows: dict[str, Window]) -> None:
    """Figs. 1 and 2 from every recorded run (finished or still training: they show progress)."""
    plt = pyplot()
    store = open_store(work)
    if store is None:
        return
    labels = paper.TEX_LABELS
    by_cell = runs_by_cell(store.runs(), windows)
    # Fig. 1: EMA learning curves
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.8), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for regime in regimes:
            curves = [ema(np.asarray(store.episodes(name)["ret"])) for name in by_cell.get((env, regime), [])]
            curves = [c for c in curves if len(c)]
            if not curves:
                continue
            # unfinished runs are shorter: each episode averages the runs that reached it
            c = np.full((len(curves), max(len(x) for x in curves)), np.nan)
            for i, x in enumerate(curves):
                c[i, :len(x)] = x
            m, s = np.nanmean(c, 0), np.nanstd(c, 0)
            ep = np.arange(c.shape[1])
            ax.plot(ep, m, label=f"{labels[regime]} ({len(curves)} runs)")
            ax.fill_between(ep, m - s, m + s, alpha=0.25)
        ax.set_title(env)
        ax.set_xlabel("episode")
        ax.set_ylabel("return (EMA, γ_G = 0.9)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(out) / "fig1_learning_curves.png", dpi=120)
    plt.close(fig)
    # Fig. 2: best protocol per regime (Env1, or the first env) and its ergotropy trajectory
    env = "env1" if "env1" in envs else envs[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for regime in regimes:
        bests = [store.best(name) for name in by_cell.get((env, regime), [])]
        bests = [b for b in bests if b is not None]
        if not bests:
            continue
        b = max(bests, key=lambda x: x["ergotropy"])
        lam = np.asarray(b["protocol"])
        t = np.arange(len(lam) + 1) * 0.2
        axes[0].step(t, np.append(lam, lam[-1]), where="post", label=f"{labels[regime]}")
        axes[1].plot(t, b["trajectory"], marker=".", label=f"{labels[regime]}: {b['ergotropy']:.4f}")
    g = Path(grape_dir) / f"grape_{env}.json"
    if g.exists():
        gr = json.loads(g.read_text())
        lam = np.asarray(gr["protocol"])
        t = np.arange(len(lam) + 1) * gr["tau"] / gr["n_steps"]
        axes[0].step(t, np.append(lam, lam[-1]), where="post", color="k", ls="--", lw=1, label="GRAPE")
        axes[1].axhline(gr["ergotropy"], color="k", ls="--", lw=1, label=f"GRAPE {gr['ergotropy']:.4f}")
    axes[0].set_xlabel("t (1/ω_0)")
    axes[0].set_ylabel("λ(t) (ω_0)")
    axes[1].set_xlabel("t (1/ω_0)")
    axes[1].set_ylabel("ergotropy (ω_0)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{env}: best protocol per regime (best over seeds) and its ergotropy")
    fig.tight_layout()
    fig.savefig(Path(out) / "fig2_best_protocols.png", dpi=120)
    plt.close(fig)
    store.close()
