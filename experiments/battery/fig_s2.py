"""Seed 000's Fig. S2: the reward weight, scheduled w (Eq. 12) against fixed w, on Env1 with
second-order observations (``figS2.csv`` + ``figS2_reward_weight.png``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..reports import pyplot, write_csv
from ..stats import ema, mean_ci
from .paper import mean_ci_text
from .records import finished_summaries, open_store, weight_name

if TYPE_CHECKING:
    from .options import ReproduceOptions


def save_training_curves(plt: Any, fig: Any, ax: Any, title: str, path: Path) -> None:
    """Label the axes of EMA training curves (terminal ergotropy per episode), save, close."""
    ax.set_xlabel("episode")
    ax.set_ylabel("terminal ergotropy in training (EMA γ = 0.9)")
    ax.set_title(title, fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_figS2(opts: "ReproduceOptions") -> list[dict[str, Any]]:
    work, out = opts.work, Path(opts.out_dir)
    store = open_store(work)
    done = finished_summaries(work)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = []
    for w in opts.weights:
        names = [weight_name(w, s) for s in range(opts.seeds)]
        curves = [np.asarray(store.episodes(n)["ergotropy"]) for n in names] if store else []
        curves = [ema(c) for c in curves if len(c)]
        sums = [done[n] for n in names if n in done]
        label = "scheduled w (Eq. 12)" if w == "scheduled" else f"fixed w = {float(w):g}"
        if curves:
            n = min(len(c) for c in curves)
            c = np.stack([c[:n] for c in curves])
            ax.plot(np.arange(n), c.mean(0), label=f"{label} ({len(curves)} runs)")
            ax.fill_between(np.arange(n), c.mean(0) - c.std(0), c.mean(0) + c.std(0), alpha=0.25)
        for key, vals in (("best_explored", [x.best_explored for x in sums]),
                          ("final_deterministic_env1", [x.deterministic for x in sums]),
                          ("final_ema_ergotropy", [c[-1] for c in curves])):
            m, h, n_ = mean_ci(vals)
            rows.append({"weight": w, "metric": key, "mean": m, "ci_half_width": h, "n_seeds": n_})
    if store is not None:
        store.close()
    save_training_curves(plt, fig, ax, f"Fig. S2 (Env1, E_j+⟨σ⟩+⟨σσ⟩)\n{opts.scale_text()}",
                         out / "figS2_reward_weight.png")
    write_csv(out / "figS2.csv", rows)
    print("Fig. S2: reward weight, Env1, second-order observations (paper: scheduled best at late training)")
    print(opts.scale_text())
    for r in rows:
        print(f"  {r['weight']:>9} {r['metric']:26} {mean_ci_text(r['mean'], r['ci_half_width'])} (n={r['n_seeds']})")
    return rows
