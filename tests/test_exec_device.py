"""The exec device: an external program (any language) as the lab server's instrument.

The good instrument is tests/devices/exec_emulator.py, a standalone numpy script that never
imports qhil; the faulty ones are bash scripts. Servers run in threads of this process on
tcp://127.0.0.1:* and are reached through the reference ZeroMQ client or a bare DEALER.
"""
from __future__ import annotations

import ast
import contextlib
import json
import os
import sqlite3
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import zmq

from qhil.drivers import Experiment, MeasurementSchedule, ValidationError, create_backend
from qhil.drivers.bridge import wire
from qhil.drivers.bridge.wire import Message
from qhil.envs import DickeBattery
from qhil.lab.device import DeviceFault
from qhil.lab.exec_device import EXEC_PROTOCOL, ExecDevice
from qhil.lab.server import LabServer, RunLog

DEVICES = Path(__file__).parent / "devices"
EMULATOR = DEVICES / "exec_emulator.py"
PY = sys.executable
MODEL = DickeBattery(omegas=(0.9, 1.1), n_max=8)
CONTROLS = np.array([0.3, -0.2, 0.1, 0.25, -0.3, 0.05])
DT = 0.2
SLOW_START = 60.0          # generous: a loaded machine starts a Python program slowly


@contextlib.contextmanager
def serving(device: ExecDevice, tmp: Path, name: str = "runs") -> Iterator[LabServer]:
    """A LabServer for ``device`` on a free localhost port, in a thread; stopped at exit."""
    lines: list[str] = []
    server = LabServer(device, "tcp://127.0.0.1:*", tmp / f"{name}.sqlite", log=lines.append)
    # Checkpoints in the commits, no checkpoint thread: RunLog.close() can wait 30 s for that
    # thread when the server stops within checkpoint_interval of a write (the close signal is
    # cleared by the thread's own Event.clear() after its sleep; reported, lab/server.py).
    server.runs.close()
    server.runs = RunLog(tmp / f"{name}.sqlite", checkpoint_interval=0)
    server.lines = lines       # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="test-lab-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()


def spec(server: LabServer) -> str:
    return server.endpoint.replace("tcp://", "zmq://")


class Raw:
    """A bare DEALER: one request, one reply."""

    def __init__(self, server: LabServer) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(server.endpoint)

    def call(self, msg: Message, timeout: float = SLOW_START) -> Message:
        self.sock.send_multipart(wire.encode(msg))
        if not self.sock.poll(timeout * 1000):
            raise AssertionError("no reply")
        return wire.decode(self.sock.recv_multipart(), wire.REPLY_TYPES)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def run_msg(controls=((0.1,), (0.2,)), steps=None, settings=("ZZ",), shots: int | None = 100,
            rid: str | None = None) -> Message:
    u = np.asarray(controls, dtype=float)
    body = {"dt": DT, "channels": ["coupling"], "steps": steps if steps is not None else [len(u)],
            "settings": list(settings), "shots": shots, "seed": 11}
    return Message("run", rid or wire.new_id(), body, {"controls": u})


def exact(controls, schedule: MeasurementSchedule):
    return create_backend("statevector").run(Experiment(MODEL, controls, DT, schedule))[0]


def commands(state: Path) -> list[str]:
    if not state.exists():
        return []
    return [json.loads(line)["command"] for line in state.read_text().splitlines()]


def faults(server: LabServer) -> list[tuple[str, str]]:
    with sqlite3.connect(server.runs.path, timeout=10) as db:
        return db.execute("SELECT request_id, message FROM faults ORDER BY seq").fetchall()


def logged_ids(server: LabServer) -> list[str]:
    with sqlite3.connect(server.runs.path, timeout=10) as db:
        return [r[0] for r in db.execute("SELECT request_id FROM runs ORDER BY seq")]


# -- the external program is not Python-with-qhil -------------------------------------------

