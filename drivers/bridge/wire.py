"""The qhil lab wire format, shared by the client driver and the lab server.

A message is a ZeroMQ multipart message (the ROUTER prepends the peer's identity)::

    frame 0   b"QHIL"                      signature (rejects stray traffic early)
    frame 1   header, UTF-8 JSON object    {"v": "1.0", "type": ..., "id": ..., "body": {...},
                                            "arrays": [{"name", "dtype", "shape"}, ...]}
    frame 2+  one raw frame per entry of header["arrays"], C order, little-endian

Arrays travel as raw bytes with dtype and shape declared in the header (an allow-list of
dtypes, never pickle). Every message carries the protocol version ``"v"``; peers reject a
different major version. Size limits apply before anything is parsed. See docs/protocol.md.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import zmq

from ..errors import QhilError

#: Protocol version "major.minor". A different major version is refused by both ends.
PROTOCOL_VERSION = "1.0"
PROTOCOL_MAJOR = 1
SIGNATURE = b"QHIL"

#: Default limits (the server may lower or raise them; both ends enforce their own).
MAX_HEADER_BYTES = 1 << 20          # 1 MiB of JSON
MAX_MESSAGE_BYTES = 64 << 20        # 64 MiB of frames in all
MAX_ARRAYS = 16
MAX_NDIM = 4
MAX_PING_IDS = 256
#: deepest nesting of JSON arrays/objects in a header (the header object itself is level 1)
MAX_DEPTH = 32
#: frames a request may have: signature, header, and one per array
MAX_FRAMES = 2 + MAX_ARRAYS

#: Message types. Requests (client → server) and the replies they get.
REQUEST_TYPES = ("hello", "describe", "run", "ping", "lock", "unlock")
REPLY_TYPES = ("hello", "describe", "result", "pong", "error", "lock", "unlock")
#: dtypes allowed on the wire (little-endian); anything else is refused.
DTYPES = {"float64": "<f8", "int64": "<i8", "complex128": "<c16", "uint8": "|u1"}

_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

#: Error codes: (meaning, retryable). A retryable error may succeed if sent again unchanged.
ERROR_CODES: dict[str, tuple[str, bool]] = {
    "bad_frame": ("the message is not a valid qhil frame sequence", False),
    "bad_request": ("the header or body is malformed or inconsistent", False),
    "version_mismatch": ("the peer speaks a different major protocol version", False),
    "too_large": ("the message exceeds a size limit", False),
    "unknown_type": ("unknown message type", False),
    "unknown_channel": ("a control channel is not on this device", False),
    "missing_channel": ("a device channel has no controls", False),
    "out_of_bounds": ("a control value lies outside the channel's bounds", False),
    "model_mismatch": ("the experiment's model is not the one this device runs", False),
    "unsupported": ("valid, but this device cannot do it", False),
    "id_reused": ("a request id was reused for a different request", False),
    "busy": ("the server's queue is full", True),
    "locked": ("the experiment lock is held by another owner, or the server needs it taken first", False),
    "bad_lock_key": ("a forced unlock with a wrong emergency key", False),
    "device_fault": ("the device failed; it was put in its safe state", True),
    "internal": ("unexpected server error", True),
    # raised by the client only, never sent
    "timeout": ("no reply within the timeout and retries", True),
    "auth_refused": ("the CURVE handshake failed: key not allowed, or CURVE on one side only", False),
    "bad_reply": ("the server's reply is malformed or inconsistent with the request", False),
}


class BridgeError(QhilError):
    """An error from the lab bridge: ``code`` (see :data:`ERROR_CODES`), ``retryable``, and
    for remote errors the ``parameter`` the server named."""

    #: longer messages are cut (they may quote a client's input: replies and logs stay small)
    MAX_MESSAGE = 1000

    def __init__(self, code: str, message: str, retryable: bool = False,
                 parameter: str | None = None) -> None:
        if len(message) > self.MAX_MESSAGE:
            message = message[:self.MAX_MESSAGE] + " …(cut)"
        if parameter is not None and len(parameter) > 200:
            parameter = parameter[:200] + "…"
        self.code = code
        self.retryable = bool(retryable)
        self.parameter = parameter
        #: the id of the request that caused it, where known (set by :func:`decode`)
        self.request_id: str | None = None
        super().__init__(f"[{code}] {message}")

    def to_dict(self) -> dict[str, Any]:
        d = {"code": self.code, "message": str(self).split("] ", 1)[-1], "retryable": self.retryable}
        if self.parameter:
            d["parameter"] = self.parameter
        return d


class BridgeTimeout(BridgeError):
    """No answer from the lab server within the allowed time and retries."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message, retryable=True)


