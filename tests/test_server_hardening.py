"""The lab server survives hostile input (issue 16, "The lab server").

Every message below, however broken, must get a clean error reply (or, for a frame over the
transport ceiling, the documented drop), and the server must still run a valid request
afterwards. The servers run in a thread on ``tcp://127.0.0.1:*`` (the port is the server's
own pick, read from ``server.endpoint``); one test runs ``qhil lab serve`` in a subprocess so
that a crash would be seen as the process exiting.

Fast by default (bounded hypothesis examples); ``-m slow`` runs the long fuzzing variants.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qhil.drivers.bridge import wire
from qhil.drivers.bridge.wire import Message
from qhil.envs import XYChain
from qhil.lab import server as server_mod
from qhil.lab.device import NullDevice
from qhil.lab.server import LabServer

MODEL = XYChain(n_spins=2, field_bound=5.0)
CHANNELS = [c.name for c in MODEL.controls]
LIMIT = 256 << 10                 # the test servers' max_message_bytes
REPLY_TIMEOUT = 5.0               # seconds: no reply within this = a hang (or a documented drop)
#: what the fuzzers saw, by outcome (printed at the end of the module with ``-s``)
OUTCOMES: collections.Counter = collections.Counter()

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))


class GatedDevice(NullDevice):
    """A null device whose executions wait for ``gate`` (to hold a request in 'running')."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.gate = threading.Event()
        self.gate.set()

    def execute(self, *a: Any) -> np.ndarray:
        self.gate.wait(30)
        return super().execute(*a)


#: server log lines that mean an exception escaped a handler (a "traceback" outcome)
UNEXPECTED = ("unhandled error", "internal error")


@contextlib.contextmanager
def running_server(tmp: Path, device: Any = None, **kw: Any) -> Iterator[LabServer]:
    """A LabServer in a thread; its log is kept in ``srv.lines`` and must show no exception
    that escaped a handler."""
    lines: list[str] = []
    srv = LabServer(device or NullDevice(MODEL), "tcp://127.0.0.1:*", tmp / f"runs-{id(kw)}-{time.monotonic_ns()}.sqlite",
                    **{"max_message_bytes": LIMIT, "log": lines.append, **kw})
    srv.lines = lines
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.stop()
        t.join(timeout=30)
        assert not t.is_alive(), "server thread did not stop"
        bad = [x for x in lines if x.startswith(UNEXPECTED)]
        OUTCOMES["traceback"] += len(bad)
        assert not bad, bad[:5]


class Raw:
    """A bare DEALER sending hand-made frames."""

    def __init__(self, endpoint: str, **curve: bytes) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        for k, v in curve.items():
            self.sock.setsockopt(getattr(zmq, k), v)
        self.sock.connect(endpoint)

    def send(self, frames: list) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout: float = REPLY_TIMEOUT) -> Message | None:
        if not self.sock.poll(timeout * 1000):
            return None
        return wire.decode(self.sock.recv_multipart(), wire.REPLY_TYPES, max_bytes=1 << 40)

    def call(self, frames: list, timeout: float = REPLY_TIMEOUT) -> Message | None:
        self.send(frames)
        return self.recv(timeout)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def run_msg(rid: str | None = None, K: int = 2, **body: Any) -> Message:
    b = {"dt": 0.1, "channels": CHANNELS, "steps": [K], "settings": ["ZZ"], "shots": 10, **body}
    return Message("run", rid or wire.new_id(), b, {"controls": np.full((K, 2), 0.5)})


def header(**h: Any) -> bytes:
    return json.dumps({"v": "1.0", "type": "ping", "id": "h1", "body": {}, **h}).encode()


def assert_error(reply: Message | None, code: str | None = None, rid: str | None = None) -> Message:
    """A clean error reply: known code, message, retryable flag matching the code."""
    assert reply is not None, "no reply (hang)"
    assert reply.type == "error", reply
    e = reply.body["error"]
    assert e["code"] in wire.ERROR_CODES and e["message"] and isinstance(e["retryable"], bool), e
    assert e["retryable"] == wire.ERROR_CODES[e["code"]][1]
    if code is not None:
        assert e["code"] == code, e
    if rid is not None:
        assert reply.id == rid
    return reply


def assert_serving(raw: Raw) -> None:
    """The server still runs a valid request (and answers a ping)."""
    msg = run_msg()
    reply = raw.call(wire.encode(msg))
    assert reply is not None and reply.type == "result" and reply.id == msg.id, reply
    assert reply.arrays["counts"].sum() == 10
    assert raw.call(wire.encode(Message("ping", "alive"))).type == "pong"


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[LabServer]:
    with running_server(tmp_path_factory.mktemp("hardening")) as s:
        yield s


@pytest.fixture(scope="module")
def raw(srv) -> Iterator[Raw]:
    r = Raw(srv.endpoint)
    yield r
    r.close()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if OUTCOMES:
        print(f"\nfuzz outcomes: {dict(OUTCOMES)}")


