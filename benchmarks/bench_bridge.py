"""Round-trip latency, experiments/s and CPU per request through the lab bridge, against a
bare pyzmq DEALER/ROUTER echo of the same frames, measured in the same run.

    .venv/bin/python benchmarks/bench_bridge.py [--n 300] [--repeats 1] [--rows ping,small,batch,...]
                                                [--json] [--sync normal|full]

Servers run in subprocesses on loopback: a bare ROUTER echo (``recv_multipart`` →
``send_multipart`` of the same frames), and ``qhil lab serve`` with the ``null`` device (no
physics: what is left is the bridge: client checks, encoding, validation, idempotency
bookkeeping, the device thread, the SQLite run log and estimating the results on both
ends) and with the qiskit-dynamics ``emulator``. The client side of the echo is the same
DEALER pattern as the driver (send, poll, receive) with the driver's request frames (the
same number of frames and bytes).

The bridge and the echo are measured **interleaved** (one bridge round trip, then one echo
round trip, and so on), so that both see the same machine load; the table gives medians
(the load on a shared machine shows in the 90th percentiles), and the ratio of the medians.

Rows: ``ping`` (protocol round trip, no device), ``run`` on the null device for a small
experiment (1 step, 1 setting, 100 shots) and a larger one (2000 steps × 2 channels, 9
settings), a pipelined batch of 32 small runs (per experiment, against 32 pipelined
echoes), and ``run`` on the emulator.

CPU columns: CPU time per request of the server process (all its threads, from
``/proc/PID/task/*/schedstat``) and of the client's calling thread (the ZeroMQ I/O threads
are not counted on the client side), for the bridge and for the echo. On a loaded machine
CPU time is steadier than wall time.

Floor rows: what two of the bridge's guarantees cost by themselves, with no protocol work
(no validation, no idempotency lookup, no estimation): ``floor: echo + log commit`` is a
ROUTER echo that commits a run-log-sized row to a WAL SQLite file before each reply
(log-before-reply), ``floor: + device thread`` also hands each request to a second thread
and back (heartbeats are answered while the device works), with the small run's request
frames. The last line gives, in this process, the median of the SQLite commit of one run
row through ``RunLog`` and of creating a run's seeded generator.

With ``--repeats R`` every row is measured R times (each time interleaved with its own echo
round trips); the table then gives the median over the repeats of each column, and the
ratio's spread (min–max over the repeats). ``--rows`` picks rows: ping, small (run small,
null device), batch (batch of 32, null device), large, emulator, floor.

Target (issues 5 and 16): bridge ≤ 2× the echo for a small run on the null device.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import zmq

ECHO = """
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.setsockopt(zmq.LINGER, 0)
s.bind("tcp://127.0.0.1:" + sys.argv[1]); print("READY", flush=True)
while True:
    f = s.recv_multipart(copy=False)
    s.send_multipart(f, copy=False)
"""


# The guarantees alone, without the bridge's protocol work: a ROUTER echo that, before each
# reply, commits a run-log-sized row to a WAL SQLite file (log-before-reply), optionally
# after handing the request to a second thread and back (the device thread).
FLOOR = """
import os, queue, sqlite3, sys, threading, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.setsockopt(zmq.LINGER, 0)
s.bind("tcp://127.0.0.1:" + sys.argv[1])
db = sqlite3.connect(sys.argv[2], isolation_level=None, check_same_thread=False)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=" + sys.argv[4])
db.execute("CREATE TABLE runs (seq INTEGER PRIMARY KEY, request_id TEXT, a BLOB, b TEXT)")
db.execute("CREATE INDEX runs_id ON runs(request_id)")
row = "x" * 1200
def log(f):
    db.execute("INSERT INTO runs (request_id, a, b) VALUES (?, ?, ?)", (os.urandom(16).hex(), f[-1].bytes, row))
