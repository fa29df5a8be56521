"""``qhil lab``: run the lab server, make CURVE keys.

    qhil lab serve --device emulator --bind tcp://127.0.0.1:5555 --n-max 12 --run-log runs.sqlite
    qhil lab keygen keys/ --name server           # keys/server.key (public), keys/server.key_secret
    qhil lab serve ... --curve-secret keys/server.key_secret --allowed-keys keys/clients/

The emulated device runs the model given by the same options as ``qhil simulate`` (or
``--model-json``); clients must send experiments on that model.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from .args import float_in, floats, input_file, int_in, json_object, output_dir, output_file

#: ``--max-message-bytes`` range (qhil.lab.server.MIN_MESSAGE_BYTES, MAX_MESSAGE_LIMIT)
MIN_MESSAGE_BYTES = 64 << 10
MAX_MESSAGE_LIMIT = 1 << 30
#: ``--n-spins`` at most qhil.envs.xy_chain.MAX_SPINS; ``--inject-faults`` at most the emulator's limit
MAX_SPINS = 12
MAX_INJECTED_FAULTS = 1_000_000
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def bind_endpoint(text: str) -> str:
    """``--bind``: ``tcp://HOST:PORT`` (HOST an IPv4 address, ``[IPv6]``, a host or interface
    name, or ``*``; PORT in 1..65535 or ``*`` for a free one) or ``ipc://PATH`` (its folder
    must exist). ``inproc://`` is refused: no other process could reach it."""
    allowed = "tcp://HOST:PORT (PORT 1..65535 or *) or ipc://PATH"
    if text.startswith("tcp://"):
        host, sep, port = text[6:].rpartition(":")
        if not sep or not host:
            raise argparse.ArgumentTypeError(f"{text!r} has no host:port ({allowed})")
        if port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise argparse.ArgumentTypeError(f"port {port!r} of {text!r} is not in 1..65535 or * ({allowed})")
        if host.startswith("[") and host.endswith("]"):
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                raise argparse.ArgumentTypeError(f"{host!r} is not an IPv6 address ({allowed})") from None
        elif host != "*" and not _HOSTNAME.match(host):
            raise argparse.ArgumentTypeError(f"host {host!r} of {text!r} is not an address or name ({allowed})")
        elif re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{host!r} is not an IPv4 address ({allowed})") from None
        return text
    if text.startswith("ipc://"):
        path = text[6:]
        if not path or path == "*":
            raise argparse.ArgumentTypeError(f"{text!r}: give a socket path ({allowed})")
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"the folder of {path!r} does not exist or is not writable")
        return text
    if text.startswith("inproc://"):
        raise argparse.ArgumentTypeError(f"{text!r}: inproc endpoints are reachable only inside this "
                                         f"process ({allowed})")
    raise argparse.ArgumentTypeError(f"{text!r} is not an endpoint ({allowed})")


def device_spec(text: str) -> str:
    """``--device``: ``emulator``, ``null`` or ``exec:PATH`` (an executable file, or a bare
    program name found on PATH); the string is passed on to ``create_device``."""
    if text in ("emulator", "null"):
        return text
    if text.startswith("exec:"):
        import shutil
        prog = text[5:]
        if not prog:
            raise argparse.ArgumentTypeError("exec: needs a program path (exec:PATH)")
        if shutil.which(prog) is None:
            raise argparse.ArgumentTypeError(f"{prog!r} is not an executable file (or a program on PATH)")
        return text
    raise argparse.ArgumentTypeError(f"unknown device {text!r} (allowed: emulator, null, exec:PATH)")


def run_log_path(text: str) -> str:
    """``--run-log``: a file path whose folder is writable (not empty, not ``:memory:``, not a
    folder): the server must keep a log it can write."""
    if text.strip() == ":memory:" or text.startswith("file:"):
        raise argparse.ArgumentTypeError(f"{text!r} would not be kept; give a file path")
    return str(output_file(text))


def existing_folder(text: str) -> str:
    if not text or not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing folder")
    return text