def classify(reply: Message | None, sent_id: str | None) -> str:
    """'error' / 'reply' for a clean answer; raises for a hang or a malformed error."""
    if reply is None:
        OUTCOMES["hang"] += 1
        raise AssertionError("no reply (hang)")
    if reply.type == "error":
        assert_error(reply)
        assert reply.id in ("-", sent_id), (reply.id, sent_id)
        OUTCOMES["clean error"] += 1
        return "error"
    assert reply.id == sent_id
    OUTCOMES["valid reply"] += 1
    return "reply"


# -- the message from the issue: a header nested ~1,000 levels -----------------------------

def test_deep_nesting_gets_an_error_and_the_server_serves(raw):
    deep = b"[" * 999 + b"]" * 999                      # the 2 KB message of issue 16
    for _ in range(25):                                  # it stopped the server 25 times
        assert_error(raw.call([wire.SIGNATURE, deep]), "bad_request", "-")
    assert_serving(raw)


@pytest.mark.parametrize("depth,ok", [(wire.MAX_DEPTH, True), (wire.MAX_DEPTH + 1, False), (5000, False)])
def test_nesting_at_the_limit(raw, depth, ok):
    """The header object is level 1 and its body level 2; a body field nests the rest."""
    nest: Any = 0
    for _ in range(depth - 2):
        nest = [nest]
    text = json.dumps({"v": "1.0", "type": "ping", "id": "d1", "body": {"x": nest}}) if depth < 900 else \
        '{"v":"1.0","type":"ping","id":"d1","body":{"x":' + "[" * (depth - 2) + "]" * (depth - 2) + "}}"
    reply = raw.call([wire.SIGNATURE, text.encode()])
    if ok:
        assert reply.type == "pong" and reply.id == "d1"
    else:      # the id is returned when the decoder could read it (not past the recursion limit)
        assert_error(reply, "bad_request", "d1" if depth < 900 else "-")
        assert reply.body["error"]["parameter"] == "header"
    assert_serving(raw)


def test_json_depth_ignores_brackets_in_strings():
    assert wire.json_depth(b'{"a":"[[[[\\"[[["}') == 1
    assert wire.json_depth(b'{"a":"\\\\","b":[[{}]]}') == 4
    assert wire.json_depth(b"3") == 0


def _depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max(map(_depth, v.values()), default=0)
    if isinstance(v, list):
        return 1 + max(map(_depth, v), default=0)
    return 0


@settings(max_examples=120, deadline=None)
@given(v=st.recursive(st.none() | st.integers() | st.text(alphabet='[]{}"\\ab,:', max_size=12),
                      lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text('[]{}"\\x', max_size=4), c,
                                                                            max_size=4), max_leaves=40),
       ascii_only=st.booleans())
def test_json_depth_matches_a_recursive_count(v, ascii_only):
    """The bracket scan agrees with the depth of the decoded value, whatever the strings hold."""
    text = json.dumps(v, ensure_ascii=ascii_only).encode()
    assert wire.json_depth(text) == _depth(v)


def test_peek_id_never_raises():
    assert wire.peek_id([wire.SIGNATURE, b"[" * 100_000]) is None
    assert wire.peek_id([wire.SIGNATURE, header(id="ok-1")]) == "ok-1"
    assert wire.peek_id([wire.SIGNATURE, b"\xff\xfe"]) is None


def test_subprocess_server_survives_the_issue_messages(tmp_path):
    """``qhil lab serve`` in its own process: a crash shows as the process exiting."""
    args = [sys.executable, "-m", "qhil.lab.cli", "lab", "serve", "--device", "null", "--bind",
            "tcp://127.0.0.1:*", "--run-log", str(tmp_path / "runs.sqlite"), "--model", "xy_chain",
            "--n-spins", "2", "--max-message-bytes", str(LIMIT)]
    err = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    raw = None
    try:
        line = lines.get(timeout=60)
        assert line.startswith("READY "), line
        raw = Raw(line.split()[1])
        rng = np.random.default_rng(16)
        for i in range(60):
            frames = [[wire.SIGNATURE, b"[" * 999 + b"]" * 999],
                      [wire.SIGNATURE, b'{"v":"1.0","id":"x","type":"ping","body":' + b"{\"a\":" * 3000 + b"1" + b"}" * 3001],
                      [rng.bytes(int(rng.integers(0, 64))) for _ in range(int(rng.integers(1, 5)))]][i % 3]
            assert_error(raw.call(frames))
            assert proc.poll() is None, "the server process exited"
        assert_serving(raw)
        assert proc.poll() is None
    finally:
        if raw is not None:
            raw.close()
        proc.terminate()
        proc.wait(timeout=30)
        err.close()
    log = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in log and not any(x.startswith(UNEXPECTED) for x in log.splitlines())
    assert log.count("header nests arrays/objects deeper than") == 40     # each deep message logged, refused


# -- fuzzed frames and headers ---------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30)


def _fuzz_frames(raw: Raw, frames: list, sent_id: str | None) -> None:
    classify(raw.call(frames), sent_id)


