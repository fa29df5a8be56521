"""The lab server: a ZeroMQ ROUTER in front of a :class:`~qhil.lab.device.PulseDevice`.

    server = LabServer(device, bind="tcp://127.0.0.1:5555", run_log="runs.sqlite")
    server.serve_forever()

* Every message is decoded and validated (:mod:`qhil.drivers.wire`); a bad one gets a
  structured error reply ``{code, message, retryable}`` and the server serves the next.
* Requests are idempotent: results are kept by request id (in memory for recent ids, and
  in the SQLite run log for all of them, across restarts), so a retry never runs the
  device twice. A retry that arrives while its request is queued or running joins it.
* The device runs in one worker thread; the socket thread keeps answering heartbeats
  (``ping`` → ``pong`` with the request's state) while it works.
* On any device fault the device is put in its safe state before the error reply.
* Every executed experiment is appended to the run log (WAL journal, one transaction per
  run, so a crash mid-write leaves the log consistent) and committed before its reply is
  sent. Durability: see :class:`RunLog` (default: survives a server crash; a power loss
  can drop the last fraction of a second of runs, never corrupt the file).
* Optional CURVE encryption with an allow-list of client public keys (a ZAP handler).
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq

from qhil.drivers import MeasurementSchedule
from qhil.drivers import wire
from qhil.drivers.model import BOUND_TOLERANCE
from qhil.drivers.pauli import estimate_from_counts, parse_pauli
from qhil.drivers.wire import BridgeError, Message, error

from .device import PulseDevice

SERVER_NAME = "qhil-lab"
FEATURES = ["idempotent", "heartbeat", "prefix_replay", "run_log", "curve"]
# ``seq`` is the rowid: the log never deletes, so it grows by one per run, as AUTOINCREMENT
# would (which logs written before 2026-11 use; it costs a page write per commit).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq          INTEGER PRIMARY KEY,
    request_id   TEXT NOT NULL,
    digest       TEXT NOT NULL,
    client       TEXT,
    received_at  REAL NOT NULL,
    started_at   REAL NOT NULL,
    finished_at  REAL NOT NULL,
    device       TEXT NOT NULL,
    model        TEXT,
    experiment   TEXT NOT NULL,
    settings     TEXT NOT NULL,
    counts       BLOB NOT NULL,
    counts_dtype TEXT NOT NULL,
    counts_shape TEXT NOT NULL,
    results      TEXT,
    calibration  TEXT NOT NULL,
    reply        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_request_id ON runs(request_id);
CREATE TABLE IF NOT EXISTS faults (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT, at REAL NOT NULL, message TEXT NOT NULL
);
"""


#: columns of ``runs`` in the order :meth:`RunLog.append` takes them
RUN_COLUMNS = ("request_id", "digest", "client", "received_at", "started_at", "finished_at", "device",
               "model", "experiment", "settings", "counts", "counts_dtype", "counts_shape", "results",
               "calibration", "reply")
_INSERT = f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"


