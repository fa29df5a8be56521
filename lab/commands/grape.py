"""``qhil grape``: the GRAPE ceiling for charging a Dicke battery (multi-start L-BFGS-B, exact
gradients), verified on the exact driver.

    qhil grape --env env1 --starts 12 --out docs/results/grape_env1.json
"""
from __future__ import annotations

import argparse
import json

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
    from qhil.agents.grape import grape
    battery, provenance = model_from_args(args)
    if battery.kind != "dicke":
        from qhil.drivers import ValidationError
        raise ValidationError("model", f"GRAPE here optimises the Dicke battery's charging, not {battery.kind!r}",
                              "a dicke model")
    label = model_label(battery, provenance)
    res = grape(battery, n_steps=args.steps, dt=args.tau / args.steps, n_starts=args.starts,
                seed=args.seed, maxiter=args.maxiter, verbose=not args.quiet)
    from qhil.envs import check_cutoff
    cutoff = check_cutoff(battery, res.protocol.reshape(-1, 1), args.tau / args.steps)
    out = {"env": label, "model": battery.to_dict(), "omegas": list(battery.omegas), "n_max": battery.n_max,
           "tau": args.tau,
           "n_steps": args.steps, "ergotropy": res.ergotropy, "verified_statevector": res.verified,
           "protocol": res.protocol.tolist(), "starts": res.starts, "evaluations": res.evaluations,
           "wall_s": res.wall_s, "cutoff_check": cutoff}
    print(f"{label}: GRAPE ergotropy {res.ergotropy:.6f} (exact driver: {res.verified:.6f}), "
          f"best of {args.starts} starts {sorted(round(s, 4) for s in res.starts)}, {res.wall_s:.0f} s; "
          f"doubling the photon cutoff moves it by {cutoff['ergotropy_change']:.1e}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    return 0