@st.composite
def garbage_frames(draw) -> list[bytes]:
    frames = draw(st.lists(st.binary(max_size=80), min_size=1, max_size=6))
    if draw(st.booleans()):
        frames[0] = wire.SIGNATURE
    return frames


@st.composite
def mutated_requests(draw) -> tuple[list, str | None]:
    """A valid request (run / ping / hello / describe) with one field of its header, body or
    array specs replaced by random JSON, deleted, or its arrays' frames cut or padded."""
    kind = draw(st.sampled_from(["run", "ping", "hello", "describe"]))
    msg = run_msg() if kind == "run" else Message(kind, wire.new_id(), {"requests": ["a", "b"]} if kind == "ping" else {})
    frames = [bytes(f) for f in wire.encode(msg)]
    h = json.loads(frames[1])
    where = draw(st.sampled_from(["header", "body", "arrays", "frames", "text"]))
    if where == "header":
        key = draw(st.sampled_from(["v", "type", "id", "body", "arrays", "extra"]))
        if draw(st.booleans()):
            h.pop(key, None)
        else:
            h[key] = draw(json_values)
    elif where == "body" and h["body"] is not None:
        keys = sorted(h["body"]) + ["labels", "schedule", "seed", "model", "match_model", "unknown"]
        key = draw(st.sampled_from(keys))
        h["body"][key] = draw(json_values | st.lists(st.integers(-5, 5), max_size=10)
                              | st.lists(st.sampled_from(["Z0", "X1", "Z0Z1", "XY", "Q9", ""]), max_size=6))
    elif where == "arrays" and "arrays" in h:
        spec = h["arrays"][0]
        key = draw(st.sampled_from(["name", "dtype", "shape"]))
        spec[key] = draw(json_values | st.sampled_from(["float32", "object", "<f8", "int64", "complex128"])
                         | st.lists(st.integers(-1, 2**40), max_size=6))
    elif where == "frames":
        extra = draw(st.lists(st.binary(max_size=40), max_size=3))
        frames = (frames[:draw(st.integers(0, len(frames)))] + extra) or [b""]   # (a message has ≥ 1 frame)
    text = json.dumps(h).encode()
    if where == "text":             # byte-level damage to the JSON text
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(st.binary(min_size=0, max_size=8)) + text[pos + draw(st.integers(0, 4)):]
    if len(frames) >= 2:
        frames[1] = text
    try:                            # the id the server may read back (after any damage)
        h = json.loads(text)
    except ValueError:
        h = None
    rid = h.get("id") if isinstance(h, dict) and isinstance(h.get("id"), str) else None
    return frames, rid


@FAST
@given(frames=garbage_frames())
def test_fuzz_random_frames(raw, frames):
    _fuzz_frames(raw, frames, None)


@FAST
@given(h=st.dictionaries(st.sampled_from(["v", "type", "id", "body", "arrays", "x"]), json_values, max_size=6)
       | json_values)
def test_fuzz_random_json_headers(raw, h):
    rid = h.get("id") if isinstance(h, dict) and isinstance(h.get("id"), str) else None
    _fuzz_frames(raw, [wire.SIGNATURE, json.dumps(h).encode()], rid)


@FAST
@given(case=mutated_requests())
def test_fuzz_mutated_requests(raw, case):
    frames, rid = case
    _fuzz_frames(raw, frames, rid)


random_headers = (st.dictionaries(st.sampled_from(["v", "type", "id", "body", "arrays", "x"]), json_values, max_size=6)
                  | json_values).map(lambda h: ([wire.SIGNATURE, json.dumps(h).encode()],
                                                h.get("id") if isinstance(h, dict) and isinstance(h.get("id"), str)
                                                else None))
any_message = mutated_requests() | garbage_frames().map(lambda f: (f, None)) | random_headers


@pytest.mark.slow
@SLOW
@given(case=any_message)
def test_fuzz_long(raw, case):
    frames, rid = case
    _fuzz_frames(raw, frames, rid)


@pytest.fixture(scope="module")
def subprocess_raw(tmp_path_factory) -> Iterator[tuple[subprocess.Popen, Raw]]:
    tmp = tmp_path_factory.mktemp("sub")
    args = [sys.executable, "-m", "qhil.lab.cli", "lab", "serve", "--device", "null", "--bind",
            "tcp://127.0.0.1:*", "--run-log", str(tmp / "runs.sqlite"), "--model", "xy_chain",
            "--n-spins", "2", "--max-message-bytes", str(LIMIT)]
    err = open(tmp / "stderr.txt", "w")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
    raw = None
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY "), line
        raw = Raw(line.split()[1])
        yield proc, raw
    finally:
        if raw is not None:
            raw.close()
        proc.terminate()
        proc.wait(timeout=30)
        err.close()
    log = (tmp / "stderr.txt").read_text()
    bad = [x for x in log.splitlines() if x.startswith(UNEXPECTED) or "Traceback" in x]
    OUTCOMES["traceback"] += len(bad)
    assert not bad, bad[:5]


