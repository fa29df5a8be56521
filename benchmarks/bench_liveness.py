"""Busy is not dead: how long a lab client waits on a busy server, and how fast it notices a
dead or frozen one.

    .venv/bin/python benchmarks/bench_liveness.py [--trials 3] [--heartbeat 0.5] [--liveness 3]

The client (default options but ``heartbeat``/``liveness``, ``retries=0``, ``timeout`` 0.5 s)
runs a 28-step Env1 experiment (n_max = 20, E_j with 100 shots) on a ``qhil lab serve``
subprocess and reports:

* ``busy``: an exec device (``tests/devices/exec_emulator.py`` behind a wrapper that first
  sleeps ``--busy-seconds``, as a slow vendor program would) that claims 0.1 s per run: the
  run completes although it takes many times the client's first deadline (0.5 s + 3 × the
  estimate); attempts and logged executions are printed;
* ``killed`` / ``frozen``: the emulator on its slow dense path (``--solver scipy_expm``); at
  the first pong saying the request is running the server gets SIGKILL / SIGSTOP; the
  seconds from the signal to the client's ``BridgeTimeout`` are printed against the window
  heartbeat × liveness.
All traffic is on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import queue
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from qhil.drivers import Experiment, MeasurementSchedule, create_backend
from qhil.drivers.bridge import BridgeTimeout
from qhil.envs import ENV1, DickeBattery

MODEL = DickeBattery(omegas=ENV1, n_max=20)
CONTROLS = np.full(28, 0.3)


ROOT = Path(__file__).resolve().parents[1]


def serve(tmp: Path, busy_seconds: float | None) -> tuple[subprocess.Popen, str, Path]:
    log = tmp / "runs.sqlite"
    if busy_seconds is None:
        device = ["--solver", "scipy_expm"]
    else:
        wrapper = tmp / "slow_device.sh"
        wrapper.write_text(f"#!/bin/sh\nsleep {busy_seconds}\nexec {sys.executable} "
                           f"{ROOT / 'tests' / 'devices' / 'exec_emulator.py'} \"$@\"\n")
        wrapper.chmod(0o755)
        device = ["--device", f"exec:{wrapper}", "--exec-timeout", str(10 * busy_seconds + 60)]
    args = [sys.executable, "-m", "qhil.lab.cli", "lab", "serve", "--bind", "tcp://127.0.0.1:*", "--run-log", str(log),
            "--omegas", ",".join(map(str, ENV1)), "--n-max", "20", *device]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    line = lines.get(timeout=120)
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"lab serve failed: {line!r}")
    return proc, "zmq://" + line.split()[1].split("://", 1)[1], log


def trial(what: str, heartbeat: float, liveness: int, busy_seconds: float) -> str:
    with tempfile.TemporaryDirectory() as d:
        proc, spec, log = serve(Path(d), busy_seconds if what == "busy" else None)
        hit: list[float] = []

        def progress(rid: str, info: dict) -> None:
            if what != "busy" and info.get("state") == "running" and not hit:
                proc.send_signal(signal.SIGKILL if what == "killed" else signal.SIGSTOP)
                hit.append(time.monotonic())

        schedule = MeasurementSchedule("energies", shots=100)
        try:
            with create_backend(spec, timeout=0.5, heartbeat=heartbeat, liveness=liveness, retries=0,
                                progress=progress) as b:
                estimate = b.estimate_seconds(Experiment(MODEL, CONTROLS, 0.2, schedule))
                t0 = time.monotonic()
                try:
                    [r] = b.run(Experiment(MODEL, CONTROLS, 0.2, schedule))
                except BridgeTimeout as exc:
                    return (f"{what:6s}: detected {time.monotonic() - hit[0]:.2f} s after the signal "
                            f"(window {heartbeat * liveness:.2f} s; {str(exc).split('(last: ')[-1].split(')')[0]})")
                wall = time.monotonic() - t0
                with sqlite3.connect(log) as db:
                    runs = db.execute("SELECT COUNT(*) FROM runs WHERE request_id = ?",
                                      (r.metadata["bridge"]["request_id"],)).fetchone()[0]
                return (f"{what:6s}: completed in {wall:.1f} s; first deadline {0.5 + 3 * estimate:.2f} s "
                        f"(device estimate {estimate:.2f} s); attempts {r.metadata['bridge']['attempts']}, "
                        f"executions logged {runs}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--heartbeat", type=float, default=0.5)
    p.add_argument("--liveness", type=int, default=3)
    p.add_argument("--busy-seconds", type=float, default=20.0)
    a = p.parse_args()
    for what in ("busy", "killed", "frozen"):
        for _ in range(a.trials):
            print(trial(what, a.heartbeat, a.liveness, a.busy_seconds), flush=True)


if __name__ == "__main__":
    main()
