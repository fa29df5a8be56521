"""docs/protocol.md against the server: every ``qhil-example`` block is sent, message by
message, with a bare pyzmq DEALER (no qhil client code, as a third-party implementer would),
and each reply is compared structurally with the one the document shows. The document's
tables of error codes and message types must also match the code."""
from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import zmq

from qhil.drivers.bridge import wire
from qhil.envs import XYChain
from qhil.lab.device import NullDevice
from qhil.lab.server import LabServer

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
ANY = "…"
#: client-side codes that are never sent (documented in prose, not in the wire table)
CLIENT_ONLY = {"timeout", "bad_reply"}


def example_blocks(text: str) -> list[list[tuple[str, list]]]:
    """Each ``qhil-example`` block as a list of (direction "→"/"←", message as a JSON list)."""
    blocks = []
    for body in re.findall(r"```qhil-example\n(.*?)```", text, flags=re.S):
        msgs: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith(("→ ", "← ")):
                msgs.append((line[0], [line[2:]]))
            elif line.strip():
                assert msgs, f"continuation line before any message: {line!r}"
                msgs[-1][1].append(line)
        blocks.append([(d, json.loads("\n".join(parts))) for d, parts in msgs])
    return blocks


def frames_of(msg: list) -> list[bytes]:
    """Wire frames of a documented message: signature, header, one raw frame per array."""
    sig, header, *arrays = msg
    specs = header.get("arrays", [])
    assert len(specs) == len(arrays), "each declared array needs its contents"
    out = [sig.encode(), json.dumps(header, separators=(",", ":")).encode()]
    for spec, values in zip(specs, arrays):
        dt = np.dtype(wire.DTYPES.get(spec["dtype"], spec["dtype"])).newbyteorder("<")
        out.append(np.asarray(values, dtype=dt).tobytes())
    return out


def parse_reply(frames: list[bytes]) -> list:
    """A reply as the document writes it, decoded by hand (json + numpy only)."""
    header = json.loads(frames[1])
    arrays = []
    for spec, raw in zip(header.get("arrays", []), frames[2:]):
        arrays.append(np.frombuffer(raw, dtype=wire.DTYPES[spec["dtype"]]).reshape(spec["shape"]).tolist())
    return [frames[0].decode(), header, *arrays]


def matches(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """Differences between a documented value and the real one ("…" matches anything; a
    "…" key allows further keys; floats compare to 1e-9)."""
    if expected == ANY:
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        extra_ok = ANY in expected
        keys = set(expected) - {ANY}
        errs = [f"{path}: missing {sorted(keys - set(actual))}"] if keys - set(actual) else []
        if not extra_ok and set(actual) - keys:
            errs.append(f"{path}: undocumented field(s) {sorted(set(actual) - keys)}")
        for k in keys & set(actual):
            errs += matches(expected[k], actual[k], f"{path}.{k}")
        return errs
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: expected a list of {len(expected)}, got {actual!r}"]
        return [e for i, (x, y) in enumerate(zip(expected, actual)) for e in matches(x, y, f"{path}[{i}]")]
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        return [] if type(actual) is type(expected) and actual == expected else [f"{path}: {expected!r} ≠ {actual!r}"]
    if isinstance(expected, (int, float)):
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return [f"{path}: expected a number, got {actual!r}"]
        if isinstance(expected, int) and isinstance(actual, int):
            return [] if expected == actual else [f"{path}: {expected} ≠ {actual}"]
        return [] if math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-12) else [f"{path}: {expected} ≠ {actual}"]
    raise AssertionError(f"{path}: unexpected documented value {expected!r}")


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory) -> Iterator[str]:
    """The server the examples were written against (`qhil lab serve --device null --model
    xy_chain --n-spins 2`, default limits), in a thread."""
    srv = LabServer(NullDevice(XYChain(n_spins=2, field_bound=5.0)), "tcp://127.0.0.1:*",
                    tmp_path_factory.mktemp("doc") / "runs.sqlite")
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.endpoint
    srv.stop()
    t.join(timeout=30)


TEXT = DOC.read_text()
BLOCKS = example_blocks(TEXT)


def test_the_doc_has_examples_of_every_request_and_error():
    sent = {m[1]["type"] for b in BLOCKS for d, m in b if d == "→"}
    assert {"hello", "describe", "run", "ping"} <= sent
    codes = {m[1]["body"]["error"]["code"] for b in BLOCKS for d, m in b if d == "←" and m[1]["type"] == "error"}
    assert {"bad_frame", "bad_request", "version_mismatch", "unknown_type", "out_of_bounds", "id_reused"} <= codes


def test_doc_examples_against_the_server(endpoint):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        for block in BLOCKS:
            pending = 0
            for direction, msg in block:
                if direction == "→":
                    sock.send_multipart(frames_of(msg))
                    pending += 1
                    continue
                assert pending > 0, f"a documented reply without a request: {msg}"
                assert sock.poll(10_000), f"no reply; expected {json.dumps(msg)[:200]}"
                actual = parse_reply(sock.recv_multipart())
                errs = matches(msg, actual)
                assert not errs, f"{json.dumps(msg)[:300]}\nvs {json.dumps(actual)[:600]}\n" + "\n".join(errs)
                pending -= 1
            assert not sock.poll(200), "the server sent more replies than the document shows"
    finally:
        sock.close(linger=0)
        ctx.term()


def _table_codes(section: str) -> set[str]:
    body = TEXT.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", body, flags=re.M))


def test_error_table_matches_the_code():
    assert _table_codes("Errors") == set(wire.ERROR_CODES) - CLIENT_ONLY
    for code, (_, retryable) in wire.ERROR_CODES.items():
        if code in CLIENT_ONLY:
            continue
        row = re.search(rf"^\| `{code}` \| (yes|no) \|", TEXT, flags=re.M)
        assert row and (row.group(1) == "yes") == retryable, code


def test_message_table_lists_every_request_type():
    rows = TEXT.split("## Messages", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z]+)` ", rows, flags=re.M))
    assert documented == set(wire.REQUEST_TYPES)


def test_documented_limits_match_the_code():
    from qhil.lab import server as srv
    limits = TEXT.split("### Limits", 1)[1].split("\n## ", 1)[0]
    assert f"{wire.MAX_HEADER_BYTES:,}" in limits and f"{wire.MAX_DEPTH} levels" in limits
    assert f"{srv.MIN_MESSAGE_BYTES:,}" in limits and f"{srv.MAX_MESSAGE_LIMIT:,}" in limits
    assert f"| {wire.MAX_FRAMES} (signature, header, {wire.MAX_ARRAYS} arrays)" in limits
    assert f"| {wire.MAX_PING_IDS} |" in limits and f"| {srv.MAX_WAITERS} " in limits
    assert f"{srv.MAX_LABELS:,}" in limits