@pytest.mark.slow
@SLOW
@given(case=any_message)
def test_fuzz_long_subprocess(subprocess_raw, case):
    """The same fuzzing against `qhil lab serve` in its own process: it must never exit."""
    proc, r = subprocess_raw
    frames, rid = case
    _fuzz_frames(r, frames, rid)
    assert proc.poll() is None, "the server process exited"


def test_fuzzing_leaves_a_serving_server(raw):
    """(Runs after the fuzz tests in file order.)"""
    assert_serving(raw)


@pytest.mark.slow
def test_fuzzing_leaves_a_serving_subprocess(subprocess_raw):
    proc, r = subprocess_raw
    assert_serving(r)
    assert proc.poll() is None


@pytest.mark.parametrize("case", ["huge string id", "huge list body", "huge labels", "huge steps",
                                  "many frames", "unicode garbage", "wrong types", "huge dt", "huge field name"])
def test_huge_and_wrong_fields(raw, case):
    if case in ("huge dt", "huge field name"):        # echoed in the message: cut, so replies/logs stay small
        body = {"dt": "x" * 100_000} if case == "huge dt" else {"y" * 100_000: 1}
        reply = assert_error(raw.call(wire.encode(run_msg(**body))), "bad_request")
        assert len(reply.body["error"]["message"]) <= wire.BridgeError.MAX_MESSAGE + 10
        assert_serving(raw)
        return
    if case == "huge string id":
        frames = [wire.SIGNATURE, header(id="x" * 200_000)]
        code = "bad_request"
    elif case == "huge list body":
        frames = [wire.SIGNATURE, header(body={"requests": ["r"] * 50_000})]
        code = "bad_request"
    elif case == "huge labels":
        frames = [bytes(f) for f in wire.encode(run_msg(labels=["Z0"] * 20_000))]
        code = None          # too_large or bad_request, by what exceeds first
    elif case == "huge steps":
        frames = wire.encode(run_msg(K=2, steps=list(range(30_000))))
        code = "bad_request"
    elif case == "many frames":
        frames = [wire.SIGNATURE, header()] + [b""] * 100_000
        code = "bad_frame"
    elif case == "unicode garbage":
        frames = [wire.SIGNATURE, "{\"v\":\"1.0\",\"id\":\"\ud800\"}".encode("utf-8", "surrogatepass")]
        code = "bad_frame"
    else:
        frames = [wire.SIGNATURE, header(type=["ping"], body=[], arrays={})]
        code = "bad_request"
    assert_error(raw.call(frames), code)
    assert_serving(raw)


# -- sizes at and around every limit ----------------------------------------------------------

def _ping_of_size(total: int, rid: str = "sz") -> list[bytes]:
    """A ping whose frames (signature + header) hold exactly ``total`` bytes (padded with an
    ignored header field)."""
    base = header(id=rid, pad="")
    pad = total - len(wire.SIGNATURE) - len(base)
    assert pad >= 0
    return [wire.SIGNATURE, header(id=rid, pad="x" * pad)]


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_message_limit(raw, delta):
    frames = _ping_of_size(LIMIT + delta)
    assert sum(map(len, frames)) == LIMIT + delta
    reply = raw.call(frames)
    if delta <= 0:
        assert reply.type == "pong"
    else:
        assert_error(reply, "too_large", "sz")         # the id is kept: the header was small enough
    assert_serving(raw)


def test_frame_over_the_transport_ceiling_is_dropped(srv):
    """A frame over 4 × max_message_bytes is dropped by ZeroMQ (the peer is disconnected, no
    reply); one at exactly 4 × the limit still gets ``too_large``."""
    r = Raw(srv.endpoint)
    try:
        assert_error(r.call([wire.SIGNATURE, header(), b"\0" * (4 * LIMIT - 8)]), "too_large")
        assert r.call([wire.SIGNATURE, header(), b"\0" * (4 * LIMIT + 1024)], timeout=1.0) is None
        OUTCOMES["documented drop"] += 1
    finally:
        r.close()
    fresh = Raw(srv.endpoint)
    try:
        assert_serving(fresh)
    finally:
        fresh.close()


def test_header_limit_loses_the_id(tmp_path):
    """A header over 1 MiB gets ``too_large`` with id "-" (it is not parsed); at 1 MiB it is read."""
    with running_server(tmp_path, max_message_bytes=4 << 20) as s:
        r = Raw(s.endpoint)
        try:
            at = header(id="big", pad="")
            at = header(id="big", pad="x" * (wire.MAX_HEADER_BYTES - len(at)))
            assert len(at) == wire.MAX_HEADER_BYTES
            assert r.call([wire.SIGNATURE, at]).type == "pong"
            over = header(id="big", pad="x" * (wire.MAX_HEADER_BYTES + 1 - len(header(id="big", pad=""))))
            assert_error(r.call([wire.SIGNATURE, over]), "too_large", "-")
            assert_serving(r)
        finally:
            r.close()