if sys.argv[3] == "thread":
    jobs, done = queue.Queue(), ctx.socket(zmq.PAIR); done.bind("inproc://done")
    def work():
        out = ctx.socket(zmq.PAIR); out.connect("inproc://done")
        while True:
            f = jobs.get(); log(f); out.send_multipart(f, copy=False)
    threading.Thread(target=work, daemon=True).start()
    poller = zmq.Poller(); poller.register(s, zmq.POLLIN); poller.register(done, zmq.POLLIN)
    print("READY", flush=True)
    while True:
        ev = dict(poller.poll())
        if s in ev: jobs.put(s.recv_multipart(copy=False))
        if done in ev: s.send_multipart(done.recv_multipart(copy=False), copy=False)
else:
    print("READY", flush=True)
    while True:
        f = s.recv_multipart(copy=False); log(f); s.send_multipart(f, copy=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str]) -> subprocess.Popen:
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    q: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: q.put(p.stdout.readline()), daemon=True).start()
    line = q.get(timeout=120)
    if not line.startswith("READY"):
        p.kill()
        raise RuntimeError(f"server failed to start: {line!r}")
    return p


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of process ``pid`` so far (ns); 0 where /proc lacks it."""
    total = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        return 0
    return total


class Echo:
    """DEALER client of the bare echo server."""

    def __init__(self, port: int, pid: int) -> None:
        self.ctx = zmq.Context()
        self.s = self.ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(f"tcp://127.0.0.1:{port}")
        self.pid = pid

    def round_trips(self, frames: list[bytes], depth: int = 1) -> None:
        for _ in range(depth):
            self.s.send_multipart(frames, copy=False)
        for _ in range(depth):
            if not self.s.poll(10_000):
                raise RuntimeError("echo timed out")
            self.s.recv_multipart(copy=False)

    def close(self) -> None:
        self.s.close()
        self.ctx.term()


def interleaved(bridge, echo: Echo, frames: list[bytes], server_pid: int, n: int, depth: int = 1,
                warmup: int = 20) -> dict:
    """``n`` rounds of (one bridge call, ``depth`` echoes); per-request times and CPU."""
    tb, te = [], []
    cpu = {"server": 0, "client": 0.0, "echo_server": 0, "echo_client": 0.0}
    for i in range(n + warmup):
        s0, c0, t0 = cpu_ns(server_pid), time.thread_time(), time.perf_counter()
        bridge()
        t1, c1, s1 = time.perf_counter(), time.thread_time(), cpu_ns(server_pid)
        e0, d0, t2 = cpu_ns(echo.pid), time.thread_time(), time.perf_counter()
        echo.round_trips(frames, depth)
        t3, d1, e1 = time.perf_counter(), time.thread_time(), cpu_ns(echo.pid)
        if i >= warmup:
            tb.append((t1 - t0) / depth)
            te.append((t3 - t2) / depth)
            cpu["server"] += s1 - s0
            cpu["client"] += c1 - c0
            cpu["echo_server"] += e1 - e0
            cpu["echo_client"] += d1 - d0
    per = n * depth
    a, b = np.asarray(tb), np.asarray(te)
    return {"median_us": float(np.median(a) * 1e6), "p90_us": float(np.percentile(a, 90) * 1e6),
            "per_s": float(1.0 / a.mean()),
            "echo": {"median_us": float(np.median(b) * 1e6), "p90_us": float(np.percentile(b, 90) * 1e6)},
            "cpu_us": {"server": cpu["server"] / 1e3 / per, "client": cpu["client"] * 1e6 / per,
                       "echo_server": cpu["echo_server"] / 1e3 / per, "echo_client": cpu["echo_client"] * 1e6 / per}}


def repeated(measure, repeats: int) -> dict:
    """``measure()`` (an :func:`interleaved` dict) ``repeats`` times: the median of each
    figure over the repeats, and every repeat's ratio (bridge median / echo median)."""
    runs = [measure() for _ in range(repeats)]
    ratios = [r["median_us"] / r["echo"]["median_us"] for r in runs]

    def med(get):
        return float(np.median([get(r) for r in runs]))
    return {"median_us": med(lambda r: r["median_us"]), "p90_us": med(lambda r: r["p90_us"]),
            "per_s": med(lambda r: r["per_s"]),
            "echo": {"median_us": med(lambda r: r["echo"]["median_us"]),
                     "p90_us": med(lambda r: r["echo"]["p90_us"])},
            "cpu_us": {k: med(lambda r: r["cpu_us"][k]) for k in runs[0]["cpu_us"]},
            "ratio": float(np.median(ratios)), "ratios": ratios}


