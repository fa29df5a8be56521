"""Busy is not dead (qhil issue 13, item 5): a lab server working on a long request keeps the
client waiting however long the job takes, reports its progress in pongs, and never runs the
request twice; a dead server is still noticed within the heartbeat window. Also the
validation of the ZmqBackend's options (item 7)."""
from __future__ import annotations

import math
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from qhil.drivers import Experiment, MeasurementSchedule, ValidationError, create_backend
from qhil.drivers.bridge.wire import BridgeTimeout
from qhil.envs import XYChain
from qhil.lab.device import NullDevice

from labserver import ThreadServer

MODEL = XYChain(n_spins=2, field_bound=5.0)
SCHED = MeasurementSchedule("energies", final_only=True, shots=10)
CONTROLS = np.array([[1.0, -1.0], [0.5, 0.5]])
#: upper bound on starting a server subprocess on a loaded 2-core CI machine (not a benchmark)
START_TIMEOUT = 60.0


class SlowDevice(NullDevice):
    """Claims 0.05 s per experiment (``timing``) but takes ``seconds`` (a GIL-free sleep),
    and tells how far it is (``progress``)."""

    name = "slow"

    def __init__(self, model, seconds: float) -> None:
        super().__init__(model)
        self.seconds = seconds
        self._t0: float | None = None

    def timing(self) -> dict[str, float]:
        return {"overhead_s": 0.05, "solve_step_s": 0.0, "step_s": 0.0, "shot_s": 0.0}

    def progress(self) -> float | None:
        t0 = self._t0
        return None if t0 is None else min(1.0, (time.monotonic() - t0) / self.seconds)

    def execute(self, controls, dt, steps, settings, shots, rng):  # noqa: D102
        self._t0 = time.monotonic()
        try:
            time.sleep(self.seconds)
            return super().execute(controls, dt, steps, settings, shots, rng)
        finally:
            self._t0 = None


@pytest.fixture
def slow_server(tmp_path):
    srv = ThreadServer(SlowDevice(MODEL, 3.0), tmp_path / "runs.sqlite")
    yield srv
    srv.close()


def test_job_far_longer_than_its_estimate_completes(slow_server):
    """The device claims 0.05 s and takes 3 s; the client's first deadline is 0.5 + 3 × 0.05 s
    and it may not retry at all: pongs saying "running" keep it waiting, and say how far."""
    seen: list[tuple[str, dict]] = []
    with create_backend(slow_server.spec, seed=1, timeout=0.5, heartbeat=0.2, retries=0,
                        progress=lambda rid, info: seen.append((rid, info))) as b:
        r = b.run(Experiment(MODEL, CONTROLS, 0.2, SCHED))[0]
    rid = r.metadata["bridge"]["request_id"]
    assert r.metadata["bridge"]["attempts"] == 1 and not r.metadata["bridge"]["replayed"]
    assert r.counts.sum() == 10 * len(r.settings)
    assert slow_server.executions(rid) == 1
    running = [info for i, info in seen if i == rid and info["state"] == "running"]
    assert len(running) >= 3                                   # reported at pong after pong
    assert all(info["estimated_s"] == pytest.approx(0.05) for info in running)
    elapsed = [info["elapsed_s"] for info in running]
    assert elapsed == sorted(elapsed) and elapsed[-1] > 3 * 0.05     # past its estimate, still waited for
    # "fraction" appears once the device reports progress (not in a pong between the server
    # marking the job running and the device starting it)
    fractions = [info["fraction"] for info in running if "fraction" in info]
    assert len(fractions) >= 2 and all("fraction" in info for info in running[running.index(
        next(i for i in running if "fraction" in i)):])
    assert fractions == sorted(fractions) and 0.0 <= fractions[0] and fractions[-1] <= 1.0
    assert all(abs(info["started_at"] - running[0]["started_at"]) < 1e-6 for info in running)


def test_pong_between_the_device_finishing_and_the_reply_keeps_its_figures(tmp_path):
    """The device has finished the job but the reply is not yet sent (the run log is being
    written, the socket thread has not picked it up): a pong built in that window still says
    "running" and must carry the run's figures, with fraction 1 (it once carried none: the CI
    run that failed on ``info["estimated_s"]``)."""
    with ThreadServer(SlowDevice(MODEL, 0.1), tmp_path / "runs.sqlite") as srv:
        window: dict[str, float] = {}
        release = threading.Event()
        executed = srv.server._executed

        def held(job):                        # hold the worker inside the window
            executed(job)
            window["started"] = srv.server._run_progress[job.id][1]
            window["opened"] = time.monotonic()
            release.wait(30)

        srv.server._executed = held
        in_window: list[dict] = []

        def progress(rid, info):              # pongs built after the window opened (same clock)
            if info["state"] == "running" and "opened" in window \
                    and window["started"] + info["elapsed_s"] > window["opened"]:
                in_window.append(info)
                if len(in_window) >= 2:
                    release.set()

        with create_backend(srv.spec, seed=2, timeout=0.5, heartbeat=0.1, retries=0,
                            progress=progress) as b:
            r = b.run(Experiment(MODEL, CONTROLS, 0.2, SCHED))[0]
        assert r.metadata["bridge"]["attempts"] == 1
        assert not srv.server._run_progress          # dropped with the reply: nothing accumulates
    assert len(in_window) >= 2
    assert all(i["estimated_s"] == pytest.approx(0.05) and i["fraction"] == 1.0 for i in in_window)