@pytest.mark.parametrize("n", [wire.MAX_ARRAYS, wire.MAX_ARRAYS + 1])
def test_array_count_limit(raw, n):
    specs = [{"name": f"a{i}", "dtype": "uint8", "shape": [1]} for i in range(n)]
    reply = raw.call([wire.SIGNATURE, header(type="describe", id="na", arrays=specs), *[b"x"] * n])
    if n <= wire.MAX_ARRAYS:
        assert reply.type == "describe"        # (a describe ignores arrays)
    else:                                      # more frames than a message may have
        assert_error(reply, "bad_frame", "na")
        # declared in the header, with the frames cut to the maximum: bad_request
        reply = raw.call([wire.SIGNATURE, header(type="describe", id="nb", arrays=specs), *[b"x"] * (n - 1)])
        assert_error(reply, "bad_request", "nb")
        assert reply.body["error"]["parameter"] == "arrays"
    assert_serving(raw)


@pytest.mark.parametrize("ndim", [wire.MAX_NDIM, wire.MAX_NDIM + 1])
def test_ndim_limit(raw, ndim):
    shape = [1] * ndim
    msg = run_msg(rid="nd")
    h = json.loads(bytes(wire.encode(msg)[1]))
    h["arrays"][0]["shape"] = shape
    reply = raw.call([wire.SIGNATURE, json.dumps(h).encode(), b"\0" * 8])
    assert_error(reply, "bad_request", "nd")
    assert reply.body["error"]["parameter"] == ("controls" if ndim <= wire.MAX_NDIM else "arrays.controls.shape")
    assert_serving(raw)


@pytest.mark.parametrize("n", [wire.MAX_PING_IDS, wire.MAX_PING_IDS + 1])
def test_ping_ids_limit(raw, n):
    reply = raw.call(wire.encode(Message("ping", "pi", {"requests": [f"r{i}" for i in range(n)]})))
    if n <= wire.MAX_PING_IDS:
        assert reply.type == "pong" and len(reply.body["states"]) == n
    else:
        assert_error(reply, "bad_request", "pi")


@pytest.mark.parametrize("length", [64, 65])
def test_id_length_limit(raw, length):
    rid = "i" * length
    reply = raw.call(wire.encode(Message("ping", rid)))
    if length <= 64:
        assert reply.type == "pong" and reply.id == rid
    else:
        assert_error(reply, "bad_request", "-")


# -- memory: every cache and per-request allocation bounded ----------------------------------

def test_refused_requests_do_not_grow_the_label_cache(raw):
    """Issue 16: 300 refused requests with 50,000 valid labels each grew the server by 900 MB
    (a cache of whole label lists filled before the refusal). Now: labels lists larger than
    the cache's key limit are never stored, and the cache's summed key size is bounded."""
    cache = server_mod.LABEL_CACHE
    many = [f"{a}0{b}1" for a in "XYZ" for b in "XYZ"] * 1500          # 13,500 valid labels
    for i in range(30):
        msg = run_msg(labels=many[i:], seed=-1)                        # refused (seed), after the labels
        assert_error(raw.call(wire.encode(msg)), "bad_request", msg.id)
        assert len(cache) <= cache.max_entries and cache.total <= cache.max_total
        assert (2, tuple(many[i:])) not in cache._keys                 # too big to keep
        assert len(server_mod._GOOD_LABELS) <= server_mod.MAX_GOOD_LABELS
    unique = [f"Z{'0' * (k % 5)}{k % 2}" for k in range(40)]            # valid spellings, "Z0", "Z00", …
    for i in range(3):
        assert_error(raw.call(wire.encode(run_msg(labels=unique, seed=-1))), "bad_request")
    assert len(server_mod._GOOD_LABELS) <= server_mod.MAX_GOOD_LABELS
    assert_serving(raw)


def test_good_label_set_is_bounded(monkeypatch):
    monkeypatch.setattr(server_mod, "MAX_GOOD_LABELS", 50)
    monkeypatch.setattr(server_mod, "_GOOD_LABELS", set())
    labels = [f"{a}{'0' * k}{q}" for a in "XYZ" for q in "01" for k in range(20)]   # 120 valid spellings
    server_mod._check_labels(labels, 2)
    assert 0 < len(server_mod._GOOD_LABELS) <= 50
    with pytest.raises(wire.BridgeError) as info:
        server_mod._check_labels(["Z0", "Q7"], 2)
    assert info.value.parameter == "labels" and "Q7" in str(info.value)
    assert (2, "Q7") not in server_mod._GOOD_LABELS


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3000), st.booleans()), max_size=300))
def test_validated_cache_bounds(ops):
    cache = server_mod.ValidatedCache(max_entries=8, max_key=1000, max_total=2500)
    for key, size, ok in ops:
        def check(ok=ok):
            if not ok:
                raise ValueError("refused")
        try:
            cache.check((key, size), size, check)
        except ValueError:
            assert (key, size) not in cache._keys       # refused keys are never stored
        assert len(cache) <= 8 and cache.total <= 2500
        assert cache.total == sum(cache._keys.values())
        assert all(s <= 1000 for s in cache._keys.values())


