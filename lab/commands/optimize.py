"""``qhil optimize``: closed-loop optimisation of a charging protocol on measured figures of merit
(CMA-ES, Nelder-Mead, Powell, SPSA) against any backend; every evaluation recorded, resumable
by running the same command again (the work: :mod:`qhil.experiments.battery.optimize`).

    qhil optimize --start docs/results/grape_env1.json --backend zmq://lab:5555 --fom energy \\
        --shots 200 --max-shots 200000 --method cmaes --run-dir runs/opt
"""
from __future__ import annotations

import argparse
import json

from .args import add_backend_options, backend_from_args, checked, float_in, int_in, output_dir, output_file, seed, shots
from .model_options import add_model_options, model_from_args


def _start_text(text: str) -> str:
    from pathlib import Path
    if text.startswith("constant:"):
        float_in(-100.0, 100.0)(text.split(":", 1)[1])
        return text
    if not Path(text).exists():
        raise ValueError("allowed: constant:VALUE, a protocol file (GRAPE result, list) or a `qhil train` run folder")
    return text


def _run_name(text: str) -> str:
    if not text.strip() or len(text) > 200:
        raise ValueError("allowed: a non-empty name of at most 200 characters")
    return text


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("optimize", help="closed-loop optimisation on measured figures of merit (resumable)")
    add_model_options(s)
    add_backend_options(s)
    s.add_argument("--tau", type=float_in(0.0, 1e4, low_open=True), default=5.6, help="charging time τ (1/ω_0)")
    s.add_argument("--steps", type=int_in(1, 10_000), default=28, help="K piecewise-constant steps")
    s.add_argument("--start", type=checked(_start_text, "start"), default="constant:0.3",
                   help="constant:VALUE, a protocol file (GRAPE result) or a `qhil train` run folder (its best)")
    s.add_argument("--method", choices=["cmaes", "nelder-mead", "powell", "spsa"], default="cmaes")
    s.add_argument("--basis", choices=["piecewise", "dcrab"], default="piecewise")
    s.add_argument("--components", type=int_in(1, 10_000), default=None, help="dCRAB Fourier components (≤ K)")
    s.add_argument("--fom", choices=["energy", "ergotropy"], default="energy",
                   help="final energy from the E_j, or tomography ergotropy")
    s.add_argument("--shots", type=shots(), default=1000, help="shots per setting, or 'exact' (simulators)")
    s.add_argument("--max-evals", type=int_in(1, 10**12), default=None, help="budget: measurements in all")
    s.add_argument("--max-shots", type=int_in(1, 10**12), default=None, help="budget: shots in all")
    s.add_argument("--reevaluate", type=int_in(0, 10_000), default=None,
                   help="re-measurements of each new incumbent and at the end (default 3 with shots, 0 exact)")
    s.add_argument("--drift-every", type=int_in(1, 10**12), default=None,
                   help="re-measure the start as a drift reference every m candidates")
    s.add_argument("--sigma0", type=float_in(0.0, 100.0, low_open=True), default=None,
                   help="initial step (default 0.03; SPSA 0.002)")
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--run-dir", type=output_dir, default="qhil-optimize", help="folder of optimize.sqlite")
    s.add_argument("--run", type=checked(_run_name, "run"), default=None,
                   help="run name in the store (default: method-basis-fom-seed)")
    s.add_argument("--json", type=output_file, default=None, help="write the summary as JSON here")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qhil.drivers import ValidationError
    from qhil.experiments.battery.optimize import OptimizeSpec, run_optimization, start_protocol, summary_line
    battery, _ = model_from_args(args)
    if args.max_evals is None and args.max_shots is None:
        raise ValidationError("max-evals", "no budget given", "--max-evals N and/or --max-shots N")
    if args.components is not None and args.basis != "dcrab":
        raise ValidationError("components", "applies to --basis dcrab only", "--basis dcrab --components n")
    if args.components is not None and args.components > args.steps:
        raise ValidationError("components", f"{args.components}", f"an integer in [1, {args.steps}] (--steps)")
    if args.max_shots is not None and args.shots is None:
        raise ValidationError("max-shots", "exact figures spend no shots", "--max-evals with --shots exact")
    try:
        start = start_protocol(args.start, battery, args.steps, args.tau)
    except ValidationError as exc:
        raise ValidationError("start", str(exc).split(": ", 1)[-1]) from None
    name = args.run or f"{args.method}-{args.basis}-{args.fom}-seed{args.seed}"
    try:
        spec = OptimizeSpec(start=tuple(start), model=battery.to_dict(), tau=args.tau, n_steps=args.steps,
                            method=args.method, basis=args.basis, components=args.components, fom=args.fom,
                            shots=args.shots, max_evals=args.max_evals, max_shots=args.max_shots,
                            reevaluate=args.reevaluate, drift_every=args.drift_every, sigma0=args.sigma0,
                            seed=args.seed, run=name)
    except ValidationError as exc:       # name the option as the command line spells it
        raise ValidationError(exc.parameter.replace("_", "-"), str(exc).split(": ", 1)[-1]) from None
    backend = backend_from_args(args, battery, args.seed)
    summary = run_optimization(spec, backend, args.run_dir, progress=not args.no_progress)
    print(summary_line(summary))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0
