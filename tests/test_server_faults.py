"""The lab server under faults, in-process: a LabServer serving in a thread on
tcp://127.0.0.1:* and test devices (subclasses of ModelDevice) that block, misbehave or fail
on cue. Each test states the documented behaviour (lab/server.py, docs/protocol.md,
docs/devices.md) it checks.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sqlite3
import threading
import time

import numpy as np
import pytest
import zmq

from qhil.drivers.bridge import wire
from qhil.drivers.bridge.wire import Message
from qhil.envs import XYChain
from qhil.lab.device import ModelDevice
from qhil.lab.server import MAX_WAITERS, MIN_MESSAGE_BYTES, RUN_COLUMNS, LabServer, RunLog

MODEL = XYChain(n_spins=2, field_bound=5.0)          # 2 qubits, channels B1, B2
CHANNELS = [c.name for c in MODEL.controls]
WAIT = 10.0                                          # seconds: generous, only hit on failure


class ScriptedDevice(ModelDevice):
    """Reads |00⟩ on every shot; can block inside execute until released, and can fail in a
    chosen place. While it plays, its outputs hold the first control row (not the safe 0)."""

    name = "scripted"
    exact_expectations = True

    def __init__(self, block: bool = False, fail_in: str | None = None, bad_shape: bool = False,
                 safe_raises: bool = False) -> None:
        self.model = MODEL
        super().__init__()
        self.block, self.fail_in, self.bad_shape, self.safe_raises = block, fail_in, bad_shape, safe_raises
        self.gate = threading.Event()                # set → a blocked execute returns
        self.started = threading.Event()             # set when an execute begins
        self.played: list[np.ndarray] = []

    def begin_episode(self, rng):
        if self.fail_in == "begin_episode":
            raise RuntimeError("injected: begin_episode")

    def calibration(self):
        if self.fail_in == "calibration":
            raise RuntimeError("injected: calibration")
        return {"device": "scripted"}

    def safe(self) -> None:
        if self.safe_raises:
            self.safe_calls += 1
            raise OSError("injected: the output stage does not answer")
        super().safe()

    def execute(self, controls, dt, steps, settings, shots, rng):
        with self.lock:
            self.levels = np.array(controls[0] if len(controls) else [1.0, 1.0], dtype=float)
        self.started.set()
        if self.block and not self.gate.wait(WAIT):
            raise TimeoutError("the test never released the device")
        if self.fail_in == "execute":
            raise RuntimeError("injected: execute")
        self.executions += 1
        self.played.append(np.array(controls))
        n = 1 if self.bad_shape else self.n_qubits
        out = np.zeros((len(steps), len(settings), 2 ** n), dtype=np.float64 if shots is None else np.int64)
        out[:, :, 0] = 1.0 if shots is None else shots
        return out

    def acquire(self, controls, dt, setting, shots, rng):  # pragma: no cover - execute is overridden
        raise NotImplementedError


class Client:
    """A bare DEALER speaking the wire format."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, msg: Message) -> None:
        self.sock.send_multipart([bytes(f) for f in wire.encode(msg)])

    def recv(self, timeout: float = WAIT) -> Message:
        if not self.sock.poll(timeout * 1000):
            raise AssertionError("no reply")
        return wire.decode(self.sock.recv_multipart(), wire.REPLY_TYPES)

    def call(self, msg: Message, timeout: float = WAIT) -> Message:
        self.send(msg)
        return self.recv(timeout)

    def silent(self, timeout: float = 0.3) -> bool:
        return not self.sock.poll(timeout * 1000)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def run_msg(rid: str, controls=((0.5, -0.5), (1.0, 0.0)), steps=None, settings=("ZZ",), shots=10,
            dt: float = 0.1, **body) -> Message:
    u = np.asarray(controls, dtype=float)
    b = {"dt": dt, "channels": CHANNELS, "steps": steps if steps is not None else [len(u)],
         "settings": list(settings), "shots": shots, **body}
    return Message("run", rid, b, {"controls": u})


def ping(client: Client, *ids: str) -> dict:
    reply = client.call(Message("ping", wire.new_id(), {"requests": list(ids)}))
    assert reply.type == "pong"
    return reply.body


def err(reply: Message) -> dict:
    assert reply.type == "error", reply
    return reply.body["error"]