def key_name(text: str) -> str:
    """``keygen --name``: a plain file name (letters, digits, ``_.-``; no path, not hidden)."""
    if not _KEY_NAME.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a plain file name (1-64 of A-Z a-z 0-9 _ . -, "
                                         "not starting with '.' or '-')")
    return text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="lab server for pulse hardware (and its emulator)")
    lsub = p.add_subparsers(dest="lab_command", required=True)
    s = lsub.add_parser("serve", help="serve a pulse device over ZeroMQ")
    s.add_argument("--device", type=device_spec, default="emulator",
                   help="emulator, null, or exec:PATH (an external device program)")
    s.add_argument("--bind", type=bind_endpoint, default="tcp://127.0.0.1:5555",
                   help="ZeroMQ endpoint tcp://HOST:PORT (localhost by default; port * picks a free one) "
                        "or ipc://PATH")
    s.add_argument("--run-log", type=run_log_path, default="qhil-runs.sqlite",
                   help="SQLite run log path (its folder must be writable)")
    s.add_argument("--sync", choices=["normal", "full"], default="normal",
                   help="run-log durability (SQLite synchronous): normal = a committed run survives a "
                        "server crash, a power loss may drop the last ~0.25 s of runs; full = fsync "
                        "every run before its reply (about a disk flush per run); see docs/protocol.md")
    s.add_argument("--model", choices=["dicke", "xy_chain"], default="dicke")
    s.add_argument("--model-json", type=json_object,
                   help='model as JSON {"kind": ..., "params": {...}} (overrides --model)')
    s.add_argument("--omegas", type=floats(0, None, low_open=True), help="Dicke ω_j")
    s.add_argument("--omega-c", type=float_in(0, None, low_open=True), default=1.0)
    s.add_argument("--n-max", type=int_in(1, None), default=None, help="Dicke photon cutoff")
    s.add_argument("--coupling-bound", type=float_in(0, None, low_open=True), default=0.3)
    s.add_argument("--n-spins", type=int_in(1, MAX_SPINS), default=3)
    s.add_argument("--coupling", type=float_in(), default=1.0)
    s.add_argument("--field-bound", type=float_in(0, None, low_open=True), default=5.0)
    g = s.add_argument_group("emulator imperfections (all off by default)")
    g.add_argument("--rise-time", type=float_in(0), default=0.0, help="low-pass time constant τ (1/ω_0), ≥ 0")
    g.add_argument("--amplitude-error", type=float_in(-1, 1, low_open=True, high_open=True), default=0.0,
                   help="relative amplitude error ε, in (-1, 1)")
    g.add_argument("--frequency-drift", type=float_in(0), default=0.0,
                   help="σ of the per-episode TLS frequency walk, ≥ 0")
    g.add_argument("--readout-error", type=float_in(0, 0.5), default=0.0, help="P(0→1) = P(1→0), in [0, 0.5]")
    g.add_argument("--allow-exact", action="store_true", help="accept shots=None (exact expectations; testing)")
    g.add_argument("--seed", type=int_in(0, 2**63 - 1), default=None, help="seed of the drift")
    g.add_argument("--inject-faults", type=int_in(0, MAX_INJECTED_FAULTS), default=0,
                   help="fail the next N executions (testing)")
    g.add_argument("--solver", choices=["lanczos_diag", "scipy_expm"], default="lanczos_diag",
                   help="qiskit-dynamics method: lanczos_diag on sparse operators (default; fast, error "
                        "bounded a priori) or scipy_expm (the former dense path)")
    g.add_argument("--oversample", type=int_in(1, 64), default=8,
                   help="samples per control step with --rise-time (1..64; default 8)")
    x = s.add_argument_group("exec device (--device exec:PATH)")
    x.add_argument("--exec-timeout", type=float_in(0.0, 86_400.0, low_open=True), default=60.0,
                   help="seconds one run of the program may take before it is killed (default 60)")
    x.add_argument("--exec-arg", action="append", default=[], metavar="ARG",
                   help="an argument passed to the program (repeat for several)")
    x.add_argument("--exec-safe-command", action="store_true",
                   help='the program understands {"command": "safe"} (sent after every run and on faults)')
    x.add_argument("--exec-calibration-command", action="store_true",
                   help='the program answers {"command": "calibration"} (asked for each run\'s snapshot)')
    c = s.add_argument_group("security and limits")
    c.add_argument("--curve-secret", type=input_file,
                   help="server certificate with secret key (turns CURVE on; needs --allowed-keys)")
    c.add_argument("--allowed-keys", type=existing_folder,
                   help="folder of allowed client public certificates (*.key); re-read when it changes: "
                        "delete a file to revoke that client (see docs/protocol.md, Security)")
    c.add_argument("--max-message-bytes", type=int_in(MIN_MESSAGE_BYTES, MAX_MESSAGE_LIMIT), default=64 << 20,
                   help=f"largest request in bytes ({MIN_MESSAGE_BYTES}..{MAX_MESSAGE_LIMIT})")
    c.add_argument("--crash-after", type=int_in(1, None), default=None, help=argparse.SUPPRESS)
    lk = s.add_argument_group("experiment lock (one owner at a time)")
    lk.add_argument("--lock", action="store_true",
                    help="runs need the experiment lock: a client takes it (lock request, "
                         "ZmqBackend(owner=...).lock()) and runs from anyone else are refused")
    lk.add_argument("--lock-key-file", default=None,
                    help="where to write the emergency unlock key (mode 0600; default: RUN_LOG.lock-key); "
                         "`qhil lab unlock --force --key-file` frees the lock with it")
    s.set_defaults(func=cmd_serve)
    k = lsub.add_parser("keygen", help="write a CURVE key pair (zmq.auth certificate files)")
    k.add_argument("folder", type=output_dir, help="folder for the key files (created if needed)")
    k.add_argument("--name", type=key_name, default="client",
                   help="file name of the pair (NAME.key, NAME.key_secret), a plain name")
    k.add_argument("--force", action="store_true", help="overwrite an existing pair of that name")
    k.set_defaults(func=cmd_keygen)
    u = lsub.add_parser("unlock", help="release a lab server's experiment lock (its owner, or --force "
                                       "with the emergency key)")
    u.add_argument("--endpoint", required=True, help="zmq://host:port")
    u.add_argument("--owner", help="the lock's owner (a normal unlock)")
    u.add_argument("--force", action="store_true", help="emergency unlock, whoever holds it (needs --key-file)")
    u.add_argument("--key-file", help="the emergency key file `qhil lab serve` wrote (RUN_LOG.lock-key)")
    u.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server")
    u.add_argument("--server-key", help="the server's public CURVE certificate (CURVE servers)")
    u.add_argument("--client-cert", help="this client's secret CURVE certificate")
    u.set_defaults(func=cmd_unlock)
    lo = lsub.add_parser("lock", help="take a lab server's experiment lock for an owner (runs from anyone "
                                      "else are refused until `qhil lab unlock`)")
    lo.add_argument("--endpoint", required=True, help="zmq://host:port")
    lo.add_argument("--owner", required=True, help="the owner name (give the same --owner to qhil deploy)")
    lo.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server")
    lo.add_argument("--server-key", help="the server's public CURVE certificate (CURVE servers)")
    lo.add_argument("--client-cert", help="this client's secret CURVE certificate")
    lo.set_defaults(func=cmd_lock)


