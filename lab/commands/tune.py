"""``qhil tune``: Ray Tune search over SAC options for one cell (env, regime), ASHA early stopping.

    qhil tune --env env1 --regime second_order --samples 8 --total-steps 3000 --work-dir runs/tune
    qhil tune … --compare-seeds 1,2 --out docs/results/tune     # then best vs defaults, equal steps

Searches the learning rate, updates per step, batch size and the entropy target's limit
(:data:`qhil.experiments.battery.tune.SEARCH_SPACE`); ASHA stops trials whose best explored
ergotropy lags at a rung. The same command resumes (the search's folder under
``<work-dir>/tune/<name>``, each trial's checkpoint); every trial is a run of
``<work-dir>/runs.sqlite``. ``--compare-seeds`` then trains the best options and the defaults
at the same steps and seeds through the runner and writes ``tune_<name>.csv`` / ``.md``.
Needs ``pip install 'qhil[cluster]'``; Ray starts on this machine unless ``--address`` is given.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .args import checked, int_in, ints, output_dir, seed


def _name(text: str) -> str:
    if not text or "/" in text or text.startswith(".") or len(text) > 100:
        raise ValueError("a folder name (no '/', not starting with '.', at most 100 characters)")
    return text


def _address(text: str) -> str:
    from qhil.experiments.ray_executor import check_address
    return check_address(text)


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("tune", help="Ray Tune search over SAC options for one cell (ASHA)")
    s.add_argument("--env", choices=["env1", "env2", "env3"], default="env1")
    s.add_argument("--regime", choices=["full_state", "energies", "first_order", "second_order"],
                   default="second_order")
    s.add_argument("--name", type=checked(_name, "name"), default="search", help="the search's name (folder)")
    s.add_argument("--work-dir", type=output_dir, default=Path("runs/tune"), help="run store, checkpoints, Tune state")
    s.add_argument("--samples", type=int_in(1, 10_000), default=8, help="trials (default 8)")
    s.add_argument("--total-steps", type=int_in(28, 10**7), default=3000, help="env steps per full trial")
    s.add_argument("--learning-starts", type=int_in(0, 10**7), default=1000,
                   help="random warm-up steps (every trial and the defaults; default 1000)")
    s.add_argument("--seed", type=seed, default=0, help="SAC seed of every trial")
    s.add_argument("--report-every", type=int_in(1, 10**6), default=20, help="episodes between ASHA reports")
    s.add_argument("--grace-rounds", type=int_in(1, 10**6), default=3, help="reports before ASHA may stop a trial")
    s.add_argument("--reduction-factor", type=int_in(2, 100), default=2, help="ASHA keeps 1/this at each rung")
    s.add_argument("--max-concurrent", type=int_in(1, 1024), default=2, help="trials at a time (1 CPU each)")
    s.add_argument("--search-seed", type=int_in(0, 2**32 - 1), default=0, help="seed of the search-space draws")
    s.add_argument("--address", type=checked(_address, "address", "custom"), default=None,
                   help="a Ray cluster (auto, ray://host:10001); default: start Ray here")
    s.add_argument("--compare-seeds", type=ints(0, 2**32 - 1, min_length=1), default=None,
                   help="then train the best options and the defaults on these seeds, e.g. 1,2")
    s.add_argument("--jobs", type=int_in(1, 256), default=2, help="runs at a time for --compare-seeds")
    s.add_argument("--out", type=output_dir, default=None, help="folder for the result table (CSV, Markdown)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qhil.experiments.battery import tune
    setup = tune.TuneSetup(name=args.name, env=args.env, regime=args.regime, total_steps=args.total_steps,
                           learning_starts=args.learning_starts, seed=args.seed, num_samples=args.samples,
                           report_every=args.report_every, grace_rounds=args.grace_rounds,
                           reduction_factor=args.reduction_factor, max_concurrent=args.max_concurrent,
                           search_seed=args.search_seed)
    rows = tune.tune_sac(setup, args.work_dir, address=args.address, progress=not args.no_progress)
    for r in rows:
        print(tune.format_trial(r), file=sys.stderr)
    comparison = None
    if args.compare_seeds:
        comparison = tune.compare(setup, rows, tuple(args.compare_seeds), args.work_dir, jobs=args.jobs,
                                  progress=not args.no_progress)
        print(comparison["text"], file=sys.stderr)
        if comparison["failed"]:
            print(f"qhil tune: {comparison['failed']}", file=sys.stderr)
            return 1
    if args.out is not None:
        tune.write_report(setup, rows, comparison, args.out)
    return 0