def logged(path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [r[0] for r in db.execute("SELECT request_id FROM runs ORDER BY seq")]


def faults(path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return list(db.execute("SELECT request_id, message FROM faults ORDER BY seq"))


def without_checkpointer(srv: LabServer) -> LabServer:
    """Swap the server's run log for one on the same file without the background checkpointer
    thread (checkpoint_interval=0: SQLite checkpoints inside commits), so that these tests do not
    depend on it: its own close-after-write bug (a stop within 0.25 s of a write stalled 30 s)
    is tested by test_run_log_close_right_after_a_write_does_not_stall."""
    path = srv.runs.path
    srv.runs.close()
    srv.runs = RunLog(path, checkpoint_interval=0)
    return srv


@contextlib.contextmanager
def serving(device, tmp_path, name: str = "runs.sqlite", **kw):
    """A LabServer on an ephemeral localhost port, serving in a thread; its log lines in .lines."""
    lines: list[str] = []
    srv = without_checkpointer(LabServer(device, "tcp://127.0.0.1:*", tmp_path / name, log=lines.append, **kw))
    srv.lines = lines
    thread = threading.Thread(target=srv.serve_forever, name="test-lab-server", daemon=True)
    thread.start()
    clients: list[Client] = []
    srv.client = lambda: clients.append(Client(srv.endpoint)) or clients[-1]
    try:
        yield srv
    finally:
        device.gate.set()
        srv.stop()
        thread.join(WAIT)
        for c in clients:
            c.close()
        assert not thread.is_alive(), "the server did not stop"


def wait_for(cond, timeout: float = WAIT) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


# -- idempotency: a retry joins the running request ------------------------------------------------

def test_retries_join_a_running_request_and_it_runs_once(tmp_path):
    dev = ScriptedDevice(block=True)
    with serving(dev, tmp_path) as srv:
        a, b = srv.client(), srv.client()
        msg = run_msg("job-1")
        a.send(msg)
        assert dev.started.wait(WAIT)
        assert ping(b, "job-1")["states"] == {"job-1": "running"}
        b.send(msg)                                    # a retry from another connection…
        a.send(msg)                                    # …and from the same one
        other = b.call(run_msg("job-1", controls=((0.0, 0.0), (1.0, 0.0))))
        assert err(other)["code"] == "id_reused"       # same id, different controls: refused
        assert a.silent() and b.silent()               # nobody is answered before the run ends
        dev.gate.set()
        replies = [a.recv(), a.recv(), b.recv()]
        assert [r.type for r in replies] == ["result"] * 3
        assert all(r.id == "job-1" and r.body["replayed"] is False for r in replies)
        for r in replies:
            np.testing.assert_array_equal(r.arrays["counts"], replies[0].arrays["counts"])
        assert dev.executions == 1 and len(dev.played) == 1
        late = b.call(msg)                             # after it finished: from storage
        assert late.type == "result" and late.body["replayed"] is True and dev.executions == 1
    assert logged(tmp_path / "runs.sqlite") == ["job-1"]


def test_waiters_on_one_request_are_bounded(tmp_path):
    """At most MAX_WAITERS copies await one id; the next copy gets ``busy`` (retryable)."""
    dev = ScriptedDevice(block=True)
    with serving(dev, tmp_path) as srv:
        c = srv.client()
        msg = run_msg("job-w")
        c.send(msg)
        assert dev.started.wait(WAIT)
        for _ in range(MAX_WAITERS - 1):
            c.send(msg)
        refused = c.call(msg)
        assert err(refused)["code"] == "busy" and err(refused)["retryable"] is True
        dev.gate.set()
        results = [c.recv() for _ in range(MAX_WAITERS)]
        assert all(r.type == "result" for r in results) and dev.executions == 1


# -- busy backpressure -------------------------------------------------------------------------------

def test_full_queue_answers_busy_and_the_retry_later_runs(tmp_path):
    dev = ScriptedDevice(block=True)
    with serving(dev, tmp_path, max_queue=1) as srv:
        c = srv.client()
        c.send(run_msg("q-1"))
        assert dev.started.wait(WAIT)                  # q-1 is running: the queue is empty
        c.send(run_msg("q-2"))                         # queued (1 = max_queue)
        wait_for(lambda: ping(c, "q-2")["states"]["q-2"] == "queued")
        refused = c.call(run_msg("q-3"))
        assert err(refused)["code"] == "busy" and err(refused)["retryable"] is True
        assert ping(c, "q-3")["states"] == {"q-3": "unknown"}      # not queued, not run
        dev.gate.set()
        assert {c.recv().id, c.recv().id} == {"q-1", "q-2"}
        again = c.call(run_msg("q-3"))                 # the client's retry, once there is room
        assert again.type == "result" and again.body["replayed"] is False
    assert logged(tmp_path / "runs.sqlite") == ["q-1", "q-2", "q-3"] and dev.executions == 3


# -- device faults ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["wrong_shape", "begin_episode", "calibration", "execute"])
def test_device_fault_puts_the_device_safe_logs_the_fault_and_runs_nothing(tmp_path, fault):
    dev = ScriptedDevice(bad_shape=fault == "wrong_shape", fail_in=None if fault == "wrong_shape" else fault)
    with serving(dev, tmp_path) as srv:
        c = srv.client()
        reply = c.call(run_msg("f-1", controls=((2.0, 3.0),)))
        e = err(reply)
        assert e["code"] == "device_fault" and e["retryable"] is True and "safe state" in e["message"]
        if fault == "wrong_shape":
            assert "shape (1, 1, 2)" in e["message"] and "expected (1, 1, 4)" in e["message"]
        assert dev.is_safe and dev.safe_calls >= 1
        # error replies are not stored: the retry runs, and with the device fixed it succeeds
        dev.bad_shape, dev.fail_in = False, None
        again = c.call(run_msg("f-1", controls=((2.0, 3.0),)))
        assert again.type == "result" and again.body["replayed"] is False
        assert again.arrays["counts"].shape == (1, 1, 4)
    path = tmp_path / "runs.sqlite"
    assert logged(path) == ["f-1"]                     # only the successful execution
    [(rid, message)] = faults(path)
    assert rid == "f-1" and ("shape" in message if fault == "wrong_shape" else "injected" in message)


def test_safe_that_raises_is_logged_and_the_server_keeps_serving(tmp_path):
    """docs/devices.md: a safe() that fails itself is logged by the server and does not stop it.
    The run whose clean-up failed is answered device_fault (the outputs may not be at 0) and is
    not logged as executed; the server serves the next request and still stops cleanly."""
    dev = ScriptedDevice(safe_raises=True)
    with serving(dev, tmp_path) as srv:
        c = srv.client()
        e = err(c.call(run_msg("s-1")))
        assert e["code"] == "device_fault" and "injected" in e["message"]
        assert any("could not put the device in its safe state" in line for line in srv.lines)
        assert ping(c, "s-1")["states"] == {"s-1": "unknown"}     # alive, and nothing stored
        dev.safe_raises = False
        assert c.call(run_msg("s-2")).type == "result"
        dev.safe_raises = True                         # stopping calls safe() again: it may fail too
    assert logged(tmp_path / "runs.sqlite") == ["s-2"]
    assert any("server stopping" in line for line in srv.lines)


# -- the run log failing ------------------------------------------------------------------------------

def test_failed_run_log_write_still_replies_and_never_reruns(tmp_path, monkeypatch):
    dev = ScriptedDevice()
    with serving(dev, tmp_path) as srv:
        def broken(values):
            raise sqlite3.OperationalError("disk I/O error")
        monkeypatch.setattr(srv.runs, "append", broken)
        c = srv.client()
        reply = c.call(run_msg("l-1"))
        assert reply.type == "result" and reply.body["logged"] is False
        assert reply.arrays["counts"].tolist() == [[[10, 0, 0, 0]]]
        assert any("RUN LOG WRITE FAILED" in line for line in srv.lines)
        again = c.call(run_msg("l-1"))                 # kept in memory by id: not run again
        assert again.type == "result" and again.body["replayed"] is True and dev.executions == 1
    assert logged(tmp_path / "runs.sqlite") == []


# -- SIGTERM --------------------------------------------------------------------------------------------

def test_sigterm_lets_the_running_experiment_finish_then_goes_safe_and_closes_the_log(tmp_path):
    """`qhil lab serve` turns SIGTERM into server.stop() (lab/commands/lab.py); the server lets
    the running experiment finish, commits it, calls safe() and closes the run log. A client
    retrying against the restarted server gets the stored result; the device does not run again."""
    dev = ScriptedDevice(block=True)
    path = tmp_path / "runs.sqlite"
    previous = signal.getsignal(signal.SIGTERM)
    lines: list[str] = []
    srv = without_checkpointer(LabServer(dev, "tcp://127.0.0.1:*", path, log=lines.append))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    signal.signal(signal.SIGTERM, lambda *_: srv.stop())             # as `qhil lab serve` does
    c = None
    try:
        thread.start()
        c = Client(srv.endpoint)
        c.send(run_msg("t-1"))
        assert dev.started.wait(WAIT)
        safe_before = dev.safe_calls
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)                                # the handler ran; the experiment is still playing
        assert thread.is_alive() and not dev.is_safe
        dev.gate.set()
        thread.join(WAIT)
        assert not thread.is_alive()
        assert dev.is_safe and dev.safe_calls >= safe_before + 1
        assert logged(path) == ["t-1"]                 # committed before the stop completed
        assert not os.path.exists(f"{path}-wal")       # the log was closed (its WAL checkpointed away)
    finally:
        signal.signal(signal.SIGTERM, previous)
        dev.gate.set()
        srv.stop()
        thread.join(WAIT)
        if c is not None:
            c.close()
    dev2 = ScriptedDevice()
    with serving(dev2, tmp_path) as srv2:
        reply = srv2.client().call(run_msg("t-1"))
        assert reply.type == "result" and reply.body["replayed"] is True and dev2.executions == 0


# -- documented limits ------------------------------------------------------------------------------

class SmallDevice(ScriptedDevice):
    max_steps, max_shots, max_settings, max_dt = 4, 50, 2, 1.0


def test_describe_reports_the_limits_it_enforces(tmp_path):
    dev = SmallDevice()
    with serving(dev, tmp_path, max_message_bytes=MIN_MESSAGE_BYTES) as srv:
        c = srv.client()
        d = c.call(Message("describe", wire.new_id(), {})).body
        assert d["limits"] == {"max_steps": 4, "max_shots": 50, "max_settings": 2, "max_dt": 1.0}
        assert d["server"]["max_message_bytes"] == MIN_MESSAGE_BYTES
        four = [(0.0, 0.0)] * 4
        at_limit = c.call(run_msg("lim-ok", controls=four, settings=("ZZ", "XX"), shots=50, dt=1.0))
        assert at_limit.type == "result"
        cases = {
            "steps": (run_msg("lim-1", controls=[(0.0, 0.0)] * 5), "too_large", "controls"),
            "shots": (run_msg("lim-2", shots=51), "bad_request", "shots"),
            "settings": (run_msg("lim-3", settings=("ZZ", "XX", "YY")), "bad_request", "settings"),
            "dt": (run_msg("lim-4", dt=1.5), "bad_request", "dt"),
        }
        for what, (msg, code, param) in cases.items():
            e = err(c.call(msg))
            assert (e["code"], e.get("parameter")) == (code, param), what
        # the message limit: a request beyond max_message_bytes is refused whole
        big = run_msg("lim-5", controls=np.zeros((MIN_MESSAGE_BYTES // 16 + 1, 2)))
        assert err(c.call(big))["code"] == "too_large"
        # ping lists at most MAX_PING_IDS ids
        e = err(c.call(Message("ping", wire.new_id(), {"requests": ["x"] * (wire.MAX_PING_IDS + 1)})))
        assert (e["code"], e.get("parameter")) == ("bad_request", "requests")
    assert logged(tmp_path / "runs.sqlite") == ["lim-ok"] and dev.executions == 1


def test_reply_size_is_bounded_before_the_device_runs(tmp_path):
    """len(steps) × len(settings) × 2^n × 8 bytes of counts must fit the message limit."""
    class ManySettings(ScriptedDevice):
        max_settings = 4096
    dev = ManySettings()
    with serving(dev, tmp_path, max_message_bytes=MIN_MESSAGE_BYTES) as srv:
        settings = ["".join(p) for p in itertools.product("XYZ", repeat=2)] * 300     # 2,700 settings
        msg = run_msg("size-1", controls=[(0.0, 0.0)] * 2, steps=[0, 1, 2], settings=settings)
        e = err(srv.client().call(msg))
        assert (e["code"], e.get("parameter")) == ("too_large", "steps")
    assert dev.executions == 0 and not dev.started.is_set()
    assert 3 * 2700 * 4 * 8 > MIN_MESSAGE_BYTES > len(str(settings))     # the reply is too big, the request is not


# -- a server bug found by these tests --------------------------------------------------------------

def _row(rid: str) -> tuple:
    values = {c: "x" for c in RUN_COLUMNS}
    values.update(request_id=rid, received_at=0.0, started_at=0.0, finished_at=0.0, counts=b"",
                  counts_dtype="int64", counts_shape="[0]", reply="{}")
    return tuple(values[c] for c in RUN_COLUMNS)


def test_run_log_close_right_after_a_write_does_not_stall(tmp_path):
    """Regression: RunLog._checkpoints cleared its wake-up event after its sleep, losing the one
    close() had set, and waited again: a close (a server stop, SIGTERM) within checkpoint_interval
    of a write blocked for the 30 s join timeout (found with these tests; fixed in lab/server.py)."""
    log = RunLog(tmp_path / "c.sqlite", checkpoint_interval=1.0)
    log.append(_row("c-1"))
    time.sleep(0.3)                     # the checkpointer has woken and is gathering writes (1 s)
    closer = threading.Thread(target=log.close, daemon=True)
    closer.start()
    closer.join(3.0)                    # a close takes milliseconds; the bug holds it for 30 s
    assert not closer.is_alive(), "RunLog.close is still waiting for its checkpointer"