def test_emulator_program_does_not_import_qhil():
    tree = ast.parse(EMULATOR.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "json", "sys", "functools", "numpy"}, imported
    for script in ("fail.sh", "hang.sh", "garbage.sh", "reply.sh", "flaky.sh"):
        assert (DEVICES / script).read_text().startswith("#!/usr/bin/env bash")


# -- the exec device behind a real LabServer: the bridge checks -----------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The emulator program behind flaky.sh (one-shot faults on demand), with the safe command."""
    tmp = tmp_path_factory.mktemp("exec-lab")
    state, fault = tmp / "state.jsonl", tmp / "fault"
    device = ExecDevice(MODEL, DEVICES / "flaky.sh", args=[str(fault), PY, str(EMULATOR), "--state", str(state)],
                        timeout_s=SLOW_START, allow_exact=True, safe_command=True)
    with serving(device, tmp) as server:
        server.state, server.fault = state, fault      # type: ignore[attr-defined]
        yield server


@pytest.fixture
def client(lab):
    b = create_backend(spec(lab), seed=5, timeout=SLOW_START, retries=2, heartbeat=0.3)
    yield b
    b.close()


def test_exact_probabilities_match_statevector(client, lab):
    sched = MeasurementSchedule("second_order", every=2, shots=None)
    before = commands(lab.state)
    r = client.run(Experiment(MODEL, CONTROLS, DT, sched))[0]
    ref = exact(CONTROLS, sched)
    assert r.labels == ref.labels and np.array_equal(r.steps, ref.steps)
    assert np.max(np.abs(r.values - ref.values)) < 1e-9
    assert r.metadata["bridge"]["replay"]["circuits"] == len(r.steps) * len(r.settings)
    assert commands(lab.state)[len(before):] == ["run", "safe"]     # one invocation, then safe
    assert lab.device.is_safe


def test_shots_match_statevector_within_noise(client, lab):
    shots = 4000
    r = client.run(Experiment(MODEL, CONTROLS, DT, MeasurementSchedule("first_order", every=3, shots=shots)))[0]
    ref = exact(CONTROLS, MeasurementSchedule("first_order", every=3))
    assert r.counts.shape == (len(r.steps), len(r.settings), 4) and np.all(r.counts.sum(-1) == shots)
    z = (r.values - ref.values) / np.maximum(r.stderr, 1.0 / shots)
    assert np.max(np.abs(z)) < 5.0
    # the program's calibration report comes back (snapshot taken before the run: the previous report)
    assert r.metadata["bridge"]["calibration"]["instrument"] == "exec_emulator"
    d = client.describe()
    assert d["name"].startswith("exec:") and d["exec"]["protocol"] == EXEC_PROTOCOL
    assert d["state"]["safe"] is True and d["exact_expectations"] is True


def test_same_id_never_runs_twice(lab):
    raw = Raw(lab)
    try:
        msg = run_msg(shots=500)
        n_runs = commands(lab.state).count("run")
        first, second = raw.call(msg), raw.call(msg)
        assert first.type == second.type == "result"
        assert first.body["replayed"] is False and second.body["replayed"] is True
        assert np.array_equal(first.arrays["counts"], second.arrays["counts"])
        assert commands(lab.state).count("run") == n_runs + 1            # the program ran once
        assert logged_ids(lab).count(msg.id) == 1
    finally:
        raw.close()


@pytest.mark.parametrize("mode, expect", [("fail", "exited with status 4; stderr: digitiser: PLL unlocked"),
                                          ("garbage", "the reply is not JSON")])