def build_model(args: argparse.Namespace) -> Any:
    import qhil.envs  # noqa: F401  (registers the built-in models)
    from qhil.drivers import model_from_dict
    if getattr(args, "model_json", None):
        doc = args.model_json
        return model_from_dict(json.loads(doc) if isinstance(doc, str) else doc)
    from .simulate import _model
    return _model(args)


#: LabServer / model parameter → the ``lab serve`` option that sets it
_OPTION = {"bind": "--bind", "max_message_bytes": "--max-message-bytes", "curve_secret_file": "--curve-secret",
           "allowed_keys": "--allowed-keys", "run_log": "--run-log", "fault_next": "--inject-faults",
           "rise_time": "--rise-time", "amplitude_error": "--amplitude-error", "frequency_drift": "--frequency-drift",
           "readout_error": "--readout-error", "seed": "--seed", "allow_exact": "--allow-exact",
           "method": "--solver", "oversample": "--oversample", "timeout_s": "--exec-timeout", "args": "--exec-arg"}


def _option_error(exc: Exception, option: str) -> Exception:
    """``exc`` (raised while building the model, device or server) as a ValidationError that
    names the command-line option."""
    from qhil.drivers import ValidationError
    param = getattr(exc, "parameter", None)
    if isinstance(exc, ValidationError) and param:
        name = _OPTION.get(param) or (option if option != "--model" or param.startswith("-")
                                      else "--" + param.replace("_", "-"))
        text = str(exc).split(": ", 1)[-1] if str(exc).startswith(f"{param}: ") else str(exc)
        return ValidationError(name, text)
    return ValidationError(option, f"{exc}")


