"""A lab server for tests: a :class:`~qhil.lab.server.LabServer` on 127.0.0.1, on a port it
picks itself (no pick-release-rebind race), serving in a thread of the test process."""
from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from qhil.lab.server import LabServer


class ThreadServer:
    """``device`` served in a thread; ``spec`` is the client's ``zmq://127.0.0.1:PORT``.
    Use as a context manager, or call :meth:`close`."""

    def __init__(self, device: Any, run_log: Path, **kw: Any) -> None:
        self.server = LabServer(device, "tcp://127.0.0.1:*", run_log, **kw)
        self.run_log = run_log
        self.spec = "zmq://" + self.server.endpoint.split("://", 1)[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def executions(self, request_id: str) -> int:
        """How many times the run log records ``request_id`` as executed."""
        with sqlite3.connect(self.run_log, timeout=10) as db:
            return db.execute("SELECT COUNT(*) FROM runs WHERE request_id = ?", (request_id,)).fetchone()[0]

    def runs(self) -> list[tuple[str, dict]]:
        """(request id, experiment) of every logged run, in order."""
        with sqlite3.connect(self.run_log, timeout=10) as db:
            return [(r, json.loads(e)) for r, e in db.execute("SELECT request_id, experiment FROM runs ORDER BY seq")]

    def events(self) -> list[str]:
        """The run log's fault and event messages, in order."""
        with sqlite3.connect(self.run_log, timeout=10) as db:
            return [m for (m,) in db.execute("SELECT message FROM faults ORDER BY seq")]

    def close(self) -> None:
        self.server.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the lab server did not stop within 60 s"

    def __enter__(self) -> "ThreadServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
