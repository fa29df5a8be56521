"""``qhil grape``: the GRAPE ceiling for charging a Dicke battery (multi-start L-BFGS-B, exact
gradients), verified on the exact driver (the work: :mod:`qhil.experiments.battery.grape`).

    qhil grape --env env1 --starts 12 --out docs/results/grape_env1.json
"""
from __future__ import annotations

import argparse

from .args import float_in, int_in, output_file
from .model_options import add_model_options, model_from_args, model_label


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("grape", help="open-loop GRAPE optimum of the charging protocol (the RL ceiling)")
    add_model_options(s)
    s.add_argument("--tau", type=float_in(0.0, 1e4, low_open=True), default=5.6, help="charging time τ (1/ω_0)")
    s.add_argument("--steps", type=int_in(1, 10_000), default=28, help="K piecewise-constant steps")
    s.add_argument("--starts", type=int_in(1, 10_000), default=8, help="multi-start count")
    s.add_argument("--maxiter", type=int_in(1, 1_000_000), default=500, help="L-BFGS iterations per start")
    s.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0)
    s.add_argument("--out", type=output_file, default=None, help="write the result as JSON here")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qhil.experiments.battery.grape import grape_ceiling, summary_line, write_grape
    battery, provenance = model_from_args(args)
    doc = grape_ceiling(battery, model_label(battery, provenance), tau=args.tau, n_steps=args.steps,
                        starts=args.starts, maxiter=args.maxiter, seed=args.seed, verbose=not args.quiet)
    print(summary_line(doc))
    if args.out is not None:
        write_grape(doc, args.out)
    return 0