def test_reply_size_is_refused_before_the_device_runs(tmp_path):
    """len(steps) × len(settings) × 2^n × 8 bytes of counts must fit the message limit: the
    request is refused (``too_large``) before anything is allocated or run."""
    with running_server(tmp_path) as s:
        r = Raw(s.endpoint)
        try:
            n_out = LIMIT // (4 * 8)                   # 2 qubits: 4 outcomes of 8 bytes per (step, setting)
            K = n_out // 2
            ok = run_msg(K=K, steps=list(range(1, K + 1)), settings=["ZZ", "XX"])
            assert r.call(wire.encode(ok)).arrays["counts"].nbytes == LIMIT     # exactly at the limit
            before = s.device.executions
            over = run_msg(K=K + 1, steps=list(range(1, K + 2)), settings=["ZZ", "XX"])
            reply = assert_error(r.call(wire.encode(over)), "too_large", over.id)
            assert reply.body["error"]["parameter"] == "steps"
            labels = run_msg(K=K, steps=list(range(1, K + 1)), labels=["Z0", "Z1", "Z0Z1"] * 2)
            assert_error(r.call(wire.encode(labels)), "too_large", labels.id)
            assert s.device.executions == before                            # nothing ran
            assert_serving(r)
        finally:
            r.close()


def test_reply_cache_is_bounded_in_bytes(tmp_path):
    with running_server(tmp_path, cache_bytes=100_000) as s:
        r = Raw(s.endpoint)
        try:
            for _ in range(12):
                msg = run_msg(K=400, steps=list(range(1, 401)), settings=["ZZ", "XX"])   # ≈ 26 kB of counts
                assert r.call(wire.encode(msg)).type == "result"
                assert s._done_bytes <= s.cache_bytes
                assert s._done_bytes == sum(sum(map(len, f)) for _, f in s._done.values())
            assert 0 < len(s._done) < 12
            again = r.call(wire.encode(msg))            # evicted or not, a retry is answered from storage
            assert again.type == "result" and again.body["replayed"] is True
        finally:
            r.close()


def test_results_estimated_in_bounded_chunks(monkeypatch):
    """The run log's results come from estimator calls whose sign table fits
    ESTIMATOR_TABLE_BYTES (the estimator caches 256 of them), and equal one big call."""
    from qhil.drivers.pauli import all_two_local, estimate_from_counts
    n = 4
    settings_ = tuple("".join(s) for s in np.random.default_rng(1).choice(list("XYZ"), (60, n)))
    labels = all_two_local(n) * 20
    data = np.random.default_rng(2).integers(0, 50, (3, len(settings_), 2 ** n))
    sizes = []

    def spy(counts, labs, sets, nq):
        sizes.append(len(labs) * len(sets) * 2 ** nq * 8)
        return estimate_from_counts(counts, labs, sets, nq)
    monkeypatch.setattr(server_mod, "estimate_from_counts", spy)
    out = server_mod._estimate(data, labels, settings_, n, exact=False)
    assert len(sizes) > 1 and max(sizes) <= server_mod.ESTIMATOR_TABLE_BYTES
    mean, err = estimate_from_counts(data, tuple(labels), settings_, n)
    assert np.allclose(out["values"], mean) and np.allclose(out["stderr"], err)


# -- idempotency: each copy of a request gets its own reply ----------------------------------

def test_duplicate_requests_on_one_connection_each_get_a_reply(tmp_path):
    dev = GatedDevice(MODEL)
    with running_server(tmp_path, device=dev) as s:
        r = Raw(s.endpoint)
        try:
            dev.gate.clear()
            frames = wire.encode(run_msg(rid="dup"))
            r.send(frames)
            r.send(frames)                     # back to back, same connection, same bytes
            deadline = time.monotonic() + 10
            while s._request_state("dup") != "running" and time.monotonic() < deadline:
                time.sleep(0.01)
            for _ in range(server_mod.MAX_WAITERS - 2):
                r.send(frames)
            r.send(frames)                     # the 65th copy: over MAX_WAITERS
            busy = assert_error(r.recv(), "busy", "dup")
            assert busy.body["error"]["retryable"] is True
            dev.gate.set()
            replies = [r.recv() for _ in range(server_mod.MAX_WAITERS)]
            assert all(m is not None and m.type == "result" and m.id == "dup" for m in replies)
            assert len({m.arrays["counts"].tobytes() for m in replies}) == 1
            assert r.recv(timeout=0.3) is None             # no more than one reply per copy
            assert dev.executions == 1
            assert_serving(r)
        finally:
            dev.gate.set()
            r.close()


# -- CURVE: revoking a key -------------------------------------------------------------------

def _curve_opts(keys: Path, client: str) -> dict[str, bytes]:
    import zmq.auth
    spub, _ = zmq.auth.load_certificate(str(keys / "server.key"))
    cpub, csec = zmq.auth.load_certificate(str(keys / f"{client}.key_secret"))
    return {"CURVE_SERVERKEY": spub, "CURVE_PUBLICKEY": cpub, "CURVE_SECRETKEY": csec}