def test_fault_then_next_request_is_served(lab, mode, expect):
    """A one-shot fault: device_fault reply (device made safe, fault logged, nothing logged as
    executed); the retry of the same id then runs, and gets a result."""
    raw = Raw(lab)
    try:
        msg = run_msg(((0.3,), (-0.1,), (0.2,)), steps=[1, 3], settings=("ZZ", "XX"))
        lab.fault.write_text(mode)
        before = commands(lab.state)
        safe_calls = lab.device.safe_calls
        reply = raw.call(msg)
        assert reply.type == "error" and reply.body["error"]["code"] == "device_fault"
        assert reply.body["error"]["retryable"] is True and expect in reply.body["error"]["message"]
        assert commands(lab.state)[len(before):] == ["safe"]      # the run never reached it; safe did
        assert lab.device.safe_calls == safe_calls + 1 and lab.device.is_safe
        assert faults(lab)[-1][0] == msg.id and expect in faults(lab)[-1][1]
        assert msg.id not in logged_ids(lab)
        again = raw.call(msg)                                     # errors are not stored: it runs
        assert again.type == "result" and again.body["replayed"] is False
        assert again.arrays["counts"].shape == (2, 2, 4) and np.all(again.arrays["counts"].sum(-1) == 100)
        assert logged_ids(lab).count(msg.id) == 1
    finally:
        raw.close()


def test_client_retries_a_device_fault(client, lab):
    lab.fault.write_text("fail")
    sched = MeasurementSchedule("energies", shots=None)
    r = client.run(Experiment(MODEL, CONTROLS[:3], DT, sched))[0]
    assert np.max(np.abs(r.values - exact(CONTROLS[:3], sched).values)) < 1e-9
    assert not lab.fault.exists()


# -- programs that fail, hang or babble, behind a server ------------------------------------

@pytest.mark.parametrize("script, expect", [
    ("fail.sh", "exited with status 3; stderr: AWG: channel 1 is not responding"),
    ("hang.sh", "no reply within timeout_s = 1 s; the program's process group was killed"),
    ("garbage.sh", "the reply is not JSON"),
])
def test_faulty_program_behind_server(tmp_path, script, expect):
    pidfile = tmp_path / "child.pid"
    device = ExecDevice(MODEL, DEVICES / script, args=[str(pidfile)], timeout_s=1.0)
    with serving(device, tmp_path) as server:
        raw = Raw(server)
        try:
            ids = []
            for i in range(2):                                      # it keeps serving
                msg = run_msg()
                ids.append(msg.id)
                reply = raw.call(msg)
                assert reply.body["error"]["code"] == "device_fault", reply.body
                assert expect in reply.body["error"]["message"]
                assert [f[0] for f in faults(server)] == ids and expect in faults(server)[-1][1]
                assert device.is_safe and device.safe_calls == i + 1
            assert raw.call(Message("ping", "p1", {"requests": [msg.id]})).body["states"][msg.id] == "unknown"
            assert raw.call(Message("describe", "d1", {})).body["state"]["faults"] == 2
            assert logged_ids(server) == []
        finally:
            raw.close()
    if script == "hang.sh":         # the program's child was killed with it
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"      # a zombie has exited
    except FileNotFoundError:
        return True                                               # no /proc: it exists


# -- the device without a server: construction, replies, commands ---------------------------

def test_construction_errors(tmp_path):
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\necho {}\n")
    for program, words in [(tmp_path / "missing", "does not exist"), (tmp_path, "is not a file"),
                           (plain, "is not executable"), ("no-such-program-qhil", "not on PATH"), ("", "expected")]:
        with pytest.raises(ValidationError, match=words) as e:
            ExecDevice(MODEL, program)
        assert e.value.parameter == "device"
    plain.chmod(plain.stat().st_mode | stat.S_IXUSR)
    assert ExecDevice(MODEL, plain).program == str(plain.resolve())
    assert ExecDevice(MODEL, "bash").program.endswith("bash")           # looked up on PATH
    with pytest.raises(ValidationError) as e:
        ExecDevice({"kind": "dicke"}, plain)
    assert e.value.parameter == "model"
    for kw, param in [({"timeout_s": 0}, "timeout_s"), ({"timeout_s": float("nan")}, "timeout_s"),
                      ({"args": "x"}, "args"), ({"args": [1]}, "args"), ({"max_output_bytes": 10}, "max_output_bytes"),
                      ({"timing": {"overhead_s": -1}}, "timing"), ({"timing": {"other": 1}}, "timing"),
                      ({"args": 3}, "args"), ({"allow_exact": "no"}, "allow_exact"),
                      ({"safe_command": 1}, "safe_command"), ({"calibration_command": None}, "calibration_command")]:
        with pytest.raises(ValidationError) as e:
            ExecDevice(MODEL, plain, **kw)
        assert e.value.parameter == param


