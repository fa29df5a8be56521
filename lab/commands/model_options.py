"""The device model (digital twin) options shared by ``simulate``, ``train`` and ``grape``.

Any Dicke battery, not only the paper's three::

    --env env1|env2|env3                     a preset (the default: env1)
    --omegas 0.91,1.02,1.13 --omega-c 1.0 --n-max 24 --coupling-bound 0.25
    --model-json model.json                  {"kind": "dicke", "params": {...}} (inline or a file)
    --from-endpoint zmq://lab:5555           the model and calibration the lab server reports

``--omega-c``, ``--n-max`` and ``--coupling-bound`` refine any of them. From an endpoint,
calibration keys ``omegas`` (measured ω_j, replacing the model's) and ``frequency_offsets``
(δω_j, added to them) are applied; the whole calibration snapshot is recorded with the run.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .args import checked, float_in, floats, input_file, int_in, json_object

#: cutoff (n_max) limits accepted on the command line
MAX_N_MAX = 400


def _endpoint(text: str) -> str:
    """A lab endpoint, zmq://host:port (checked now; contacted when the model is built)."""
    from qhil.drivers.bridge import parse_endpoint
    if not text.startswith("zmq://"):
        raise ValueError("allowed: zmq://host:port (a lab server)")
    parse_endpoint(text)
    return text


def add_model_options(p: argparse.ArgumentParser, *, kinds: tuple[str, ...] = ("dicke",),
                      server_options: bool = True) -> None:
    """Add the model options to ``p`` (``kinds``: models ``--model`` may choose)."""
    g = p.add_argument_group("device model (digital twin)")
    if len(kinds) > 1:
        g.add_argument("--model", choices=list(kinds), default=kinds[0], help="model kind")
    g.add_argument("--env", choices=["env1", "env2", "env3"], default=None,
                   help="Dicke preset: the paper's disorder realisations (default env1)")
    g.add_argument("--omegas", type=floats(0.0, 100.0, low_open=True),
                   help="Dicke: TLS frequencies ω_j, comma-separated, each in (0, 100] (units ω_0)")
    g.add_argument("--omega-c", type=float_in(0.0, 100.0, low_open=True), default=None,
                   help="Dicke: cavity frequency ω_c in (0, 100] (default 1)")
    g.add_argument("--n-max", type=int_in(1, MAX_N_MAX), default=None,
                   help="Dicke: photon cutoff (default: converged for the coupling bound)")
    g.add_argument("--coupling-bound", type=float_in(0.0, 100.0, low_open=True), default=None,
                   help="Dicke: |λ| bound in (0, 100] (default 0.3)")
    if "xy_chain" in kinds:
        g.add_argument("--n-spins", type=int_in(2, 12), default=3, help="XY chain: N")
        g.add_argument("--coupling", type=float_in(-100.0, 100.0), default=1.0, help="XY chain: J")
        g.add_argument("--field-bound", type=float_in(0.0, 100.0, low_open=True), default=5.0,
                       help="XY chain: |B_n| bound")
    g.add_argument("--model-json", type=json_object, default=None,
                   help='model as JSON {"kind": ..., "params": {...}}, inline or a file path')
    g.add_argument("--from-endpoint", default=None, type=checked(_endpoint, "from-endpoint"),
                   help="zmq://host:port: the model and calibration a lab server reports (describe)")
    if server_options:
        g.add_argument("--endpoint-key", default=None, type=input_file,
                       help="CURVE: the server's public key (with --from-endpoint)")


def _kind(args: argparse.Namespace) -> str:
    return getattr(args, "model", "dicke")


def describe_endpoint(spec: str, server_key: str | None = None) -> dict[str, Any]:
    """The ``describe`` answer of the lab server at ``spec`` (zmq://host:port)."""
    from qhil.drivers import ValidationError, create_backend
    if not isinstance(spec, str) or not spec.startswith("zmq://"):
        raise ValidationError("from-endpoint", f"{spec!r}", "zmq://host:port")
    opts: dict[str, Any] = {"timeout": 10.0, "retries": 2}
    if server_key:
        opts["server_key"] = server_key
    with create_backend(spec, **opts) as backend:
        return backend.describe()


