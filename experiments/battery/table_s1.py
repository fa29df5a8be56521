"""Seed 000's Table S1: T_0.9, the training episodes until the best-so-far terminal ergotropy
first reaches 90 % of its final best, from the finished Table 1 runs (``tableS1.csv`` +
``tableS1_best_so_far.png``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..reports import pyplot, write_csv
from ..stats import mean_ci, t_reach
from . import paper
from .records import open_store, parse_windows, table1_runs

if TYPE_CHECKING:
    from .options import ReproduceOptions


def report_tableS1(opts: "ReproduceOptions") -> list[dict[str, Any]]:
    work, out = opts.work, Path(opts.out_dir)
    runs = table1_runs(work, parse_windows(opts.windows))
    store = open_store(work)
    rows, curves = [], {}
    for env in opts.envs:
        for regime in opts.regimes:
            ts, lengths = [], []
            for name in runs.get((env, regime), []):
                erg = store.episodes(name)["ergotropy"]
                ts.append(t_reach(erg))
                lengths.append(len(erg))
                curves[name] = (np.maximum.accumulate(erg), ts[-1])
            m, h, n = mean_ci(ts)
            pm, ph = paper.TABLE_S1[(env, regime)]
            rows.append({"env": env, "regime": regime, "t09_mean": m, "ci_half_width": h, "n_seeds": n,
                         "t09_per_seed": " ".join(map(str, ts)), "paper_mean": pm, "paper_ci": ph,
                         "episodes_per_run": " ".join(map(str, lengths))})
    if store is not None:
        store.close()
    write_csv(out / "tableS1.csv", rows)
    print("Table S1: T_0.9 = training episodes until the best-so-far terminal ergotropy first reaches "
          f"90% of its final best (finished runs in {work})")
    print("T_0.9 is bounded by the run length: compare with the paper only at equal training length")
    print(f"{'env':5} {'regime':13} {'ours (episodes)':>20} {'n':>2} {'paper':>18}  per seed (of episodes run)")
    for r in rows:
        per = " ".join(f"{t}/{n}" for t, n in zip(r["t09_per_seed"].split(), r["episodes_per_run"].split()))
        print(f"{r['env']:5} {r['regime']:13} {r['t09_mean']:10.1f} ± {r['ci_half_width']:<7.1f} {r['n_seeds']:2d} "
              f"{r['paper_mean']:8.1f} ± {r['paper_ci']:<7.1f}  {per}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (b, t) in curves.items():
        line, = ax.plot(np.arange(1, len(b) + 1), b, lw=1, label=name)
        ax.plot([t], [b[t - 1]], "o", color=line.get_color())
    ax.set_xlabel("episode")
    ax.set_ylabel("best-so-far terminal ergotropy (ω_0)")
    ax.set_title("Table S1: best-so-far curves, dots at T_0.9", fontsize=9)
    if curves:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "tableS1_best_so_far.png", dpi=120)
    plt.close(fig)
    return rows
