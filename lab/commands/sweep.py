"""``qhil sweep``: seed 004's sweeps on the XY-chain supply chain, resumable, with tables and figures.

    nice -n 10 qhil sweep lr --agents ensemble,ppo,dqn,ddpg,bdqn --seeds 2 --episodes 60 --jobs 1
    qhil sweep n --seeds 2 --episodes 60                   # N ∈ {2, …, 6}, Table IV
    qhil sweep weights --seeds 2 --episodes 60             # Table III's eight (α1, α2, α3)
    qhil sweep noise --agents ensemble,dqn --probs 0.01,0.02,0.05   # Fig. 7, Aer driver
    qhil sweep lr --report-only                            # tables/figures from finished runs

Argument parsing only (the sweeps: :mod:`qhil.experiments.supply_chain`). Runs (agent × setting
× seed) go through the one runner into ``<work-dir>/<sweep>/runs.sqlite`` (``--executor``,
``--jobs``); the same command again skips finished runs and resumes the others. The report
(``<out>/<sweep>.md``, ``.csv``, ``.png``) sets the finished runs beside the paper's numbers.
Options are checked when parsed (exit 2 naming the option, before any run). A run that fails
is reported and the others go on; the command then exits 1 (no table if all failed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qhil.drivers import ValidationError
from qhil.experiments.supply_chain import sweeps as S
from qhil.experiments.supply_chain.paper import LRS, NS
from qhil.experiments.supply_chain.specs import AGENTS

from . import args as A
from .executor_options import add_executor_options, executor_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sweep", help="seed 004 sweeps on the XY-chain supply chain (resumable)")
    s.add_argument("what", choices=S.SWEEPS)
    s.add_argument("--agents", type=A.choice_list(AGENTS, joined=True), default=None,
                   help="comma list of ensemble,ppo,dqn,ddpg,bdqn "
                   "(default: all for lr, ensemble for n and weights, ensemble,dqn for noise)")
    s.add_argument("--seeds", type=A.int_in(1, 100), default=2, help="seeds 0..S-1 per setting, S in 1..100")
    s.add_argument("--episodes", type=A.int_in(1, 1_000_000), default=60,
                   help="training episodes per run (50 steps each)")
    s.add_argument("--lr", type=A.float_in(0.0, 1.0, low_open=True), default=5e-4,
                   help="learning rate for the n, weights and noise sweeps, in (0, 1]")
    s.add_argument("--lrs", type=A.floats(0.0, 1.0, low_open=True), default=list(LRS),
                   help="learning rates of the lr sweep, each in (0, 1]")
    s.add_argument("--ns", type=A.ints(2, 8), default=list(NS), help="chain lengths of the n sweep, each in 2..8")
    s.add_argument("--channels", type=A.choice_list(S.CHANNELS, joined=True), default=",".join(S.CHANNELS))
    s.add_argument("--probs", type=A.floats(0.0, 1.0), default=list(S.PROBS),
                   help="noise probabilities per step and qubit, each in [0, 1]")
    s.add_argument("--references", action="store_true",
                   help="also measure random, MPC and GRAPE returns (lr sweep: flat lines)")
    s.add_argument("--work-dir", type=A.output_dir, default=Path("runs/seed004"))
    s.add_argument("--out", type=A.output_dir, default=Path("docs/results/seed004"))
    s.add_argument("--report-only", action="store_true", help="only aggregate the finished runs")
    add_executor_options(s, jobs=1)
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    specs = S.sweep_specs(args.what, args.agents.split(",") if args.agents else None, args.seeds, args.episodes,
                          args.lr, args.lrs, args.ns, args.channels.split(","), args.probs)
    executor = executor_from_args(args)
    try:
        work = A.output_dir(str(args.work_dir / args.what))
    except argparse.ArgumentTypeError as exc:
        raise ValidationError("--work-dir", str(exc), "a writable folder") from None
    failed = [] if args.report_only else [o.name for o in S.run_sweep(specs, work, executor, args.references)
                                          if o.status == "failed"]
    if failed and len(failed) == len(specs) and not S.collect(specs, work):
        print(f"qhil: error: all {len(failed)} run(s) failed (e.g. {failed[0]}); no table written", file=sys.stderr)
        return 1
    print(S.write_report(args.what, specs, work, args.out, args.episodes))
    if failed:
        print(f"qhil: error: {len(failed)} of {len(specs)} run(s) failed (e.g. {failed[0]}); see {work / 'logs'}; "
              "the table shows the finished runs only", file=sys.stderr)
        return 1
    return 0