def _check_serve_options(args: argparse.Namespace) -> None:
    """Cross-option checks (each option's own range is checked by argparse)."""
    from qhil.drivers import ValidationError
    if args.curve_secret and not args.allowed_keys:
        raise ValidationError("--curve-secret", "CURVE needs a folder of allowed client keys",
                              "--curve-secret FILE with --allowed-keys FOLDER")
    if args.allowed_keys and not args.curve_secret:
        raise ValidationError("--allowed-keys", "has no effect without --curve-secret (CURVE off)",
                              "--allowed-keys FOLDER with --curve-secret FILE")
    if args.curve_secret:
        import zmq.auth
        try:
            _, secret = zmq.auth.load_certificate(str(args.curve_secret))
        except Exception as exc:
            raise ValidationError("--curve-secret", f"cannot read {args.curve_secret}: {exc}") from None
        if secret is None:
            raise ValidationError("--curve-secret", f"{args.curve_secret} holds no secret key",
                                  "NAME.key_secret from `qhil lab keygen`")
        if not any(n.endswith(".key") for n in os.listdir(args.allowed_keys)):
            print(f"qhil lab: warning: {args.allowed_keys} holds no *.key file: every client is refused "
                  "until one is added", file=sys.stderr)
    if not args.device.startswith("exec:"):
        changed = [o for o, d in (("exec_timeout", 60.0), ("exec_arg", []), ("exec_safe_command", False),
                                  ("exec_calibration_command", False)) if getattr(args, o) != d]
        if changed:
            raise ValidationError("--" + changed[0].replace("_", "-"), f"applies to --device exec:PATH only, "
                                  f"not {args.device}")
    if args.device != "emulator":
        changed = [o for o, d in (("rise_time", 0.0), ("amplitude_error", 0.0), ("frequency_drift", 0.0),
                                  ("readout_error", 0.0), ("inject_faults", 0), ("solver", "lanczos_diag"),
                                  ("oversample", 8)) if getattr(args, o) != d]
        if changed:
            raise ValidationError("--" + changed[0].replace("_", "-"), f"applies to --device emulator only, "
                                  f"not {args.device}")


