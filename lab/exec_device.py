"""A pulse device that is an external program: any language, one process per experiment.

    device = ExecDevice(model, program="/opt/lab/run_experiment.exe", timeout_s=120)
    # or: create_device("exec:/opt/lab/run_experiment.exe", model, timeout_s=120)

Many labs drive their instruments from LabVIEW, MATLAB or a vendor program. The exec device
lets such a program be the lab server's device without writing Python: the server starts
the program once per experiment, writes one JSON request on its standard input, and reads
one JSON reply from its standard output. The exchange (protocol ``qhil-exec/1``) is
specified in ``docs/devices.md``; in short:

request (stdin), ``"command": "run"``::

    {"protocol": "qhil-exec/1", "command": "run", "n_qubits": 2,
     "bit_order": "qubit 0 is the most significant bit of the outcome index",
     "channels": [{"name": "coupling", "lower": -0.3, "upper": 0.3, "units": "ω_0", "safe": 0.0}],
     "dt": 0.2, "controls": [[0.1], [-0.2], [0.3]], "steps": [0, 2, 3],
     "settings": ["ZZ", "XY"], "shots": 1000, "seed": 1234567, "model": {"kind": ..., "params": ...}}

reply (stdout)::

    {"counts": [[[c_00, c_01, c_10, c_11], ...one per setting], ...one per step],
     "calibration": {...optional...}}

or ``{"probabilities": [...same shape, floats...]}`` when ``shots`` is null (only when the
device was built with ``allow_exact=True``), or ``{"error": "message"}`` to report a
failure. Two more commands, each opt-in: ``{"command": "safe"}`` (``safe_command=True``:
sent by :meth:`ExecDevice.safe`, after every run and on every fault) and
``{"command": "calibration"}`` (``calibration_command=True``: sent by
:meth:`ExecDevice.calibration`, before every run), whose replies are ``{}`` (anything but
an ``error``) and ``{"calibration": {...}}``.

Everything that comes back is checked (exit status, time, size, JSON, shape, type, sign,
sums, finiteness); any failure raises :class:`~qhil.lab.device.DeviceFault` with a message
that says what was wrong (and the tail of the program's stderr), which the server turns
into a ``device_fault`` reply after putting the device in its safe state.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from qhil.drivers import Model, ValidationError

from .device import DeviceFault, ModelDevice

#: the exchange's name and version, sent as ``protocol`` in every request
EXEC_PROTOCOL = "qhil-exec/1"
BIT_ORDER = "qubit 0 is the most significant bit of the outcome index"
#: reply bytes allowed per returned number (room for pretty-printed JSON), plus a fixed slack
_BYTES_PER_NUMBER = 64
_SLACK_BYTES = 1 << 20
#: stderr bytes kept (the tail) for fault messages; the rest is read and dropped
_STDERR_TAIL = 16 * 1024
#: probabilities may be this far below 0 or their sums this far from 1 (rounding in the program)
PROBABILITY_TOLERANCE = 1e-6


class ExecDevice(ModelDevice):
    """An external program that runs experiments, speaking JSON on stdin/stdout.

    model:               the qhil model the instrument realises: its channels (names,
                         bounds, units) and qubit count are the device's (sent in every
                         request, with ``model.to_dict()``).
    program:             path of an executable (or a bare name looked up on PATH).
    timeout_s:           seconds one invocation may take, writing the request and reading
                         the reply included; the program's whole process group is killed
                         past it (a DeviceFault).
    args:                extra command-line arguments, passed as given.
    allow_exact:         accept ``shots=None`` (the program returns probabilities; emulators).
    safe_command:        :meth:`safe` also runs the program with ``{"command": "safe"}``.
                         Off: the program must leave its outputs at 0 when it exits.
    calibration_command: :meth:`calibration` runs the program with
                         ``{"command": "calibration"}`` (the server asks before every run).
                         Off: the calibration is the one the program last returned with a
                         run (so a run's logged snapshot is the previous run's report).
    max_output_bytes:    ceiling on a reply's size (the limit is also scaled to the reply's
                         expected size: 64 bytes per number + 1 MiB).
    timing:              the duration estimate :meth:`timing` reports (seconds; keys
                         overhead_s, solve_step_s, step_s, shot_s), which sizes clients'
                         timeouts; default 0.1 s per experiment.
    """

    name = "exec"

    def __init__(self, model: Model, program: str | os.PathLike, *, timeout_s: float = 60.0,
                 args: Sequence[str] = (), allow_exact: bool = False, safe_command: bool = False,
                 calibration_command: bool = False, max_output_bytes: int = 256 << 20,
                 timing: Mapping[str, float] | None = None) -> None:
        if not isinstance(model, Model):
            raise ValidationError("model", f"expected a qhil Model, got {type(model).__name__}",
                                  "a Model (its channels and qubits are the device's)")
        self.model = model
        self.program = _resolve_program(program)
        for flag, value in (("allow_exact", allow_exact), ("safe_command", safe_command),
                            ("calibration_command", calibration_command)):
            if not isinstance(value, (bool, np.bool_)):
                raise ValidationError(flag, f"expected true or false, got {value!r}", "true, false")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
                or not math.isfinite(timeout_s) or not 0 < timeout_s <= 86_400:
            raise ValidationError("timeout_s", f"expected seconds in (0, 86400], got {timeout_s!r}",
                                  "a number > 0 and ≤ 86400")
        if isinstance(args, (str, bytes)) or not isinstance(args, Sequence) \
                or not all(isinstance(a, str) for a in args):
            raise ValidationError("args", f"expected a list of strings, got {args!r}", "a list of strings")
        if isinstance(max_output_bytes, bool) or not isinstance(max_output_bytes, int) \
                or not 1024 <= max_output_bytes <= 1 << 34:
            raise ValidationError("max_output_bytes", f"got {max_output_bytes!r}", "an integer in [1024, 2^34]")
        self._timing = {"overhead_s": 0.1, "solve_step_s": 0.0, "step_s": 0.0, "shot_s": 0.0}
        if timing is not None:
            if not isinstance(timing, Mapping) or not set(timing) <= set(self._timing) or not all(
                    not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
                    for v in timing.values()):
                raise ValidationError("timing", f"got {timing!r}",
                                      "a mapping of overhead_s, solve_step_s, step_s, shot_s to seconds ≥ 0")
            self._timing.update({k: float(v) for k, v in timing.items()})
        self.timeout_s = float(timeout_s)
        self.args = tuple(args)
        self.exact_expectations = bool(allow_exact)
        self.safe_command = bool(safe_command)
        self.calibration_command = bool(calibration_command)
        self.max_output_bytes = int(max_output_bytes)
        self.name = f"exec:{Path(self.program).name}"
        self.invocations = 0
        self._last_calibration: dict[str, Any] = {}
        self._describing = threading.local()       # describe(): never call the program
        super().__init__()

    # -- the PulseDevice interface -----------------------------------------------------
    def timing(self) -> dict[str, float]:
        return dict(self._timing)

    def calibration(self) -> dict[str, Any]:
        """The program's calibration: asked for (``calibration_command``), or the one it
        returned with its last run ({} before any). Inside :meth:`describe`, always the last
        one known (describe is answered on the server's socket thread, which must not wait
        for the program)."""
        if not self.calibration_command or getattr(self._describing, "on", False):
            return dict(self._last_calibration)
        with self.lock:
            reply = self._call({"command": "calibration"}, expect_numbers=0)
            cal = reply.get("calibration", {})
            if not isinstance(cal, dict):
                self._fault(f"calibration reply: 'calibration' must be a JSON object, got {type(cal).__name__}")
            self._last_calibration = cal
            return dict(cal)

    def describe(self) -> dict[str, Any]:
        """As :meth:`PulseDevice.describe` (with the last calibration known: the program is
        not run), plus the program and its options under ``exec``."""
        self._describing.on = True
        try:
            d = super().describe()
        finally:
            self._describing.on = False
        d["exec"] = {"program": self.program, "args": list(self.args), "timeout_s": self.timeout_s,
                     "protocol": EXEC_PROTOCOL, "safe_command": self.safe_command,
                     "calibration_command": self.calibration_command, "invocations": self.invocations}
        return d

    def safe(self) -> None:
        """Outputs to their safe state: with ``safe_command``, the program is told to go there
        first (a DeviceFault if it cannot; the outputs are then not marked safe)."""
        with self.lock:
            if self.safe_command:
                self._call({"command": "safe"}, expect_numbers=0)
            super().safe()

    def execute(self, controls: np.ndarray, dt: float, steps: np.ndarray, settings: tuple[str, ...],
                shots: int | None, rng: np.random.Generator) -> np.ndarray:
        """One invocation for the whole experiment: the program replays every prefix itself.
        Returns counts (M, S, 2^n) int64, or probabilities float64 when shots is None."""
        controls = np.asarray(controls, dtype=float)
        steps = np.asarray(steps, dtype=np.int64)
        settings = tuple(settings)
        with self.lock:
            out = self._run(controls, dt, steps, settings, shots, rng)
            self.executions += 1
            if len(controls):
                self.levels = controls[-1].copy()          # what the outputs held at the end
            return out

    def acquire(self, controls: np.ndarray, dt: float, setting: str, shots: int | None,
                rng: np.random.Generator) -> np.ndarray:
        """One circuit: prepare, play all of ``controls``, measure in ``setting``."""
        controls = np.asarray(controls, dtype=float)
        with self.lock:
            return self._run(controls, dt, np.array([len(controls)]), (setting,), shots, rng)[0, 0]

    # -- the exchange ------------------------------------------------------------------
    def request(self, controls: np.ndarray, dt: float, steps: np.ndarray, settings: tuple[str, ...],
                shots: int | None, seed: int) -> dict[str, Any]:
        """The ``run`` request sent to the program (see docs/devices.md)."""
        return {"protocol": EXEC_PROTOCOL, "command": "run", "n_qubits": self.n_qubits,
                "bit_order": BIT_ORDER,
                "channels": [{"name": c.name, "lower": _finite_or_none(c.lower), "upper": _finite_or_none(c.upper),
                              "units": c.units, "safe": min(max(0.0, c.lower), c.upper)} for c in self.channels],
                "dt": float(dt), "controls": np.asarray(controls, dtype=float).tolist(),
                "steps": [int(k) for k in steps], "settings": list(settings),
                "shots": None if shots is None else int(shots), "seed": int(seed),
                "model": self.model_description()}

    def _run(self, controls: np.ndarray, dt: float, steps: np.ndarray, settings: tuple[str, ...],
             shots: int | None, rng: np.random.Generator) -> np.ndarray:
        if shots is None and not self.exact_expectations:
            raise DeviceFault(f"shots=None (probabilities) is not enabled on {self.name} (allow_exact)")
        seed = int(rng.integers(0, 2 ** 31 - 1))       # fits every language's seed type
        shape = (len(steps), len(settings), 2 ** self.n_qubits)
        reply = self._call(self.request(controls, dt, steps, settings, shots, seed),
                           expect_numbers=int(np.prod(shape)))
        out = self._check_data(reply, shape, shots)
        if "calibration" in reply:
            cal = reply["calibration"]
            if not isinstance(cal, dict):
                self._fault(f"run reply: 'calibration' must be a JSON object, got {type(cal).__name__}")
            if not self.calibration_command:
                self._last_calibration = cal
        return out

    def _fault(self, message: str) -> NoReturn:
        self.faults += 1
        raise DeviceFault(f"{self.name}: {message}")

    def _check_data(self, reply: dict[str, Any], shape: tuple[int, int, int], shots: int | None) -> np.ndarray:
        key = "probabilities" if shots is None else "counts"
        if key not in reply:
            self._fault(f"run reply has no {key!r} (keys: {sorted(reply)[:10]})"
                        + (" (shots was null: probabilities expected)" if shots is None else ""))
        try:
            arr = np.array(reply[key])
        except (ValueError, OverflowError) as exc:     # ragged lists, huge integers
            self._fault(f"{key} is not a regular array of numbers ({exc})")
        if arr.shape != shape:
            self._fault(f"{key} has shape {list(arr.shape)}, expected {list(shape)} "
                        "(measured steps × settings × 2^n_qubits)")
        if arr.dtype.kind in "iuf" and any(type(x) is bool for step in reply[key] for row in step for x in row):
            self._fault(f"{key} must be numbers, got true/false")       # numpy reads JSON true as 1
        if shots is not None:
            if arr.dtype.kind not in "iu":
                self._fault(f"counts must be integers, got {_kind(arr)}")
            counts = arr.astype(np.int64)
            if np.any(counts < 0):
                i = tuple(int(x) for x in np.argwhere(counts < 0)[0])
                self._fault(f"counts{list(i)} = {int(counts[i])} is negative")
            sums = counts.sum(axis=-1)
            if np.any(sums != shots):
                i = tuple(int(x) for x in np.argwhere(sums != shots)[0])
                self._fault(f"counts of step index {i[0]}, setting {i[1]} sum to {int(sums[i])}, "
                            f"expected shots = {shots}")
            return counts
        if arr.dtype.kind not in "iuf":
            self._fault(f"probabilities must be numbers, got {_kind(arr)}")
        probs = arr.astype(np.float64)
        if not np.all(np.isfinite(probs)):
            self._fault("probabilities contain NaN or infinity")
        if np.any(probs < -PROBABILITY_TOLERANCE):
            self._fault(f"probabilities contain a negative value ({probs.min():.3g})")
        sums = probs.sum(axis=-1)
        if np.any(np.abs(sums - 1.0) > PROBABILITY_TOLERANCE):
            i = tuple(int(x) for x in np.argwhere(np.abs(sums - 1.0) > PROBABILITY_TOLERANCE)[0])
            self._fault(f"probabilities of step index {i[0]}, setting {i[1]} sum to {float(sums[i]):.12g}, expected 1 "
                        f"(±{PROBABILITY_TOLERANCE:g})")
        probs = np.clip(probs, 0.0, None)
        return probs / probs.sum(axis=-1, keepdims=True)

    def _call(self, request: dict[str, Any], expect_numbers: int) -> dict[str, Any]:
        """Run the program once with ``request`` on stdin; its reply, a JSON object."""
        command = request["command"]
        payload = json.dumps({"protocol": EXEC_PROTOCOL, **request}, allow_nan=False).encode("ascii")
        limit = min(self.max_output_bytes, _SLACK_BYTES + _BYTES_PER_NUMBER * expect_numbers)
        self.invocations += 1
        try:
            code, out, err, why = run_program([self.program, *self.args], payload, self.timeout_s, limit)
        except OSError as exc:         # removed or made non-executable since construction
            self._fault(f"{command}: could not start {self.program!r}: {exc}")
        tail = _tail(err)
        if why == "timeout":
            self._fault(f"{command}: no reply within timeout_s = {self.timeout_s:g} s; the program's "
                        f"process group was killed{tail}")
        if why == "too_large":
            self._fault(f"{command}: the program wrote more than {limit} bytes to stdout (the limit for "
                        f"this reply); it was killed{tail}")
        if code != 0:
            what = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            self._fault(f"{command}: the program {what}{tail}")
        try:
            reply = json.loads(out.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            shown = out[:200].decode("utf-8", "replace")
            self._fault(f"{command}: the reply is not JSON ({exc}); stdout began {shown!r}{tail}")
        if not isinstance(reply, dict):
            self._fault(f"{command}: the reply must be a JSON object, got {type(reply).__name__}")
        if "error" in reply:
            self._fault(f"{command}: the program reported an error: {str(reply['error'])[:2000]}{tail}")
        return reply


def run_program(argv: Sequence[str], payload: bytes, timeout_s: float,
                max_stdout: int) -> tuple[int, bytes, bytes, str | None]:
    """Run ``argv`` with ``payload`` on stdin, in a process group of its own.

    Returns (exit status, stdout, stderr tail, why) where ``why`` is None, "timeout" (past
    ``timeout_s``) or "too_large" (more than ``max_stdout`` bytes on stdout); in those two
    cases the whole process group is killed. Only the last 16 KiB of stderr are kept.
    """
    posix = os.name == "posix"
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=posix,
                            creationflags=0 if posix else subprocess.CREATE_NEW_PROCESS_GROUP)  # type: ignore[attr-defined]
    out = bytearray()
    err = bytearray()
    overflow = threading.Event()

    def feed() -> None:
        try:
            proc.stdin.write(payload)
        except (BrokenPipeError, OSError):     # the program exited without reading it all
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def read_out() -> None:
        while True:
            chunk = proc.stdout.read1(1 << 16)
            if not chunk:
                return
            if len(out) + len(chunk) > max_stdout:
                overflow.set()
                _kill_group(proc, posix)
                return
            out.extend(chunk)

    def read_err() -> None:
        while True:
            chunk = proc.stderr.read1(1 << 16)
            if not chunk:
                return
            err.extend(chunk)
            if len(err) > 2 * _STDERR_TAIL:
                del err[:-_STDERR_TAIL]

    threads = [threading.Thread(target=f, daemon=True, name=f"qhil-exec-{f.__name__}")
               for f in (feed, read_out, read_err)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    why: str | None = None
    try:
        while True:
            try:
                proc.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                if overflow.is_set():
                    why = "too_large"
                    break
                if time.monotonic() > deadline:
                    why = "timeout"
                    break
        if why is not None:
            _kill_group(proc, posix)
            proc.wait()
        # The pipes close when every process holding them has exited; a child the program
        # left running with our stdout still open gets a short grace, then its group is killed.
        for t in threads[1:]:
            t.join(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        if any(t.is_alive() for t in threads):
            _kill_group(proc, posix)
            for t in threads:
                t.join(timeout=5.0)
    except BaseException:          # KeyboardInterrupt while waiting: leave nothing running
        _kill_group(proc, posix)
        proc.wait()
        raise
    finally:
        for f in (proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
    if overflow.is_set():
        why = "too_large"
    return proc.returncode, bytes(out), bytes(err[-_STDERR_TAIL:]), why


def _kill_group(proc: subprocess.Popen, posix: bool) -> None:
    try:
        if posix:
            os.killpg(proc.pid, signal.SIGKILL)
        else:       # pragma: no cover - Windows
            proc.kill()
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _resolve_program(program: str | os.PathLike) -> str:
    allowed = "the path of an existing executable file (or a program name on PATH)"
    if not isinstance(program, (str, os.PathLike)) or not str(program):
        raise ValidationError("device", f"exec device: expected a program path, got {program!r}", allowed)
    text = str(program)
    if os.sep not in text and (os.altsep is None or os.altsep not in text) and not os.path.exists(text):
        found = shutil.which(text)
        if found is None:
            raise ValidationError("device", f"exec device: program {text!r} is not on PATH", allowed)
        text = found
    path = Path(text).expanduser()
    if not path.exists():
        raise ValidationError("device", f"exec device: program {str(path)!r} does not exist", allowed)
    if not path.is_file():
        raise ValidationError("device", f"exec device: {str(path)!r} is not a file", allowed)
    if not os.access(path, os.X_OK):
        raise ValidationError("device", f"exec device: {str(path)!r} is not executable "
                              f"(chmod +x, or name its interpreter as the program and the file in args)",
                              allowed)
    return str(path.resolve())


def _finite_or_none(x: float) -> float | None:
    """A bound for the request: JSON has no infinity, so an unbounded side is null."""
    return float(x) if math.isfinite(x) else None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _kind(arr: np.ndarray) -> str:
    return {"b": "booleans", "U": "strings", "O": "mixed or nested values", "f": "non-integers",
            "c": "complex numbers"}.get(arr.dtype.kind, str(arr.dtype))


def _tail(err: bytes, n: int = 2000) -> str:
    text = err.decode("utf-8", "replace").strip()
    if not text:
        return ""
    if len(text) > n:
        text = "…" + text[-n:]
    return f"; stderr: {text}"


__all__ = ["EXEC_PROTOCOL", "BIT_ORDER", "ExecDevice", "run_program"]