def error(code: str, message: str, parameter: str | None = None,
          retryable: bool | None = None) -> BridgeError:
    """A :class:`BridgeError` with the code's default ``retryable`` flag."""
    default = ERROR_CODES.get(code, ("", False))[1]
    return BridgeError(code, message, default if retryable is None else retryable, parameter)


def new_id() -> str:
    """A fresh request id: 32 hex characters, 128 random bits (``uuid4().hex`` has the same
    form; this skips building the UUID object)."""
    return os.urandom(16).hex()


@dataclass
class Message:
    """One decoded message: type, request id, JSON body, named arrays, and version."""

    type: str
    id: str
    body: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    version: str = PROTOCOL_VERSION


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in a header")


# One encoder and one decoder for the process: ``json.dumps``/``json.loads`` with options
# build a new one per call, which costs more than encoding a small header.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_json_default)
_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_SCAN = _DECODER.scan_once


def _not_serialisable(o: Any) -> Any:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def json_encoder(*, sort_keys: bool = False, separators: tuple[str, str] = (",", ":"),
                 allow_nan: bool = True, default: Callable[[Any], Any] | None = None
                 ) -> Callable[[Any], str]:
    """``json.JSONEncoder(sort_keys=..., separators=..., allow_nan=..., default=...).encode``
    (ASCII output), the same text for the JSON data a header or log row holds (dicts, lists,
    tuples, strings, numbers, bools, None), at less cost per call: the C encoder of the
    ``json`` module, made once instead of at every call (``encode`` makes one each time).
    It keeps no state, so threads may share it. It does not look for reference cycles
    (JSON data has none; a cycle would end in a RecursionError, not a ValueError)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    fallback = json.JSONEncoder(sort_keys=sort_keys, separators=separators, allow_nan=allow_nan,
                                default=default).encode
    if make is None:           # pragma: no cover - a Python without the _json accelerator
        return fallback
    enc = make(None, default or _not_serialisable, json.encoder.encode_basestring_ascii, None,
               separators[1], separators[0], sort_keys, False, allow_nan)

    def encode(o: Any) -> str:
        if isinstance(o, str):        # (JSONEncoder.encode's own path for a bare string)
            return fallback(o)
        return enc(o, 0)[0]
    return encode


#: JSON text of ``o`` as headers are written (compact, no NaN/Infinity, numpy scalars allowed).
dumps = json_encoder(allow_nan=False, default=_json_default)
#: wire dtype name of a (native or little-endian) numpy dtype
_WIRE_DTYPE = {np.dtype(v): k for k, v in DTYPES.items()}
_WIRE_DTYPE.update({np.dtype(v).newbyteorder(">"): k for k, v in DTYPES.items()})
_LE = {k: np.dtype(v) for k, v in DTYPES.items()}


def _array_frames(arrays: dict[str, Any]) -> tuple[list[dict[str, Any]], list]:
    specs, frames = [], []
    for name, a in arrays.items():
        a = np.asarray(a)
        key = _WIRE_DTYPE.get(a.dtype)
        if key is None:      # an equivalent dtype spelt otherwise (e.g. longlong for int64)
            key = next((k for k, v in DTYPES.items() if np.dtype(v) == a.dtype.newbyteorder("<")
                        or np.dtype(v) == a.dtype), None)
        if key is None:
            raise error("bad_request", f"array {name!r} has dtype {a.dtype}, not one of {sorted(DTYPES)}")
        if a.dtype != _LE[key] or not a.flags.c_contiguous:
            a = np.ascontiguousarray(a, dtype=_LE[key])
        specs.append({"name": name, "dtype": key, "shape": list(a.shape)})
        frames.append(memoryview(a).cast("B") if a.size else b"")
    return specs, frames


_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_RCVMORE = int(zmq.RCVMORE)
_POLLIN = int(zmq.POLLIN)
_COPY_BELOW = 1 << 16     # pyzmq's own copy threshold: smaller frames are copied anyway


def send_frames(sock: zmq.Socket, frames: list, flags: int = _NOBLOCK) -> None:
    """``sock.send_multipart(frames, flags)``, cheaper: plain integer flags (no flag enums per
    frame), small frames copied, large ones (arrays) sent zero-copy."""
    last = len(frames) - 1
    for i, f in enumerate(frames):
        sock.send(f, flags | _MORE if i < last else flags, copy=len(f) < _COPY_BELOW)


# the backend's getsockopt returns a plain int (pyzmq's wrapper makes a flag enum of it)
_getsockopt = getattr(getattr(zmq, "backend", None), "Socket", zmq.Socket).get


def readable(sock: zmq.Socket) -> bool:
    """Whether ``sock`` has a message waiting (a cheap check before a non-blocking receive,
    which would otherwise end in a ``zmq.Again`` exception)."""
    return bool(_getsockopt(sock, _EVENTS) & _POLLIN)


def encode(msg: Message) -> list[bytes | memoryview]:
    """Frames for ``msg`` (signature, header, raw arrays). Arrays are sent zero-copy when
    already contiguous little-endian."""
    header = {"v": msg.version, "type": msg.type, "id": msg.id, "body": msg.body}
    frames: list = []
    if msg.arrays:
        header["arrays"], frames = _array_frames(msg.arrays)
    return [SIGNATURE, dumps(header).encode(), *frames]


def encode_json_body(type: str, id: str, body_json: str, arrays: dict[str, Any] | None = None,
                     version: str = PROTOCOL_VERSION) -> list[bytes | memoryview]:
    """Like :func:`encode`, for a body that is already JSON text (``dumps(body)``): a server
    that logs a reply body and sends it encodes it once. The frames are the same as
    ``encode(Message(type, id, json.loads(body_json), arrays, version))``."""
    head = dumps({"v": version, "type": type, "id": id})
    frames: list = []
    tail = "}"
    if arrays:
        specs, frames = _array_frames(arrays)
        tail = ',"arrays":' + dumps(specs) + "}"
    return [SIGNATURE, (head[:-1] + ',"body":' + body_json + tail).encode(), *frames]


def peek_id(frames: list[bytes]) -> str | None:
    """The request id of a message that failed to decode, when one can be recovered (for the
    error reply); None otherwise. Never raises. (:func:`decode` already puts the id it read on
    the error it raises, as ``request_id``; this is for callers that only have the frames.)"""
    try:
        if len(frames) >= 2 and len(frames[1]) <= MAX_HEADER_BYTES:
            h = _load_header(bytes(frames[1]))
            if isinstance(h, dict) and isinstance(h.get("id"), str) and _ID.match(h["id"]):
                return h["id"]
    except Exception:      # BridgeError, and anything else: no id
        pass
    return None


# Nesting depth of a header, checked without recursion. Strings are cut out first (a bracket
# inside a string does not nest); in valid JSON a quote inside a string is always escaped.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+"')
_BRACKET = np.zeros(256, dtype=np.int8)
_BRACKET[[ord("["), ord("{")]] = 1
_BRACKET[[ord("]"), ord("}")]] = -1


def json_depth(text: bytes) -> int:
    """Deepest nesting of arrays and objects in the (valid) JSON ``text``: 0 for a scalar,
    1 for ``{}`` or ``[1]``, 2 for ``{"a": []}``."""
    skeleton = np.frombuffer(_STRING.sub(b"", text), dtype=np.uint8)
    if not skeleton.size:
        return 0
    return int(np.cumsum(_BRACKET[skeleton], dtype=np.int64).max())


def _load_header(raw: bytes) -> Any:
    """Decode a header, refusing nesting deeper than :data:`MAX_DEPTH` without ever recursing
    that deep: a header with at most MAX_DEPTH brackets in all (almost every header; two
    ``bytes.count`` calls) cannot nest deeper, so only the rest is scanned (:func:`json_depth`,
    after the decoder, which stops by itself at the interpreter's recursion limit)."""
    try:
        text = raw.decode("utf-8")
        try:        # the scanner itself (decode() wraps it in two regex matches)
            header, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):      # leading/trailing whitespace, or not JSON: the full decoder says
            header = _DECODER.decode(text)
    except RecursionError:
        raise error("bad_request", f"header nests arrays/objects deeper than {MAX_DEPTH} levels",
                    "header") from None
    except ValueError as exc:    # (UnicodeDecodeError is a ValueError)
        raise error("bad_frame", f"header is not UTF-8 JSON ({exc})") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and json_depth(raw) > MAX_DEPTH:
        exc = error("bad_request", f"header nests arrays/objects deeper than {MAX_DEPTH} levels",
                    "header")
        exc.request_id = _id_of(header)
        raise exc
    return header


