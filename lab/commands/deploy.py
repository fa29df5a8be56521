"""``qhil deploy``: run a protocol or a policy against a lab endpoint, logging every experiment.

    qhil deploy --endpoint zmq://127.0.0.1:5555 --protocol protocol.json --dt 0.2 --shots 1000
    qhil deploy --endpoint zmq://127.0.0.1:5555 --policy mypkg.policies:act --steps 28 --dt 0.2 \\
                --regime energies --shots 1000 --log deploy.jsonl

Open loop: ``protocol.json`` holds the controls, a list (one value per step for one
channel, or one list per step), or ``{"controls": [...], "dt": ...}``; it runs as one
experiment measured by the schedule (``--regime``, ``--every``, ``--shots``).

Closed loop: at each step k the state after controls[:k] is measured (a prefix replay on
the device), the observation vector (the measured values, in label order) goes to the
policy ``module:function`` (or ``path/to/file.py:function``), which returns the controls of
step k (a number, or one per channel); it may also take keyword arguments ``step`` and
``n_steps``. After the last step the final state is measured.

Every executed experiment is appended to ``--log`` (JSON lines) with its request id.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="run a protocol or a policy on a lab endpoint")
    p.add_argument("--endpoint", required=True, help="zmq://host:port")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--protocol", help="open loop: JSON file of controls")
    what.add_argument("--policy", help="closed loop: module:function mapping an observation to controls")
    p.add_argument("--steps", type=int, help="closed loop: number of steps")
    p.add_argument("--dt", type=float, help="step length (1/ω_0); may come from the protocol file")
    p.add_argument("--regime", default="energies", help="energies | first_order | second_order | labels,…")
    p.add_argument("--every", type=int, default=1, help="open loop: measure every m-th step")
    p.add_argument("--shots", type=int, default=1000, help="shots per setting; 0 = exact (emulator only)")
    p.add_argument("--clip", action="store_true", help="closed loop: clip policy outputs to the bounds")
    p.add_argument("--model-json", help="model (default: the one the device reports)")
    p.add_argument("--log", default="qhil-deploy.jsonl", help="JSON-lines log of executed experiments")
    p.add_argument("--out", help="write the summary JSON here (default: stdout)")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--server-key", help="CURVE: server public key file")
    p.add_argument("--client-cert", help="CURVE: this client's secret certificate file")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_deploy)


def load_policy(spec: str) -> Callable[..., Any]:
    """``module:function`` or ``path/file.py:function`` → the callable."""
    from qhil.drivers import ValidationError
    mod, _, attr = spec.rpartition(":")
    if not mod or not attr:
        raise ValidationError("policy", f"cannot parse {spec!r}", "module:function or file.py:function")
    try:
        if mod.endswith(".py"):
            sp = importlib.util.spec_from_file_location(Path(mod).stem, mod)
            module = importlib.util.module_from_spec(sp)      # type: ignore[arg-type]
            sp.loader.exec_module(module)                      # type: ignore[union-attr]
        else:
            module = importlib.import_module(mod)
        fn = getattr(module, attr)
    except (ImportError, AttributeError, OSError) as exc:
        raise ValidationError("policy", f"cannot load {spec!r} ({exc})") from None
    if not callable(fn):
        raise ValidationError("policy", f"{spec!r} is not callable")
    return fn


def _schedule(args: argparse.Namespace, final_only: bool):
    from qhil.drivers import MeasurementSchedule
    from qhil.drivers.schedule import REGIMES
    regime = args.regime if args.regime in REGIMES else tuple(x for x in args.regime.split(",") if x)
    return MeasurementSchedule(regime, every=args.every, final_only=final_only,
                               shots=args.shots if args.shots else None)


class _Logger:
    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0

    def __call__(self, experiment: Any, result: Any) -> None:
        rec = {"time": time.time(), "request_id": result.metadata["bridge"]["request_id"],
               "experiment": experiment.to_dict(), "steps": result.steps.tolist(),
               "labels": list(result.labels), "values": result.values.tolist(),
               "stderr": result.stderr.tolist(), "settings": list(result.settings),
               "counts": None if result.counts is None else result.counts.tolist(),
               "bridge": result.metadata["bridge"], "cost": result.metadata.get("cost")}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        self.count += 1


def deploy(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``qhil deploy``; return the summary document."""
    import qhil.envs  # noqa: F401  (registers the built-in models)
    from qhil.drivers import Experiment, ValidationError, create_backend, model_from_dict
    opts: dict[str, Any] = {"timeout": args.timeout}
    if args.server_key:
        opts.update(server_key=args.server_key, client_cert=args.client_cert)
    log = _Logger(args.log)
    with create_backend(args.endpoint, seed=args.seed, **opts) as backend:
        info = backend.describe()
        if args.model_json:
            model = model_from_dict(json.loads(args.model_json))
        elif info.get("model"):
            model = model_from_dict(info["model"])
        else:
            raise ValidationError("model-json", "the device reports no model; give one")
        dt = args.dt
        if args.protocol:
            doc = json.loads(Path(args.protocol).read_text())
            controls = doc["controls"] if isinstance(doc, dict) else doc
            dt = dt if dt is not None else (doc.get("dt") if isinstance(doc, dict) else None)
            if dt is None:
                raise ValidationError("dt", "not given on the command line or in the protocol file")
            exp = Experiment(model, controls, dt, _schedule(args, final_only=False))
            [res] = backend.run(exp)
            log(exp, res)
            applied, final = exp.controls, res
        else:
            if not args.steps or args.steps < 1:
                raise ValidationError("steps", "closed loop needs --steps ≥ 1")
            if dt is None:
                raise ValidationError("dt", "closed loop needs --dt")
            policy = load_policy(args.policy)
            kw = set(inspect.signature(policy).parameters)
            sched = _schedule(args, final_only=True)
            lo, hi, _ = model.control_bounds
            applied = np.zeros((0, len(model.controls)))
            for k in range(args.steps + 1):
                exp = Experiment(model, applied, dt, sched)
                [res] = backend.run(exp)
                log(exp, res)
                if k == args.steps:
                    break
                extra = {n: v for n, v in (("step", k), ("n_steps", args.steps)) if n in kw}
                u = np.asarray(policy(res.values[-1].copy(), **extra), dtype=float).reshape(-1)
                if u.size != len(model.controls):
                    raise ValidationError("policy", f"returned {u.size} value(s) at step {k}",
                                          f"{len(model.controls)} (channels {[c.name for c in model.controls]})")
                if args.clip:
                    u = np.clip(u, lo, hi)
                applied = np.vstack([applied, u])
            final = res
    summary: dict[str, Any] = {"endpoint": args.endpoint, "model": model.to_dict(), "dt": dt,
                               "controls": np.asarray(applied).tolist(), "experiments": log.count,
                               "log": args.log, "labels": list(final.labels),
                               "steps": final.steps.tolist(), "values": final.values.tolist(),
                               "stderr": final.stderr.tolist()}
    figs = getattr(model, "figures_of_merit", None)
    if figs is not None:
        f = figs(final)
        if f.get("energy") is not None:
            summary["energy"] = np.asarray(f["energy"]).tolist()
    return summary


def cmd_deploy(args: argparse.Namespace) -> int:
    doc = deploy(args)
    text = json.dumps(doc)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0
