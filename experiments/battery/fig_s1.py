"""Seed 000's Fig. S1: the spread over seeds of the best explored ergotropy of the finished
Table 1 runs (``figS1.csv`` + ``figS1_seed_distributions.png``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..reports import pyplot, write_csv
from . import paper
from .records import open_store, parse_windows, table1_runs

if TYPE_CHECKING:
    from .options import ReproduceOptions


def report_figS1(opts: "ReproduceOptions") -> list[dict[str, Any]]:
    work, out = opts.work, Path(opts.out_dir)
    runs = table1_runs(work, parse_windows(opts.windows))
    store = open_store(work)
    rows = []
    for env in opts.envs:
        for regime in opts.regimes:
            for name in runs.get((env, regime), []):
                rows.append({"env": env, "regime": regime, "run": name,
                             "best_explored": float(store.episodes(name)["best"][-1])})
    if store is not None:
        store.close()
    write_csv(out / "figS1.csv", rows)
    plt = pyplot()
    envs = list(opts.envs)
    order = ["full_state", "energies", "first_order", "second_order"]
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.8), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for i, regime in enumerate(order):
            v = [r["best_explored"] for r in rows if r["env"] == env and r["regime"] == regime]
            if len(v) > 1:
                ax.boxplot([v], positions=[i], widths=0.5)
            ax.plot(np.full(len(v), i) + np.linspace(-0.08, 0.08, len(v)), v, "o", ms=4)
            pm, ph = paper.TABLE1[(env, regime)]
            ax.errorbar([i + 0.3], [pm], yerr=[ph], fmt="s", color="gray", ms=4, capsize=3,
                        label="paper mean ± CI" if i == 0 else None)
        ax.set_xticks(range(len(order)), [f"{paper.LABELS[g]}\n(n={sum(r['env'] == env and r['regime'] == g for r in rows)})"
                                          for g in order], fontsize=7)
        ax.set_title(env)
        ax.set_ylabel("best terminal ergotropy in training (ω_0)")
        ax.legend(fontsize=7)
    fig.suptitle(f"Fig. S1: distribution over seeds of finished runs in {work}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "figS1_seed_distributions.png", dpi=120)
    plt.close(fig)
    print(f"Fig. S1: {len(rows)} finished runs → {out / 'figS1_seed_distributions.png'}")
    for env in envs:
        for regime in order:
            v = [r["best_explored"] for r in rows if r["env"] == env and r["regime"] == regime]
            if v:
                print(f"  {env} {regime:13} n={len(v)} " + " ".join(f"{x:.4f}" for x in v))
    return rows