def floor(sync: str, n: int) -> dict[str, float]:
    """In-process costs every executed run pays: the run-log commit, the seeded generator."""
    from qhil.lab.server import RunLog
    tmp = tempfile.mkdtemp(prefix="qhil-bench-floor-")
    log = RunLog(os.path.join(tmp, "floor.sqlite"), sync)
    row = dict.fromkeys(["digest", "client", "device", "model", "settings", "counts_dtype", "counts_shape",
                         "results", "calibration"], "x" * 64)
    row.update(counts=np.zeros(4, np.int64).tobytes(), received_at=1.0, started_at=1.0, finished_at=1.0,
               experiment="x" * 300, reply="x" * 400)
    t = []
    for i in range(n + 20):
        values = {"request_id": f"{i:032x}", **row}
        t0 = time.perf_counter()
        log.append(values)
        t.append(time.perf_counter() - t0)
    log.close()
    shutil.rmtree(tmp, ignore_errors=True)
    g = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        np.random.default_rng(i)
        g.append(time.perf_counter() - t0)
    return {"sqlite_commit_us": float(np.median(t[20:]) * 1e6), "seeded_rng_us": float(np.median(g[20:]) * 1e6)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="round trips per row")
    ap.add_argument("--sync", choices=["normal", "full"], default="normal", help="run-log synchronous level")
    ap.add_argument("--repeats", type=int, default=1, help="measurements per row (median and spread)")
    ap.add_argument("--rows", default="ping,small,batch,large,emulator,floor",
                    help="comma-separated rows: ping, small, batch, large, emulator, floor")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.n < 1 or a.repeats < 1:
        ap.error("--n and --repeats must be at least 1")
    want = set(a.rows.split(","))
    if not want <= {"ping", "small", "batch", "large", "emulator", "floor"}:
        ap.error(f"unknown rows {sorted(want - {'ping', 'small', 'batch', 'large', 'emulator', 'floor'})}")

    from qhil.drivers import Experiment, MeasurementSchedule, create_backend
    from qhil.drivers.bridge import wire
    from qhil.envs import DickeBattery, XYChain

    procs: list[subprocess.Popen] = []
    tmp = tempfile.mkdtemp(prefix="qhil-bench-")
    rows = []
    echo_port = free_port()
    procs.append(start([sys.executable, "-c", ECHO, str(echo_port)]))
    echo = Echo(echo_port, procs[0].pid)
    try:
        cases = [
            ("run small, null device", "null", DickeBattery(omegas=(1.0, 1.2), n_max=4),
             lambda m: Experiment(m, [0.1], 0.2, MeasurementSchedule("energies", final_only=True, shots=100))),
            ("run large, null device", "null", XYChain(n_spins=2, field_bound=5.0),
             lambda m: Experiment(m, np.full((2000, 2), 1.0), 0.05,
                                  MeasurementSchedule("second_order", final_only=True, shots=100))),
            ("run small, emulator", "emulator", DickeBattery(omegas=(1.0, 1.2), n_max=4),
             lambda m: Experiment(m, [0.1], 0.2, MeasurementSchedule("energies", final_only=True, shots=100))),
        ]
        null_rows = {"ping", "small", "batch", "floor"} & want
        cases = [c for c in cases if (c[1] == "null" and c[0].startswith("run small") and null_rows)
                 or (c[0].startswith("run large") and "large" in want) or (c[1] == "emulator" and "emulator" in want)]
        for label, device, model, make in cases:
            port = free_port()
            mj = json.dumps(model.to_dict())
            srv = start([sys.executable, "-m", "qhil.lab.cli", "lab", "serve", "--device", device,
                         "--bind", f"tcp://127.0.0.1:{port}", "--model-json", mj, "--sync", a.sync,
                         "--run-log", os.path.join(tmp, f"{device}-{port}.sqlite")])
            procs.append(srv)
            b = create_backend(f"zmq://127.0.0.1:{port}", seed=0)
            try:
                b.describe()
                if label.startswith("run small, null") and "ping" in want:   # protocol round trip, no device
                    ping = [bytes(f) for f in wire.encode(wire.Message("ping", wire.new_id()))]
                    r = repeated(lambda: interleaved(b.ping, echo, ping, srv.pid, a.n), a.repeats)
                    rows.append({"case": "ping (no device)", "bytes": sum(map(len, ping)),
                                 "frames": len(ping), **r})
                e = make(model)
                req = [bytes(f) for f in wire.encode(b._request(e, 1))]   # the driver's request frames
                if label.startswith("run small, null"):
                    small_req = req
                if device != "null" or "small" in want or label.startswith("run large"):
                    r = repeated(lambda: interleaved(lambda: b.run(e), echo, req, srv.pid, a.n), a.repeats)
                    rows.append({"case": label, "bytes": sum(map(len, req)), "frames": len(req), **r})
                if label.startswith("run small") and (device != "null" or "batch" in want):   # batch of 32
                    batch = [e] * 32
                    r = repeated(lambda: interleaved(lambda: b.run(batch), echo, req, srv.pid, max(8, a.n // 16),
                                                     depth=32, warmup=2), a.repeats)
                    rows.append({"case": label.replace("run small", "batch of 32"), "bytes": sum(map(len, req)),
                                 "frames": len(req), **r})
            finally:
                b.close()
                srv.kill()
                srv.wait(timeout=10)
        # the floor: echo + run-log commit (+ the hand-off to a device thread), same frames
        req = small_req if "floor" in want else None
        for mode, label in ([] if req is None else [("inline", "floor: echo + log commit"), ("thread", "floor: + device thread")]):
            port = free_port()
            fp = start([sys.executable, "-c", FLOOR, str(port), os.path.join(tmp, f"floor-{mode}.sqlite"), mode,
                        a.sync.upper()])
            procs.append(fp)
            fc = Echo(port, fp.pid)
            try:
                r = repeated(lambda: interleaved(lambda: fc.round_trips(req), echo, req, fp.pid, a.n), a.repeats)
                rows.append({"case": label, "bytes": sum(map(len, req)), "frames": len(req), **r})
            finally:
                fc.close()
                fp.kill()
                fp.wait(timeout=10)
        fl = floor(a.sync, max(200, a.n)) if "floor" in want else None
    finally:
        echo.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        print(json.dumps({"rows": rows, "floor": fl, "sync": a.sync}, indent=1))
        return 0
    print(f"{'case':26s} {'bytes':>6s} {'median µs':>9s} {'p90 µs':>7s} {'exp/s':>6s} {'echo µs':>7s} "
          f"{'ratio':>6s} {'spread':>11s} | {'CPU µs/req: server':>18s} {'client':>6s} {'echo srv':>8s} {'echo cl':>7s}")
    for r in rows:
        c = r["cpu_us"]
        print(f"{r['case']:26s} {r['bytes']:6d} {r['median_us']:9.0f} {r['p90_us']:7.0f} {r['per_s']:6.0f} "
              f"{r['echo']['median_us']:7.0f} {r['ratio']:6.2f} {min(r['ratios']):5.2f}–{max(r['ratios']):<5.2f} "
              f"| {c['server']:18.0f} {c['client']:6.0f} "
              f"{c['echo_server']:8.0f} {c['echo_client']:7.0f}")
    if fl is not None:
        print(f"floor (in process, median): run-log commit ({a.sync}) {fl['sqlite_commit_us']:.0f} µs, "
              f"seeded generator {fl['seeded_rng_us']:.0f} µs")
    print("ratio = bridge median / bare pyzmq echo median, same frames, interleaved "
          f"(target ≤ 2 for a small run); spread: min–max over {a.repeats} repeat(s); batch rows are per "
          "experiment, against 32 pipelined echoes; CPU µs/req: medians over the repeats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
