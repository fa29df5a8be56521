"""One owner at a time (qhil issue 13, item 7): ``qhil lab serve --lock``. Experiments need the
lock; a lock request names its owner and is refused while another owner holds it; runs from
anyone else are refused (``locked``, naming the holder, not retried); read-only calls always
work; the owner unlocks, or an operator forces it open with the server's emergency key."""
from __future__ import annotations

import json
import os
import queue
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from qhil.drivers import Experiment, MeasurementSchedule, ValidationError, create_backend
from qhil.drivers.bridge import wire
from qhil.drivers.bridge.wire import BridgeError, Message
from qhil.envs import XYChain
from qhil.lab.device import NullDevice

from labserver import ThreadServer

MODEL = XYChain(n_spins=2, field_bound=5.0)
MODEL_ARGS = ["--model", "xy_chain", "--n-spins", "2", "--field-bound", "5.0"]
SCHED = MeasurementSchedule("energies", final_only=True, shots=10)
START_TIMEOUT = 60.0


def experiment(scale: float = 1.0) -> Experiment:
    return Experiment(MODEL, np.array([[1.0, -1.0], [0.5, 0.5]]) * scale, 0.2, SCHED)


def lock_server(run_log: Path, **kw) -> ThreadServer:
    """A null device behind a LabServer in a thread (``require_lock`` etc. in ``kw``)."""
    return ThreadServer(NullDevice(MODEL), run_log, **kw)


def client(srv: ThreadServer, owner: str | None = None):
    return create_backend(srv.spec, seed=1, timeout=10, retries=2, heartbeat=0.3, owner=owner)


@pytest.fixture
def locked_server(tmp_path):
    srv = lock_server(tmp_path / "runs.sqlite", require_lock=True)
    yield srv
    srv.close()


def refused(call, holder: str | None) -> BridgeError:
    """``call()`` is refused with a non-retryable ``locked`` error naming ``holder``."""
    with pytest.raises(BridgeError) as info:
        call()
    assert info.value.code == "locked" and info.value.retryable is False, info.value
    if holder is not None:
        assert repr(holder) in str(info.value)
    return info.value


def test_two_clients_never_interleave(locked_server):
    srv = locked_server
    with client(srv, "alice") as alice, client(srv, "bob") as bob, client(srv) as anonymous:
        err = refused(lambda: alice.run(experiment()), None)       # --lock: take the lock first
        assert "requires the experiment lock" in str(err)
        state = alice.lock()
        assert state["locked"] and state["owner"] == "alice" and state["required"] is True
        assert alice.lock()["owner"] == "alice"                      # taking it again is fine
        a1 = alice.run(experiment())[0]

        refused(lambda: bob.run(experiment(0.5)), "alice")          # bob's run: refused, not retried
        refused(lambda: anonymous.run(experiment(0.5)), "alice")
        refused(bob.lock, "alice")
        refused(bob.unlock, "alice")                                # only the owner unlocks
        info = bob.describe(refresh=True)                           # read-only calls always work
        assert info["lock"]["owner"] == "alice" and info["lock"]["locked"] and info["lock"]["since"] > 0
        assert bob.ping() > 0

        assert alice.unlock() == {"required": True, "locked": False, "owner": None, "since": None}
        assert alice.unlock()["locked"] is False                     # releasing a free lock is fine
        with bob.locked() as state:
            assert state["owner"] == "bob"
            b1 = bob.run(experiment(0.5))[0]
            refused(lambda: alice.run(experiment()), "bob")
        assert alice.describe(refresh=True)["lock"]["locked"] is False
    ids = [rid for rid, _ in srv.runs()]
    assert ids == [a1.metadata["bridge"]["request_id"], b1.metadata["bridge"]["request_id"]]
    assert [e["owner"] for _, e in srv.runs()] == ["alice", "bob"]   # the owner is logged with the run
    events = srv.events()
    assert [e.split(" (client")[0] for e in events] == ["lock: taken by 'alice'", "lock: released by 'alice'",
                                                       "lock: taken by 'bob'", "lock: released by 'bob'"]


def test_emergency_unlock_in_process(locked_server):
    srv = locked_server
    with client(srv, "bob") as bob, client(srv, "alice") as alice, client(srv) as operator:
        bob.lock()
        with pytest.raises(BridgeError) as info:
            operator.unlock(force=True, key="not-the-key")
        assert info.value.code == "bad_lock_key" and info.value.retryable is False
        assert alice.describe(refresh=True)["lock"]["owner"] == "bob"
        state = operator.unlock(force=True, key=srv.server.lock_key)
        assert state["locked"] is False
        assert alice.lock()["owner"] == "alice"
        alice.run(experiment())
    events = srv.events()
    assert any("forced unlock refused: wrong key" in e for e in events)
    assert any("forced open (held by 'bob') by an operator" in e for e in events)


def test_without_lock_flag_runs_need_no_lock_but_a_held_lock_excludes_others(tmp_path):
    srv = lock_server(tmp_path / "runs.sqlite")
    try:
        with client(srv, "alice") as alice, client(srv) as anonymous:
            anonymous.run(experiment())                              # no --lock: anyone runs
            assert anonymous.describe()["lock"] == {"required": False, "locked": False, "owner": None,
                                                    "since": None}
            alice.lock()
            refused(lambda: anonymous.run(experiment(0.5)), "alice")
            alice.run(experiment(0.5))
            alice.unlock()
            anonymous.run(experiment(0.25))
        assert len(srv.runs()) == 3
    finally:
        srv.close()


