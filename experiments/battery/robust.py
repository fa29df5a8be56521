"""Robust charging (Sec. V of seed 000): domain-randomised training, ω_j ~ U[lo, hi] every
episode, the policy selected on random validation realisations; against the Table 2 protocol
(Env1 only, selected on Env1–3), on Env1–3 and held-out draws (``robust.csv`` + ``robust.png``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..reports import pyplot, write_csv
from ..stats import mean_ci
from . import paper
from .records import ENVS, base_name, finished_summaries, grape_ceilings, robust_name

if TYPE_CHECKING:
    from .options import ReproduceOptions


def report_robust(opts: "ReproduceOptions") -> list[dict[str, Any]]:
    work, out = opts.work, Path(opts.out_dir)
    lo, hi = opts.omega_range
    grape = grape_ceilings(opts.grape)
    kinds = {f"domain-randomised U[{lo:g}, {hi:g}] (selected on {opts.eval_random} validation draws)":
             lambda s: robust_name(lo, hi, s)}
    if opts.robust_history:
        kinds[f"domain-randomised + history {opts.robust_history} (same selection)"] = \
            lambda s: robust_name(lo, hi, s, opts.robust_history)
    kinds["Env1 only (Table 2 protocol: selected on Env1–3)"] = lambda s: base_name("second_order", s)
    done = finished_summaries(work)
    rows, held = [], {}
    for kind, namer in kinds.items():
        sums = [x for s in range(opts.seeds) if (x := done.get(namer(s))) and x.selection_report]
        for env in ENVS + ["heldout_mean", "heldout_min"]:
            m, h, n = mean_ci([x.selection_report.get(env, float("nan")) for x in sums])
            pm, ph = paper.TABLE2.get(("second_order", env), paper.NAN2)
            rows.append({"training": kind, "env": env, "mean": m, "ci_half_width": h, "n_seeds": n,
                         "paper_table2_second_order": pm, "paper_ci": ph, "grape": grape.get(env, float("nan")),
                         "steps": sums[0].steps if sums else 0})
        held[kind] = [v for x in sums for v in (x.selection_heldout or {}).values()]
    write_csv(out / "robust.csv", rows)
    print(f"Robust charging (correlation regime E_j+⟨σ⟩+⟨σσ⟩): deterministic terminal ergotropy of the "
          f"selected policy; held-out = {opts.test_random} draws U[0.5, 1.5]^4 (seed 2002)")
    print(opts.scale_text())
    print(f"{'env':13} " + " | ".join(f"{k[:44]:>44}" for k in kinds) + f" | {'paper T2':>8} | {'GRAPE':>6}")
    for env in ENVS + ["heldout_mean", "heldout_min"]:
        cells = [next(r for r in rows if r["training"] == k and r["env"] == env) for k in kinds]
        pm = cells[0]["paper_table2_second_order"]
        text = [f"{paper.mean_ci_text(c['mean'], c['ci_half_width'])} (n={c['n_seeds']})" for c in cells]
        print(f"{env:13} " + " | ".join(f"{t:>44}" for t in text)
              + f" | {pm:8.4f} | {grape.get(env, float('nan')):6.4f}")
    print("  target: beat the paper's Table 2 (second order) on Env2 and Env3: 1.7048 and 2.7069")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    xs = np.arange(3)
    for i, kind in enumerate(kinds):
        cells = [next(r for r in rows if r["training"] == kind and r["env"] == e) for e in ENVS]
        width = 0.8 / (len(kinds) + 1)
        axes[0].bar(xs - 0.4 + (i + 0.5) * width, [c["mean"] for c in cells], width,
                    yerr=[np.nan_to_num(c["ci_half_width"]) for c in cells], capsize=3, label=kind[:40])
        if held[kind]:
            axes[1].hist(held[kind], bins=20, alpha=0.5, label=kind[:40])
    width = 0.8 / (len(kinds) + 1)
    axes[0].bar(xs + 0.4 - width / 2, [paper.TABLE2[("second_order", e)][0] for e in ENVS], width,
                yerr=[paper.TABLE2[("second_order", e)][1] for e in ENVS], capsize=3, alpha=0.6,
                label="paper Table 2, second order")
    for j, e in enumerate(ENVS):
        if e in grape:
            axes[0].plot([j - 0.45, j + 0.45], [grape[e]] * 2, "k--", lw=1)
    axes[0].set_xticks(xs, ENVS)
    axes[0].set_ylabel("terminal ergotropy (ω_0); dashed: GRAPE")
    axes[0].legend(fontsize=6)
    axes[1].set_xlabel("terminal ergotropy on held-out realisations (ω_0)")
    axes[1].legend(fontsize=6)
    fig.suptitle(f"Robust charging\n{opts.scale_text()}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "robust.png", dpi=120)
    plt.close(fig)
    return rows