def test_program_removed_after_construction(tmp_path):
    prog = tmp_path / "gone.sh"
    prog.write_text("#!/usr/bin/env bash\necho {}\n")
    prog.chmod(0o755)
    dev = ExecDevice(MODEL, prog, timeout_s=SLOW_START)
    prog.unlink()
    with pytest.raises(DeviceFault, match="run: could not start"):
        _execute(dev)
    assert dev.faults == 1


def _reply_device(tmp_path: Path, reply, **kw) -> ExecDevice:
    path = tmp_path / "reply.json"
    path.write_text(reply if isinstance(reply, str) else json.dumps(reply))
    return ExecDevice(MODEL, DEVICES / "reply.sh", args=[str(path)], timeout_s=SLOW_START, **kw)


def _execute(dev: ExecDevice, shots: int | None = 10, steps=(0, 2), settings=("ZZ", "XY")) -> np.ndarray:
    return dev.execute(np.array([[0.1], [0.2]]), DT, np.array(steps), settings, shots, np.random.default_rng(0))


GOOD_COUNTS = [[[10, 0, 0, 0], [3, 3, 2, 2]], [[7, 1, 1, 1], [0, 0, 0, 10]]]
GOOD_PROBS = [[[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]], [[0.5, 0.5, 0, 0], [0, 0, 0, 1]]]


def test_valid_replies_are_returned_as_sent(tmp_path):
    dev = _reply_device(tmp_path, {"counts": GOOD_COUNTS, "calibration": {"t1_us": 42.0}}, allow_exact=True)
    out = _execute(dev)
    assert out.dtype == np.int64 and out.tolist() == GOOD_COUNTS
    assert dev.calibration() == {"t1_us": 42.0} and dev.executions == 1
    one = _reply_device(tmp_path, {"counts": [[[4, 3, 2, 1]]]})
    assert one.acquire(np.zeros((3, 1)), DT, "XZ", 10, np.random.default_rng(0)).tolist() == [4, 3, 2, 1]
    probs = np.array(GOOD_PROBS)
    probs[0, 0, 1] = -1e-12                      # rounding in the program: clipped
    probs[0, 0, 0] += 1e-12
    p = _execute(_reply_device(tmp_path, {"probabilities": probs.tolist()}, allow_exact=True), shots=None)
    assert p.dtype == np.float64 and np.all(p >= 0) and np.allclose(p, GOOD_PROBS, atol=1e-11)