class RunLog:
    """Append-only SQLite log of executed experiments (WAL; one transaction per run).

    synchronous: "NORMAL" (default): a commit is in the WAL file when :meth:`append` returns,
    so it survives a crash of the server process; the WAL is fsynced at each checkpoint, so a
    power loss or OS crash can drop the runs committed since the last checkpoint (about
    ``checkpoint_interval`` seconds), never corrupt the file. "FULL": fsync at every commit.

    Checkpoints (copying the WAL into the database, with its fsyncs) run in a background
    thread on their own connection, ``checkpoint_interval`` seconds after a write, instead
    of inside every thousandth commit (which would stall that run's reply for milliseconds).
    """

    def __init__(self, path: str | os.PathLike, synchronous: str = "NORMAL",
                 checkpoint_interval: float = 0.25) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False,
                                   isolation_level=None)
        self._lock = threading.Lock()
        wal = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        self.synchronous = "FULL" if synchronous.upper() == "FULL" else "NORMAL"
        self._db.execute(f"PRAGMA synchronous={self.synchronous}")
        self._db.executescript(_SCHEMA)
        self.checkpoint_interval = float(checkpoint_interval)
        self.checkpoints = 0
        self._written = threading.Event()
        self._closing = False
        self._checkpointer: threading.Thread | None = None
        if wal and self.path != ":memory:" and self.checkpoint_interval > 0:
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = threading.Thread(target=self._checkpoints, name="qhil-checkpoint",
                                                  daemon=True)
            self._checkpointer.start()

    def _checkpoints(self) -> None:
        try:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            try:
                while True:
                    self._written.wait()
                    if self._closing:
                        return
                    time.sleep(self.checkpoint_interval)     # let writes gather
                    self._written.clear()
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
            finally:
                db.close()
        except Exception:      # pragma: no cover - fall back to checkpoints in the commits
            with self._lock:
                self._db.execute("PRAGMA wal_autocheckpoint=1000")

    def append(self, values: tuple | dict[str, Any]) -> None:
        """Insert one run (a tuple in :data:`RUN_COLUMNS` order, or a dict by column name)
        in its own transaction, committed when this returns."""
        if isinstance(values, dict):
            values = tuple(values[c] for c in RUN_COLUMNS)
        with self._lock:     # autocommit: the single INSERT is its own transaction
            self._db.execute(_INSERT, values)
        if self._checkpointer is not None and not self._written.is_set():
            self._written.set()

    def fault(self, request_id: str | None, message: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO faults (request_id, at, message) VALUES (?, ?, ?)",
                             (request_id, time.time(), message))
        if self._checkpointer is not None:
            self._written.set()

    def lookup(self, request_id: str) -> tuple[str, list[bytes]] | None:
        """(digest, reply frames) of a logged request, or None."""
        with self._lock:
            row = self._db.execute("SELECT digest, reply, counts, counts_dtype, counts_shape FROM runs "
                                   "WHERE request_id = ? ORDER BY seq LIMIT 1", (request_id,)).fetchone()
        if row is None:
            return None
        digest, reply, blob, dt, shape = row
        arr = np.frombuffer(blob, dtype=wire.DTYPES[dt]).reshape(json.loads(shape))
        body = json.loads(reply)
        body["replayed"] = True
        name = "probabilities" if dt == "float64" else "counts"
        return digest, wire.encode(Message("result", request_id, body, {name: arr}))

    def has(self, request_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM runs WHERE request_id = ? LIMIT 1",
                                    (request_id,)).fetchone() is not None

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def close(self) -> None:
        if self._checkpointer is not None:
            self._closing = True
            self._written.set()
            self._checkpointer.join(timeout=30)
        with self._lock:
            self._db.close()       # the last connection: checkpoints the WAL and removes it


@lru_cache(maxsize=256)
def _check_labels(labels: tuple[str, ...], n: int) -> None:
    try:
        for lab in labels:
            parse_pauli(lab, n)
    except Exception as exc:
        raise error("bad_request", str(exc), "labels") from None


@lru_cache(maxsize=256)
def _check_schedule(text: str) -> None:
    """``text``: the schedule as JSON (a cache key: equal text, equal schedule)."""
    try:
        MeasurementSchedule.from_dict(json.loads(text))
    except Exception as exc:
        raise error("bad_request", f"schedule: {exc}", "schedule") from None


def _mark_replayed(frames: list) -> list:
    """A stored reply, flagged ``replayed`` (served from storage, the device did not run)."""
    m = wire.decode([bytes(f) for f in frames], wire.REPLY_TYPES, max_bytes=1 << 62)
    m.body["replayed"] = True
    return wire.encode(m)


#: the request digest: SHA-256 of this canonical JSON of the body, then the controls' bytes
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
_RUN_FIELDS = frozenset({"dt", "channels", "steps", "settings", "shots", "model", "match_model", "schedule",
                         "labels", "seed"})
_SETTING = re.compile(r"[XYZ]+")


class _Job:
    __slots__ = ("id", "digest", "body", "controls", "steps", "settings", "shots", "received", "client")

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


