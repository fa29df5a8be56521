"""Seed 000's Table 2: trained on Env1, the policy selected by its mean deterministic terminal
ergotropy over Env1–3, reported on Env1–3 and held-out disorder realisations
(``table2.csv`` + ``table2_robustness.png``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..reports import pyplot, write_csv
from ..stats import mean_ci
from . import paper
from .records import ENVS, base_name, finished_summaries

if TYPE_CHECKING:
    from .options import ReproduceOptions


def report_table2(opts: "ReproduceOptions") -> list[dict[str, Any]]:
    work, out = opts.work, Path(opts.out_dir)
    done = finished_summaries(work)
    rows = []
    for regime in opts.regimes:
        sums = [x for s in range(opts.seeds) if (x := done.get(base_name(regime, s))) and x.selection_report]
        for env in ENVS + ["heldout_mean"]:
            rows.append(table2_row(regime, env, [x.selection_report.get(env, float("nan")) for x in sums],
                                   steps=sums[0].steps if sums else 0))
    write_csv(out / "table2.csv", rows)
    print("Table 2: trained on Env1, policy selected by mean deterministic terminal ergotropy over Env1–3")
    print(opts.scale_text())
    print_and_plot_table2(rows, list(opts.regimes), f"Table 2 robustness\n{opts.scale_text()}",
                          out / "table2_robustness.png")
    return rows


def table2_row(regime: str, env: str, values: Sequence[float], **extra: Any) -> dict[str, Any]:
    """One cell: mean ± CI over seeds beside the paper's."""
    m, h, n = mean_ci(values)
    pm, ph = paper.TABLE2.get((regime, env), paper.NAN2)
    return {"regime": regime, "env": env, "mean": m, "ci_half_width": h, "n_seeds": n,
            "paper_mean": pm, "paper_ci": ph, **extra}


def print_and_plot_table2(rows: list[dict[str, Any]], regimes: list[str], title: str, path: Path) -> None:
    fmt = paper.mean_ci_text
    print(f"{'regime':13} {'env':12} {'ours':>20} {'n':>2} {'paper':>18}")
    for r in rows:
        print(f"{r['regime']:13} {r['env']:12} {fmt(r['mean'], r['ci_half_width']):>20} {r['n_seeds']:2d} "
              f"{fmt(r['paper_mean'], r['paper_ci']) if r['paper_mean'] == r['paper_mean'] else '—':>18}")
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, env in zip(axes, ENVS):
        xs = np.arange(len(regimes))
        ours = [next(r for r in rows if r["regime"] == g and r["env"] == env) for g in regimes]
        ax.bar(xs - 0.2, [r["mean"] for r in ours], 0.4, yerr=[np.nan_to_num(r["ci_half_width"]) for r in ours],
               label="ours", capsize=3)
        ax.bar(xs + 0.2, [paper.TABLE2[(g, env)][0] for g in regimes], 0.4,
               yerr=[paper.TABLE2[(g, env)][1] for g in regimes], label="paper", capsize=3, alpha=0.6)
        ax.set_xticks(xs, [paper.LABELS[g] for g in regimes], fontsize=7)
        ax.set_title(f"{env} (trained on env1)")
        ax.set_ylabel("terminal ergotropy (ω_0)")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