BAD_REPLIES = [
    ({"counts": GOOD_COUNTS[:1]}, 10, "has shape [1, 2, 4], expected [2, 2, 4]"),
    ({"counts": [[[10, 0, 0]] * 2] * 2}, 10, "has shape [2, 2, 3]"),
    ({"counts": [[[10, 0, 0, 0], [3, 3, 2]], [[7, 1, 1, 1], [0, 0, 0, 10]]]}, 10, "not a regular array"),
    ({"counts": [[[11, -1, 0, 0], [3, 3, 2, 2]], [[7, 1, 1, 1], [0, 0, 0, 10]]]}, 10, "counts[0, 0, 1] = -1 is negative"),
    ({"counts": GOOD_COUNTS}, 11, "sum to 10, expected shots = 11"),
    ({"counts": [[[10.0, 0, 0, 0], [3, 3, 2, 2]], [[7, 1, 1, 1], [0, 0, 0, 10]]]}, 10, "counts must be integers"),
    ({"counts": [[["10", 0, 0, 0], [3, 3, 2, 2]], [[7, 1, 1, 1], [0, 0, 0, 10]]]}, 10, "counts must be integers"),
    ({"counts": [[[2 ** 70, 0, 0, 0], [3, 3, 2, 2]], [[7, 1, 1, 1], [0, 0, 0, 10]]]}, 10, "counts"),
    ({"probabilities": GOOD_PROBS}, 10, "run reply has no 'counts'"),
    ({"counts": GOOD_COUNTS}, None, "run reply has no 'probabilities'"),
    ({"probabilities": [[[0.5, 0.6, 0, 0]] * 2] * 2}, None, "sum to 1.1"),
    ({"probabilities": [[[1.5, -0.5, 0, 0]] * 2] * 2}, None, "negative value"),
    ('{"probabilities": [[[NaN, 1, 0, 0], [1, 0, 0, 0]], [[1, 0, 0, 0], [1, 0, 0, 0]]]}', None, "not JSON"),
    ({"probabilities": [[[True, 0, 0, 0]] * 2] * 2}, None, "must be numbers"),
    ([1, 2, 3], 10, "must be a JSON object, got list"),
    ("", 10, "not JSON"),
    ({"error": "interlock open: cryostat door"}, 10, "program reported an error: interlock open: cryostat door"),
    ({"counts": GOOD_COUNTS, "calibration": [1]}, 10, "'calibration' must be a JSON object"),
]


@pytest.mark.parametrize("reply, shots, words", BAD_REPLIES)
def test_bad_replies_are_device_faults(tmp_path, reply, shots, words):
    dev = _reply_device(tmp_path, reply, allow_exact=True)
    with pytest.raises(DeviceFault) as e:
        _execute(dev, shots=shots)
    assert words in str(e.value) and dev.faults == 1 and dev.executions == 0


def test_shots_none_refused_without_allow_exact(tmp_path):
    dev = _reply_device(tmp_path, {"probabilities": GOOD_PROBS})
    with pytest.raises(DeviceFault, match="allow_exact"):
        _execute(dev, shots=None)
    assert dev.invocations == 0


def test_runaway_output_is_cut_off(tmp_path):
    dev = ExecDevice(MODEL, DEVICES / "reply.sh", args=["--flood"], timeout_s=SLOW_START, max_output_bytes=4096)
    with pytest.raises(DeviceFault, match="more than 4096 bytes to stdout"):
        _execute(dev)


def test_commands_safe_and_calibration(tmp_path):
    state = tmp_path / "state.jsonl"
    dev = ExecDevice(MODEL, PY, args=[str(EMULATOR), "--state", str(state)], timeout_s=SLOW_START,
                     safe_command=True, calibration_command=True)
    assert dev.calibration() == {"instrument": "exec_emulator", "readout_fidelity": 1.0}
    dev.levels = np.array([0.2])
    dev.safe()
    assert dev.is_safe and commands(state) == ["calibration", "safe"]
    d = dev.describe()                       # answered without running the program
    assert commands(state) == ["calibration", "safe"] and d["calibration"]["instrument"] == "exec_emulator"
    assert d["exec"]["safe_command"] is True and d["exec"]["invocations"] == 2
    failing = ExecDevice(MODEL, DEVICES / "fail.sh", safe_command=True, timeout_s=SLOW_START)
    failing.levels = np.array([0.2])
    with pytest.raises(DeviceFault, match="safe: the program exited with status 3"):
        failing.safe()
    assert not failing.is_safe               # not marked safe when the instrument could not confirm
    quiet = ExecDevice(MODEL, DEVICES / "fail.sh", timeout_s=SLOW_START)
    quiet.levels = np.array([0.2])
    quiet.safe()                             # no safe command: nothing is run
    assert quiet.is_safe and quiet.invocations == 0