def test_retry_of_an_accepted_run_is_not_refused(locked_server):
    """The lock guards new executions: a run accepted while its owner held the lock is
    answered (from storage) after the lock changed hands, never run again."""
    srv = locked_server
    with client(srv, "alice") as alice, client(srv, "bob") as bob:
        alice.lock()
        msg = alice._request(experiment(), 3)
        [(first, _)] = alice._call_many([msg], 10.0)
        alice.unlock()
        bob.lock()
        [(again, _)] = alice._call_many([msg], 10.0)
        assert again.body["replayed"] and np.array_equal(again.arrays["counts"], first.arrays["counts"])
    assert [rid for rid, _ in srv.runs()] == [msg.id]


BAD_LOCK_BODIES = [
    ("lock", {}, "owner"), ("lock", {"owner": "bob smith"}, "owner"), ("lock", {"owner": 7}, "owner"),
    ("lock", {"owner": "bob", "force": True}, "body"), ("unlock", {}, "owner"),
    ("unlock", {"force": "yes", "key": "k"}, "force"), ("unlock", {"owner": "bob", "extra": 1}, "body"),
]


@pytest.mark.parametrize("kind,body,parameter", BAD_LOCK_BODIES)
def test_malformed_lock_requests(locked_server, kind, body, parameter):
    with client(locked_server) as c:
        c.describe()
        with pytest.raises(BridgeError) as info:
            c._call(Message(kind, wire.new_id(), body), 10.0)
        assert info.value.code == "bad_request" and info.value.parameter == parameter
        assert c.describe(refresh=True)["lock"]["locked"] is False


def test_run_with_a_bad_owner_is_refused(locked_server):
    with client(locked_server) as c:
        msg = c._request(experiment(), 1)
        msg.body["owner"] = ["alice"]
        with pytest.raises(BridgeError) as info:
            c._call_many([msg], 10.0)
        assert info.value.code == "bad_request" and info.value.parameter == "owner"


def test_client_lock_needs_an_owner():
    with create_backend("zmq://127.0.0.1:5555") as c:
        for call in (c.lock, c.unlock):
            with pytest.raises(ValidationError) as info:
                call()
            assert info.value.parameter == "owner"
        with pytest.raises(ValidationError) as info:
            c.unlock(force=True)
        assert info.value.parameter == "key"


# -- the command line: qhil lab serve --lock, qhil lab lock / unlock (--force) -------------

def test_cli_lock_and_emergency_unlock(tmp_path, capsys):
    from qhil.lab.cli import main
    log, key_file = tmp_path / "runs.sqlite", tmp_path / "emergency.key"
    args = [sys.executable, "-m", "qhil.lab.cli", "lab", "serve", "--device", "null", "--bind", "tcp://127.0.0.1:*",
            "--run-log", str(log), "--lock", "--lock-key-file", str(key_file), *MODEL_ARGS]
    err = open(tmp_path / "server.err", "w")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
        line = lines.get(timeout=START_TIMEOUT)
        assert line.startswith("READY"), (tmp_path / "server.err").read_text()
        spec = "zmq://" + line.split()[1].split("://", 1)[1]
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600 and len(key_file.read_text().strip()) >= 32
        with create_backend(spec, owner="bob", timeout=10) as bob, create_backend(spec, owner="alice",
                                                                                   timeout=10) as alice:
            refused(lambda: bob.run(experiment()), None)
            assert main(["lab", "lock", "--endpoint", spec, "--owner", "bob"]) == 0
            assert json.loads(capsys.readouterr().out)["owner"] == "bob"
            assert main(["lab", "lock", "--endpoint", spec, "--owner", "alice"]) == 2     # bob holds it
            assert "'bob'" in capsys.readouterr().err
            bob.run(experiment())
            refused(lambda: alice.run(experiment()), "bob")
            assert main(["lab", "unlock", "--endpoint", spec, "--owner", "alice"]) == 2   # not hers
            assert "'bob'" in capsys.readouterr().err
            bad = tmp_path / "wrong.key"
            bad.write_text("wrong\n")
            assert main(["lab", "unlock", "--endpoint", spec, "--force", "--key-file", str(bad)]) == 2
            assert "bad_lock_key" in capsys.readouterr().err
            assert main(["lab", "unlock", "--endpoint", spec, "--force"]) == 2          # no key file
            assert main(["lab", "unlock", "--endpoint", spec, "--force", "--key-file", str(key_file)]) == 0
            assert json.loads(capsys.readouterr().out)["locked"] is False
            alice.lock()
            alice.run(experiment(0.5))
            assert main(["lab", "unlock", "--endpoint", spec, "--owner", "alice"]) == 0
            assert alice.describe(refresh=True)["lock"]["locked"] is False
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        err.close()
    text = (tmp_path / "server.err").read_text()
    assert "lock: taken by 'bob'" in text and "forced open (held by 'bob')" in text
    assert key_file.read_text().strip() not in text             # the key is never logged
