"""The lab driver: ``create_backend("zmq://host:port")`` runs experiments on pulse hardware
(or its emulator) behind a qhil lab server, with the same interface and Result shapes as
the simulators.

* Prefix replay: measurement destroys the state, so each measured step k is its own
  prepare–play(0..k−1)–measure repetition per setting and shot. The server does the
  replay; its cost comes back in ``result.metadata["bridge"]["replay"]`` (and, as on every
  driver, ``result.metadata["cost"]``).
* Reliability (ZeroMQ guide, "Lazy Pirate" and "Paranoid Pirate"): a DEALER socket;
  every request has a unique id and retries reuse it, so the server never runs it twice;
  the first reply deadline is sized to the job from the device's timing figures, and every
  ``pong`` that reports a pending request ``queued`` or ``running`` moves it on (a busy
  server is not a dead one: the wait lasts as long as the job, up to an optional
  ``max_wait``). A dead server is noticed within ``heartbeat × liveness`` seconds: no
  message from it and no transport-level (ZMTP) heartbeat answer, which libzmq's I/O
  thread gives without Python, so a server whose message loop waits for the GIL behind a
  long device computation still counts as alive. Then the socket is closed and reopened
  and the request re-sent, with exponential backoff, at most ``retries`` times.
* Progress: pongs carry each pending request's queue position or elapsed and estimated
  seconds (and the fraction done where the device can tell); ``progress=callback`` gets
  them, and they are logged (logger ``qhil.drivers.zmq``, level INFO).
* Locks: ``owner="alice"`` is sent with every run; :meth:`ZmqBackend.lock` /
  :meth:`ZmqBackend.unlock` (or ``with backend.locked():``) take and release the server's
  experiment lock (required by ``qhil lab serve --lock``). The lock is never taken
  implicitly.
* Handshake: ``hello`` refuses a server whose major protocol version differs.
* Raw counts come back and are turned into values and standard errors here, with the same
  estimator as the simulators. ``qubit_density`` and ``state`` are None (hardware).
* Optional CURVE: ``server_key`` (the server's public certificate or Z85 key) and
  ``client_cert`` (this client's secret certificate; a throw-away key pair if omitted).

Not thread-safe: one backend per thread.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from typing import Any, Callable, Iterator

import numpy as np
import zmq

from . import wire
from ..backend import Backend, Capabilities
from ..errors import UnsupportedError, ValidationError
from ..experiment import Experiment, Result
from ..pauli import estimate_from_counts
from .wire import BridgeError, BridgeTimeout, Message

_SPEC = re.compile(r"^zmq://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_LOG = logging.getLogger("qhil.drivers.zmq")
#: owner names (of runs and the lock): 1-64 characters
_OWNER = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}$")
_OWNER_ALLOWED = "1-64 characters of [A-Za-z0-9_.@:-]"
#: the progress figures a pong may carry per request (anything else is ignored)
_PROGRESS_KEYS = ("ahead", "started_at", "elapsed_s", "estimated_s", "fraction")
_LINK_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
_AUTH_EVENTS = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the server refused this client's key",
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "security handshake failed (CURVE on one side only?)",
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "security handshake failed"}


def parse_endpoint(spec: str) -> str:
    """``zmq://host:port`` → ``tcp://host:port`` (validated)."""
    m = _SPEC.match(spec) if isinstance(spec, str) else None
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise ValidationError("backend", f"cannot parse lab endpoint {spec!r}", "zmq://host:port")
    return f"tcp://{m.group(1)}:{int(m.group(2))}"