def twin_from_description(info: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(model, provenance) from a lab server's ``describe`` answer: its model, with the
    calibration's ``omegas`` / ``frequency_offsets`` applied to a Dicke battery."""
    import numpy as np

    import qhil.envs  # noqa: F401  (registers the built-in models)
    from qhil.drivers import ValidationError, model_from_dict
    if not info.get("model"):
        raise ValidationError("from-endpoint", f"the {info.get('name', '?')} device reports no model",
                              "a device that reports its model, or --model-json / --omegas")
    model = model_from_dict(info["model"])
    cal = info.get("calibration") or {}
    applied = []
    if model.kind == "dicke":
        omegas = np.asarray(cal.get("omegas", model.omegas), dtype=float)
        if "omegas" in cal:
            applied.append("omegas")
        offsets = cal.get("frequency_offsets")
        if offsets is not None and (not isinstance(offsets, list) or len(offsets) != len(omegas)):
            raise ValidationError("from-endpoint", f"the calibration's frequency_offsets {offsets!r} do not "
                                  f"match the model's {len(omegas)} qubits", "one offset per qubit")
        if offsets is not None and len(offsets) == len(omegas) and np.any(np.asarray(offsets) != 0):
            omegas = omegas + np.asarray(offsets, dtype=float)
            applied.append("frequency_offsets")
        if applied:
            model = dataclasses.replace(model, omegas=tuple(float(w) for w in omegas))
    return model, {"source": "endpoint", "device": info.get("name"), "calibration": cal,
                   "calibration_applied": applied}


def model_from_args(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(model, provenance) from the options of :func:`add_model_options`; validated."""
    import qhil.envs  # noqa: F401  (registers the built-in models)
    from qhil.drivers import ValidationError, model_from_dict
    from qhil.envs import ENVIRONMENTS, DickeBattery, XYChain
    if getattr(args, "endpoint_key", None) is not None and not args.from_endpoint:
        raise ValidationError("endpoint-key", "given without --from-endpoint", "--from-endpoint zmq://host:port too")
    sources = [name for name in ("--env", "--omegas", "--model-json", "--from-endpoint")
               if getattr(args, name[2:].replace("-", "_"), None)]
    if len(sources) > 1:
        raise ValidationError(sources[1].lstrip("-"), f"{' and '.join(sources)} both name a model",
                              "one of --env, --omegas, --model-json, --from-endpoint")
    refine = {k: getattr(args, k) for k in ("omega_c", "n_max", "coupling_bound") if getattr(args, k) is not None}
    if args.from_endpoint:
        model, prov = twin_from_description(describe_endpoint(args.from_endpoint, getattr(args, "endpoint_key", None)))
        prov["endpoint"] = args.from_endpoint
    elif args.model_json:
        try:
            model = model_from_dict(args.model_json)
        except ValidationError:
            raise
        except Exception as exc:
            raise ValidationError("model-json", f"{exc}", '{"kind": "dicke" | "xy_chain", "params": {...}}') from None
        prov = {"source": "model-json"}
    elif _kind(args) == "xy_chain":
        if args.env or args.omegas or refine:
            raise ValidationError("model", "Dicke options given for the xy_chain model",
                                  "--n-spins, --coupling, --field-bound")
        return XYChain(n_spins=args.n_spins, coupling=args.coupling, field_bound=args.field_bound), \
            {"source": "options"}
    elif args.omegas:
        model, prov = DickeBattery(omegas=tuple(args.omegas)), {"source": "options"}
    else:
        env = args.env or "env1"
        model, prov = DickeBattery(omegas=ENVIRONMENTS[env]), {"source": "preset", "env": env}
    if refine:
        if model.kind != "dicke":
            raise ValidationError(next(iter(refine)).replace("_", "-"), f"a Dicke option for a {model.kind} model",
                                  "Dicke models only")
        if "n_max" not in refine and "coupling_bound" in refine and prov["source"] in ("preset", "options"):
            refine["n_max"] = None            # re-derive the default cutoff for the new bound (a model file's
                                              # or a device's own n_max is kept)
        model = dataclasses.replace(model, **refine)
        prov["refined"] = sorted(k for k, v in refine.items() if v is not None)
    return model, prov


def model_label(model: Any, prov: dict[str, Any]) -> str:
    """A short name for run names: the preset (env1…) or ``custom``."""
    return prov.get("env", "custom") if prov.get("source") == "preset" and not prov.get("refined") else "custom"