def test_request_format(tmp_path):
    """The request a program receives, as documented in docs/devices.md."""
    echo = tmp_path / "echo.sh"
    dump = tmp_path / "request.json"
    echo.write_text(f"#!/usr/bin/env bash\ncat > {dump}\n"
                    "echo '{\"counts\": [[[0, 0, 5, 0]], [[0, 5, 0, 0]]]}'\n")
    echo.chmod(0o755)
    dev = ExecDevice(MODEL, echo, args=["--x"], timeout_s=SLOW_START)
    out = dev.execute(np.array([[0.1], [-0.2], [0.3]]), 0.25, np.array([1, 3]), ("XY",), 5, np.random.default_rng(4))
    assert out.shape == (2, 1, 4)
    req = json.loads(dump.read_text())
    seed = req.pop("seed")
    assert isinstance(seed, int) and 0 <= seed < 2 ** 31
    assert seed == int(np.random.default_rng(4).integers(0, 2 ** 31 - 1))     # reproducible from the run's seed
    assert req == {"protocol": EXEC_PROTOCOL, "command": "run", "n_qubits": 2,
                   "bit_order": "qubit 0 is the most significant bit of the outcome index",
                   "channels": [{"name": "coupling", "lower": -0.3, "upper": 0.3, "units": "ω_0", "safe": 0.0}],
                   "dt": 0.25, "controls": [[0.1], [-0.2], [0.3]], "steps": [1, 3], "settings": ["XY"],
                   "shots": 5, "model": MODEL.to_dict()}
    assert dump.read_bytes().isascii()       # non-ASCII (ω) is escaped: any JSON parser reads it
    assert np.array_equal(dev.levels, [0.3])
    from qhil.drivers import ControlChannel

    class Unbounded(ExecDevice):
        channels = property(lambda self: (ControlChannel("coupling", -np.inf, np.inf),))

    req = Unbounded(MODEL, echo).request(np.zeros((1, 1)), 0.1, np.array([1]), ("ZZ",), 5, 0)
    assert req["channels"] == [{"name": "coupling", "lower": None, "upper": None, "units": "ω_0", "safe": 0.0}]
    json.dumps(req, allow_nan=False)


def test_create_device_exec_spec(tmp_path):
    from qhil.lab.device import create_device
    dev = create_device(f"exec:{DEVICES / 'fail.sh'}", MODEL, timeout_s=5.0)
    assert isinstance(dev, ExecDevice) and dev.timeout_s == 5.0 and dev.name == "exec:fail.sh"
    with pytest.raises(ValidationError) as e:
        create_device(f"exec:{tmp_path / 'nope'}", MODEL)
    assert e.value.parameter == "device"


# -- docs/devices.md: the examples there are the code's behaviour ---------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "devices.md"


def _blocks(lang: str) -> list[str]:
    parts = DOC.read_text().split("```")
    return [p[len(lang) + 1:] for p in parts[1::2] if p.startswith(lang + "\n")]


def test_docs_exchange_is_what_the_device_sends_and_the_emulator_answers():
    request, reply = (json.loads(b) for b in _blocks("json")[:2])
    dev = ExecDevice(MODEL, PY, args=[str(EMULATOR)], timeout_s=SLOW_START)
    sent = dev.request(np.array(request["controls"]), request["dt"], np.array(request["steps"]),
                       tuple(request["settings"]), request["shots"], request["seed"])
    assert sent == request
    from qhil.lab.exec_device import run_program
    code, out, err, why = run_program([PY, str(EMULATOR)], json.dumps(request).encode(), SLOW_START, 1 << 20)
    assert code == 0 and why is None, err
    assert json.loads(out) == reply