def _id_of(header: Any) -> str | None:
    mid = header.get("id") if isinstance(header, dict) else None
    return mid if isinstance(mid, str) and _ID.match(mid) else None


def recv_frames(sock: zmq.Socket, max_frames: int = 1 + MAX_FRAMES) -> tuple[list, int]:
    """Receive one multipart message without blocking (``zmq.Again`` if none): (the first
    ``max_frames`` frames, the number of frames beyond them, which are received and dropped,
    so that a message of a million empty frames costs no memory)."""
    frames = [sock.recv(_NOBLOCK, copy=False)]
    extra = 0
    while _getsockopt(sock, _RCVMORE):
        f = sock.recv(_NOBLOCK, copy=False)
        if len(frames) < max_frames:
            frames.append(f)
        else:
            extra += 1
    return frames, extra


_VERSION = re.compile(r"^\d+\.\d+$")


def check_version(v: Any) -> None:
    """Raise ``version_mismatch`` unless ``v`` is "major.minor" with our major version."""
    if v == PROTOCOL_VERSION:        # the common case, checked first
        return
    if not isinstance(v, str) or not _VERSION.match(v):
        raise error("bad_request", f"header.v must be a version string 'major.minor', got {v!r}")
    if int(v.split(".")[0]) != PROTOCOL_MAJOR:
        raise error("version_mismatch",
                    f"peer speaks qhil lab protocol {v}, this end speaks {PROTOCOL_VERSION} "
                    f"(major versions must match; upgrade the older side)")


