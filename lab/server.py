"""The lab server: a ZeroMQ ROUTER in front of a :class:`~qhil.lab.device.PulseDevice`.

    server = LabServer(device, bind="tcp://127.0.0.1:5555", run_log="runs.sqlite")
    server.serve_forever()

* Every message is decoded and validated (:mod:`qhil.drivers.bridge.wire`); a bad one gets a
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
import hmac
import json
import math
import os
import queue
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq

from qhil.drivers import MeasurementSchedule, ValidationError
from qhil.drivers.bridge import wire
from qhil.drivers.model import BOUND_TOLERANCE
from qhil.drivers.pauli import estimate_from_counts, parse_pauli
from qhil.drivers.bridge.wire import BridgeError, Message, error

from .device import PulseDevice

SERVER_NAME = "qhil-lab"
FEATURES = ["idempotent", "heartbeat", "prefix_replay", "run_log", "curve", "progress", "lock"]
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
#: size of the run log's id filter (a Bloom filter of 3 hashes over 8 Mi bits: 1 MiB; about 1 %
#: of unseen ids cost a query at a million logged runs, 10 % at 3 million)
ID_FILTER_BYTES = 1 << 20
_ID_MASK = ID_FILTER_BYTES * 8 - 1
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
        # Ids in the log, as a Bloom filter (fixed memory, no false "absent"): a request id
        # it has never seen is answered "not logged" without a query (issue 16: one SELECT
        # per new request). Every id is added before its row is inserted; the log's
        # existing ids are added here. (One server per log file: rows another process
        # writes are not seen, as its commits would race the lookups anyway.)
        self._ids = bytearray(ID_FILTER_BYTES)
        for (rid,) in self._db.execute("SELECT request_id FROM runs"):
            self._note_id(rid)
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
                while not self._closing:     # (re-checked: the clear() below may swallow close()'s set())
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

    def _note_id(self, request_id: Any) -> None:
        h = hash(request_id)
        bits = self._ids
        for b in (h & _ID_MASK, (h >> 27) & _ID_MASK, (h >> 54 ^ h >> 13) & _ID_MASK):
            bits[b >> 3] |= 1 << (b & 7)

    def may_have(self, request_id: str) -> bool:
        """False only if ``request_id`` is certainly not in the log (no query); True if it
        may be (then :meth:`lookup` tells)."""
        h = hash(request_id)
        bits = self._ids
        for b in (h & _ID_MASK, (h >> 27) & _ID_MASK, (h >> 54 ^ h >> 13) & _ID_MASK):
            if not bits[b >> 3] & (1 << (b & 7)):
                return False
        return True

    def append(self, values: tuple | dict[str, Any]) -> None:
        """Insert one run (a tuple in :data:`RUN_COLUMNS` order, or a dict by column name)
        in its own transaction, committed when this returns."""
        if isinstance(values, dict):
            values = tuple(values[c] for c in RUN_COLUMNS)
        self._note_id(values[0])     # (before the row exists: the filter never misses a logged id)
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
        if not self.may_have(request_id):
            return None
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
        if not self.may_have(request_id):
            return False
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


class ValidatedCache:
    """Keys that passed a check, bounded by entries AND by the summed size of the keys, so a
    client can not grow it by sending big requests (issue 16: a cache of whole label lists
    grew a server by 900 MB). A key larger than ``max_key`` is checked every time and never
    stored. Only keys that passed are stored (a refused key raises before it is added)."""

    def __init__(self, max_entries: int, max_key: int, max_total: int) -> None:
        self.max_entries, self.max_key, self.max_total = max_entries, max_key, max_total
        self._keys: OrderedDict[Any, int] = OrderedDict()
        self.total = 0            # summed sizes of the stored keys
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, key: Any, size: int, check: Callable[[], None]) -> None:
        """Run ``check()`` unless ``key`` passed before; remember it if it passes and fits."""
        if size <= self.max_key:
            with self._lock:
                if key in self._keys:
                    self._keys.move_to_end(key)
                    return
        check()
        if size <= self.max_key:
            with self._lock:
                if key not in self._keys:
                    self._keys[key] = size
                    self.total += size
                while len(self._keys) > self.max_entries or self.total > self.max_total:
                    self.total -= self._keys.popitem(last=False)[1]


#: labels lists (by their text: sum of label lengths + 8 per label) and schedules (JSON text) that passed
LABEL_CACHE = ValidatedCache(max_entries=256, max_key=16_384, max_total=1 << 20)
SCHEDULE_CACHE = ValidatedCache(max_entries=256, max_key=4096, max_total=256 << 10)
#: at most this many labels per run (the header limit bounds them anyway)
MAX_LABELS = 100_000
#: a request id joined by at most this many retries while it is queued or running
MAX_WAITERS = 64
#: the server estimates its log's ``results`` in chunks of labels whose sign table (labels ×
#: settings × 2^n float64) is at most this big, so that the estimator's cache (256 tables in
#: qhil.drivers.pauli) stays below 64 MiB whatever clients send
ESTIMATOR_TABLE_BYTES = 256 << 10


#: single labels that passed, by (n, label): at most this many (then the set starts afresh)
MAX_GOOD_LABELS = 65_536
_GOOD_LABELS: set[tuple[int, str]] = set()


def _check_labels(labels: list, n: int) -> None:
    """Every label parses on n qubits. Whole lists are remembered in :data:`LABEL_CACHE` (small
    lists only) and single labels in a set of at most :data:`MAX_GOOD_LABELS`, so a client
    that sends a long list again costs set lookups, not parses, and no more memory."""
    if len(labels) > MAX_LABELS or not all(isinstance(x, str) and len(x) <= 8 * n + 8 for x in labels):
        raise error("bad_request", f"labels must be a list of at most {MAX_LABELS} Pauli labels of at "
                    f"most {8 * n + 8} characters", "labels")
    key = (n, tuple(labels))

    def check() -> None:
        good = _GOOD_LABELS
        for lab in labels:
            if (n, lab) in good:
                continue
            try:
                parse_pauli(lab, n)
            except Exception as exc:
                raise error("bad_request", str(exc), "labels") from None
            if len(good) >= MAX_GOOD_LABELS:
                good.clear()
            good.add((n, lab))
    LABEL_CACHE.check(key, sum(map(len, labels)) + 8 * len(labels), check)


def _check_schedule(text: str) -> None:
    """``text``: the schedule as JSON (a cache key: equal text, equal schedule)."""
    def check() -> None:
        try:
            MeasurementSchedule.from_dict(json.loads(text))
        except Exception as exc:
            raise error("bad_request", f"schedule: {exc}", "schedule") from None
    SCHEDULE_CACHE.check(text, len(text), check)


def _mark_replayed(frames: list) -> list:
    """A stored reply, flagged ``replayed`` (served from storage, the device did not run)."""
    m = wire.decode([bytes(f) for f in frames], wire.REPLY_TYPES, max_bytes=1 << 62)
    m.body["replayed"] = True
    return wire.encode(m)


#: the request digest: SHA-256 of this canonical JSON of the body, then the controls' bytes
_CANONICAL = wire.json_encoder(sort_keys=True)
#: ``json.dumps`` (its text: separators ", " and ": "), for the log's JSON columns
_LOG_JSON = wire.json_encoder(separators=(", ", ": "))
_RUN_FIELDS = frozenset({"dt", "channels", "steps", "settings", "shots", "model", "match_model", "schedule",
                         "labels", "seed", "owner"})
_SETTING = re.compile(r"[XYZ]+")
_OWNER = re.compile(r"[A-Za-z0-9_.@:-]{1,64}\Z")


def _estimate(data: np.ndarray, labels: list[str], settings: tuple[str, ...], n: int,
              exact: bool) -> dict[str, Any]:
    """The log's ``results``: each label's mean and standard error per measured step, from
    chunks of labels whose sign table fits :data:`ESTIMATOR_TABLE_BYTES` (each label's
    estimate depends on its own row only, so chunks give the same numbers)."""
    per_label = len(settings) * 2 ** n * 8
    if per_label > ESTIMATOR_TABLE_BYTES:
        return {"labels": labels, "values": None, "stderr": None,
                "note": f"not estimated: {len(settings)} settings × 2^{n} outcomes per label exceed "
                        f"{ESTIMATOR_TABLE_BYTES} bytes; estimate from counts"}
    chunk = ESTIMATOR_TABLE_BYTES // per_label
    if len(labels) <= chunk:          # one table (almost every run): no chunks to join
        values, stderr = estimate_from_counts(data, tuple(labels), settings, n)
        if exact:
            stderr = np.zeros_like(values)
        return {"labels": labels, "values": values.tolist(), "stderr": stderr.tolist()}
    parts = [estimate_from_counts(data, tuple(labels[i:i + chunk]), settings, n)
             for i in range(0, len(labels), chunk)]
    values = np.concatenate([v for v, _ in parts], axis=-1)
    stderr = np.zeros_like(values) if exact else np.concatenate([e for _, e in parts], axis=-1)
    return {"labels": labels, "values": values.tolist(), "stderr": stderr.tolist()}


class _Job:
    __slots__ = ("id", "digest", "body", "controls", "steps", "settings", "shots", "received", "client")

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


#: the smallest and largest ``max_message_bytes`` a server accepts
MIN_MESSAGE_BYTES = 64 << 10
MAX_MESSAGE_LIMIT = 1 << 30


class AllowList:
    """The CURVE allow-list: a folder of client public-key certificates (``*.key``), re-read
    whenever it changes. Revoking a key = deleting (or moving away) its file:

    * a NEW connection is checked by the ZAP handler (:meth:`callback`), which re-reads the
      folder first if its listing changed: a deleted key is refused from that moment on;
    * messages on an OPEN connection carry the client's key (ZMQ's ``User-Id``), which the
      server checks with :meth:`allows`, re-reading the folder at most every ``interval``
      seconds: a revoked client gets ``auth_refused`` errors within ``interval`` seconds
      (default 1 s) of the deletion, and its requests are not run.
    """

    def __init__(self, folder: str | os.PathLike, interval: float = 1.0,
                 log: Callable[[str], None] | None = None) -> None:
        self.folder = str(folder)
        self.interval = float(interval)
        self.log = log or (lambda s: None)
        self._lock = threading.Lock()
        self._signature: Any = None
        self._checked = -float("inf")
        self.keys: frozenset[str] = frozenset()       # z85 public keys
        self.reloads = 0
        self.refresh()

    def _listing(self) -> Any:
        try:
            st = os.stat(self.folder)
            return st.st_mtime_ns, tuple(sorted(
                (e.name, e.stat().st_mtime_ns, e.stat().st_size)
                for e in os.scandir(self.folder) if e.name.endswith(".key") and e.is_file()))
        except OSError:
            return None

    def refresh(self) -> None:
        """Re-read the folder if its listing (names, sizes, times) changed."""
        import zmq.auth
        with self._lock:
            self._checked = time.monotonic()
            sig = self._listing()
            if sig == self._signature:
                return
            keys = set()
            for name, _, _ in (sig[1] if sig else ()):
                try:
                    public, _ = zmq.auth.load_certificate(os.path.join(self.folder, name))
                except Exception as exc:      # a broken file allows nobody
                    self.log(f"allow-list: skipping {name}: {exc}")
                    continue
                if public:
                    keys.add(public.decode("ascii"))
            self.keys, self._signature = frozenset(keys), sig
            self.reloads += 1
            if sig is None:
                self.log(f"allow-list folder {self.folder} is gone: every client is refused")

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: may the client with z85 public ``key`` connect? (Each new connection.)"""
        self.refresh()
        return key.decode("ascii", "replace") in self.keys

    def allows(self, user_id: str) -> bool:
        """Is ``user_id`` (a z85 key, from a message's metadata) still allowed?"""
        if time.monotonic() - self._checked >= self.interval:
            self.refresh()
        return user_id in self.keys