def test_busy_with_a_timeout_shorter_than_the_heartbeat(slow_server):
    """timeout ≤ heartbeat: each "running" pong must move the deadline past the next pong (a
    deadline of timeout after the pong would expire before it and end a busy run)."""
    with create_backend(slow_server.spec, seed=3, timeout=0.2, heartbeat=0.5, retries=0) as b:
        r = b.run(Experiment(MODEL, CONTROLS, 0.2, SCHED))[0]
    assert r.metadata["bridge"]["attempts"] == 1
    assert slow_server.executions(r.metadata["bridge"]["request_id"]) == 1


def test_queued_requests_report_their_place(tmp_path):
    """A pipelined batch of three on a slow device: the third is first reported queued with
    one request queued before it, then none, then running; each runs once, in order."""
    srv = ThreadServer(SlowDevice(MODEL, 0.7), tmp_path / "runs.sqlite")
    seen: list[tuple[str, dict]] = []
    try:
        with create_backend(srv.spec, seed=2, timeout=0.5, heartbeat=0.1, retries=0,
                            progress=lambda rid, info: seen.append((rid, info))) as b:
            batch = [Experiment(MODEL, CONTROLS * f, 0.2, SCHED) for f in (1.0, 0.5, 0.25)]
            results = b.run(batch)
        ids = [r.metadata["bridge"]["request_id"] for r in results]
        third = [(info["state"], info.get("ahead")) for i, info in seen if i == ids[2]]
        places = [a for st, a in third if st == "queued"]
        assert places[0] == 1 and places[-1] == 0 and places == sorted(places, reverse=True)
        states = [st for st, _ in third]
        assert states[-1] == "running" and "queued" not in states[states.index("running"):]
        assert "queued" not in [info["state"] for i, info in seen if i == ids[0]][1:]
        assert [srv.executions(r) for r in ids] == [1, 1, 1]
    finally:
        srv.close()


def test_max_wait_caps_the_wait(slow_server):
    """max_wait bounds one call however busy the server says it is; the server finishes the
    request anyway (once), and sending it again with its id fetches the stored result."""
    with create_backend(slow_server.spec, seed=3, timeout=0.5, heartbeat=0.2, retries=3, max_wait=1.0) as b:
        e = Experiment(MODEL, CONTROLS, 0.2, SCHED)
        msg = b._request(e, 7)
        with pytest.raises(BridgeTimeout, match="max_wait") as info:
            b._call_many([msg], 10.0)
        assert info.value.code == "timeout" and b.last_progress[msg.id]["state"] == "running"
        b.max_wait = None
        [(reply, attempts)] = b._call_many([msg], 10.0)
        assert reply.type == "result" and attempts == 1
    assert slow_server.executions(msg.id) == 1


# -- a server in a subprocess: killed, or holding the GIL ---------------------------------

SERVER_SCRIPT = textwrap.dedent("""
    import ctypes, sys, time
    from qhil.envs import XYChain
    from qhil.lab.device import NullDevice
    from qhil.lab.server import LabServer

    HOLD = float(sys.argv[3])
    libc = ctypes.PyDLL(None)     # a PyDLL call keeps the GIL: like a C library computing

    class Busy(NullDevice):
        name = "busy"
        def timing(self):
            return {"overhead_s": 0.05, "solve_step_s": 0.0, "step_s": 0.0, "shot_s": 0.0}
        def execute(self, controls, dt, steps, settings, shots, rng):
            if sys.argv[2] == "gil":
                libc.usleep(ctypes.c_uint(int(HOLD * 1e6)))
            else:
                time.sleep(HOLD)
            return super().execute(controls, dt, steps, settings, shots, rng)

    srv = LabServer(Busy(XYChain(n_spins=2, field_bound=5.0)), "tcp://127.0.0.1:*", sys.argv[1])
    print("READY", srv.endpoint, flush=True)
    srv.serve_forever()
""")