def decode(frames: list[bytes], types: tuple[str, ...] = REQUEST_TYPES,
           max_bytes: int = MAX_MESSAGE_BYTES, max_header: int = MAX_HEADER_BYTES) -> Message:
    """Parse and validate frames (without the ROUTER identity). Raises :class:`BridgeError`
    with code bad_frame / too_large / version_mismatch / bad_request / unknown_type, and
    ``request_id`` set to the header's id where it could be read (else None). Never raises
    anything else, and never recurses deeper than :data:`MAX_DEPTH` on a header."""
    if len(frames) < 2 or frames[0] != SIGNATURE:
        raise error("bad_frame", f"expected frames [{SIGNATURE!r}, header, arrays...], got "
                    f"{len(frames)} frame(s) starting {bytes(frames[0][:8]) if frames else b''!r}")
    total = sum(map(len, frames))
    if len(frames[1]) > max_header:      # (before the total: the id of an over-size header is not read)
        raise error("too_large", f"header has {len(frames[1])} bytes, limit {max_header}", "header")
    header = _load_header(bytes(frames[1]))
    mid = _id_of(header)
    try:
        return _decode_header(header, mid, frames, types, total, max_bytes)
    except BridgeError as exc:
        exc.request_id = mid
        raise
    except Exception as exc:         # pragma: no cover - a bug: still a clean error
        raise error("bad_frame", f"undecodable message ({type(exc).__name__})") from None