def test_docs_worked_example_runs(tmp_path):
    [code] = [b for b in _blocks("python") if "class AwgDevice" in b]
    ns: dict = {"__name__": "awg_device"}
    exec(compile(code, str(DOC), "exec"), ns)
    awg = ns["FakeAWG"]()
    dev = ns["AwgDevice"](awg, ns["FakeDigitiser"](awg, rabi_hz_per_volt=2e6, seed=3), volts_per_unit=0.25,
                          time_unit_s=1e-6)
    u, shots, steps = np.full((5, 1), 0.4), 20_000, np.array([0, 3, 5])
    counts = dev.execute(u, 0.2, steps, ("Z", "Y", "X"), shots, np.random.default_rng(0))
    theta = 2 * np.pi * 2e6 * (0.4 * 0.25) * (0.2 * 1e-6) * steps        # rotation about x
    p0 = np.stack([np.cos(theta / 2) ** 2, (1 - np.sin(theta)) / 2, np.full(3, 0.5)], axis=1)
    assert np.max(np.abs(counts[:, :, 0] / shots - p0)) < 5 * np.sqrt(0.25 / shots)
    assert counts.dtype == np.int64 and np.all(counts.sum(-1) == shots)
    hot = ns["AwgDevice"](awg, ns["FakeDigitiser"](awg, 2e6, seed=4), volts_per_unit=0.6, time_unit_s=1e-6)
    with serving(hot, tmp_path) as server:           # 0.6 V per unit: u = 1 is out of the AWG's range
        raw = Raw(server)
        try:
            ok = raw.call(Message("run", "ok-1", {"dt": 0.2, "channels": ["drive"], "steps": [0, 2],
                                                  "settings": ["Z", "X"], "shots": 50},
                                  {"controls": np.array([[0.5], [0.5]])}))
            assert ok.type == "result" and ok.arrays["counts"].shape == (2, 2, 2)
            assert ok.body["calibration"] == {"volts_per_unit": 0.6, "time_unit_s": 1e-6}
            assert awg.volts == 0.0 and hot.is_safe
            bad = raw.call(Message("run", "bad-1", {"dt": 0.2, "channels": ["drive"], "steps": [1],
                                                    "settings": ["Z"], "shots": 50},
                                   {"controls": np.array([[1.0]])}))
            assert bad.body["error"]["code"] == "device_fault" and "0.5 V output range" in bad.body["error"]["message"]
            assert awg.volts == 0.0 and hot.is_safe and faults(server)[-1][0] == "bad-1"
        finally:
            raw.close()


def test_docs_file_wrapper_for_matlab(tmp_path, monkeypatch):
    """The wrapper script of the docs, with a stand-in `matlab` on PATH that chatters on stdout
    (the wrapper sends that to stderr) and answers through the reply file."""
    [wrapper] = [b for b in _blocks("bash") if "matlab -batch" in b]
    script = tmp_path / "qhil-matlab.sh"
    script.write_text(wrapper)
    script.chmod(0o755)
    fake = tmp_path / "bin" / "matlab"
    fake.parent.mkdir()
    fake.write_text("#!/usr/bin/env bash\n"
                    "echo 'MATLAB is starting...'\n"
                    "req=$(echo \"$2\" | sed \"s/^qhil_run('\\([^']*\\)', '\\([^']*\\)')$/\\1/\")\n"
                    "rep=$(echo \"$2\" | sed \"s/^qhil_run('\\([^']*\\)', '\\([^']*\\)')$/\\2/\")\n"
                    f"'{PY}' '{EMULATOR}' < \"$req\" > \"$rep\"\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    dev = ExecDevice(MODEL, script, timeout_s=SLOW_START, allow_exact=True)
    p = dev.execute(CONTROLS[:4, None], DT, np.array([0, 2, 4]), ("ZZ", "YX"), None, np.random.default_rng(0))
    ref = exact(CONTROLS[:4], MeasurementSchedule(("Z0", "Z1", "Z0Z1", "Y0X1"), every=2))
    from qhil.drivers.pauli import estimate_from_counts
    values, _ = estimate_from_counts(p, ref.labels, ("ZZ", "YX"), 2)
    assert np.max(np.abs(values - ref.values)) < 1e-9
