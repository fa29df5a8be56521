"""``qhil simulate``: run one protocol on a backend and print per-step figures.

    qhil simulate --model dicke --omegas 0.8745,1.4507,1.2320,1.0987 --dt 0.2 \\
                  --controls 0.3,0.3,... --backend statevector --regime second_order --json

Its options and JSON keys (model, backend, dt, n_steps, controls, steps, times, energies,
energy, ergotropy | fidelity, observables{regime, labels, values, stderr}, cost, metadata)
are a stable interface (the work: :mod:`qhil.experiments.simulate`).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .args import backend_spec, float_in, int_in, regime
from .model_options import add_model_options, model_from_args


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


#: Most control steps ``--controls`` may expand to.
MAX_STEPS = 100_000


def _controls(text: str) -> list:
    """'0.3,0.3,…' (one channel, a value per step), 'v*K' (K repeats), or
    '5,0,0;0,5,0' (several channels: steps separated by ';', channels by ','). Finite
    numbers, at least one step, at most :data:`MAX_STEPS`."""
    text = text.replace(" ", "")
    try:
        if ";" not in text:
            out: list = []
            for part in text.split(","):
                if "*" in part:
                    v, k = part.split("*")
                    if not 0 < int(k) <= MAX_STEPS - len(out):
                        raise ValueError
                    out.extend([float(v)] * int(k))
                elif part:
                    out.append(float(part))
        else:
            out = [_floats(row) for row in text.split(";") if row]
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot parse controls {text[:80]!r}: give finite numbers, "
                                         f"'v*K' repeats (1 ≤ K), at most {MAX_STEPS} steps") from None
    flat = np.asarray([x for row in out for x in (row if isinstance(row, list) else [row])], dtype=float)
    if not out or len(out) > MAX_STEPS or not np.all(np.isfinite(flat)):
        raise argparse.ArgumentTypeError(f"controls {text[:80]!r}: need 1 to {MAX_STEPS} steps of finite numbers")
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("simulate", help="run one protocol on a backend and print the result")
    add_model_options(s, kinds=("dicke", "xy_chain"))
    s.add_argument("--dt", type=float_in(0.0, 1e3, low_open=True), required=True,
                   help="step length Δt in (0, 1000] (units of 1/ω_0)")
    s.add_argument("--controls", type=_controls, required=True,
                   help="'0.3,0.3,…' one value per step; '0.3*28' repeats; rows ';' for several channels (a leading minus sign is fine)")
    s.add_argument("--backend", type=backend_spec, default="statevector", help="statevector | aer | zmq://host:port")
    s.add_argument("--regime", type=regime, default="energies",
                   help="full_state | energies | first_order | second_order | tomography | comma-separated Pauli labels")
    s.add_argument("--every", type=int_in(1, 100_000), default=1, help="measure every m-th step")
    s.add_argument("--shots", type=int_in(1, 10_000_000), default=None, help="shots per setting (default: exact)")
    s.add_argument("--seed", type=int_in(0, 2**63 - 1), default=None)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_simulate)


def _model(args: argparse.Namespace):
    from qhil.envs import ENV1, DickeBattery, XYChain
    if args.model == "dicke":
        return DickeBattery(omegas=tuple(args.omegas or ENV1), omega_c=args.omega_c, n_max=args.n_max,
                            coupling_bound=args.coupling_bound)
    return XYChain(n_spins=args.n_spins, coupling=args.coupling, field_bound=args.field_bound)


def cmd_simulate(args: argparse.Namespace) -> int:
    from qhil.experiments.simulate import SimulateSpec, json_default, simulate
    model, provenance = model_from_args(args)
    doc = simulate(SimulateSpec(model, args.controls, args.dt, args.backend, args.regime, args.every, args.shots,
                                args.seed, provenance))
    if args.json:
        try:
            sys.stdout.write(json.dumps(doc, default=json_default) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:     # e.g. piped into `head`
            sys.stderr.close()
        return 0
    keys = [k for k in ("energy", "ergotropy", "fidelity") if doc.get(k) is not None]
    print(f"{doc['model']['kind']} on {doc['backend']}: {doc['n_steps']} steps of dt={doc['dt']:g}")
    print("  k      t  " + "  ".join(f"{k:>10s}" for k in keys))
    for i, (k, t) in enumerate(zip(doc["steps"], doc["times"])):
        print(f"{int(k):3d} {t:6.2f}  " + "  ".join(f"{float(doc[key][i]):10.6f}" for key in keys))
    if "ergotropy_tomography" in doc:
        from qhil.envs.state_estimate import ErgotropyEstimate
        est = doc["ergotropy_tomography"]
        print(f"ergotropy from tomography at k = {int(doc['steps'][-1])}: "
              f"{ErgotropyEstimate(**{**est, 'interval': tuple(est['interval'])})}")
    print(f"cost: {doc['cost']}")
    return 0


