"""``qhil deploy``: put a trained policy, or a protocol, on a device and measure what it did.

    qhil deploy --run runs/x --endpoint zmq://127.0.0.1:5555 --shots 1000      # the trained policy
    qhil deploy --run runs/x --protocol best --endpoint zmq://…                  # its best explored protocol
    qhil deploy --protocol docs/results/grape_env1.json --endpoint zmq://…       # a GRAPE result
    qhil deploy --run runs/x --endpoint statevector --shots 1000                  # rehearse on a simulator

The work (what a run brings, the device checks, closed and open loop, tomography, the
JSON summary and the figure) is :mod:`qhil.experiments.battery.deployment`. The device must
match the run: a different model, channels, bounds or Δt is refused, naming the difference,
unless ``--allow-mismatch model,channels,bounds,dt`` says otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


from qhil.experiments.battery.deployment import (MISMATCH_KINDS, DeploySpec, deploy, json_default,
                                                 plot_deployment, summary_lines)

from .args import backend_spec, choice_list, float_in, int_in, json_object, output_file, regime


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="run a trained policy or a protocol on a device (or rehearse on a simulator)")
    p.add_argument("--endpoint", type=backend_spec, required=True,
                   help="zmq://host:port, or statevector | aer to rehearse")
    p.add_argument("--run", type=Path, default=None, help="a `qhil train` run folder (--run-dir): its policy")
    p.add_argument("--run-name", default=None, help="which run of that folder (default: the only one)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--protocol", help="open loop: a JSON file (controls list, {controls, dt} or a "
                                         "`qhil grape` result), or `best` (the --run's best explored protocol)")
    what.add_argument("--policy", help="closed loop: module:function mapping an observation to controls")
    p.add_argument("--steps", type=int_in(1, 100_000), help="--policy: number of steps")
    p.add_argument("--dt", type=float_in(0.0, 1e3, low_open=True),
                   help="step length (1/ω_0); else from the run or the protocol file")
    p.add_argument("--regime", type=regime, default=None,
                   help="--policy/--protocol: energies | first_order | second_order | tomography | labels,… "
                        "(a run uses its own)")
    p.add_argument("--every", type=int_in(1, 100_000), default=1, help="--protocol: measure every m-th step")
    p.add_argument("--shots", type=int_in(0, 10_000_000), default=1000,
                   help="shots per setting at each step; 0 = exact expectation values (emulator --allow-exact)")
    p.add_argument("--tomography-shots", type=int_in(0, 10_000_000), default=None,
                   help="shots per setting of the final tomography (default: --shots; 0 = exact)")
    p.add_argument("--no-tomography", action="store_true", help="skip the final tomography")
    p.add_argument("--allow-mismatch", type=choice_list(MISMATCH_KINDS), default=[],
                   help="deploy although the device differs from the run in these: " + ",".join(MISMATCH_KINDS))
    p.add_argument("--clip", action="store_true", help="--policy: clip its outputs to the bounds")
    p.add_argument("--model-json", type=json_object, help="--policy/--protocol: the model (default: the device's)")
    p.add_argument("--log", type=output_file, default=Path("qhil-deploy.jsonl"),
                   help="JSON-lines log of executed experiments (appended)")
    p.add_argument("--out", type=output_file, help="write the summary JSON here (default: stdout)")
    p.add_argument("--figure", type=output_file, default=None,
                   help="PNG of protocol, E_j and ergotropy (default: next to --out, else qhil-deploy.png)")
    p.add_argument("--timeout", type=float_in(0.0, 86_400.0, low_open=True), default=10.0,
                   help="zmq: seconds to wait beyond the job's estimate")
    p.add_argument("--owner", default=None, help="zmq: owner name sent with every run (a server started with "
                                                 "--lock runs only the lock holder's experiments)")
    p.add_argument("--hold-lock", action="store_true",
                   help="zmq: take the server's lock for --owner for the whole deployment, release it after "
                        "(refused if someone else holds it)")
    p.add_argument("--server-key", help="CURVE: server public key file")
    p.add_argument("--client-cert", help="CURVE: this client's secret certificate file")
    p.add_argument("--seed", type=int_in(0, 2**63 - 1), default=None)
    p.set_defaults(func=cmd_deploy)


def spec_from_args(args: argparse.Namespace) -> DeploySpec:
    """The :class:`DeploySpec` of the parsed options."""
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(DeploySpec)}
    return DeploySpec(**kw | {"allow_mismatch": tuple(args.allow_mismatch)})


def cmd_deploy(args: argparse.Namespace) -> int:
    figure = args.figure or (args.out.with_suffix(".png") if args.out else Path("qhil-deploy.png"))
    output_file(str(figure))                    # checked before any work
    doc = deploy(spec_from_args(args))
    doc["figure"] = str(figure)
    plot_deployment(doc, figure)
    text = json.dumps(doc, default=json_default)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    lines = summary_lines(doc) + [f"  log {doc['log']}, figure {figure}" + (f", summary {args.out}" if args.out else "")]
    print("\n".join(lines), file=sys.stderr)
    return 0