def _refused_at_handshake(endpoint: str, opts: dict[str, bytes]) -> bool:
    r = Raw(endpoint, **opts)
    mon = r.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        from zmq.utils.monitor import recv_monitor_message
        if not mon.poll(REPLY_TIMEOUT * 1000):
            raise AssertionError("no handshake outcome")
        return recv_monitor_message(mon)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    finally:
        r.sock.disable_monitor()
        mon.close(linger=0)
        r.close()


def test_revoked_key_is_refused(tmp_path):
    """Deleting a client's key file: new connections are refused at once (the ZAP handler
    re-reads the folder on every handshake); an open connection's next requests get
    ``auth_refused`` within ``allow_list_interval`` seconds and are not run."""
    import zmq.auth
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    for name in ("server", "alice"):
        zmq.auth.create_certificates(str(keys), name)
    (allowed / "alice.key").write_bytes((keys / "alice.key").read_bytes())
    with running_server(tmp_path, curve_secret_file=keys / "server.key_secret", allowed_keys=allowed,
                        allow_list_interval=0.2) as s:
        opts = _curve_opts(keys, "alice")
        assert not _refused_at_handshake(s.endpoint, opts)
        open_conn = Raw(s.endpoint, **opts)
        try:
            assert_serving(open_conn)
            (allowed / "alice.key").unlink()                       # revoke
            assert _refused_at_handshake(s.endpoint, opts)          # new connections: at once
            before = s.device.executions
            deadline = time.monotonic() + 10 * 0.2 + REPLY_TIMEOUT
            while True:                                              # open connection: within the interval
                reply = open_conn.call(wire.encode(run_msg()))
                if reply.type == "error":
                    assert_error(reply, "auth_refused")
                    break
                assert time.monotonic() < deadline, "revoked client still served"
                time.sleep(0.05)
            executed = s.device.executions
            assert_error(open_conn.call(wire.encode(run_msg())), "auth_refused")
            assert s.device.executions == executed >= before       # refused requests do not run
            (allowed / "alice.key").write_bytes((keys / "alice.key").read_bytes())   # re-allowed
            assert not _refused_at_handshake(s.endpoint, opts)
        finally:
            open_conn.close()


# -- `qhil lab serve` / `qhil lab keygen` options -------------------------------------------

BAD_SERVE = {
    "--run-log": ["--run-log", ""],
    "--run-log memory": ["--run-log", ":memory:"],
    "--bind port": ["--bind", "tcp://127.0.0.1:99999"],
    "--bind port 0": ["--bind", "tcp://127.0.0.1:0"],
    "--bind garbage": ["--bind", "garbage"],
    "--bind inproc": ["--bind", "inproc://x"],
    "--bind host": ["--bind", "tcp://300.1.1.1:5555"],
    "--max-message-bytes": ["--max-message-bytes", "0"],
    "--readout-error nan": ["--readout-error", "nan"],
    "--readout-error 0.7": ["--readout-error", "0.7"],
    "--rise-time": ["--rise-time", "nan"],
    "--rise-time negative": ["--rise-time", "-1"],
    "--amplitude-error": ["--amplitude-error", "inf"],
    "--frequency-drift": ["--frequency-drift", "-0.1"],
    "--curve-secret": ["--curve-secret", "MISSING"],
    "--allowed-keys": ["--allowed-keys", "."],
    "--device": ["--device", "laser"],
    "--device exec": ["--device", "exec:"],
    "--device exec missing": ["--device", "exec:/nonexistent/program"],
    "--omegas": ["--omegas", "1,nan"],
    "--n-max": ["--n-max", "0"],
    "--seed": ["--seed", "-3"],
    "--inject-faults": ["--inject-faults", "-1"],
    "--model-json": ["--model-json", "{bad"],
    "--n-spins": ["--model", "xy_chain", "--n-spins", "999"],
    "--n-spins unused": ["--n-spins", "1" + "0" * 30],
    "--inject-faults huge": ["--inject-faults", "1" + "0" * 30],
}


