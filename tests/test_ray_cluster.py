"""The runner on a real two-node Ray cluster (a head and one worker node, 1 CPU each), all on
loopback: the test re-executes this file inside new network and PID namespaces
(tests/loopback.py, ``unshare -n -p -f --mount-proc``: only ``lo`` exists, so no Ray process can
bind or advertise another address; when the script ends the kernel ends every process it started).

Checks: the same tiny grid gives identical runs on the local executor and on the cluster (in
place and shipped back); a run whose worker process is killed (SIGKILL) mid-run is retried by
Ray and still finishes; every node advertises 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from loopback import links, refused, run_isolated

RAY = Path(sys.executable).with_name("ray")
PORT = 6399
#: The grid: tiny SAC runs (3 episodes), one per seed.
TINY = dict(total_steps=84, learning_starts=28, options=(("batch_size", 16), ("hidden", (16, 16))))
#: The run whose worker is killed: long enough to be caught mid-run.
LONG = dict(total_steps=1400, learning_starts=28, options=(("batch_size", 16), ("hidden", (16, 16))))


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)


def _cluster(tmp: Path) -> None:
    """Start the head and one worker node (1 CPU each) on 127.0.0.1."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    head = _run([str(RAY), "start", "--head", f"--port={PORT}", "--include-dashboard=false",
                 f"--temp-dir={tmp / 'r'}", *common], env=env)
    assert head.returncode == 0, head.stdout + head.stderr
    worker = _run([str(RAY), "start", f"--address=127.0.0.1:{PORT}", *common], env=env)
    assert worker.returncode == 0, worker.stdout + worker.stderr


def _kill_when_running(work: Path, name: str, found: dict) -> None:
    """Kill (SIGKILL) the worker process running ``name`` once it has logged 2 episodes."""
    from qhil.agents.runstore import RunStore
    from qhil.experiments.runner import log_path
    log = log_path(work, name)
    deadline = time.time() + 150
    while time.time() < deadline:
        time.sleep(0.2)
        if not log.exists() or not (work / "runs.sqlite").exists():
            continue
        pids = [int(line.split("(pid ")[1].rstrip(")\n")) for line in log.read_text().splitlines()
                if line.startswith("== ") and "(pid " in line]
        if not pids:
            continue
        store = RunStore(work / "runs.sqlite")
        try:
            episodes = len(store.episodes(name)["episode"]) if store.status(name) else 0
        finally:
            store.close()
        if episodes >= 2:
            os.kill(pids[0], signal.SIGKILL)
            found.update(pid=pids[0], episodes_before=episodes)
            return


def _raylet_of(pid: int) -> tuple[int, bool] | None:
    """(pid, is the head's) of the raylet that started worker process ``pid``, or None."""
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        argv = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    if not argv or not argv[0].endswith(b"raylet"):
        return None
    return ppid, b"--head" in argv


