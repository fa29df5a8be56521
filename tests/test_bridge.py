"""The ZeroMQ lab bridge, end to end over loopback sockets: the client driver against a lab
server running the qiskit-dynamics emulator in a subprocess."""
from __future__ import annotations

import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from qhil.drivers import (Experiment, MeasurementSchedule, UnsupportedError, ValidationError,
                          create_backend)
from qhil.drivers.bridge import wire
from qhil.drivers.bridge.wire import BridgeError, Message
from qhil.envs import DickeBattery

OMEGAS = (0.9, 1.3, 0.7)
N_MAX = 10
MODEL = DickeBattery(omegas=OMEGAS, n_max=N_MAX)
MODEL_ARGS = ["--omegas", ",".join(map(str, OMEGAS)), "--n-max", str(N_MAX)]
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabProcess:
    """`qhil lab serve` in a subprocess; always killed at teardown."""

    def __init__(self, tmp: Path, port: int | None = None, *extra: str, run_log: Path | None = None) -> None:
        """port None: the first start lets the server pick a free port (``:*``, read from its
        READY line); restarts reuse that port."""
        self.tmp, self.port, self.extra = tmp, port, list(extra)
        self.run_log = run_log or tmp / f"runs-{port}.sqlite"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def spec(self) -> str:
        return f"zmq://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> "LabProcess":
        args = [sys.executable, "-m", "qhil.lab.cli", "lab", "serve", "--bind", f"tcp://127.0.0.1:{self.port or '*'}",
                "--run-log", str(self.run_log), *MODEL_ARGS, *(extra or self.extra)]
        err = open(self.tmp / f"server-{self.port}-{self.starts}.err", "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
        self.starts += 1
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda p=self.proc: lines.put(p.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            self.stop()
            raise RuntimeError("lab server did not start in time") from None
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"lab server failed: {line!r} {(self.tmp / err.name).read_text()[-2000:]}")
        self.port = int(line.split()[1].rsplit(":", 1)[1])
        return self

    def kill(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def rows(self) -> list[tuple]:
        with sqlite3.connect(self.run_log, timeout=10) as db:
            return db.execute("SELECT request_id, experiment, counts_shape FROM runs ORDER BY seq").fetchall()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Emulator with exact mode and a small message limit (256 KiB)."""
    srv = LabProcess(tmp_path_factory.mktemp("lab"), None, "--allow-exact",
                     "--max-message-bytes", str(256 * 1024))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(lab):
    b = create_backend(lab.spec, seed=5, timeout=10, retries=2, heartbeat=0.3)
    yield b
    b.close()


class Raw:
    """A bare DEALER for hand-made (and broken) frames."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint.replace("zmq://", "tcp://"))

    def call(self, frames: list, timeout: float = 10.0) -> Message:
        self.sock.send_multipart(frames)
        if not self.sock.poll(timeout * 1000):
            raise AssertionError("no reply")
        return wire.decode(self.sock.recv_multipart(), wire.REPLY_TYPES)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def raw(lab):
    r = Raw(lab.spec)
    yield r
    r.close()


def run_msg(controls, channels=("coupling",), steps=None, settings=("ZZZ",), shots=100, rid=None, **body):
    controls = np.asarray(controls, dtype=float)
    b = {"dt": 0.2, "channels": list(channels), "steps": steps if steps is not None else [len(controls)],
         "settings": list(settings), "shots": shots, **body}
    return Message("run", rid or wire.new_id(), b, {"controls": controls})


def exact(controls, schedule):
    return create_backend("statevector").run(Experiment(MODEL, controls, 0.2, schedule))[0]


CONTROLS = np.array([0.3, -0.2, 0.1, 0.25, -0.3, 0.05])


# -- results match the exact driver ---------------------------------------------------------

def test_exact_mode_matches_statevector(client):
    sched = MeasurementSchedule("second_order", every=2, shots=None)
    r = client.run(Experiment(MODEL, CONTROLS, 0.2, sched))[0]
    ref = exact(CONTROLS, sched)
    assert r.labels == ref.labels and np.array_equal(r.steps, ref.steps)
    assert np.max(np.abs(r.values - ref.values)) < 1e-6
    assert r.qubit_density is None and r.state is None and r.counts is None
    assert r.metadata["driver"] == "zmq" and r.metadata["cost"] == ref.metadata["cost"]
    assert r.metadata["bridge"]["replay"]["circuits"] == len(r.steps) * len(r.settings)


def test_shots_match_statevector_within_noise(client):
    shots = 4000
    sched = MeasurementSchedule("first_order", every=3, shots=shots)
    r = client.run(Experiment(MODEL, CONTROLS, 0.2, sched))[0]
    ref = exact(CONTROLS, MeasurementSchedule("first_order", every=3))
    assert r.counts.shape == (len(r.steps), len(r.settings), 8) and np.all(r.counts.sum(-1) == shots)
    z = (r.values - ref.values) / np.maximum(r.stderr, 1.0 / shots)
    assert np.max(np.abs(z)) < 5.0
    assert 0.3 < np.mean(z ** 2) < 2.5           # the error bars are the right size
    cost = r.metadata["cost"]
    assert r.metadata["bridge"]["replay"]["played_steps"] == cost["played_steps"] > 0


def test_pipelined_batch(client, lab):
    """A batch goes out pipelined (several requests in flight); each result is its own."""
    sched = MeasurementSchedule("energies", every=2, shots=None)
    batch = [Experiment(MODEL, CONTROLS * f, 0.2, sched) for f in (1.0, -1.0, 0.5, 0.0, -0.5)]
    before = len(lab.rows())
    client.pipeline = 3
    results = client.run(batch)
    for e, r in zip(batch, results):
        assert np.max(np.abs(r.values - exact(e.controls, sched).values)) < 1e-6
    ids = [r.metadata["bridge"]["request_id"] for r in results]
    assert [row[0] for row in lab.rows()[before:]] == ids


def test_client_side_checks(client, lab):
    with pytest.raises(ValidationError, match="full state"):
        client.run(Experiment(MODEL, CONTROLS, 0.2, MeasurementSchedule("full_state")))
    other = DickeBattery(omegas=OMEGAS, n_max=N_MAX + 1)
    with pytest.raises(ValidationError, match="model"):
        client.run(Experiment(other, CONTROLS, 0.2, MeasurementSchedule(shots=10)))
    wide = DickeBattery(omegas=OMEGAS, n_max=N_MAX, coupling_bound=0.5)
    before = len(lab.rows())
    with create_backend(lab.spec, check_model=False, timeout=10) as loose:
        with pytest.raises(ValidationError, match="device's bounds"):
            loose.run(Experiment(wide, [0.2, 0.4], 0.2, MeasurementSchedule(shots=10)))
        loose.run(Experiment(wide, [0.2, 0.3], 0.2, MeasurementSchedule(shots=10)))   # inside: runs
    assert len(lab.rows()) == before + 1


def test_describe(client):
    d = client.describe()
    assert d["n_qubits"] == 3 and d["channels"][0]["name"] == "coupling"
    assert d["channels"][0]["upper"] == 0.3 and d["channels"][0]["safe"] == 0.0
    assert d["model"] == MODEL.to_dict() and d["exact_expectations"] is True
    assert set(d["calibration"]) >= {"amplitude_scale", "readout_error", "rise_time", "frequency_offsets"}
    assert d["server"]["protocol"] == wire.PROTOCOL_VERSION and d["state"]["safe"] is True


def test_episode_through_bridge(client, lab):
    """Closed loop: at every step measure the state after the prefix, act on what was seen."""
    sched = MeasurementSchedule("energies", final_only=True, shots=200)
    applied: list[float] = []
    before = len(lab.rows())
    for k in range(6):
        r = client.run(Experiment(MODEL, applied, 0.2, sched))[0]
        assert r.steps.tolist() == [k] and r.values.shape == (1, 3)
        z_mean = float(r.values[-1].mean())
        applied.append(0.3 if z_mean > 0 else -0.3)       # a bang-bang "policy"
    ids = [row[0] for row in lab.rows()[before:]]
    assert len(ids) == 6 == len(set(ids))
    assert json.loads(lab.rows()[-1][1])["controls"] == [[u] for u in applied[:5]]


def test_charging_env_episode_through_bridge(client):
    """The RL environment (two batteries in lock-step, one backend call per step) gives the
    same observations and rewards through the bridge (exact mode) as on the exact driver."""
    from qhil.envs.charging import ChargingVectorEnv
    kw = dict(battery=MODEL, regime="first_order", n_envs=2, tau=1.2, n_steps=4, weight=1.0)
    bridge, ref = ChargingVectorEnv(backend=client, **kw), ChargingVectorEnv(**kw)
    o1, _ = bridge.reset()
    o2, _ = ref.reset()
    assert np.allclose(o1, o2, atol=1e-6)
    actions = np.random.default_rng(0).uniform(-0.3, 0.3, size=(4, 2))
    for a in actions:
        o1, r1, d1, _, _ = bridge.step(a)
        o2, r2, d2, _, _ = ref.step(a)
        assert np.allclose(o1, o2, atol=1e-6) and np.allclose(r1, r2, atol=1e-6)
    assert d1.all() and d2.all()


def test_deploy_open_and_closed_loop(lab, tmp_path):
    from qhil.lab.cli import main
    proto = tmp_path / "protocol.json"
    proto.write_text(json.dumps({"controls": CONTROLS.tolist(), "dt": 0.2}))
    log = tmp_path / "deploy.jsonl"
    out = tmp_path / "out.json"
    assert main(["deploy", "--endpoint", lab.spec, "--protocol", str(proto), "--shots", "0",
                 "--log", str(log), "--out", str(out), "--every", "3", "--no-tomography"]) == 0
    doc = json.loads(out.read_text())
    ref = exact(CONTROLS, MeasurementSchedule("energies", every=3))
    assert np.allclose(doc["measured"]["energies"], MODEL.tls_energies_from_z(ref.values), atol=1e-6)
    assert doc["measured"]["steps"] == [0, 3, 6] and doc["tomography"] is None
    pol = tmp_path / "pol.py"
    pol.write_text("def act(obs, step):\n    return 0.3 if step % 2 == 0 else -0.1\n")
    before = {row[0] for row in lab.rows()}
    assert main(["deploy", "--endpoint", lab.spec, "--policy", f"{pol}:act", "--steps", "4", "--dt", "0.2",
                 "--shots", "50", "--log", str(log), "--out", str(out), "--no-tomography"]) == 0
    doc = json.loads(out.read_text())
    assert doc["controls"] == [[0.3], [-0.1], [0.3], [-0.1]] and doc["cost"]["experiments"] == 5
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(logged) == 6
    new = {row[0] for row in lab.rows()} - before
    assert new == {rec["request_id"] for rec in logged[1:]}        # every executed one, logged both ends
    assert main(["deploy", "--endpoint", lab.spec, "--policy", f"{pol}:nope", "--steps", "2",
                 "--dt", "0.2", "--log", str(log)]) == 2


# -- idempotency ----------------------------------------------------------------------------

def test_same_id_never_runs_twice(raw, lab):
    msg = run_msg([[0.1], [0.2]], shots=500)
    frames = wire.encode(msg)
    first = raw.call(frames)
    second = raw.call(frames)
    assert first.type == second.type == "result"
    assert np.array_equal(first.arrays["counts"], second.arrays["counts"])
    assert first.body["replayed"] is False and second.body["replayed"] is True
    assert [r[0] for r in lab.rows()].count(msg.id) == 1
    changed = run_msg([[0.1], [0.25]], shots=500, rid=msg.id)     # same id, other request
    assert raw.call(wire.encode(changed)).body["error"]["code"] == "id_reused"


def test_lost_reply_is_fetched_again(raw, client, lab):
    """A reply that went to another connection: heartbeats report the request "done", the
    client re-sends it, and gets the stored result without a second execution."""
    msg = run_msg([[0.2]], shots=300)
    first = raw.call(wire.encode(msg))                  # "another connection" got the reply
    client.describe()
    got, reason, lost = client._wait([msg.id], 30.0, {msg.id})   # waiting, no reply coming
    assert got == {} and reason is None and lost == [msg.id]
    [(again, attempts)] = client._call_many([msg], 30.0)
    assert again.body["replayed"] and np.array_equal(again.arrays["counts"], first.arrays["counts"])
    assert [r[0] for r in lab.rows()].count(msg.id) == 1
    assert client._wait(["nobody-sent-this"], 30.0, {"nobody-sent-this"})[2] == ["nobody-sent-this"]


# -- bad requests are rejected and the server keeps serving ---------------------------------

def _header(**kw):
    h = {"v": wire.PROTOCOL_VERSION, "type": "describe", "id": "abc"}
    h.update(kw)
    return json.dumps(h).encode()


BAD = {
    "no signature": ([b"hello"], "bad_frame"),
    "not json": ([wire.SIGNATURE, b"{nope"], "bad_frame"),
    "not an object": ([wire.SIGNATURE, b"[1, 2]"], "bad_frame"),
    "nan in header": ([wire.SIGNATURE, b'{"v": "1.0", "type": "describe", "id": "a", "body": {"x": NaN}}'],
                      "bad_frame"),
    "wrong version": ([wire.SIGNATURE, _header(v="2.0")], "version_mismatch"),
    "no version": ([wire.SIGNATURE, _header(v=None)], "bad_request"),
    "unknown type": ([wire.SIGNATURE, _header(type="launch")], "unknown_type"),
    "bad id": ([wire.SIGNATURE, _header(id="a b/c")], "bad_request"),
    "array count": ([wire.SIGNATURE, _header(arrays=[{"name": "x", "dtype": "float64", "shape": [2]}])],
                    "bad_frame"),
    "array size": ([wire.SIGNATURE, _header(arrays=[{"name": "x", "dtype": "float64", "shape": [2]}]), b"123"],
                   "bad_frame"),
    "pickle dtype": ([wire.SIGNATURE, _header(arrays=[{"name": "x", "dtype": "object", "shape": [1]}]), b"1"],
                     "bad_request"),
    "oversized": ([wire.SIGNATURE, _header(), b"\0" * (300 * 1024)], "too_large"),
    "unhashable dtype": ([wire.SIGNATURE, _header(arrays=[{"name": "x", "dtype": ["float64"], "shape": [1]}]),
                          b"12345678"], "bad_request"),
    "bool in shape": ([wire.SIGNATURE, _header(arrays=[{"name": "x", "dtype": "uint8", "shape": [True]}]), b"1"],
                      "bad_request"),
    "header not utf-8": ([wire.SIGNATURE, _header().replace(b"describe", b"d\xe9scribe")], "bad_frame"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_frames_rejected(raw, case):
    frames, code = BAD[case]
    reply = raw.call(frames)
    assert reply.type == "error" and reply.body["error"]["code"] == code, reply.body
    assert reply.body["error"]["retryable"] is False and reply.body["error"]["message"]
    assert raw.call(wire.encode(Message("ping", "p1"))).type == "pong"     # still serving


RUN_ERRORS = {
    "out of bounds": (dict(controls=[[0.1], [0.31]]), "out_of_bounds", "controls[1, coupling]"),
    "nan control": (dict(controls=[[0.1], [np.nan]]), "out_of_bounds", "controls[1, coupling]"),
    "unknown channel": (dict(controls=[[0.1, 0.0]], channels=("coupling", "laser")), "unknown_channel",
                        "channels.laser"),
    "missing channel": (dict(controls=np.zeros((1, 0)), channels=()), "missing_channel", "channels"),
    "bad setting": (dict(controls=[[0.1]], settings=("ZQZ",)), "bad_request", "settings"),
    "step beyond": (dict(controls=[[0.1]], steps=[2]), "bad_request", "steps"),
    "too many shots": (dict(controls=[[0.1]], shots=10**9), "bad_request", "shots"),
    "bad dt": (dict(controls=[[0.1]], dt=-1.0), "bad_request", "dt"),
    "other model": (dict(controls=[[0.1]], model={"kind": "dicke", "params": {}}), "model_mismatch", "model"),
    "unknown field": (dict(controls=[[0.1]], launch=True), "bad_request", "body"),
    "steps not increasing": (dict(controls=[[0.1], [0.2]], steps=[0, 2, 1]), "bad_request", "steps"),
    "huge step": (dict(controls=[[0.1], [0.2]], steps=[0, 10**30, 2]), "bad_request", "steps"),
    "bool step": (dict(controls=[[0.1]], steps=[True]), "bad_request", "steps"),
    "negative step": (dict(controls=[[0.1]], steps=[-1, 1]), "bad_request", "steps"),
    "bad schedule": (dict(controls=[[0.1]], schedule={"observables": "energies", "final_only": 1}),
                     "bad_request", "schedule"),
}


@pytest.mark.parametrize("case", sorted(RUN_ERRORS))
def test_invalid_runs_rejected(raw, lab, case):
    kw, code, parameter = RUN_ERRORS[case]
    before = len(lab.rows())
    controls = kw.pop("controls")
    msg = run_msg(controls, **kw)
    reply = raw.call(wire.encode(msg))
    assert reply.type == "error" and reply.id == msg.id
    assert reply.body["error"]["code"] == code and reply.body["error"]["parameter"] == parameter
    assert len(lab.rows()) == before                            # nothing ran
    assert raw.call(wire.encode(run_msg([[0.1]], shots=10))).type == "result"   # still serving


def test_client_rejects_other_major_version():
    """A fake server that answers hello with protocol 2.0."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def serve():
        if router.poll(10000):
            ident, *frames = router.recv_multipart()
            m = wire.decode(frames)
            router.send_multipart([ident, *wire.encode(Message("hello", m.id, {"protocol": "2.0"}, version="2.0"))])
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    b = create_backend(f"zmq://127.0.0.1:{port}", timeout=5, retries=0)
    try:
        with pytest.raises(BridgeError, match="version") as info:
            b.describe()
        assert info.value.code == "version_mismatch"
    finally:
        b.close()
        t.join(timeout=5)
        router.close()
        ctx.term()


def test_dead_endpoint_times_out_quickly():
    b = create_backend(f"zmq://127.0.0.1:{free_port()}", timeout=600, retries=1, backoff=0.05, heartbeat=0.2,
                       liveness=2)
    try:
        with pytest.raises(BridgeError, match="no reply") as info:
            b.describe()
        assert "last: silent" in str(info.value)     # noticed by heartbeats, not the 600 s timeout
        assert b.reconnects == 2                     # Lazy Pirate: a fresh socket per attempt
    finally:
        b.close()


# -- server killed and restarted mid-episode ------------------------------------------------

class Supervisor:
    """Restarts the lab server whenever it dies (like systemd's Restart=always)."""

    def __init__(self, srv: LabProcess) -> None:
        self.srv, self.stopped, self.restarts = srv, threading.Event(), 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stopped.is_set():
            if self.srv.proc is not None and self.srv.proc.poll() is not None:
                self.srv.start("--allow-exact")
                self.restarts += 1
            time.sleep(0.05)

    def __enter__(self) -> "Supervisor":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join(timeout=START_TIMEOUT + 5)
        self.srv.stop()


def test_restart_mid_episode_runs_nothing_twice(tmp_path):
    """Execution 1 hits an injected device fault (retried); the server dies right after logging
    execution 3, before replying; later it is SIGKILLed between steps. The episode completes,
    the stored result of the crashed request is returned, and the log has each experiment once."""
    srv = LabProcess(tmp_path, None)
    srv.start("--allow-exact", "--crash-after", "3", "--inject-faults", "1")
    sched = MeasurementSchedule("energies", final_only=True, shots=None)
    K = 6
    results = []
    with Supervisor(srv) as sup, create_backend(srv.spec, seed=3, timeout=20, retries=12, backoff=0.1, max_backoff=0.5,
                                                heartbeat=0.25, liveness=3) as b:
        for k in range(K + 1):
            if k == 5:
                srv.kill()
            results.append(b.run(Experiment(MODEL, CONTROLS[:k], 0.2, sched))[0])
            if k == 0:     # the fault left the device safe, and nothing was logged for it
                state = b.describe(refresh=True)["state"]
                assert state["faults"] == 1 and state["safe"] and state["safe_calls"] >= 2
        assert sup.restarts == 2
    rows = srv.rows()
    ids = [r[0] for r in rows]
    assert ids == [r.metadata["bridge"]["request_id"] for r in results]     # once each, in order
    assert results[0].metadata["bridge"]["attempts"] == 2                      # the device fault
    assert results[2].metadata["bridge"]["replayed"] and results[2].metadata["bridge"]["attempts"] >= 2
    assert not any(r.metadata["bridge"]["replayed"] for i, r in enumerate(results) if i != 2)
    ref = exact(CONTROLS, MeasurementSchedule("energies"))
    assert np.allclose(np.concatenate([r.values for r in results]), ref.values, atol=1e-6)
    with sqlite3.connect(srv.run_log) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        faults = db.execute("SELECT message FROM faults").fetchall()
    assert len(faults) == 1 and "injected fault" in faults[0][0]


# -- CURVE ----------------------------------------------------------------------------------

def test_curve_refuses_unauthorised_client(tmp_path):
    from qhil.lab.cli import main
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    allowed.mkdir()
    for name in ("server", "alice", "mallory"):
        assert main(["lab", "keygen", str(keys), "--name", name]) == 0
    os.replace(keys / "alice.key", allowed / "alice.key")
    srv = LabProcess(tmp_path, None, "--curve-secret", str(keys / "server.key_secret"),
                     "--allowed-keys", str(allowed))
    srv.start()
    try:
        opts = dict(timeout=5, retries=1, backoff=0.05, heartbeat=0.25, liveness=4)
        with create_backend(srv.spec, server_key=str(keys / "server.key"),
                            client_cert=str(keys / "mallory.key_secret"), **opts) as b:
            with pytest.raises(BridgeError) as info:
                b.describe()
            assert info.value.code == "auth_refused"
        with create_backend(srv.spec, **opts) as b:              # no CURVE at all
            with pytest.raises(BridgeError):
                b.describe()
        with create_backend(srv.spec, server_key=str(keys / "server.key"),
                            client_cert=str(keys / "alice.key_secret"), **opts) as b:
            assert b.describe()["server"]["curve"] is True
            r = b.run(Experiment(MODEL, CONTROLS[:2], 0.2, MeasurementSchedule(shots=20)))[0]
            assert r.counts.sum() == 20 * len(r.settings) * len(r.steps)
            with pytest.raises(UnsupportedError, match="shots"):   # no --allow-exact here
                b.run(Experiment(MODEL, CONTROLS[:2], 0.2, MeasurementSchedule(shots=None)))
        assert len(srv.rows()) == 1
    finally:
        srv.stop()


# -- the emulator's imperfections (in process) ----------------------------------------------

@pytest.fixture(scope="module")
def emulators():
    from qhil.lab.device import EmulatorDevice
    return lambda **kw: EmulatorDevice(MODEL, allow_exact=True, **kw)


def _probs(dev, controls=CONTROLS, settings=("ZZZ", "XXX")):
    dev.begin_episode(np.random.default_rng(0))
    return dev.execute(np.asarray(controls, float)[:, None], 0.2, np.array([0, 3, 6]), settings, None,
                       np.random.default_rng(0))


def test_emulator_imperfections(emulators):
    from qhil.drivers.pauli import estimate_from_counts
    ideal = _probs(emulators())
    ref = exact(CONTROLS, MeasurementSchedule("energies", every=3))
    z = np.stack([estimate_from_counts(p, ref.labels, ("ZZZ", "XXX"), 3)[0] for p in ideal])
    assert np.max(np.abs(z - ref.values)) < 1e-6
    # readout error p: ⟨Z⟩ → (1 − 2p)⟨Z⟩ exactly
    p = 0.05
    ro = _probs(emulators(readout_error=p))
    z_ro = np.stack([estimate_from_counts(q, ref.labels, ("ZZZ", "XXX"), 3)[0] for q in ro])
    assert np.allclose(z_ro, (1 - 2 * p) * ref.values, atol=1e-9)
    # amplitude error ε: the same as playing (1 + ε)·u ideally
    amp = _probs(emulators(amplitude_error=-0.1))
    assert np.allclose(amp, _probs(emulators(), controls=0.9 * CONTROLS), atol=1e-12)
    assert np.max(np.abs(amp - ideal)) > 1e-3
    # rise time: a slow filter changes the result, a very fast one does not
    assert np.max(np.abs(_probs(emulators(rise_time=0.1)) - ideal)) > 1e-3
    assert np.max(np.abs(_probs(emulators(rise_time=1e-5, oversample=4)) - ideal)) < 1e-3
    # frequency drift: offsets wander between episodes and change the outcome
    drift = emulators(frequency_drift=0.05, seed=1)
    a = _probs(drift)
    off1 = drift.calibration()["frequency_offsets"]
    b = _probs(drift)
    assert off1 != drift.calibration()["frequency_offsets"] and np.max(np.abs(a - b)) > 1e-4
    assert emulators().calibration()["frequency_offsets"] == [0.0, 0.0, 0.0]


def test_emulator_prefix_replay_equals_one_solve(emulators):
    """The emulator serves all prefixes from one solve; the generic prefix replay (one
    prepare–play–measure per step and setting) gives the same outcome probabilities."""
    from qhil.lab.device import PulseDevice
    dev = emulators(rise_time=0.05, amplitude_error=0.03)
    u = CONTROLS[:, None]
    fast = dev.execute(u, 0.2, np.array([0, 2, 5, 6]), ("ZZZ", "XYZ"), None, None)
    slow = PulseDevice.execute(dev, u, 0.2, np.array([0, 2, 5, 6]), ("ZZZ", "XYZ"), None, None)
    assert np.allclose(fast, slow, atol=1e-12)


# -- the fast paths give the same answers as the general code (in process, no sockets) --------

def test_shared_estimator_matches_estimate_from_counts():
    """The batched estimator both ends use equals estimate_from_counts step by step, to the last bit."""
    from qhil.drivers.pauli import estimate_from_counts
    rng = np.random.default_rng(1)
    for obs, n, shots in [("energies", 3, 100), ("second_order", 3, 1000), ("first_order", 2, None),
                          (("XX", "ZI", "IY"), 2, 7)]:
        sched = MeasurementSchedule(obs, shots=shots)
        labels, settings = sched.labels(n), sched.settings(n)
        shape = (4, len(settings))
        if shots:
            data = np.stack([[rng.multinomial(shots, rng.dirichlet(np.ones(2 ** n))) for _ in settings]
                             for _ in range(shape[0])])
        else:
            data = rng.dirichlet(np.ones(2 ** n), size=shape)
        values, stderr = estimate_from_counts(data, labels, settings, n)
        for m, d in enumerate(data):
            v, e = estimate_from_counts(d, labels, settings, n)
            assert np.array_equal(values[m], v) and np.array_equal(stderr[m], e)


def test_encode_json_body_is_encode():
    body = {"device": "null", "steps": [0, 3], "shots": None, "calibration": {"a": [1.0, 2.5]}, "x": "é"}
    counts = np.arange(8, dtype=np.int64).reshape(1, 2, 4)
    for arrays in ({"counts": counts}, {}):
        a = wire.encode(Message("result", "r1", body, arrays))
        b = wire.encode_json_body("result", "r1", wire.dumps(body), arrays)
        assert [bytes(f) for f in a] == [bytes(f) for f in b]
    back = wire.decode([bytes(f) for f in b], wire.REPLY_TYPES)
    assert back.body == body


def test_encode_decode_round_trip_dtypes():
    arrays = {"f": np.arange(6.0).reshape(2, 3), "i": np.arange(4, dtype=np.longlong),
              "c": np.array([1 + 2j]), "u": np.zeros((0, 2), np.uint8),
              "be": np.arange(3, dtype=">f8"), "t": np.arange(6.0).reshape(2, 3).T}
    m = wire.decode([bytes(f) for f in wire.encode(Message("run", "a1", {}, arrays))])
    for k, a in arrays.items():
        assert np.array_equal(m.arrays[k], a) and m.arrays[k].shape == a.shape
    with pytest.raises(BridgeError, match="dtype"):
        wire.encode(Message("run", "a2", {}, {"x": np.zeros(2, np.float32)}))


def test_run_log_checkpoints_off_the_reply_path(tmp_path):
    """The writer never checkpoints (wal_autocheckpoint=0); a background connection does, so
    the WAL is copied into the database file; the log stays consistent and readable."""
    from qhil.lab.server import RUN_COLUMNS, RunLog
    path = tmp_path / "log.sqlite"
    log = RunLog(path, checkpoint_interval=0.01)
    assert log._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert log._db.execute("PRAGMA synchronous").fetchone()[0] == 1          # NORMAL
    row = {c: "x" for c in RUN_COLUMNS}
    row.update(counts=b"\0" * 8, received_at=1.0, started_at=1.0, finished_at=1.0)
    for i in range(20):
        log.append({**row, "request_id": f"r{i}"})
    deadline = time.monotonic() + 30
    while log.checkpoints == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.checkpoints >= 1 and log.has("r7") and log.count() == 20
    with sqlite3.connect(path) as db:                     # another reader, while the log is open
        assert [r[0] for r in db.execute("SELECT request_id FROM runs ORDER BY seq")] == [f"r{i}" for i in range(20)]
    log.close()
    assert not log._checkpointer.is_alive()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 20
    full = RunLog(tmp_path / "full.sqlite", "full")
    assert full._db.execute("PRAGMA synchronous").fetchone()[0] == 2           # FULL
    full.close()
    mem = RunLog(":memory:")
    assert mem._checkpointer is None
    mem.close()


def test_server_validation_in_process(tmp_path):
    """The server's request checks without sockets: column order, clipping within tolerance,
    the digest (same request, same digest; other controls, other digest)."""
    from qhil.envs import XYChain
    from qhil.lab.device import NullDevice
    from qhil.lab.server import LabServer
    model = XYChain(n_spins=2, field_bound=5.0)
    srv = LabServer(NullDevice(model), "tcp://127.0.0.1:*", tmp_path / "v.sqlite")
    try:
        names = [c.name for c in model.controls]
        u = np.array([[1.0, -2.0], [5.0 + 1e-13, 0.5]])
        body = {"dt": 0.1, "channels": names[::-1], "steps": [0, 2], "settings": ["ZZ"], "shots": 10}
        job = srv._validate(Message("run", "v1", dict(body), {"controls": u[:, ::-1].copy()}))
        assert np.array_equal(job.controls, np.array([[1.0, -2.0], [5.0, 0.5]]))    # device order, clipped
        assert job.steps.tolist() == [0, 2] and job.settings == ("ZZ",)
        again = srv._validate(Message("run", "v1", dict(body), {"controls": u[:, ::-1].copy()}))
        other = srv._validate(Message("run", "v1", dict(body), {"controls": u[:, ::-1] * 0.5}))
        assert job.digest == again.digest != other.digest
        frames = srv._execute(job)
        reply = wire.decode([bytes(f) for f in frames], wire.REPLY_TYPES)
        assert reply.type == "result" and reply.arrays["counts"].shape == (2, 1, 4)
        digest, stored = srv.runs.lookup("v1")
        assert digest == job.digest
        assert wire.decode([bytes(f) for f in stored], wire.REPLY_TYPES).body == {**reply.body, "replayed": True}
    finally:
        srv.close()


def test_supply_chain_episode_through_bridge(tmp_path):
    """Seed 004's environment on the ZeroMQ bridge (an XY-chain emulator in exact mode): the
    same observations, rewards and fidelities as on the exact driver, where the bridge's
    fidelity comes from the measured Z strings (no state comes back over the wire)."""
    from qhil.envs import SupplyChainEnv
    srv = LabProcess(tmp_path, None, "--model", "xy_chain", "--n-spins", "3", "--field-bound", "6.0",
                     "--allow-exact").start()
    backend = create_backend(srv.spec, seed=5, timeout=10, retries=2, heartbeat=0.3)
    try:
        bridge, ref = SupplyChainEnv(backend=backend, max_steps=6), SupplyChainEnv(max_steps=6)
        o1, _ = bridge.reset(seed=3)
        o2, _ = ref.reset(seed=3)
        assert np.allclose(o1, o2, atol=1e-6)
        for a in [4, 4, 0, 6, 1, 7]:
            o1, r1, _, _, i1 = bridge.step(a)
            o2, r2, _, _, i2 = ref.step(a)
            assert np.allclose(o1, o2, atol=1e-6) and abs(r1 - r2) < 1e-6
            assert abs(i1["fidelity"] - i2["fidelity"]) < 1e-6
    finally:
        backend.close()
        srv.stop()
