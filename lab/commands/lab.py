"""``qhil lab``: run the lab server, make CURVE keys.

    qhil lab serve --device emulator --bind tcp://127.0.0.1:5555 --n-max 12 --run-log runs.sqlite
    qhil lab keygen keys/ --name server           # keys/server.key (public), keys/server.key_secret
    qhil lab serve ... --curve-secret keys/server.key_secret --allowed-keys keys/clients/

The emulated device runs the model given by the same options as ``qhil simulate`` (or
``--model-json``); clients must send experiments on that model.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="lab server for pulse hardware (and its emulator)")
    lsub = p.add_subparsers(dest="lab_command", required=True)
    s = lsub.add_parser("serve", help="serve a pulse device over ZeroMQ")
    s.add_argument("--device", choices=["emulator", "null"], default="emulator")
    s.add_argument("--bind", default="tcp://127.0.0.1:5555",
                   help="ZeroMQ endpoint (localhost by default; ':*' picks a free port)")
    s.add_argument("--run-log", default="qhil-runs.sqlite", help="SQLite run log path")
    s.add_argument("--sync", choices=["normal", "full"], default="normal",
                   help="run-log durability (SQLite synchronous): normal = a committed run survives a "
                        "server crash, a power loss may drop the last ~0.25 s of runs; full = fsync "
                        "every run before its reply (about a disk flush per run); see docs/protocol.md")
    s.add_argument("--model", choices=["dicke", "xy_chain"], default="dicke")
    s.add_argument("--model-json", help='model as JSON {"kind": ..., "params": {...}} (overrides --model)')
    s.add_argument("--omegas", type=lambda t: [float(x) for x in t.split(",") if x], help="Dicke ω_j")
    s.add_argument("--omega-c", type=float, default=1.0)
    s.add_argument("--n-max", type=int, default=None, help="Dicke photon cutoff")
    s.add_argument("--coupling-bound", type=float, default=0.3)
    s.add_argument("--n-spins", type=int, default=3)
    s.add_argument("--coupling", type=float, default=1.0)
    s.add_argument("--field-bound", type=float, default=5.0)
    g = s.add_argument_group("emulator imperfections (all off by default)")
    g.add_argument("--rise-time", type=float, default=0.0, help="low-pass time constant τ (1/ω_0)")
    g.add_argument("--amplitude-error", type=float, default=0.0, help="relative amplitude error ε")
    g.add_argument("--frequency-drift", type=float, default=0.0, help="σ of the per-episode TLS frequency walk")
    g.add_argument("--readout-error", type=float, default=0.0, help="P(0→1) = P(1→0)")
    g.add_argument("--allow-exact", action="store_true", help="accept shots=None (exact expectations; testing)")
    g.add_argument("--seed", type=int, default=None, help="seed of the drift")
    g.add_argument("--inject-faults", type=int, default=0, help="fail the next N executions (testing)")
    c = s.add_argument_group("security and limits")
    c.add_argument("--curve-secret", help="server certificate with secret key (turns CURVE on)")
    c.add_argument("--allowed-keys", help="folder of allowed client public certificates")
    c.add_argument("--max-message-bytes", type=int, default=64 << 20)
    c.add_argument("--crash-after", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_serve)
    k = lsub.add_parser("keygen", help="write a CURVE key pair (zmq.auth certificate files)")
    k.add_argument("folder")
    k.add_argument("--name", default="client")
    k.set_defaults(func=cmd_keygen)


def build_model(args: argparse.Namespace) -> Any:
    import qhil.envs  # noqa: F401  (registers the built-in models)
    from qhil.drivers import model_from_dict
    if getattr(args, "model_json", None):
        return model_from_dict(json.loads(args.model_json))
    from .simulate import _model
    return _model(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from qhil.lab.device import create_device
    from qhil.lab.server import LabServer
    model = build_model(args)
    opts: dict[str, Any] = {}
    if args.device == "emulator":
        opts = dict(rise_time=args.rise_time, amplitude_error=args.amplitude_error,
                    frequency_drift=args.frequency_drift, readout_error=args.readout_error,
                    allow_exact=args.allow_exact, seed=args.seed, fault_next=args.inject_faults)
    device = create_device(args.device, model, **opts)
    host = args.bind.split("://", 1)[-1].rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]") and not args.curve_secret:
        print(f"qhil lab: warning: binding {args.bind} without CURVE: anyone on that network "
              "can drive the device", file=sys.stderr)
    server = LabServer(device, args.bind, args.run_log, curve_secret_file=args.curve_secret,
                       allowed_keys=args.allowed_keys, max_message_bytes=args.max_message_bytes,
                       synchronous=args.sync, crash_after=args.crash_after,
                       log=lambda s: print(s, file=sys.stderr, flush=True))
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    print(f"READY {server.endpoint}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    import os

    import zmq.auth
    os.makedirs(args.folder, exist_ok=True)
    public, secret = zmq.auth.create_certificates(args.folder, args.name)
    os.chmod(secret, 0o600)
    print(f"public key:  {public}  (give this to the other side)")
    print(f"secret key:  {secret}  (keep private)")
    return 0
