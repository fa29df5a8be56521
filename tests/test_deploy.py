"""From the simulator to the lab: train a short run on the exact driver, deploy it with
``qhil deploy --run`` over real sockets to an emulator lab server in a subprocess, and compare
with the simulator (issue 13's end-to-end checks)."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from qhil.drivers import Experiment, MeasurementSchedule, create_backend
from qhil.envs import DickeBattery
from qhil.lab.cli import main
from qhil.experiments.battery.deployment import device_mismatches, load_run

OMEGAS = "0.9,1.1"
N_MAX = 8
BATTERY = DickeBattery(omegas=(0.9, 1.1), n_max=N_MAX)


def serve(tmp: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`qhil lab serve` (emulator) in a subprocess on a port it picks; (process, zmq spec)."""
    args = [sys.executable, "-m", "qhil.lab.cli", "lab", "serve", "--bind", "tcp://127.0.0.1:*",
            "--run-log", str(tmp / "server-runs.sqlite"), "--omegas", OMEGAS, "--n-max", str(N_MAX), *extra]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(tmp / "server.err", "w"), text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=90)
    except queue.Empty:
        proc.kill()
        raise RuntimeError("lab server did not start") from None
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"lab server failed: {line!r} {(tmp / 'server.err').read_text()[-2000:]}")
    endpoint = line.split()[1]
    return proc, "zmq://" + endpoint.split("://", 1)[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A short SAC run on a two-qubit twin, with a memory of actions (its normalisation must
    be rebuilt exactly on the device)."""
    run_dir = tmp_path_factory.mktemp("run")
    rc = main(["train", "--omegas", OMEGAS, "--n-max", str(N_MAX), "--regime", "first_order",
               "--history", "3", "--history-of", "actions", "--total-steps", "140", "--learning-starts", "56",
               "--hidden", "32,32", "--batch-size", "32", "--run-dir", str(run_dir), "--no-progress"])
    assert rc == 0
    return run_dir


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab")
    proc, spec = serve(tmp, "--allow-exact")
    yield spec
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def deploy(tmp: Path, *args: str) -> dict:
    out = tmp / "summary.json"
    rc = main(["deploy", *args, "--out", str(out), "--log", str(tmp / "log.jsonl")])
    assert rc == 0
    assert (tmp / "summary.png").stat().st_size > 10_000          # the figure was drawn
    return json.loads(out.read_text())


def test_run_records_what_deployment_needs(trained):
    run = load_run(trained)
    assert run.battery == BATTERY
    assert (run.regime, run.history, run.history_of, run.n_steps) == ("first_order", 3, "actions", 28)
    assert run.dt == pytest.approx(0.2)


def test_deploy_exact_equals_the_simulators_deterministic_episode(trained, lab, tmp_path):
    doc = deploy(tmp_path, "--run", str(trained), "--endpoint", lab, "--shots", "0", "--seed", "1")
    played = np.asarray(doc["controls"]).ravel()
    pred = doc["policy_prediction"]
    # the same observations (to the emulator's 1e-8) give the same actions
    np.testing.assert_allclose(played, pred["protocol"], atol=1e-6)
    sim = create_backend("statevector").run(
        Experiment(BATTERY, np.asarray(pred["protocol"]), 0.2, MeasurementSchedule("energies")))[0]
    expect = BATTERY.figures_of_merit(sim)["energies"]
    measured = np.asarray(doc["measured"]["energies"])
    assert doc["measured"]["steps"] == list(range(29))            # every step measured by prefix replay
    np.testing.assert_allclose(measured, expect, atol=1e-7)
    est = doc["tomography"]["ergotropy"]
    assert est["shots"] is None and est["std"] == 0
    assert est["value"] == pytest.approx(pred["ergotropy"], abs=1e-7)
    c = doc["cost"]
    assert c["experiments"] == 29 + 1 and c["device_s"] > 0 and c["wall_s"] > 0
    log = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(log) == 30 and all(json.loads(x)["request_id"] for x in log)


def test_deploy_with_shots_and_tomography(trained, lab, tmp_path):
    doc = deploy(tmp_path, "--run", str(trained), "--endpoint", lab, "--shots", "400",
                 "--tomography-shots", "4000", "--seed", "5")
    played = np.asarray(doc["controls"]).ravel()
    sim = create_backend("statevector").run(
        Experiment(BATTERY, played, 0.2, MeasurementSchedule("energies")))[0]
    f = BATTERY.figures_of_merit(sim)
    e = np.asarray(doc["measured"]["energies"])
    om = np.asarray(BATTERY.omegas)
    zexp = 1 - 2 * np.asarray(f["energies"]) / om                     # exact ⟨Z_j⟩
    sd = om / 2 * np.sqrt((1 - zexp ** 2) / 400)                      # binomial sd of E_j, 400 shots
    dev = np.abs(e - f["energies"])
    assert np.all(dev <= 5 * sd + om / 400), (dev / (sd + 1e-12)).max()   # within shot noise (+1 count)
    assert np.mean(dev / np.maximum(sd, om / 400)) < 1.5
    est = doc["tomography"]["ergotropy"]
    exact = float(f["ergotropy"][-1])
    assert est["shots"] == 4000 and est["std"] > 0
    assert est["interval"][0] <= exact <= est["interval"][1], (est, exact)
    assert doc["cost"]["total_shots"] == 29 * 3 * 400 + 9 * 4000      # first order: X, Y, Z settings


def test_deploy_refuses_a_different_device(trained, tmp_path, capsys):
    proc, spec = serve(tmp_path, "--allow-exact", "--coupling-bound", "0.2")
    try:
        rc = main(["deploy", "--run", str(trained), "--endpoint", spec, "--shots", "0",
                   "--log", str(tmp_path / "l.jsonl"), "--out", str(tmp_path / "s.json")])
        err = capsys.readouterr().err
        assert rc == 2
        assert "[bounds]" in err and "[model]" in err and "coupling_bound" in err and "--allow-mismatch" in err
        assert not (tmp_path / "s.json").exists() and (tmp_path / "l.jsonl").read_text() == ""
    finally:
        proc.kill()


def test_device_mismatches_names_each_difference():
    info = {"model": BATTERY.to_dict(), "channels": [{"name": "coupling", "lower": -0.3, "upper": 0.3}],
            "limits": {"max_dt": 1.0}}
    assert device_mismatches(info, BATTERY, 0.2) == {}
    other = {**info, "model": DickeBattery(omegas=(0.9, 1.2), n_max=N_MAX).to_dict()}
    assert set(device_mismatches(other, BATTERY, 0.2)) == {"model"}
    assert "omegas" in device_mismatches(other, BATTERY, 0.2)["model"]
    narrow = {**info, "channels": [{"name": "coupling", "lower": -0.2, "upper": 0.2}]}
    assert set(device_mismatches(narrow, BATTERY, 0.2)) == {"bounds"}
    assert set(device_mismatches(info, BATTERY, 2.0)) == {"dt"}
    assert set(device_mismatches({**info, "channels": [{"name": "g", "lower": -0.3, "upper": 0.3}]},
                                 BATTERY, 0.2)) == {"channels"}


def test_deploy_rehearses_on_simulators_and_deploys_protocol_files(trained, tmp_path):
    grape = tmp_path / "grape.json"
    grape.write_text(json.dumps({"protocol": [0.3] * 10, "tau": 2.0, "n_steps": 10, "model": BATTERY.to_dict()}))
    doc = deploy(tmp_path, "--protocol", str(grape), "--endpoint", "statevector", "--shots", "0")
    assert doc["mode"] == "open loop" and doc["dt"] == pytest.approx(0.2)
    assert doc["tomography"]["ergotropy"]["value"] == pytest.approx(doc["prediction"]["ergotropy"][-1], abs=1e-9)
    best = deploy(tmp_path, "--run", str(trained), "--protocol", "best", "--endpoint", "aer", "--shots", "0")
    assert np.asarray(best["controls"]).ravel().tolist() == load_run(trained).best["protocol"]
    assert best["tomography"]["ergotropy"]["value"] == pytest.approx(load_run(trained).best["ergotropy"], abs=1e-8)


@pytest.mark.parametrize("argv, param", [
    (["--run", "nowhere"], "run"),
    (["--protocol", "best"], "protocol"),
    (["--run", "{run}", "--dt", "0.3"], "dt"),
    (["--run", "{run}", "--regime", "energies"], "regime"),
    (["--run", "{run}", "--allow-mismatch", "colour"], "--allow-mismatch"),
    (["--run", "{run}", "--shots", "-1"], "--shots"),
    (["--run", "{run}", "--out", "/proc/nope/x.json"], "--out"),
    (["--run", "{run}", "--steps", "5"], "steps"),
    (["--run", "{run}", "--clip"], "clip"),
    (["--run", "{run}", "--every", "2"], "every"),
])
def test_deploy_refuses_bad_input_before_work(trained, tmp_path, capsys, argv, param):
    argv = [a.replace("{run}", str(trained)) for a in argv]
    try:
        rc = main(["deploy", "--endpoint", "statevector", "--log", str(tmp_path / "l.jsonl"), *argv])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    assert param in capsys.readouterr().err
    assert not (tmp_path / "l.jsonl").exists() or (tmp_path / "l.jsonl").read_text() == ""


def test_deploy_holds_the_lock_of_a_locked_server(trained, tmp_path, capsys):
    proc, spec = serve(tmp_path, "--allow-exact", "--lock")
    try:
        base = ["deploy", "--run", str(trained), "--endpoint", spec, "--shots", "0", "--no-tomography",
                "--log", str(tmp_path / "l.jsonl"), "--out", str(tmp_path / "s.json")]
        assert main(base) != 0                               # nobody holds the lock: runs are refused
        assert "lock" in capsys.readouterr().err
        assert main([*base, "--owner", "alice", "--hold-lock"]) == 0
        with create_backend(spec) as b:
            assert b.describe()["lock"]["locked"] is False   # released after the deployment
        assert json.loads((tmp_path / "s.json").read_text())["cost"]["experiments"] == 29
    finally:
        proc.kill()


def test_deploy_a_protocol_of_another_model(tmp_path):
    """The XY chain has no E_j or ergotropy: deploy still runs, logs and summarises it."""
    from qhil.envs import XYChain
    chain = XYChain(n_spins=3)
    proto = tmp_path / "p.json"
    proto.write_text(json.dumps({"controls": [[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]], "dt": 0.5}))
    out = tmp_path / "summary.json"
    rc = main(["deploy", "--endpoint", "statevector", "--protocol", str(proto), "--shots", "0", "--model-json",
               json.dumps(chain.to_dict()), "--out", str(out), "--log", str(tmp_path / "log.jsonl")])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["measured"]["steps"] == [] and doc["cost"]["experiments"] == 1
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1
