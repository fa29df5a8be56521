"""Transfer: Table 2 without training or selection. The *final* policies of the finished
Table 1 Env1 runs (deterministic), scored on Env1–3 and ``test_random`` held-out realisations
(``transfer.csv``: mean ± 95 % CI over seeds; ``transfer_seeds.csv``: per run; ``transfer.png``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..reports import write_csv
from .records import ENVS, parse_windows, table1_runs
from .table2 import print_and_plot_table2, table2_row
from .training import TEST_SEED, checkpoint_path, evaluation_env

if TYPE_CHECKING:
    from .options import ReproduceOptions


def report_transfer(opts: "ReproduceOptions") -> list[dict[str, Any]]:
    from qhil.agents.selection import load_policy, score_policy
    from qhil.drivers import create_backend
    from qhil.envs.dicke import ENVIRONMENTS
    from qhil.envs.robust import heldout_realisations
    work, out = opts.work, Path(opts.out_dir)
    regimes = list(opts.regimes)
    windows = parse_windows(opts.windows)
    runs = table1_runs(work, windows)
    backend = create_backend("statevector")          # one propagator cache for every policy
    batteries = {e: ENVIRONMENTS[e] for e in ENVS}
    batteries |= {f"test{i}": w for i, w in enumerate(heldout_realisations(opts.test_random, TEST_SEED))}
    rows: list[dict[str, Any]] = []
    per_run: list[dict[str, Any]] = []
    for regime in regimes:
        size, of = windows[regime] if regime in windows else (None, "observations")
        envs = {name: evaluation_env(omegas, regime, size, backend, of) for name, omegas in batteries.items()}
        probe = envs["env1"]
        scored = []
        for run in runs.get(("env1", regime), []):
            checkpoint = checkpoint_path(work, run)
            if not checkpoint.exists():
                continue
            erg = score_policy(load_policy(checkpoint, probe.obs_dim, probe.action_low, probe.action_high), envs)
            held = [v for k, v in erg.items() if k.startswith("test")]
            scored.append({"run": run, "regime": regime, **{e: erg[e] for e in ENVS},
                           "heldout_mean": float(np.mean(held)) if held else float("nan"),
                           "heldout_min": float(np.min(held)) if held else float("nan")})
        per_run += scored
        for env in ENVS + ["heldout_mean", "heldout_min"]:
            rows.append(table2_row(regime, env, [r[env] for r in scored], window=size or 1, window_of=of))
    write_csv(out / "transfer.csv", rows)
    write_csv(out / "transfer_seeds.csv", per_run)
    title = (f"final policies of the Table 1 Env1 runs ({work}), deterministic, no selection; "
             f"held out: {opts.test_random} draws U[0.5, 1.5]^4 (seed {TEST_SEED})")
    print("Transfer (Table 2 without selection): " + title)
    print_and_plot_table2(rows, regimes, "Trained on Env1 only: " + title, out / "transfer.png")
    return rows