def _decode_header(header: Any, mid: str | None, frames: list, types: tuple[str, ...], total: int,
                   max_bytes: int) -> Message:
    if not isinstance(header, dict):
        raise error("bad_frame", "header must be a JSON object")
    if total > max_bytes:
        raise error("too_large", f"message has {total} bytes, limit {max_bytes}")
    check_version(header.get("v"))
    if mid is None:
        raise error("bad_request", "header.id must be 1-64 characters of [A-Za-z0-9_.:-]", "id")
    mtype = header.get("type")
    if mtype not in types:
        raise error("unknown_type", f"unknown message type {mtype!r}", "type",) if isinstance(mtype, str) \
            else error("bad_request", "header.type must be a string", "type")
    body = header.get("body", {})
    if not isinstance(body, dict):
        raise error("bad_request", "header.body must be a JSON object", "body")
    specs = header.get("arrays", ())
    if not isinstance(specs, (list, tuple)) or len(specs) > MAX_ARRAYS:
        raise error("bad_request", f"header.arrays must be a list of at most {MAX_ARRAYS} entries", "arrays")
    if len(specs) != len(frames) - 2:
        raise error("bad_frame", f"header declares {len(specs)} array(s) but {len(frames) - 2} frame(s) follow")
    arrays: dict[str, np.ndarray] = {}
    for spec, raw in zip(specs, frames[2:]):
        name, arr = _array(spec, raw, max_bytes)
        if name in arrays:
            raise error("bad_request", f"array {name!r} appears twice", "arrays")
        arrays[name] = arr
    return Message(mtype, mid, body, arrays, header["v"])


_SPEC_KEYS = {"name", "dtype", "shape"}


def _array(spec: Any, raw: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict) or spec.keys() != _SPEC_KEYS:
        raise error("bad_request", "each header.arrays entry must be {name, dtype, shape}", "arrays")
    name, dt, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str) or not _ID.match(name):
        raise error("bad_request", f"bad array name {name!r}", "arrays")
    dtype = _LE.get(dt) if isinstance(dt, str) else None
    if dtype is None:
        raise error("bad_request", f"array {name!r}: dtype {dt!r} not allowed", f"arrays.{name}.dtype")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(
            type(s) is int and 0 <= s <= max_bytes for s in shape):   # (JSON gives int or bool; bool is refused)
        raise error("bad_request", f"array {name!r}: shape must be ≤{MAX_NDIM} non-negative ints "
                    f"(each ≤ {max_bytes})",
                    f"arrays.{name}.shape")
    n = math.prod(shape) * dtype.itemsize
    if n != len(raw):
        raise error("bad_frame", f"array {name!r}: {len(raw)} bytes for shape {shape} of {dt} ({n} expected)")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape) if n else np.zeros(shape, dtype)
    return name, arr


def error_message(request_id: str | None, exc: BridgeError) -> Message:
    """The error reply for ``exc`` (``id`` "-" when the request's id could not be read)."""
    return Message("error", request_id or "-", {"error": exc.to_dict()})


def raise_for_error(msg: Message) -> None:
    """Raise the :class:`BridgeError` carried by an error reply (no-op otherwise)."""
    if msg.type != "error":
        return
    e = msg.body.get("error")
    if not isinstance(e, dict):
        raise error("bad_request", f"malformed error reply: {msg.body!r}")
    raise BridgeError(str(e.get("code", "internal")), str(e.get("message", "")),
                      bool(e.get("retryable", False)), e.get("parameter"))