class ServerProcess:
    def __init__(self, tmp: Path, mode: str, hold: float) -> None:
        self.run_log = tmp / f"runs-{mode}.sqlite"
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(self.run_log), mode, str(hold)],
                                     stdout=subprocess.PIPE, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        if not line or not line[0].startswith("READY"):
            self.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.spec = "zmq://" + line[0].split()[1].split("://", 1)[1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def executions(self) -> list[str]:
        with sqlite3.connect(self.run_log, timeout=10) as db:
            return [r[0] for r in db.execute("SELECT request_id FROM runs")]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_dead_or_frozen_server_is_detected_within_the_heartbeat_window(tmp_path, how):
    """SIGKILL (its connection closes) or SIGSTOP (it stops answering the transport's
    heartbeats) while the server runs a long request: the client, which was told "running",
    gives up with a timeout ("silent") within heartbeat × liveness (plus one heartbeat for the
    transport's timer) and a generous margin, not after its 30 s reply timeout nor the job's
    length (60 s)."""
    srv = ServerProcess(tmp_path, "sleep", 60.0)
    killed: list[float] = []

    def kill_when_running(rid: str, info: dict) -> None:
        if info["state"] == "running" and not killed:
            srv.proc.send_signal(getattr(signal, how))
            killed.append(time.monotonic())
    heartbeat, liveness = 0.5, 2          # a 1 s window
    try:
        with create_backend(srv.spec, seed=4, timeout=30.0, heartbeat=heartbeat, liveness=liveness, retries=0,
                            progress=kill_when_running) as b:
            with pytest.raises(BridgeTimeout) as info:
                b.run(Experiment(MODEL, CONTROLS, 0.2, SCHED))
            noticed = time.monotonic()
        assert killed, "the server never reported the request running"
        assert info.value.code == "timeout" and "last: silent" in str(info.value)
        assert noticed - killed[0] < heartbeat * (liveness + 1) + 5.0     # a correctness bound, not a benchmark
    finally:
        srv.proc.send_signal(signal.SIGCONT)
        srv.kill()


def test_gil_holding_device_is_busy_not_dead(tmp_path):
    """The device holds the server's GIL for 3 s (no pong can be written meanwhile), three times
    the client's liveness window: the transport's heartbeats (answered by libzmq's I/O thread)
    keep the server alive in the client's eyes; one attempt, one execution."""
    srv = ServerProcess(tmp_path, "gil", 3.0)
    try:
        with create_backend(srv.spec, seed=5, timeout=8.0, heartbeat=0.25, liveness=4, retries=0) as b:
            b.describe()
            r = b.run(Experiment(MODEL, CONTROLS, 0.2, SCHED))[0]
            assert r.metadata["bridge"]["attempts"] == 1 and b.reconnects == 0
            assert r.metadata["bridge"]["device_s"] >= 3.0
        assert srv.executions() == [r.metadata["bridge"]["request_id"]]
    finally:
        srv.kill()


def test_dead_endpoint_is_still_noticed():
    """Nothing listens: no handshake, so no transport heartbeat either; "silent" ends each
    attempt (the 600 s timeout never matters)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with create_backend(f"zmq://127.0.0.1:{port}", timeout=600, retries=1, backoff=0.05, heartbeat=0.2,
                        liveness=2) as b:
        with pytest.raises(BridgeTimeout, match="last: silent"):
            b.describe()
        assert b.reconnects == 2


# -- option validation --------------------------------------------------------------------

BAD_OPTIONS = [
    ("timeout", math.nan), ("timeout", 0), ("timeout", -1.0), ("timeout", math.inf), ("timeout", "10"),
    ("pipeline", -5), ("pipeline", 0), ("pipeline", 257), ("pipeline", 2.5), ("pipeline", True),
    ("heartbeat", math.inf), ("heartbeat", 0.0), ("heartbeat", math.nan), ("heartbeat", 1e6),
    ("retries", -1), ("retries", 1.5), ("retries", None),
    ("liveness", 0), ("liveness", math.nan),
    ("backoff", -0.1), ("backoff", math.nan), ("max_backoff", math.inf),
    ("max_wait", 0), ("max_wait", math.nan), ("max_wait", -3), ("max_wait", math.inf),
    ("owner", 42), ("owner", ""), ("owner", "bob smith"), ("owner", "x" * 65), ("owner", b"alice"),
    ("progress", "print"), ("check_model", "yes"),
]


@pytest.mark.parametrize("name,value", BAD_OPTIONS, ids=[f"{n}={v!r}"[:40] for n, v in BAD_OPTIONS])
def test_bad_options_are_refused(name, value):
    with pytest.raises(ValidationError) as info:
        create_backend("zmq://127.0.0.1:5555", **{name: value})
    assert info.value.parameter == name and info.value.allowed


def test_good_options_are_kept():
    with create_backend("zmq://127.0.0.1:5555", timeout=2, pipeline=256, heartbeat=0.05, retries=0,
                        liveness=1, backoff=0, max_wait=30, owner="alice@lab-1", progress=print) as b:
        assert (b.timeout, b.pipeline, b.heartbeat, b.retries, b.liveness, b.max_wait, b.owner) == \
            (2.0, 256, 0.05, 0, 1, 30.0, "alice@lab-1")
        assert isinstance(b.timeout, float) and isinstance(b.pipeline, int)