def _main(args: list[str], capsys) -> tuple[int, str]:
    from qhil.lab.cli import main
    try:
        rc = main(args)
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(BAD_SERVE))
def test_serve_options_checked_before_start(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def started(self):
        raise AssertionError("the server started")
    monkeypatch.setattr(LabServer, "serve_forever", started)
    extra = BAD_SERVE[case]
    rc, err = _main(["lab", "serve", "--device", "null", "--bind", "tcp://127.0.0.1:*",
                     "--run-log", str(tmp_path / "r.sqlite"), *extra], capsys)
    assert rc == 2 and "Traceback" not in err
    assert extra[-2] in err and "error" in err, err          # names the option


def test_curve_secret_without_allowed_keys(tmp_path, capsys):
    import zmq.auth
    zmq.auth.create_certificates(str(tmp_path), "server")
    rc, err = _main(["lab", "serve", "--device", "null", "--bind", "tcp://127.0.0.1:*", "--run-log",
                     str(tmp_path / "r.sqlite"), "--curve-secret", str(tmp_path / "server.key_secret")], capsys)
    assert rc == 2 and "qhil: error: --curve-secret" in err and "--allowed-keys" in err
    rc, err = _main(["lab", "serve", "--device", "null", "--bind", "tcp://127.0.0.1:*", "--run-log",
                     str(tmp_path / "r.sqlite"), "--curve-secret", str(tmp_path / "server.key"),     # public only
                     "--allowed-keys", str(tmp_path)], capsys)
    assert rc == 2 and "qhil: error: --curve-secret" in err and "secret" in err


def test_port_in_use_is_a_clean_error(tmp_path, capsys):
    ctx = zmq.Context()
    holder = ctx.socket(zmq.ROUTER)
    holder.setsockopt(zmq.LINGER, 0)
    try:
        holder.bind("tcp://127.0.0.1:*")
        endpoint = holder.getsockopt_string(zmq.LAST_ENDPOINT)
        rc, err = _main(["lab", "serve", "--device", "null", "--bind", endpoint, "--run-log",
                         str(tmp_path / "r.sqlite")], capsys)
        assert rc == 2 and "qhil: error: --bind" in err and "in use" in err and "Traceback" not in err
    finally:
        holder.close()
        ctx.term()


def test_bad_run_log_file_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "r.sqlite").write_bytes(b"not a database" * 100)
    rc, err = _main(["lab", "serve", "--device", "null", "--bind", "tcp://127.0.0.1:*", "--run-log",
                     str(tmp_path / "r.sqlite")], capsys)
    assert rc == 2 and "qhil: error: --run-log" in err


@functools.lru_cache(maxsize=1)
def _parser():
    from qhil.lab.cli import build_parser
    return build_parser()


@settings(max_examples=150, deadline=None)
@given(option=st.sampled_from(["--bind", "--rise-time", "--readout-error", "--max-message-bytes",
                               "--amplitude-error", "--frequency-drift", "--seed", "--n-max", "--omegas"]),
       value=st.text(max_size=30) | st.floats().map(repr) | st.integers(-2**70, 2**70).map(str))
def test_fuzz_serve_option_values(option, value):
    """Any value either parses into the documented range or is refused by argparse (exit 2)."""
    p = _parser()
    try:
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            args = p.parse_args(["lab", "serve", option, value])
    except SystemExit as exc:
        assert exc.code == 2
        return
    attr = option[2:].replace("-", "_")
    v = getattr(args, attr)
    if option == "--bind":
        assert v.startswith(("tcp://", "ipc://"))
        if v.startswith("tcp://"):
            port = v.rpartition(":")[2]
            assert port == "*" or 1 <= int(port) <= 65535
    elif option == "--omegas":
        assert v and all(np.isfinite(x) and x > 0 for x in v)
    else:
        lo, hi = {"--rise-time": (0, np.inf), "--readout-error": (0, 0.5), "--frequency-drift": (0, np.inf),
                  "--amplitude-error": (-1, 1), "--seed": (0, 2**63), "--n-max": (1, np.inf),
                  "--max-message-bytes": (server_mod.MIN_MESSAGE_BYTES, server_mod.MAX_MESSAGE_LIMIT)}[option]
        assert math.isfinite(float(v)) and lo <= v <= hi


def test_cli_limits_match_the_server():
    from qhil.lab.commands import lab
    from qhil.envs import xy_chain
    assert (lab.MIN_MESSAGE_BYTES, lab.MAX_MESSAGE_LIMIT) == (server_mod.MIN_MESSAGE_BYTES,
                                                             server_mod.MAX_MESSAGE_LIMIT)
    assert lab.MAX_SPINS == xy_chain.MAX_SPINS


@pytest.mark.parametrize("name", ["../escaped", "a/b", ".hidden", "", "-x", "x" * 65, "a\0b"])
def test_keygen_names_are_plain(tmp_path, capsys, name):
    rc, err = _main(["lab", "keygen", str(tmp_path / "kk"), "--name", name], capsys)
    assert rc == 2 and "--name" in err
    assert not list(tmp_path.rglob("*.key*"))                   # nothing written, anywhere


def test_keygen_folder_must_be_usable(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for folder in ("", str(tmp_path / "file"), str(tmp_path / "file" / "below")):
        rc, err = _main(["lab", "keygen", folder, "--name", "a"], capsys)
        assert rc == 2 and "folder" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.key*"))


def test_keygen_does_not_overwrite(tmp_path, capsys):
    assert _main(["lab", "keygen", str(tmp_path), "--name", "alice"], capsys)[0] == 0
    before = (tmp_path / "alice.key_secret").read_bytes()
    rc, err = _main(["lab", "keygen", str(tmp_path), "--name", "alice"], capsys)
    assert rc == 2 and "--force" in err and (tmp_path / "alice.key_secret").read_bytes() == before
    assert _main(["lab", "keygen", str(tmp_path), "--name", "alice", "--force"], capsys)[0] == 0
    assert (tmp_path / "alice.key_secret").read_bytes() != before


def test_lab_server_refuses_a_tiny_limit(tmp_path):
    from qhil.drivers import ValidationError
    with pytest.raises(ValidationError, match="max_message_bytes"):
        LabServer(NullDevice(MODEL), "tcp://127.0.0.1:*", tmp_path / "x.sqlite", max_message_bytes=0)