class LabServer:
    """ROUTER server fronting one device. ``bind`` defaults to localhost only.

    run_log:           SQLite path (None: in memory, tests only).
    curve_secret_file: server certificate (``zmq.auth`` format, with its secret key); turns on
                       CURVE. ``allowed_keys``: folder of client public-key certificates.
    max_message_bytes: requests larger than this get a ``too_large`` error.
    cache_size:        replies kept in memory by request id (all are kept in the run log).
    crash_after:       fault injection for tests: exit the process right after logging the
                       N-th experiment, before replying.
    """

    def __init__(self, device: PulseDevice, bind: str = "tcp://127.0.0.1:5555",
                 run_log: str | os.PathLike | None = "qhil-runs.sqlite", *,
                 curve_secret_file: str | os.PathLike | None = None,
                 allowed_keys: str | os.PathLike | None = None,
                 max_message_bytes: int = wire.MAX_MESSAGE_BYTES, cache_size: int = 1024,
                 max_queue: int = 64, synchronous: str = "NORMAL", crash_after: int | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.device = device
        self.bind = bind
        self.max_message_bytes = int(max_message_bytes)
        self.cache_size = int(cache_size)
        self.max_queue = int(max_queue)
        self.crash_after = crash_after
        self.log = log or (lambda s: None)
        self.runs = RunLog(run_log if run_log is not None else ":memory:", synchronous)
        self._done: OrderedDict[str, tuple[str, list]] = OrderedDict()
        self._state: dict[str, str] = {}           # id → "queued" | "running"
        self._waiters: dict[str, set[bytes]] = {}
        self._digests: dict[str, str] = {}          # digests of queued and running requests
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()   # C-level put/get: a cheaper hand-off
        self._outbox: deque = deque()                # finished jobs, worker → socket thread
        self._stop = threading.Event()
        self._rng = np.random.default_rng()
        self.executed = 0
        self.ctx = zmq.Context()
        self._auth = None
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        # Hard ceiling per frame (the peer is disconnected); the soft limit answers with an error.
        self.sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_message_bytes + wire.MAX_HEADER_BYTES)
        if curve_secret_file is not None:
            self._setup_curve(curve_secret_file, allowed_keys)
        self.sock.bind(bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._wake_addr = f"inproc://qhil-done-{id(self)}"
        self._wake = self.ctx.socket(zmq.PAIR)
        self._wake.bind(self._wake_addr)
        self._worker = threading.Thread(target=self._work, name="qhil-device", daemon=True)
        # The device's channels and bounds, read once (they are fixed for a device).
        self._known = [c.name for c in device.channels]
        lo = np.array([c.lower for c in device.channels], dtype=float)
        hi = np.array([c.upper for c in device.channels], dtype=float)
        tol = BOUND_TOLERANCE * np.maximum(1.0, hi - lo)
        self._bounds = (lo, hi, lo - tol, hi + tol)

    def _setup_curve(self, secret_file: str | os.PathLike, allowed: str | os.PathLike | None) -> None:
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator
        if allowed is None or not Path(allowed).is_dir():
            raise ValueError("CURVE needs a folder of allowed client public keys (allowed_keys)")
        public, secret = zmq.auth.load_certificate(str(secret_file))
        if secret is None:
            raise ValueError(f"{secret_file} holds no secret key")
        self._auth = ThreadAuthenticator(self.ctx)
        self._auth.start()
        self._auth.configure_curve(domain="qhil", location=str(allowed))
        self.sock.setsockopt(zmq.CURVE_SERVER, 1)
        self.sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        self.sock.setsockopt(zmq.ZAP_DOMAIN, b"qhil")

    # -- socket thread ------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve until :meth:`stop` (or KeyboardInterrupt); puts the device in its safe state
        when leaving."""
        self._worker.start()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        self.log(f"qhil lab server on {self.endpoint} ({self.device.name}), run log {self.runs.path}")
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(100))
                if self._wake in events:
                    self._deliver_finished()
                if self.sock in events:
                    for _ in range(256):      # drain, without starving the worker's replies
                        if not wire.readable(self.sock):
                            break
                        try:
                            frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(frames)
        finally:
            self._stop.set()
            self._jobs.put(None)
            self._worker.join(timeout=30)
            self._safe("server stopping")
            self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for s in (self.sock, self._wake):
            s.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()
        self.runs.close()

    def _send(self, ident: bytes, frames: list) -> None:
        try:
            wire.send_frames(self.sock, [ident, *frames])
        except zmq.ZMQError:      # peer gone or queue full: the client will retry
            pass

    def _reply(self, ident: bytes, msg: Message) -> None:
        self._send(ident, wire.encode(msg))

    def _handle(self, frames: list) -> None:
        if len(frames) < 1:
            return
        ident = frames[0].bytes
        raw = [f.buffer for f in frames[1:]]
        try:
            msg = wire.decode(raw, wire.REQUEST_TYPES, self.max_message_bytes)
        except Exception as exc:      # never die on a message
            if not isinstance(exc, BridgeError):
                exc = error("bad_frame", f"undecodable message ({type(exc).__name__}: {exc})")
            self.log(f"rejected message from {ident.hex()}: {exc}")
            self._reply(ident, wire.error_message(wire.peek_id(raw), exc))
            return
        try:
            if msg.type == "ping":
                ids = msg.body.get("requests", [])
                if (not isinstance(ids, list) or len(ids) > wire.MAX_PING_IDS
                        or not all(isinstance(r, str) for r in ids)):
                    raise error("bad_request", f"requests must be a list of ≤{wire.MAX_PING_IDS} ids", "requests")
                self._reply(ident, Message("pong", msg.id, {"states": {r: self._request_state(r) for r in ids},
                                                            "queue": self._jobs.qsize(), "time": time.time()}))
            elif msg.type == "hello":
                self._reply(ident, Message("hello", msg.id, self._hello()))
            elif msg.type == "describe":
                self._reply(ident, Message("describe", msg.id, self._describe()))
            else:
                self._submit(ident, msg)
        except BridgeError as exc:
            self._reply(ident, wire.error_message(msg.id, exc))
        except Exception as exc:   # never die on a request
            self.log(f"internal error on {msg.id}: {exc!r}")
            self._reply(ident, wire.error_message(msg.id, error("internal", f"{type(exc).__name__}: {exc}")))

    def _hello(self) -> dict[str, Any]:
        return {"server": SERVER_NAME, "protocol": wire.PROTOCOL_VERSION, "features": FEATURES,
                "device": self.device.name, "curve": self._auth is not None}

    def _describe(self) -> dict[str, Any]:
        d = self.device.describe()
        d["server"] = {**self._hello(), "max_message_bytes": self.max_message_bytes,
                       "executed": self.executed, "logged": self.runs.count()}
        return d

    def _request_state(self, rid: str) -> str:
        if rid in self._state:
            return self._state[rid]
        if rid in self._done or self.runs.has(rid):
            return "done"
        return "unknown"

    def _submit(self, ident: bytes, msg: Message) -> None:
        job = self._validate(msg)
        job.client = ident.hex()
        stored = self._done.get(msg.id)
        if stored is None and msg.id not in self._state:
            stored = self.runs.lookup(msg.id)
        if stored is not None:
            digest, frames = stored
            if digest != job.digest:
                raise error("id_reused", f"request id {msg.id} was already used for a different request")
            self.log(f"{msg.id}: answered from stored result (not run again)")
            self._send(ident, _mark_replayed(frames))
            return
        if msg.id in self._state:        # a retry of a queued or running request: join it
            if self._digests.get(msg.id) != job.digest:
                raise error("id_reused", f"request id {msg.id} is in use for a different request")
            self._waiters[msg.id].add(ident)
            return
        if self._jobs.qsize() >= self.max_queue:
            raise error("busy", f"{self._jobs.qsize()} requests queued; retry later")
        self._state[msg.id] = "queued"
        self._digests[msg.id] = job.digest
        self._waiters[msg.id] = {ident}
        self._jobs.put(job)

    def _deliver_finished(self) -> None:
        """Send the replies of finished jobs: the worker appends (id, ok, digest, frames) to
        the outbox, then sends an empty frame on the inproc PAIR to wake this thread."""
        while wire.readable(self._wake):
            try:
                self._wake.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
        while self._outbox:
            self._deliver(*self._outbox.popleft())

    def _deliver(self, rid: str, ok: bool, digest: str | None, reply: list) -> None:
        self._state.pop(rid, None)
        self._digests.pop(rid, None)
        if ok:
            reply = [bytes(f) for f in reply]       # kept by id: immutable copies
            self._done[rid] = (digest, reply)
            while len(self._done) > self.cache_size:
                self._done.popitem(last=False)
        for ident in self._waiters.pop(rid, ()):
            self._send(ident, reply)

    # -- validation (socket thread, before anything is queued) ------------------------
    def _validate(self, msg: Message) -> _Job:
        b, dev = msg.body, self.device
        if not _RUN_FIELDS.issuperset(b):
            raise error("bad_request", f"unknown field(s) {sorted(set(b) - _RUN_FIELDS)}", "body")
        dt = b.get("dt")
        if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not 0 < dt <= dev.max_dt:
            raise error("bad_request", f"dt must be a number in (0, {dev.max_dt:g}], got {dt!r}", "dt")
        names = b.get("channels")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise error("bad_request", "channels must be a list of channel names", "channels")
        known = self._known
        if names != known:
            for n in names:
                if n not in known:
                    raise error("unknown_channel", f"channel {n!r} is not on this device (channels: {known})",
                                f"channels.{n}")
            if len(set(names)) != len(names):
                raise error("bad_request", "a channel is named twice", "channels")
            missing = [n for n in known if n not in names]
            if missing:
                raise error("missing_channel", f"no controls for channel(s) {missing}", "channels")
        if len(msg.arrays) != 1 or "controls" not in msg.arrays:
            raise error("bad_request", "a run carries exactly one array, 'controls'", "arrays")
        raw = msg.arrays["controls"]
        if raw.dtype != np.float64 or raw.ndim != 2 or raw.shape[1] != len(names):
            raise error("bad_request", f"controls must be float64 of shape (K, {len(names)}), got "
                        f"{raw.dtype} {list(raw.shape)}", "controls")
        if raw.shape[0] > dev.max_steps:
            raise error("too_large", f"{raw.shape[0]} steps, limit {dev.max_steps}", "controls")
        u = raw[:, [names.index(n) for n in known]] if names != known else np.array(raw)  # device order, a copy
        lo, hi, lo_tol, hi_tol = self._bounds
        inside = (u >= lo_tol) & (u <= hi_tol)        # false for NaN
        if not inside.all():
            k, c = np.argwhere(~inside)[0]
            ch = dev.channels[c]
            raise error("out_of_bounds", f"controls[{k}, {ch.name}] = {u[k, c]!r} is outside "
                        f"[{ch.lower:g}, {ch.upper:g}] {ch.units}", f"controls[{k}, {ch.name}]")
        np.minimum(u, hi, out=u)                      # clip what lies within the tolerance
        np.maximum(u, lo, out=u)
        K = u.shape[0]
        steps = b.get("steps")
        if (not isinstance(steps, list) or not steps or not all(type(k) is int for k in steps)
                or not 0 <= steps[0] <= steps[-1] <= K):
            steps = None
        else:
            try:
                steps = np.array(steps, dtype=np.int64)
            except OverflowError:                     # a huge one in the middle: not increasing
                steps = None
            else:
                if len(steps) > 1 and not (steps[1:] > steps[:-1]).all():
                    steps = None
        if steps is None:
            raise error("bad_request", f"steps must be a non-empty increasing list of integers in 0..{K}",
                        "steps")
        n = dev.n_qubits
        settings = b.get("settings")
        if (not isinstance(settings, list) or not 1 <= len(settings) <= dev.max_settings
                or not all(isinstance(s, str) and len(s) == n and _SETTING.fullmatch(s) for s in settings)):
            raise error("bad_request", f"settings must be 1..{dev.max_settings} strings of {n} letters "
                        "from XYZ (one basis per qubit)", "settings")
        shots = b.get("shots")
        if shots is None:
            if not dev.exact_expectations:
                raise error("unsupported", "shots=None (exact expectation values) is not available on "
                            f"the {dev.name} device", "shots")
        elif isinstance(shots, bool) or not isinstance(shots, int) or not 1 <= shots <= dev.max_shots:
            raise error("bad_request", f"shots must be an integer in [1, {dev.max_shots}] or null", "shots")
        model = b.get("model")
        match = b.get("match_model", True)
        if not isinstance(match, bool):
            raise error("bad_request", "match_model must be true or false", "match_model")
        if model is not None and not isinstance(model, dict):
            raise error("bad_request", "model must be an object {kind, params} or null", "model")
        if match and model is not None:
            mine = dev.model_description()
            if mine is not None and model != mine:
                raise error("model_mismatch", f"this device runs {json.dumps(mine, sort_keys=True)}, the "
                            f"request names {json.dumps(model, sort_keys=True)}", "model")
        labels = b.get("labels")
        if labels is not None:
            if not isinstance(labels, list) or len(labels) > 100_000 or not all(isinstance(x, str) for x in labels):
                raise error("bad_request", "labels must be a list of Pauli labels", "labels")
            _check_labels(tuple(labels), n)
        if b.get("schedule") is not None:
            _check_schedule(json.dumps(b["schedule"], sort_keys=True))
        seed = b.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise error("bad_request", "seed must be a non-negative integer or null", "seed")
        h = hashlib.sha256(_CANONICAL(b).encode())
        h.update(raw.tobytes())
        return _Job(id=msg.id, digest=h.hexdigest(), body=b, controls=u, steps=steps,
                    settings=tuple(settings), shots=shots, received=time.time(), client=None)

    # -- worker thread ------------------------------------------------------------------
    def _work(self) -> None:
        out = self.ctx.socket(zmq.PAIR)
        out.connect(self._wake_addr)
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                self._state[job.id] = "running"
                try:
                    done = (job.id, True, job.digest, self._execute(job))
                except BridgeError as exc:
                    done = (job.id, False, None, wire.encode(wire.error_message(job.id, exc)))
                except Exception as exc:
                    done = (job.id, False, None, wire.encode(wire.error_message(
                        job.id, error("internal", f"{type(exc).__name__}: {exc}"))))
                self._outbox.append(done)
                out.send(b"", copy=True)          # wake the socket thread
        finally:
            out.close(linger=0)

    def _safe(self, why: str) -> None:
        try:
            self.device.safe()
        except Exception as exc:  # pragma: no cover - hardware-specific
            self.log(f"could not put the device in its safe state ({why}): {exc!r}")

    def _execute(self, job: _Job) -> list:
        """Run ``job`` on the device, log it (committed), and return the reply frames."""
        dev = self.device
        seed = job.body.get("seed")
        rng = np.random.default_rng(seed) if seed is not None else self._rng
        started = time.time()
        try:
            dev.begin_episode(rng)
            calibration = dev.calibration()
            data = dev.execute(job.controls, float(job.body["dt"]), job.steps, job.settings, job.shots, rng)
            data = np.asarray(data)
            expect = (len(job.steps), len(job.settings), 2 ** dev.n_qubits)
            if data.shape != expect:
                raise RuntimeError(f"device returned shape {data.shape}, expected {expect}")
            data = data.astype(np.float64 if job.shots is None else np.int64)   # a copy of our own
            dev.safe()                        # outputs back to 0 after every experiment
        except Exception as exc:
            self._safe("device fault")
            self.log(f"{job.id}: device fault: {exc!r}; device put in safe state")
            self.runs.fault(job.id, repr(exc))
            raise error("device_fault", f"{type(exc).__name__}: {exc} (the device was put in its safe "
                        "state; nothing was logged as executed)") from None
        finished = time.time()
        self.executed += 1
        results = None
        labels = job.body.get("labels")
        if labels:
            values, stderr = estimate_from_counts(data, tuple(labels), job.settings, dev.n_qubits)
            if job.shots is None:
                stderr = np.zeros_like(stderr)
            results = {"labels": labels, "values": values.tolist(), "stderr": stderr.tolist()}
        n_circ = len(job.steps) * len(job.settings)
        reps = job.shots or 1
        reply = {"device": dev.name, "steps": job.steps.tolist(), "settings": list(job.settings),
                 "shots": job.shots, "calibration": calibration, "replayed": False,
                 "received_at": job.received, "started_at": started, "finished_at": finished,
                 "device_s": finished - started,
                 "replay": {"prepares": n_circ * reps,
                            "played_steps": int(job.steps.sum()) * len(job.settings) * reps,
                            "circuits": n_circ}}
        try:        # the reply's JSON, written once for the log and the wire
            reply_json: str | None = wire.dumps(reply)
        except ValueError:     # NaN/Infinity: fine in the log, refused on the wire (below)
            reply_json = None
        body = job.body
        experiment = {k: v for k, v in body.items() if k != "model"}
        experiment["controls"] = job.controls.tolist()
        row = (job.id, job.digest, job.client, job.received, started, finished, dev.name,
               json.dumps(body.get("model")), json.dumps(experiment), json.dumps(list(job.settings)),
               data.tobytes(), "float64" if job.shots is None else "int64", json.dumps(list(data.shape)),
               json.dumps(results), json.dumps(calibration), reply_json or json.dumps(reply))
        try:
            self.runs.append(row)
        except Exception as exc:   # the device ran: reply (and keep the reply by id) anyway
            self.log(f"{job.id}: RUN LOG WRITE FAILED ({exc!r}); result kept in memory only")
            reply["logged"] = False
            reply_json = None
        if self.crash_after is not None and self.executed >= self.crash_after:
            self.log(f"crash_after={self.crash_after}: exiting after logging {job.id}, before replying")
            os._exit(70)
        name = "probabilities" if job.shots is None else "counts"
        if reply_json is None:
            return wire.encode(Message("result", job.id, reply, {name: data}))
        return wire.encode_json_body("result", job.id, reply_json, {name: data})