def cmd_serve(args: argparse.Namespace) -> int:
    import sqlite3

    from qhil.drivers import QhilError, ValidationError
    from qhil.lab.device import create_device
    from qhil.lab.server import LabServer
    _check_serve_options(args)
    try:
        model = build_model(args)
    except (QhilError, ValueError, TypeError, KeyError) as exc:
        raise _option_error(exc, "--model-json" if args.model_json else "--model") from None
    opts: dict[str, Any] = {}
    if args.device == "emulator":
        opts = dict(rise_time=args.rise_time, amplitude_error=args.amplitude_error,
                    frequency_drift=args.frequency_drift, readout_error=args.readout_error,
                    allow_exact=args.allow_exact, seed=args.seed, fault_next=args.inject_faults)
        opts.update(method=args.solver, oversample=args.oversample)
    elif args.device.startswith("exec:"):
        opts = dict(allow_exact=args.allow_exact, timeout_s=args.exec_timeout, args=tuple(args.exec_arg),
                    safe_command=args.exec_safe_command, calibration_command=args.exec_calibration_command)
    try:
        device = create_device(args.device, model, **opts)
    except (QhilError, ValueError, TypeError, OSError) as exc:
        raise _option_error(exc, "--device") from None
    host = args.bind.split("://", 1)[-1].rsplit(":", 1)[0]
    if args.bind.startswith("tcp://") and host not in ("127.0.0.1", "localhost", "[::1]") and not args.curve_secret:
        print(f"qhil lab: warning: binding {args.bind} without CURVE: anyone on that network "
              "can drive the device", file=sys.stderr)
    try:
        server = _make_server(LabServer, device, args)
    except ValidationError as exc:
        raise _option_error(exc, "--bind") from None
    except sqlite3.Error as exc:
        raise ValidationError("--run-log", f"{args.run_log}: not a usable SQLite run log ({exc})") from None
    except OSError as exc:          # the run log's folder, or the lock-key file
        opt = "--lock-key-file" if exc.filename and exc.filename == getattr(args, "lock_key_file", None) \
            else "--run-log"
        raise ValidationError(opt, f"{exc.filename or args.run_log}: {exc.strerror or exc}") from None
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    print(f"READY {server.endpoint}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def _make_server(LabServer: Any, device: Any, args: argparse.Namespace) -> Any:
    return LabServer(device, args.bind, args.run_log, curve_secret_file=args.curve_secret,
                     allowed_keys=args.allowed_keys, max_message_bytes=args.max_message_bytes,
                     synchronous=args.sync, crash_after=args.crash_after,
                     log=lambda s: print(s, file=sys.stderr, flush=True),
                     require_lock=args.lock, lock_key=_write_lock_key(args))


def _write_lock_key(args: argparse.Namespace) -> str:
    """A fresh emergency unlock key, written (mode 0600) to ``--lock-key-file``."""
    import os
    import secrets
    key = secrets.token_urlsafe(32)
    path = args.lock_key_file or f"{args.run_log}.lock-key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key + "\n")
    print(f"qhil lab: emergency unlock key in {path} (qhil lab unlock --force --key-file {path})"
          + ("; runs need the lock (--lock)" if args.lock else ""), file=sys.stderr, flush=True)
    return key


def _lock_call(args: argparse.Namespace, command: str, call: Any) -> int:
    """Connect to ``args.endpoint`` as ``args.owner``, run ``call(backend)`` (lock or unlock),
    print the lock state as JSON; a bridge error exits 2 with its message."""
    from qhil.drivers import QhilError, create_backend
    try:
        with create_backend(args.endpoint, timeout=args.timeout, retries=1, owner=args.owner,
                            server_key=args.server_key, client_cert=args.client_cert) as b:
            state = call(b)
    except QhilError as exc:
        print(f"qhil lab {command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(state))
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    return _lock_call(args, "lock", lambda b: b.lock())


def cmd_unlock(args: argparse.Namespace) -> int:
    key = None
    if args.force:
        if not args.key_file:
            print("qhil lab unlock: --force needs --key-file (the key `qhil lab serve` wrote)", file=sys.stderr)
            return 2
        try:
            with open(args.key_file) as f:
                key = f.read().strip()
        except OSError as exc:
            print(f"qhil lab unlock: cannot read the key file: {exc}", file=sys.stderr)
            return 2
    elif not args.owner:
        print("qhil lab unlock: give --owner (the lock's owner) or --force --key-file", file=sys.stderr)
        return 2
    return _lock_call(args, "unlock", lambda b: b.unlock(force=args.force, key=key))


def cmd_keygen(args: argparse.Namespace) -> int:
    import zmq.auth

    from qhil.drivers import ValidationError
    folder = Path(args.folder)
    if folder.exists() and not folder.is_dir():
        raise ValidationError("folder", f"{args.folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValidationError("folder", f"cannot create {args.folder} ({exc.strerror or exc})") from None
    existing = [str(folder / f"{args.name}{ext}") for ext in (".key", ".key_secret")
                if (folder / f"{args.name}{ext}").exists()]
    if existing and not args.force:
        raise ValidationError("--name", f"{', '.join(existing)} already exist(s); keys are not overwritten",
                              "another --name, or --force")
    public, secret = zmq.auth.create_certificates(args.folder, args.name)
    os.chmod(secret, 0o600)
    print(f"public key:  {public}  (give this to the other side)")
    print(f"secret key:  {secret}  (keep private)")
    return 0