def _z85_key(key: str | bytes | os.PathLike, name: str, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) from a Z85 key (40 characters) or a zmq.auth certificate file."""
    if isinstance(key, (bytes, str)) and len(key) == 40 and not os.path.exists(key):
        return (key.encode() if isinstance(key, str) else key), None
    import zmq.auth
    try:
        public, sec = zmq.auth.load_certificate(os.fspath(key))
    except (OSError, ValueError) as exc:
        raise ValidationError(name, f"cannot read a CURVE key from {key!r} ({exc})",
                              "a 40-character Z85 key or a zmq.auth certificate file") from None
    if secret and sec is None:
        raise ValidationError(name, f"{key!r} holds no secret key", "a *.key_secret certificate")
    return public, sec


def _real(name: str, value: Any, lo: float, hi: float = math.inf, *, lo_open: bool = False,
          hi_open: bool = True) -> float:
    """``value`` as a float in the interval (``lo_open``/``hi_open``: exclusive ends), else a
    ValidationError naming ``name`` and the interval."""
    allowed = f"{'(' if lo_open else '['}{lo:g}, {'∞' if hi == math.inf else f'{hi:g}'}{')' if hi_open else ']'}"
    allowed = "a finite number in " + allowed
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValidationError(name, f"expected a number, got {value!r}", allowed)
    v = float(value)
    if not math.isfinite(v) or v < lo or (lo_open and v == lo) or v > hi or (hi_open and v == hi):
        raise ValidationError(name, f"{value!r} is out of range", allowed)
    return v


def _whole(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi] (bool and non-integral numbers refused)."""
    allowed = f"an integer in [{lo}, {hi}]"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValidationError(name, f"expected an integer, got {value!r}", allowed)
    if not lo <= int(value) <= hi:
        raise ValidationError(name, f"{value!r} is out of range", allowed)
    return int(value)


def _owner_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _OWNER.match(value):
        raise ValidationError(name, f"bad owner name {value!r}", _OWNER_ALLOWED)
    return value


