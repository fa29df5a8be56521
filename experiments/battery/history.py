"""Sec. V (i) of seed 000: a partially observed regime with and without a window of past
observations, against the full state (``history.csv`` + ``history.png``); the gap closed is
(with − without) / (full − without)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..reports import pyplot, write_csv
from ..stats import ema, gap_closed, mean_ci
from .fig_s2 import save_training_curves
from .paper import LABELS, mean_ci_text
from .records import base_name, finished_summaries, history_name, open_store

if TYPE_CHECKING:
    from .options import ReproduceOptions


def report_history(opts: "ReproduceOptions") -> list[dict[str, Any]]:
    work, out = opts.work, Path(opts.out_dir)
    r, k = opts.history_regime, opts.history_window
    kinds = {f"{r}": lambda s: base_name(r, s), f"{r}+history{k}": lambda s: history_name(r, k, s),
             "full_state": lambda s: base_name("full_state", s)}
    rows = []
    store = open_store(work)
    done = finished_summaries(work)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    per: dict[str, dict[str, list[float]]] = {}
    for kind, namer in kinds.items():
        sums = [done[namer(s)] for s in range(opts.seeds) if namer(s) in done]
        metrics = {"best_explored": [x.best_explored for x in sums],
                   "final_deterministic": [x.deterministic for x in sums],
                   "selected_env1": [x.selection_report["env1"] for x in sums if x.selection_report]}
        per[kind] = metrics
        for key, vals in metrics.items():
            m, h, n = mean_ci(vals)
            rows.append({"observation": kind, "metric": key, "mean": m, "ci_half_width": h, "n_seeds": n,
                         "per_seed": " ".join(f"{v:.4f}" for v in vals)})
        curves = [ema(np.asarray(store.episodes(namer(s))["ergotropy"])) for s in range(opts.seeds)
                  if store and store.status(namer(s)) is not None]
        if curves:
            n = min(len(c) for c in curves)
            ax.plot(np.arange(n), np.mean([c[:n] for c in curves], 0), label=f"{kind} ({len(curves)} runs)")
    if store is not None:
        store.close()
    for key in ("best_explored", "final_deterministic", "selected_env1"):
        a, b, c = (np.mean(per[kd][key]) if per[kd][key] else float("nan") for kd in kinds)
        rows.append({"observation": "gap closed", "metric": key, "mean": gap_closed(a, b, c),
                     "ci_half_width": float("nan"), "n_seeds": min(len(per[kd][key]) for kd in kinds)})
    write_csv(out / "history.csv", rows)
    save_training_curves(plt, fig, ax, f"History window K = {k} on {LABELS.get(r, r)} (Env1)\n{opts.scale_text()}",
                         out / "history.png")
    print(f"History: Env1, {r} with and without the last {k} observations; full state for reference")
    print(opts.scale_text())
    for row in rows:
        print(f"  {row['observation']:22} {row['metric']:20} {mean_ci_text(row['mean'], row['ci_half_width'])} "
              f"(n={row['n_seeds']}) {row.get('per_seed', '')}")
    print("  target: close at least half the gap (gap closed ≥ 0.5)")
    return rows