class LabServer:
    """ROUTER server fronting one device. ``bind`` defaults to localhost only.

    run_log:           SQLite path (None: in memory, tests only).
    curve_secret_file: server certificate (``zmq.auth`` format, with its secret key); turns on
                       CURVE. ``allowed_keys``: folder of client public-key certificates.
    max_message_bytes: requests larger than this get a ``too_large`` error (at least
                       :data:`MIN_MESSAGE_BYTES`); a single frame over 4 × this is dropped by
                       ZeroMQ, which disconnects the peer.
    cache_size:        replies kept in memory by request id (all are kept in the run log);
                       ``cache_bytes``: and at most this many bytes of them.
    allow_list_interval: with CURVE, seconds between re-reads of the allow-list folder for
                       messages on open connections (new connections re-read it at once).
    crash_after:       fault injection for tests: exit the process right after logging the
                       N-th experiment, before replying.
    """

    def __init__(self, device: PulseDevice, bind: str = "tcp://127.0.0.1:5555",
                 run_log: str | os.PathLike | None = "qhil-runs.sqlite", *,
                 curve_secret_file: str | os.PathLike | None = None,
                 allowed_keys: str | os.PathLike | None = None,
                 max_message_bytes: int = wire.MAX_MESSAGE_BYTES, cache_size: int = 1024,
                 cache_bytes: int = 64 << 20, allow_list_interval: float = 1.0,
                 max_queue: int = 64, synchronous: str = "NORMAL", crash_after: int | None = None,
                 log: Callable[[str], None] | None = None, require_lock: bool = False,
                 lock_key: str | None = None) -> None:
        self.device = device
        self.bind = bind
        self.max_message_bytes = int(max_message_bytes)
        if not MIN_MESSAGE_BYTES <= self.max_message_bytes <= MAX_MESSAGE_LIMIT:
            raise ValidationError("max_message_bytes", f"{max_message_bytes} is out of range",
                                  f"{MIN_MESSAGE_BYTES}..{MAX_MESSAGE_LIMIT}")
        self.cache_size = int(cache_size)
        self.cache_bytes = int(cache_bytes)
        self._done_bytes = 0
        self.allow_list: AllowList | None = None
        self._allow_list_interval = float(allow_list_interval)
        self.max_queue = int(max_queue)
        self.crash_after = crash_after
        self.log = log or (lambda s: None)
        self.runs = RunLog(run_log if run_log is not None else ":memory:", synchronous)
        self._done: OrderedDict[str, tuple[str, list]] = OrderedDict()
        self._state: dict[str, str] = {}           # id → "queued" | "running"
        self._waiters: dict[str, list[bytes]] = {}   # id → one identity per copy awaiting a reply
        self._digests: dict[str, str] = {}          # digests of queued and running requests
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()   # C-level put/get: a cheaper hand-off
        self._outbox: deque = deque()                # finished jobs, worker → socket thread
        self._stop = threading.Event()
        self._rng = np.random.default_rng()
        self.executed = 0
        self._init_lock_and_progress(require_lock, lock_key)
        self.ctx = zmq.Context()
        self._auth = None
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        # Hard ceiling per frame (the peer is disconnected); the soft limit answers with an error.
        self.sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_message_bytes)
        try:
            if curve_secret_file is not None:
                self._setup_curve(curve_secret_file, allowed_keys)
            self.sock.bind(bind)
        except (zmq.ZMQError, OSError, ValueError) as exc:     # a clean error, nothing left open
            self.sock.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            self.ctx.term()
            self.runs.close()
            if isinstance(exc, ValidationError):
                raise
            which = "bind" if isinstance(exc, zmq.ZMQError) else "curve_secret_file"
            raise ValidationError(which, f"{bind if which == 'bind' else curve_secret_file}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
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
            raise ValidationError("allowed_keys", "CURVE needs a folder of allowed client public keys",
                                  "an existing folder")
        try:
            public, secret = zmq.auth.load_certificate(str(secret_file))
        except (OSError, ValueError) as exc:
            raise ValidationError("curve_secret_file", f"cannot read {secret_file}: {exc}") from None
        if secret is None:
            raise ValidationError("curve_secret_file", f"{secret_file} holds no secret key",
                                  "a *.key_secret file from `qhil lab keygen`")
        self.allow_list = AllowList(allowed, self._allow_list_interval, self.log)
        self._auth = ThreadAuthenticator(self.ctx)
        self._auth.start()
        # every new connection is checked against the folder as it is now (keys are revoked
        # by deleting their file; see AllowList)
        self._auth.configure_curve_callback(domain="qhil", credentials_provider=self.allow_list)
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
                            frames, extra = wire.recv_frames(self.sock)
                        except zmq.Again:
                            break
                        try:
                            self._handle(frames, extra)
                        except Exception as exc:     # pragma: no cover - the last line of defence
                            self.log(f"unhandled error on a message: {exc!r}")
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

    def _handle(self, frames: list, extra: int = 0) -> None:
        """One message: ``frames`` = [identity, signature, header, arrays...] (the first
        1 + wire.MAX_FRAMES; ``extra`` more were received and dropped)."""
        if len(frames) < 1:
            return
        ident = frames[0].bytes
        raw = [f.buffer for f in frames[1:]]
        try:
            if extra:
                exc = error("bad_frame", f"{len(raw) + extra} frames; a message has at most "
                            f"{wire.MAX_FRAMES} (signature, header, ≤{wire.MAX_ARRAYS} arrays)")
                exc.request_id = wire.peek_id(raw)
                raise exc
            if self.allow_list is not None and len(frames) > 1 and not self.allow_list.allows(
                    frames[1].get("User-Id")):
                raise error("auth_refused", "this client's key is no longer in the server's allow-list")
            msg = wire.decode(raw, wire.REQUEST_TYPES, self.max_message_bytes)
        except Exception as exc:      # never die on a message
            if not isinstance(exc, BridgeError):
                exc = error("bad_frame", f"undecodable message ({type(exc).__name__})")
            try:
                self.log(f"rejected message from {ident.hex()}: {exc}")
            except Exception:         # pragma: no cover - a broken log callback
                pass
            self._reply(ident, wire.error_message(exc.request_id, exc))
            return
        try:
            if msg.type == "ping":
                ids = msg.body.get("requests", [])
                if (not isinstance(ids, list) or len(ids) > wire.MAX_PING_IDS
                        or not all(isinstance(r, str) for r in ids)):
                    raise error("bad_request", f"requests must be a list of ≤{wire.MAX_PING_IDS} ids", "requests")
                self._reply(ident, Message("pong", msg.id, self._pong_body(ids)))
            elif msg.type in ("lock", "unlock"):
                self._reply(ident, Message(msg.type, msg.id, self._lock_request(msg, ident)))
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
        d["lock"] = self._lock_state()
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
            waiters = self._waiters[msg.id]
            if len(waiters) >= MAX_WAITERS:
                raise error("busy", f"request {msg.id} is already awaited by {MAX_WAITERS} copies; retry "
                            "after its reply")
            waiters.append(ident)         # each copy gets its own reply (same connection or not)
            return
        self._check_lock(msg.body.get("owner"))      # new executions only (retries join above)
        if self._jobs.qsize() >= self.max_queue:
            raise error("busy", f"{self._jobs.qsize()} requests queued; retry later")
        self._state[msg.id] = "queued"
        self._digests[msg.id] = job.digest
        self._waiters[msg.id] = [ident]
        self._submitted += 1
        self._queued_seq[msg.id] = self._submitted
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
        self._run_progress.pop(rid, None)
        self._digests.pop(rid, None)
        if ok:
            reply = [bytes(f) for f in reply]       # kept by id: immutable copies
            size = sum(map(len, reply))
            if size <= self.cache_bytes:            # (a bigger one is answered from the run log)
                old = self._done.pop(rid, None)
                if old is not None:
                    self._done_bytes -= sum(map(len, old[1]))
                self._done[rid] = (digest, reply)
                self._done_bytes += size
                while len(self._done) > self.cache_size or self._done_bytes > self.cache_bytes:
                    self._done_bytes -= sum(map(len, self._done.popitem(last=False)[1][1]))
        for ident in self._waiters.pop(rid, ()):
            self._send(ident, reply)

    # -- progress and the experiment lock (socket thread; _started: worker) ------------
    def _init_lock_and_progress(self, require_lock: bool, lock_key: str | None) -> None:
        self.require_lock = bool(require_lock)
        #: the emergency key of a forced unlock (``qhil lab serve`` writes it to a 0600 file)
        self.lock_key = lock_key if lock_key else secrets.token_urlsafe(32)
        self._lock_owner: str | None = None
        self._lock_since: float | None = None
        self._submitted = 0                         # runs queued so far (their sequence numbers)
        self._queued_seq: dict[str, int] = {}       # queued id → sequence number
        self._started_seq = 0                       # sequence number of the last started run
        #: request id → (start, Unix s; start, monotonic s; estimate, s; executed) of the run that
        #: is on the device or finished there but not yet answered. Set by the worker, dropped by
        #: the socket thread when it delivers the reply, so a pong that still says "running"
        #: always has its figures (single dict operations: no lock needed under the GIL).
        self._run_progress: dict[str, tuple[float, float, float, bool]] = {}

    def _started(self, job: _Job) -> None:
        """Worker: ``job`` starts now (for pongs: its start and estimated duration)."""
        self._started_seq = self._queued_seq.pop(job.id, self._started_seq + 1)
        self._run_progress[job.id] = (time.time(), time.monotonic(), self._estimate(job), False)

    def _executed(self, job: _Job) -> None:
        """Worker: the device is done with ``job``; logging and the reply follow (fraction 1)."""
        started = self._run_progress.get(job.id)
        if started is not None:
            self._run_progress[job.id] = started[:3] + (True,)

    def _estimate(self, job: _Job) -> float:
        """The device's estimate of ``job``'s duration, seconds, from :meth:`PulseDevice.timing`
        (the figures clients size their deadlines with)."""
        try:
            t = self.device.timing()
            circuits = len(job.steps) * len(job.settings)
            played = int(job.steps.sum()) * len(job.settings) * max(job.shots or 0, 1)
            return float(t.get("overhead_s", 0.0) + t.get("solve_step_s", 0.0) * len(job.controls)
                         + t.get("step_s", 0.0) * played + t.get("circuit_s", 0.0) * circuits
                         + t.get("shot_s", 0.0) * circuits * (job.shots or 0))
        except Exception:      # a device's timing() must never stop a run
            return float("nan")

    def _pong_body(self, ids: list[str]) -> dict[str, Any]:
        """Each id's state, and its progress: for a queued run ``ahead`` (runs queued before it,
        not counting the running one); for the running one ``started_at`` (Unix s),
        ``elapsed_s``, ``estimated_s`` and, where the device tells (a ``progress()`` method
        returning a fraction in [0, 1], which must not block), ``fraction``."""
        states = {r: self._request_state(r) for r in ids}
        progress: dict[str, dict[str, Any]] = {}
        for r, st in states.items():
            running = self._run_progress.get(r) if st == "running" else None
            if running is not None:
                started_at, started_mono, estimate, executed = running
                p: dict[str, Any] = {"started_at": started_at, "elapsed_s": time.monotonic() - started_mono}
                if math.isfinite(estimate):
                    p["estimated_s"] = estimate
                f = 1.0 if executed else self._fraction()
                if f is not None:
                    p["fraction"] = f
                progress[r] = p
            elif st == "queued":
                seq = self._queued_seq.get(r)
                if seq is not None:
                    progress[r] = {"ahead": max(0, seq - self._started_seq - 1)}
        return {"states": states, "queue": self._jobs.qsize(), "time": time.time(), "progress": progress}

    def _fraction(self) -> float | None:
        fn = getattr(self.device, "progress", None)
        if not callable(fn):
            return None
        try:
            f = fn()
        except Exception:
            return None
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            return None
        return float(f)

    def _lock_state(self) -> dict[str, Any]:
        return {"required": self.require_lock, "locked": self._lock_owner is not None,
                "owner": self._lock_owner, "since": self._lock_since}

    def _lock_event(self, request_id: str, text: str) -> None:
        """Lock events go to the server log and the run log's ``faults`` table ("lock: …")."""
        self.log(f"lock: {text}")
        try:
            self.runs.fault(request_id, f"lock: {text}")
        except Exception as exc:       # pragma: no cover - the lock works without the log
            self.log(f"could not log a lock event: {exc!r}")

    def _holder_text(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self._lock_since or 0))
        return f"{self._lock_owner!r} (since {since})"

    def _check_lock(self, owner: Any) -> None:
        """Refuse a new run unless its owner holds the lock (or nobody does and the server was
        started without ``--lock``)."""
        if owner is not None and not (isinstance(owner, str) and _OWNER.match(owner)):
            raise error("bad_request", f"owner must be 1-64 characters of [A-Za-z0-9_.@:-], got {owner!r}",
                        "owner")
        holder = self._lock_owner
        if holder is not None and owner != holder:
            raise error("locked", f"the device is locked by {self._holder_text()}; runs from "
                        f"{repr(owner) if owner else 'a client without an owner'} are refused until it is "
                        "unlocked", "owner")
        if holder is None and self.require_lock:
            raise error("locked", "this server requires the experiment lock (qhil lab serve --lock): take "
                        "it first (a lock request; ZmqBackend(owner=...).lock())", "owner")

    def _lock_request(self, msg: Message, ident: bytes) -> dict[str, Any]:
        """``lock`` {owner} and ``unlock`` {owner} or {force: true, key, owner?}: the lock's
        state after the request, or an error (``locked`` naming the holder, ``bad_lock_key``)."""
        b = msg.body
        allowed = {"owner"} if msg.type == "lock" else {"owner", "force", "key"}
        if not allowed.issuperset(b):
            raise error("bad_request", f"unknown field(s) {sorted(set(b) - allowed)}", "body")
        owner = b.get("owner")
        if owner is not None and not (isinstance(owner, str) and _OWNER.match(owner)):
            raise error("bad_request", f"owner must be 1-64 characters of [A-Za-z0-9_.@:-], got {owner!r}",
                        "owner")
        force = b.get("force", False)
        if not isinstance(force, bool):
            raise error("bad_request", "force must be true or false", "force")
        holder = self._lock_owner
        if msg.type == "lock":
            if owner is None:
                raise error("bad_request", "a lock request names its owner", "owner")
            if holder is not None and holder != owner:
                raise error("locked", f"the device is locked by {self._holder_text()}; ask them to unlock "
                            "it (an operator can force it: qhil lab unlock --force)", "owner")
            if holder is None:
                self._lock_owner, self._lock_since = owner, time.time()
                self._lock_event(msg.id, f"taken by {owner!r} (client {ident.hex()})")
            return self._lock_state()
        if force:
            key = b.get("key")
            if not isinstance(key, str) or not hmac.compare_digest(key.encode(), self.lock_key.encode()):
                self._lock_event(msg.id, f"forced unlock refused: wrong key (client {ident.hex()})")
                raise error("bad_lock_key", "wrong emergency unlock key (see the key file that "
                            "`qhil lab serve` wrote)", "key")
            if holder is not None:
                self._lock_owner = self._lock_since = None
                self._lock_event(msg.id, f"forced open (held by {holder!r}) by "
                                 f"{repr(owner) if owner else 'an operator'} (client {ident.hex()})")
            return self._lock_state()
        if owner is None:
            raise error("bad_request", "an unlock request names its owner (or forces with the key)", "owner")
        if holder is not None and holder != owner:
            raise error("locked", f"the lock is held by {self._holder_text()}; only its owner can unlock "
                        "it (or an operator, with the emergency key: qhil lab unlock --force)", "owner")
        if holder is not None:
            self._lock_owner = self._lock_since = None
            self._lock_event(msg.id, f"released by {owner!r} (client {ident.hex()})")
        return self._lock_state()

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
            raise error("out_of_bounds", f"controls[{k}, {ch.name}] = {float(u[k, c])!r} is outside "
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
        # every allocation a run makes is bounded by the message limit (issue 16): the reply's
        # array, and the log's results (len(steps) × len(labels) values and standard errors)
        reply_bytes = len(steps) * len(settings) * 2 ** n * 8
        if reply_bytes > self.max_message_bytes:
            raise error("too_large", f"the reply would hold {reply_bytes} bytes of counts (len(steps) × "
                        f"len(settings) × 2^{n} × 8), limit {self.max_message_bytes}", "steps")
        labels = b.get("labels")
        if labels is not None:
            if not isinstance(labels, list):
                raise error("bad_request", "labels must be a list of Pauli labels", "labels")
            if len(steps) * len(labels) * 16 > self.max_message_bytes:
                raise error("too_large", f"{len(steps)} steps × {len(labels)} labels of results exceed the "
                            f"message limit {self.max_message_bytes} (16 bytes each)", "labels")
            _check_labels(labels, n)
        if b.get("schedule") is not None:
            _check_schedule(_CANONICAL(b["schedule"]))     # (one encoder for the process)
        seed = b.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise error("bad_request", "seed must be a non-negative integer or null", "seed")
        h = hashlib.sha256(_CANONICAL(b).encode())
        h.update(raw.data if raw.flags.c_contiguous else raw.tobytes())    # (the same bytes, no copy)
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
                self._started(job)                # (before the state: a pong then has its figures)
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
        self._executed(job)                   # (pongs until the reply is sent: fraction 1)
        self.executed += 1
        results = None
        labels = job.body.get("labels")
        if labels:
            results = _estimate(data, labels, job.settings, dev.n_qubits, job.shots is None)
        n_circ = len(job.steps) * len(job.settings)
        reps = job.shots or 1
        steps = job.body["steps"]           # (the validated list of ints that job.steps holds)
        reply = {"device": dev.name, "steps": list(steps), "settings": list(job.settings),
                 "shots": job.shots, "calibration": calibration, "replayed": False,
                 "received_at": job.received, "started_at": started, "finished_at": finished,
                 "device_s": finished - started,
                 "replay": {"prepares": n_circ * reps,
                            "played_steps": sum(steps) * len(job.settings) * reps,
                            "circuits": n_circ}}
        try:        # the reply's JSON, written once for the log and the wire
            reply_json: str | None = wire.dumps(reply)
        except ValueError:     # NaN/Infinity: fine in the log, refused on the wire (below)
            reply_json = None
        body = job.body
        experiment = {k: v for k, v in body.items() if k != "model"}
        experiment["controls"] = job.controls.tolist()
        row = (job.id, job.digest, job.client, job.received, started, finished, dev.name,
               _LOG_JSON(body.get("model")), _LOG_JSON(experiment), _LOG_JSON(job.settings),
               data.tobytes(), "float64" if job.shots is None else "int64", _LOG_JSON(data.shape),
               _LOG_JSON(results), _LOG_JSON(calibration), reply_json or _LOG_JSON(reply))
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