def _kill_worker_node(work: Path, names: list[str], found: dict) -> None:
    """SIGKILL the worker node's raylet and the worker process of a run on that node (the node
    dies) once that run has logged 2 episodes."""
    from qhil.agents.runstore import RunStore
    from qhil.experiments.runner import log_path
    deadline = time.time() + 200
    while time.time() < deadline:
        time.sleep(0.2)
        for name in names:
            log = log_path(work, name)
            if not log.exists() or not (work / "runs.sqlite").exists():
                continue
            heads = [line for line in log.read_text().splitlines() if line.startswith("== ") and "(pid " in line]
            if not heads:
                continue
            pid = int(heads[0].split("(pid ")[1].rstrip(")"))
            raylet = _raylet_of(pid)
            if raylet is None or raylet[1]:
                continue
            store = RunStore(work / "runs.sqlite")
            try:
                episodes = len(store.episodes(name)["episode"]) if store.status(name) else 0
            finally:
                store.close()
            if episodes >= 2:                  # the node and its processes go, as a machine lost
                os.kill(raylet[0], signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
                found.update(raylet=raylet[0], worker=pid, run=name, episodes_before=episodes)
                return


def node_lost_main(tmp: Path) -> dict:
    """Inside the namespaces: two long runs, one per node; the worker node is killed; both finish
    (the lost one retried on the head) with the numbers of an uninterrupted local run."""
    from qhil.experiments.battery.tune import SACTrialSpec
    from qhil.experiments.ray_executor import RayExecutor
    from qhil.experiments.runner import LocalExecutor, log_path, run_specs
    _cluster(tmp)
    import ray
    ray.init(address=f"127.0.0.1:{PORT}", log_to_driver=False, configure_logging=False)
    specs = [SACTrialSpec(name=f"long/seed{s}", seed=s, **LONG) for s in (0, 1)]
    quiet = dict(progress=False, log=lambda s: None)
    found: dict = {}
    spy = threading.Thread(target=_kill_worker_node, args=(tmp / "node", [s.name for s in specs], found), daemon=True)
    spy.start()
    got = run_specs(specs, tmp / "node", RayExecutor(address=f"127.0.0.1:{PORT}", max_retries=3), **quiet)
    spy.join(timeout=5)
    alive = len([n for n in ray.nodes() if n["Alive"]])
    ray.shutdown()
    ref = run_specs(specs, tmp / "local", LocalExecutor(2), **quiet)
    pick = ("best_explored", "deterministic", "deterministic_protocol", "steps")
    return {"killed": found, "alive_after": alive, "status": [o.status for o in got], "errors": [o.error for o in got],
            "same_as_local": [bool(o.summary and {k: o.summary[k] for k in pick} == {k: r.summary[k] for k in pick})
                              for o, r in zip(got, ref)],
            "starts": {s.name: sum(line.startswith("== ") for line in log_path(tmp / "node", s.name).read_text()
                                   .splitlines()) for s in specs}}


def cluster_main(tmp: Path) -> dict:
    """Inside the namespaces: cluster up, the grid on three executors, the kill; a JSON report."""
    from qhil.experiments.battery.tune import SACTrialSpec
    from qhil.experiments.ray_executor import RayExecutor
    from qhil.experiments.runner import LocalExecutor, run_specs
    report: dict = {"links": links()}              # lo is up (tests/loopback.py)
    t0 = time.time()
    _cluster(tmp)
    report["cluster_up_s"] = time.time() - t0
    import ray
    ray.init(address=f"127.0.0.1:{PORT}", log_to_driver=False, configure_logging=False)
    for _ in range(100):
        nodes = [n for n in ray.nodes() if n["Alive"]]
        if len(nodes) == 2:
            break
        time.sleep(0.2)
    report["nodes"] = sorted(n["NodeManagerAddress"] for n in nodes)
    report["cpus"] = ray.cluster_resources().get("CPU")
    grid = [SACTrialSpec(name=f"grid/seed{s}", seed=s, **TINY) for s in range(3)]
    quiet = dict(progress=False, log=lambda s: None)
    out = {}
    beats: list[str] = []
    for label, executor in (("local", LocalExecutor(2)),
                            ("ray", RayExecutor(address=f"127.0.0.1:{PORT}", heartbeat_s=1, log=beats.append)),
                            ("ray_shipped", RayExecutor(address=f"127.0.0.1:{PORT}", ship="always"))):
        t = time.time()
        got = run_specs(grid, tmp / label, executor, **quiet)
        out[label] = {"status": [o.status for o in got], "wall_s": time.time() - t,
                      "summaries": [{k: o.summary[k] for k in ("best_explored", "deterministic",
                                                                "deterministic_protocol", "steps")}
                                    if o.summary else o.error for o in got]}
    report["grids"] = out
    report["heartbeats"] = beats[:3]
    # the killed worker: its run is retried by Ray and finishes
    long = SACTrialSpec(name="long/seed0", seed=0, **LONG)
    killed: dict = {}
    spy = threading.Thread(target=_kill_when_running, args=(tmp / "kill", long.name, killed), daemon=True)
    spy.start()
    got = run_specs([long], tmp / "kill", RayExecutor(address=f"127.0.0.1:{PORT}", max_retries=2), **quiet)[0]
    spy.join(timeout=5)
    from qhil.experiments.runner import log_path
    headers = [line for line in log_path(tmp / "kill", long.name).read_text().splitlines() if line.startswith("== ")]
    report["kill"] = {"killed": killed, "status": got.status, "error": got.error,
                      "steps": got.summary["steps"] if got.summary else None, "starts": len(headers),
                      "pids": [h.split("(pid ")[1].rstrip(")") for h in headers]}
    ray.shutdown()
    return report


def test_two_node_ray_cluster_on_loopback(tmp_path):
    why = refused()
    if why:
        pytest.skip(why)
    assert RAY.exists(), "Ray is missing: pip install -c constraints.txt '.[cluster]' (make test installs it)"
    short = Path(tempfile.mkdtemp(prefix="qr"))       # Ray's socket paths must stay short
    try:
        r = run_isolated([sys.executable, __file__, str(short)])
    finally:
        shutil.rmtree(short, ignore_errors=True)
    lines = [line for line in r.stdout.splitlines() if line.startswith("REPORT ")]
    assert r.returncode == 0 and lines, r.stdout[-3000:] + r.stderr[-5000:]
    rep = json.loads(lines[-1][len("REPORT "):])
    print(json.dumps({k: v for k, v in rep.items() if k != "grids"} | {
        "walls_s": {k: round(g["wall_s"], 1) for k, g in rep["grids"].items()}}))     # shown with -s
    assert rep["links"] == ["lo"]                                  # nothing but loopback exists
    assert rep["nodes"] == ["127.0.0.1", "127.0.0.1"] and rep["cpus"] == 2.0
    g = rep["grids"]
    for label in ("local", "ray", "ray_shipped"):
        assert g[label]["status"] == ["done"] * 3, (label, g[label]["summaries"])
    assert g["ray"]["summaries"] == g["local"]["summaries"]          # same seeds, same runs
    assert g["ray_shipped"]["summaries"] == g["local"]["summaries"]
    assert g["local"]["summaries"][0] != g["local"]["summaries"][1]
    assert rep["heartbeats"] and "running or queued; cluster CPUs free" in rep["heartbeats"][0]     # Ray-side progress
    k = rep["kill"]
    assert k["killed"].get("pid"), "the run was never caught running"
    assert k["status"] == "done" and k["steps"] == LONG["total_steps"], k
    assert k["starts"] == 2 and k["pids"][0] == str(k["killed"]["pid"]) and k["pids"][1] != k["pids"][0], k


@pytest.mark.slow
def test_worker_node_lost_its_run_retried_on_the_head():
    """Slow variant (~2–4 min): the worker node itself dies (its raylet SIGKILLed) mid-run."""
    why = refused()
    if why:
        pytest.skip(why)
    short = Path(tempfile.mkdtemp(prefix="qr"))
    try:
        r = run_isolated([sys.executable, __file__, str(short), "node"], timeout=900)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    lines = [line for line in r.stdout.splitlines() if line.startswith("REPORT ")]
    assert r.returncode == 0 and lines, r.stdout[-3000:] + r.stderr[-5000:]
    rep = json.loads(lines[-1][len("REPORT "):])
    print(json.dumps(rep))
    assert rep["killed"].get("raylet"), "no run was caught on the worker node"
    assert rep["alive_after"] == 1 and rep["status"] == ["done", "done"], rep
    assert rep["starts"][rep["killed"]["run"]] == 2, rep
    assert rep["same_as_local"] == [True, True], rep


if __name__ == "__main__":           # inside the namespaces (see the tests above)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main = node_lost_main if sys.argv[2:] == ["node"] else cluster_main
    print("REPORT " + json.dumps(main(Path(sys.argv[1]))), flush=True)