class ZmqBackend(Backend):
    """Client of a qhil lab server at ``zmq://host:port``.

    timeout:    seconds (finite, > 0) to wait for a reply beyond the job's estimated duration
                (the first deadline is ``timeout + 3 × estimate``); every pong reporting the
                request queued or running moves the deadline to ``timeout`` + ``heartbeat`` seconds after it
    max_wait:   overall cap, seconds, on one call (a batch window) however busy the server
                says it is; None (default): no cap, wait as long as the server works on it
    retries:    re-sends (an integer ≥ 0) after a timeout, a dead server or a retryable error
    backoff:    first pause between attempts, seconds (doubles, capped at ``max_backoff``)
    heartbeat:  seconds between pings while waiting, in (0, 3600]; the server counts as dead
                after ``liveness`` (an integer ≥ 1) intervals without any message from it
                and without a transport-level heartbeat answer
    server_key, client_cert: CURVE (see the module docstring)
    check_model: refuse experiments whose model differs from the model the device reports
    pipeline:   requests of a batch in flight at once, 1..256 (the server runs them in order)
    owner:      who runs the experiments (sent with every run; needed for :meth:`lock`)
    progress:   called as ``progress(request_id, info)`` for each pending request at every
                pong; ``info``: ``state`` (queued | running), ``waited_s`` (this client's
                wait so far) and the server's figures (``ahead`` for a queued request;
                ``started_at``, ``elapsed_s``, ``estimated_s``, maybe ``fraction`` for a
                running one)
    """

    name = "zmq"

    def __init__(self, spec: str = "zmq://127.0.0.1:5555", seed: int | None = None, *,
                 timeout: float = 10.0, retries: int = 5, backoff: float = 0.2, max_backoff: float = 5.0,
                 heartbeat: float = 0.5, liveness: int = 3,
                 server_key: str | bytes | os.PathLike | None = None,
                 client_cert: str | os.PathLike | None = None, check_model: bool = True,
                 pipeline: int = 32, max_wait: float | None = None, owner: str | None = None,
                 progress: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        super().__init__(seed)
        self.spec = spec
        self.endpoint = parse_endpoint(spec)
        self.timeout = _real("timeout", timeout, 0.0, lo_open=True)
        self.retries = _whole("retries", retries, 0, 1000)
        self.backoff = _real("backoff", backoff, 0.0, 3600.0, hi_open=False)
        self.max_backoff = _real("max_backoff", max_backoff, 0.0, 3600.0, hi_open=False)
        self.heartbeat = _real("heartbeat", heartbeat, 0.0, 3600.0, lo_open=True, hi_open=False)
        self.liveness = _whole("liveness", liveness, 1, 1000)
        self.max_wait = None if max_wait is None else _real("max_wait", max_wait, 0.0, lo_open=True)
        if not isinstance(check_model, bool):
            raise ValidationError("check_model", f"expected True or False, got {check_model!r}", "a bool")
        self.check_model = check_model
        self.pipeline = _whole("pipeline", pipeline, 1, wire.MAX_PING_IDS)
        self.owner = None if owner is None else _owner_name("owner", owner)
        if progress is not None and not callable(progress):
            raise ValidationError("progress", f"expected a callable, got {progress!r}",
                                  "a function (request_id, info) or None")
        self.progress = progress
        self.last_progress: dict[str, dict[str, Any]] = {}   # request id → latest info
        self._curve: tuple[bytes, bytes, bytes] | None = None
        if server_key is not None:
            server_public, _ = _z85_key(server_key, "server_key", secret=False)
            if client_cert is None:
                public, secret = zmq.curve_keypair()
            else:
                public, secret = _z85_key(client_cert, "client_cert", secret=True)
            self._curve = (server_public, public, secret)  # type: ignore[assignment]
        self._ctx = zmq.Context()
        self._sock: zmq.Socket | None = None
        self._poller: zmq.Poller | None = None      # polls _sock (one per socket, not per wait)
        self._monitor: zmq.Socket | None = None
        self._link_up = False    # ZMTP handshake done and no disconnect since (monitor events)
        self._info: dict[str, Any] | None = None
        self._chans: tuple[dict[str, Any], dict[str, Any]] | None = None
        self._hello: dict[str, Any] | None = None
        self._static: dict[tuple, tuple[dict[str, Any], str]] = {}
        self._checked: tuple[Any, dict[str, tuple[np.ndarray, np.ndarray]]] = (None, {})
        self.reconnects = 0      # sockets re-opened (Lazy Pirate), for tests and logs

    # -- connection -------------------------------------------------------------------
    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if self._curve is not None:
                s.setsockopt(zmq.CURVE_SERVERKEY, self._curve[0])
                s.setsockopt(zmq.CURVE_PUBLICKEY, self._curve[1])
                s.setsockopt(zmq.CURVE_SECRETKEY, self._curve[2])
            # Transport heartbeats (ZMTP 3.1 PING/PONG): the peer's libzmq I/O thread answers
            # them without the GIL; no answer within heartbeat × liveness drops the connection
            # (a DISCONNECTED event below), as does a server process that dies.
            ivl = max(1, round(self.heartbeat * 1000))
            s.setsockopt(zmq.HEARTBEAT_IVL, ivl)
            s.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(ivl, round(self.heartbeat * self.liveness * 1000)))
            self._monitor = s.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | _LINK_EVENTS)
            self._link_up = False
            s.connect(self.endpoint)
            self._sock = s
            self._poller = zmq.Poller()
            self._poller.register(s, zmq.POLLIN)
        return self._sock

    def _reset(self) -> None:
        """Lazy Pirate: drop the socket (and anything queued on it); the next call reopens."""
        if self._sock is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(linger=0)   # type: ignore[union-attr]
            self._sock.close(linger=0)
            self._sock = self._monitor = self._poller = None
            self._link_up = False
            self.reconnects += 1

    def close(self) -> None:
        """Close the socket and the ZeroMQ context."""
        if self._sock is not None:
            self._reset()
            self.reconnects -= 1
        if not self._ctx.closed:
            self._ctx.term()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- request / reply ----------------------------------------------------------------
    def _call(self, msg: Message, timeout: float) -> tuple[Message, int]:
        """Send ``msg`` and wait for its reply, retrying with the same id. Returns (reply,
        attempts). Raises BridgeError (non-retryable or retries exhausted) or BridgeTimeout."""
        return self._call_many([msg], timeout)[0]

    def _call_many(self, msgs: list[Message], timeout: float,
                   encoded: list[list] | None = None) -> list[tuple[Message, int]]:
        """Pipelined: send every request, then collect every reply (the server runs them in
        order). Lost or refused requests are re-sent with their own ids (Lazy Pirate).
        ``timeout``: the first reply deadline, seconds (moved on while the server reports
        the requests queued or running)."""
        frames = ({m.id: wire.encode(m) for m in msgs} if encoded is None
                  else {m.id: f for m, f in zip(msgs, encoded)})   # (``encoded``: the messages' frames)
        track = {m.id for m in msgs if m.type == "run"}
        attempts = {m.id: 0 for m in msgs}
        replies: dict[str, Message] = {}
        failure: BridgeError | None = None
        todo = [m.id for m in msgs]
        last = "no reply"
        give_up = None if self.max_wait is None else time.monotonic() + self.max_wait
        self.last_progress = {}
        while True:
            sock = self._socket()
            for rid in todo:
                attempts[rid] += 1
                try:
                    wire.send_frames(sock, frames[rid])
                except zmq.Again:       # not queued: the wait ends in "silent" or "timeout"
                    pass
            pending = [m.id for m in msgs if m.id not in replies]
            got, reason, unknown = self._wait(pending, timeout, track, give_up)
            todo, backoff = [], False
            for rid, m in got.items():
                if m.type != "error":
                    replies[rid] = m
                    continue
                try:
                    wire.raise_for_error(m)
                except BridgeError as exc:
                    if not exc.retryable or attempts[rid] > self.retries:
                        replies[rid] = m
                        failure = failure or exc
                    else:
                        last, backoff = str(exc), True
                        todo.append(rid)
            if len(replies) == len(msgs):
                if failure is not None:
                    raise failure
                return [(replies[m.id], attempts[m.id]) for m in msgs]
            if reason == "max_wait":
                rid = next(r for r in pending if r not in replies)
                seen = self.last_progress.get(rid, {}).get("state", "no state reported")
                raise BridgeTimeout(f"no reply from {self.endpoint} to {rid} within max_wait={self.max_wait:g} s "
                                    f"(last reported: {seen}); the server may still run it: send it again "
                                    "with the same id to fetch its result")
            if reason is not None:           # silent or timed out: new socket, re-send the rest
                last, backoff = reason, True
                self._reset()
                todo = [r for r in pending if r not in replies]
            elif unknown:                    # the server lost them, or their replies: re-send now
                last = "request unknown to the server, or its reply lost"
                todo += [r for r in unknown if r not in todo]
            worst = max(attempts[r] for r in todo) if todo else 0
            if worst > self.retries:
                m0 = next(m for m in msgs if m.id == todo[0])
                raise BridgeTimeout(f"no reply from {self.endpoint} to {m0.type} {m0.id} after "
                                    f"{worst} attempt(s) (last: {last}); is `qhil lab serve` running "
                                    "there, and does it accept this client?")
            if backoff:
                pause = min(self.max_backoff, self.backoff * 2 ** (worst - 1))
                if give_up is not None:
                    pause = min(pause, max(0.0, give_up - time.monotonic()))
                time.sleep(pause)

    def _wait(self, pending: list[str], timeout: float, track: set[str], give_up: float | None = None
              ) -> tuple[dict[str, Message], str | None, list[str]]:
        """Replies to ``pending`` ids until all are in, or why not: (replies, reason, unknown)
        with reason "timeout" (the deadline, ``timeout`` seconds from now and moved to
        ``self.timeout + self.heartbeat`` after each pong reporting a tracked id queued or
        running, passed),
        "silent" (no message from the server and no transport heartbeat answer for
        ``heartbeat × liveness``) or "max_wait" (``give_up``, a monotonic time, passed), and
        ``unknown`` the tracked ids the server has no record of, or has finished although no
        reply came (the reply went to an earlier connection)."""
        now = time.monotonic()
        start = now
        # the first ping goes out before the first deadline can pass, however short it is
        deadline, last_heard, next_ping = now + timeout, now, now + min(self.heartbeat, timeout / 2)
        dead_after = self.heartbeat * self.liveness
        end = math.inf if give_up is None else give_up
        got: dict[str, Message] = {}
        want = set(pending)
        sock, poller = self._sock, self._poller
        assert sock is not None and poller is not None
        while True:
            now = time.monotonic()
            if now >= end:
                return got, "max_wait", []
            if now >= deadline:
                return got, "timeout", []
            quiet = now - last_heard > dead_after
            # No message for the liveness window: dead, unless the transport still answers
            # heartbeats (the server process lives; its message loop is only late).
            if quiet and not self._check_monitor():
                return got, "silent", []
            if now >= next_ping:
                ids = [r for r in pending if r in track and r not in got][:wire.MAX_PING_IDS]
                try:
                    sock.send_multipart(wire.encode(Message("ping", wire.new_id(), {"requests": ids})),
                                        zmq.NOBLOCK)
                except zmq.Again:
                    pass
                next_ping = now + self.heartbeat
            wait = min(deadline, next_ping, end, math.inf if quiet else last_heard + dead_after + 1e-3) - now
            # One socket in the fast path; the monitor (handshake failures) is read when idle.
            if not poller.poll(min(max(0.0, wait), self.heartbeat / 2) * 1000):
                self._check_monitor()
                continue
            while wire.readable(sock):         # (a cheap check, not a zmq.Again at the end)
                try:
                    frames, extra = wire.recv_frames(sock)
                except zmq.Again:
                    break
                last_heard = time.monotonic()
                if extra:                      # more frames than any message has: garbage
                    continue
                try:
                    m = wire.decode([f.buffer for f in frames], wire.REPLY_TYPES)
                except BridgeError as exc:
                    if exc.code == "version_mismatch":
                        raise
                    continue                   # garbage: ignore (the server is alive, though)
                if m.id in want:
                    got[m.id] = m
                    if len(got) == len(want):
                        return got, None, []
                elif m.type == "pong":
                    states = m.body.get("states")
                    if not isinstance(states, dict):
                        continue
                    # "unknown": the server restarted before finishing it; "done": its reply went
                    # to an earlier connection. Either way, re-send it (answered from storage).
                    lost = [r for r, st in states.items() if st in ("unknown", "done") and r in want
                            and r not in got]
                    if lost:
                        return got, None, lost
                    busy = [r for r, st in states.items() if st in ("queued", "running") and r in want
                            and r not in got]
                    if busy:           # a busy server is not a dead one: move the deadline on
                        # (+ one heartbeat: the next pong is due then, whatever timeout is)
                        deadline = max(deadline, last_heard + self.timeout + self.heartbeat)
                        self._report(busy, states, m.body.get("progress"), last_heard - start)

    def _report(self, ids: list[str], states: dict[str, Any], progress: Any, waited: float) -> None:
        """Record (``last_progress``), log and pass on the progress of ``ids`` from a pong."""
        prog = progress if isinstance(progress, dict) else {}
        for rid in ids:
            p = prog.get(rid)
            info: dict[str, Any] = {k: v for k, v in p.items() if k in _PROGRESS_KEYS} if isinstance(p, dict) else {}
            info["state"], info["waited_s"] = states[rid], waited
            prev = self.last_progress.get(rid)
            if prev is None or prev["state"] != info["state"]:
                _LOG.info("%s %s: %s%s", self.endpoint, rid, info["state"],
                          "".join(f" {k}={info[k]:.3g}" for k in ("ahead", "elapsed_s", "estimated_s", "fraction")
                                  if isinstance(info.get(k), (int, float))))
            self.last_progress[rid] = info
            if self.progress is not None:
                self.progress(rid, dict(info))

    def _check_monitor(self) -> bool:
        """Read the socket's events: raise on a refused handshake; track whether the link is
        up (handshake done, no disconnect since). Returns whether it is up."""
        from zmq.utils.monitor import recv_monitor_message
        while self._monitor is not None and self._monitor.poll(0):
            ev = recv_monitor_message(self._monitor)
            if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._link_up = True
            elif ev["event"] == zmq.EVENT_DISCONNECTED:
                self._link_up = False
            elif ev["event"] in _AUTH_EVENTS:
                self._reset()
                raise BridgeError("auth_refused", f"{self.endpoint}: {_AUTH_EVENTS[ev['event']]}")
        return self._link_up

    def _hello_check(self) -> None:
        if self._hello is None:
            reply, _ = self._call(Message("hello", wire.new_id(), {"client": "qhil",
                                                                   "protocol": wire.PROTOCOL_VERSION}),
                                  self.timeout)
            wire.check_version(reply.body.get("protocol"))
            self._hello = reply.body

    def describe(self, refresh: bool = False) -> dict[str, Any]:
        """The device's channels (names, bounds, units, safe values), qubits, calibration,
        limits, timing and the server's details."""
        if self._info is None or refresh:
            self._hello_check()
            reply, _ = self._call(Message("describe", wire.new_id()), self.timeout)
            self._info = reply.body
        return self._info

    def ping(self) -> float:
        """One protocol round trip to the server (no device work); returns seconds."""
        t0 = time.perf_counter()
        self._call(Message("ping", wire.new_id()), self.timeout)
        return time.perf_counter() - t0

    # -- the experiment lock (``qhil lab serve --lock``) ----------------------------------
    def lock(self) -> dict[str, Any]:
        """Take the server's experiment lock for ``owner`` (taking it again is fine); while it
        is held, runs from anyone else are refused with ``locked``. Raises BridgeError
        ``locked`` (naming the holder) if another owner holds it. Returns the lock state
        ``{locked, owner, since, required}``."""
        owner = self._need_owner("lock")
        self._hello_check()
        reply, _ = self._call(Message("lock", wire.new_id(), {"owner": owner}), self.timeout)
        return reply.body

    def unlock(self, *, force: bool = False, key: str | None = None) -> dict[str, Any]:
        """Release the lock (only its owner can, and releasing a free lock is fine), or with
        ``force=True`` and the server's emergency ``key`` (written by ``qhil lab serve``)
        whoever holds it. Returns the lock state."""
        if not isinstance(force, bool):
            raise ValidationError("force", f"expected True or False, got {force!r}", "a bool")
        body: dict[str, Any] = {}
        if force:
            if not isinstance(key, str) or not key:
                raise ValidationError("key", "a forced unlock needs the server's emergency key",
                                      "the key written by `qhil lab serve` (its --lock-key-file)")
            body = {"force": True, "key": key}
            if self.owner is not None:
                body["owner"] = self.owner
        else:
            body = {"owner": self._need_owner("unlock")}
        self._hello_check()
        reply, _ = self._call(Message("unlock", wire.new_id(), body), self.timeout)
        return reply.body

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """``with backend.locked(): ...``: hold the lock for the block, release it after."""
        state = self.lock()
        try:
            yield state
        finally:
            self.unlock()

    def _need_owner(self, what: str) -> str:
        if self.owner is None:
            raise ValidationError("owner", f"{what}() needs an owner name: create the backend with "
                                  "owner=...", _OWNER_ALLOWED)
        return self.owner

    @property
    def capabilities(self) -> Capabilities:
        exact = bool(self._info and self._info.get("exact_expectations"))
        return Capabilities(full_state=False, exact_expectations=exact, qubit_density=False, noise=True)

    # -- experiments --------------------------------------------------------------------
    def _check(self, e: Experiment, info: dict[str, Any], i: int) -> None:
        if e.schedule.full_state:
            raise UnsupportedError("the full state is not available on hardware (zmq driver); "
                                   "measure energies, first_order, second_order or Pauli labels")
        # A model that passed against this describe() answer: only its controls' bounds (and
        # the shots) are checked again, in one comparison per side (issue 16).
        known = self._checked[1].get(e.model.key) if self._checked[0] is info else None
        if known is None:
            self._check_all(e, info, i)
            if self._checked[0] is not info or len(self._checked[1]) >= 256:
                self._checked = (info, {})
            chans = self._chans[1]      # type: ignore[index]
            lo, hi = [], []
            for c in e.model.controls:
                d = chans[c.name]
                tol = 1e-12 * max(1.0, d["upper"] - d["lower"])
                lo.append(d["lower"] - tol)
                hi.append(d["upper"] + tol)
            self._checked[1][e.model.key] = (np.array(lo), np.array(hi))
            return
        c = e.controls
        if c.size and ((c < known[0]).any() or (c > known[1]).any()):
            self._check_all(e, info, i)          # raises, naming the channel
        if e.schedule.shots is None and not info.get("exact_expectations"):
            raise UnsupportedError(f"experiments[{i}]: exact expectation values (shots=None) are not "
                                   f"available on the {info.get('name')} device; give a number of shots")

    def _check_all(self, e: Experiment, info: dict[str, Any], i: int) -> None:
        if self._chans is None or self._chans[0] is not info:    # per describe() answer
            self._chans = (info, {c["name"]: c for c in info["channels"]})
        chans = self._chans[1]
        names = [c.name for c in e.model.controls]
        if sorted(names) != sorted(chans):
            raise ValidationError(f"experiments[{i}].model.controls", f"channels {names} do not match "
                                  "the device's", ", ".join(chans))
        for j, c in enumerate(e.model.controls):
            d = chans[c.name]
            col = e.controls[:, j]
            tol = 1e-12 * max(1.0, d["upper"] - d["lower"])
            if col.size and (col.min() < d["lower"] - tol or col.max() > d["upper"] + tol):
                raise ValidationError(f"experiments[{i}].controls[{c.name}]", "outside the device's bounds",
                                      f"[{d['lower']:g}, {d['upper']:g}] {d.get('units', '')}")
        if e.model.n_qubits != info["n_qubits"]:
            raise ValidationError(f"experiments[{i}].model", f"{e.model.n_qubits} qubits, the device has "
                                  f"{info['n_qubits']}")
        if self.check_model and info.get("model") is not None and e.model.key != self._device_model_key():
            raise ValidationError(f"experiments[{i}].model", f"{e.model.to_dict()} is not the model the device "
                                  f"runs", str(info["model"]))
        if e.schedule.shots is None and not info.get("exact_expectations"):
            raise UnsupportedError(f"experiments[{i}]: exact expectation values (shots=None) are not "
                                   f"available on the {info.get('name')} device; give a number of shots")

    def _device_model_key(self) -> str:
        info = self.describe()
        if info.get("_model_key") is None:   # the same hash as Model.key
            info["_model_key"] = hashlib.sha256(json.dumps(info["model"], sort_keys=True).encode()).hexdigest()[:16]
        return info["_model_key"]

    def estimate_seconds(self, e: Experiment) -> float:
        """Estimated device time of one experiment (seconds), from the device's timing figures:
        overhead + solve_step·K + step·played steps + circuit·circuits + shot·shots."""
        t = self.describe().get("timing", {})
        c = e.cost()
        return float(t.get("overhead_s", 0.0) + t.get("solve_step_s", 0.0) * e.n_steps
                     + t.get("step_s", 0.0) * c.played_steps + t.get("circuit_s", 0.0) * c.circuits
                     + t.get("shot_s", 0.0) * c.total_shots)

    def _run(self, batch: list[Experiment], seeds: np.random.SeedSequence) -> list[Result]:
        info = self.describe()
        for i, e in enumerate(batch):
            self._check(e, info, i)
        children = seeds.spawn(len(batch))
        reqs = [self._request_frames(e, int(s.generate_state(1, np.uint32)[0])) for e, s in zip(batch, children)]
        msgs = [m for m, _ in reqs]
        encoded = [f for _, f in reqs]
        t0 = time.perf_counter()
        out: list[Result] = []
        for lo in range(0, len(batch), self.pipeline):       # pipelined, a window at a time
            chunk = slice(lo, lo + self.pipeline)
            est = sum(self.estimate_seconds(e) for e in batch[chunk])
            replies = self._call_many(msgs[chunk], self.timeout + 3.0 * est, encoded[chunk])
            rtt = time.perf_counter() - t0
            out += [self._result(e, m, r, a, rtt) for e, m, (r, a) in zip(batch[chunk], msgs[chunk], replies)]
        return out

    def _request_frames(self, e: Experiment, seed: int) -> tuple[Message, list]:
        """The run request for ``e`` and its frames (``wire.encode(message)``)."""
        n = e.model.n_qubits
        key = (e.model.key, e.schedule, self.check_model, self.owner)
        static = self._static.get(key)
        if static is None:        # the parts shared by every run of a model and schedule, and their JSON
            if len(self._static) > 256:
                self._static.clear()
            parts = {"channels": [c.name for c in e.model.controls],
                     "settings": list(e.schedule.settings(n)), "model": e.model.to_dict(),
                     "match_model": self.check_model, "schedule": e.schedule.to_dict(),
                     "labels": list(e.schedule.labels(n))}
            if self.owner is not None:
                parts["owner"] = self.owner
            static = self._static[key] = (parts, wire.dumps(parts)[1:-1])
        dynamic = {"dt": e.dt, "steps": e.schedule.measured_steps(e.n_steps).tolist(), "shots": e.schedule.shots,
                   "seed": seed}
        # the body's JSON is the dynamic part's and the cached static part's (the same text as
        # dumps(body): issue 16, the static part is not encoded again for every run)
        text = wire.dumps(dynamic)[:-1] + "," + static[1] + "}"
        msg = Message("run", wire.new_id(), {**dynamic, **static[0]},
                      {"controls": np.asarray(e.controls, dtype=np.float64)})
        return msg, wire.encode_json_body("run", msg.id, text, msg.arrays)

    def _request(self, e: Experiment, seed: int) -> Message:
        """The run request for ``e`` with device seed ``seed``."""
        return self._request_frames(e, seed)[0]

    def _result(self, e: Experiment, msg: Message, reply: Message, attempts: int, rtt: float) -> Result:
        n = e.model.n_qubits
        labels = e.schedule.labels(n)
        settings = e.schedule.settings(n)
        steps = e.schedule.measured_steps(e.n_steps)
        name = "probabilities" if e.schedule.shots is None else "counts"
        data = reply.arrays.get(name)
        expect = (len(steps), len(settings), 2 ** n)
        if data is None or data.shape != expect or list(reply.body.get("settings", [])) != list(settings):
            raise BridgeError("bad_reply", f"malformed result for {msg.id}: expected {name} of shape "
                              f"{expect} for settings {list(settings)}")
        if e.schedule.shots is not None and not (data.sum(axis=2) == e.schedule.shots).all():
            raise BridgeError("bad_reply", f"result for {msg.id}: counts do not sum to the shots")
        values, stderr = estimate_from_counts(data, labels, settings, n)
        if e.schedule.shots is None:
            stderr = np.zeros_like(values)
        meta = {"model": msg.body["model"], "dt": e.dt, "shots": e.schedule.shots, "n_steps": e.n_steps,
                "bridge": {"endpoint": self.endpoint, "request_id": msg.id, "attempts": attempts,
                           "replayed": bool(reply.body.get("replayed")), "device": reply.body.get("device"),
                           "calibration": reply.body.get("calibration"), "replay": reply.body.get("replay"),
                           "device_s": reply.body.get("device_s"), "batch_round_trip_s": rtt}}
        return Result(steps=steps, times=steps * e.dt, labels=labels, values=values, stderr=stderr,
                      qubit_density=None, state=None,
                      counts=np.array(data) if e.schedule.shots is not None else None,
                      settings=settings, metadata=meta)
