"""Run specs on a Ray cluster: the :class:`~qhil.experiments.runner.Executor` for ``--executor ray``.

    outcomes = run_specs(specs, "runs/table1", RayExecutor(address="auto"))

* **One Ray task per run** (``num_cpus`` each). A task whose worker process or node dies is
  retried by Ray (``max_retries`` times); the run resumes from its checkpoint when the work
  folder is shared, else it starts again.
* **Where results land.** The driver writes a token file into the work folder. A worker
  that reads the same token there (a shared filesystem: NFS, Lustre, one machine) runs the
  spec in place: it writes ``<work_dir>/runs.sqlite`` and its checkpoints directly. A worker
  that does not see it runs the spec in a temporary folder of its own and ships the run back
  (its run-store rows — :meth:`RunStore.export_run` — and its files: checkpoints, log); the
  driver imports them into the work folder (:meth:`RunStore.import_run`). Either way the run
  store of the work folder is the single record of finished runs. ``ship="always"`` forces
  shipping, ``ship="never"`` refuses a worker that cannot see the folder.
* **Progress**: the runner's bar and log lines as results arrive, and every ``heartbeat_s`` a
  line with the tasks in flight and the cluster's free CPUs.

Ray is an optional extra (``pip install 'qhil[cluster]'``), imported only when a run starts.
Workers need qhil installed (the same version) or a ``runtime_env`` that provides it.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from qhil.drivers import QhilError, ValidationError

#: A cluster address: ``auto``, ``ray://host:port`` (Ray Client) or ``host:port`` (a GCS).
_ADDRESS = re.compile(r"^(?:ray://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9._-]{0,252}):(\d{1,5})$")
SHIP_MODES = ("auto", "always", "never")
#: Files a shipped run brings back are at most this large in all (bytes).
MAX_SHIP_BYTES = 4 << 30


def check_address(address: str) -> str:
    """``address`` if it names a Ray cluster (``auto``, ``ray://host:port``, ``host:port``);
    else a :class:`ValidationError` naming ``address``."""
    if not isinstance(address, str):
        raise ValidationError("address", f"{address!r}", "auto, ray://host:port or host:port")
    if address == "auto":
        return address
    m = _ADDRESS.match(address)
    if not m or not 1 <= int(m.group(1)) <= 65535:
        raise ValidationError("address", f"{address!r} is not a Ray cluster address",
                              "auto, ray://host:port (Ray Client, e.g. ray://head:10001) or host:port (e.g. head:6379)")
    return address


class RayExecutor:
    """Maps a function over items as Ray tasks on the cluster at ``address``.

    address:     ``auto`` (the cluster this machine belongs to), ``ray://host:10001``, ``host:6379``
    max_retries: retries of a task whose worker died (Ray's task ``max_retries``), 0..100
    num_cpus:    CPUs reserved per run (> 0; fractions allowed)
    ship:        ``auto`` (run in place where the work folder is visible, else ship back),
                 ``always`` or ``never`` (see the module doc)
    heartbeat_s: seconds between progress lines (tasks in flight, free CPUs); 0 = none
    runtime_env: Ray's runtime environment for the tasks (e.g. ``{"pip": [...]}``), or None
    log:         where progress lines go (default: stderr)
    """

    name = "ray"

    def __init__(self, address: str = "auto", max_retries: int = 3, num_cpus: float = 1.0, ship: str = "auto",
                 heartbeat_s: float = 60.0, runtime_env: dict[str, Any] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.address = check_address(address)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= 100:
            raise ValidationError("max_retries", f"{max_retries!r}", "an integer in [0, 100]")
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or not 0 < num_cpus <= 1024:
            raise ValidationError("num_cpus", f"{num_cpus!r}", "a number in (0, 1024] (CPUs per run)")
        if ship not in SHIP_MODES:
            raise ValidationError("ship", f"{ship!r}", ", ".join(SHIP_MODES))
        if isinstance(heartbeat_s, bool) or not isinstance(heartbeat_s, (int, float)) or not 0 <= heartbeat_s <= 1e6:
            raise ValidationError("heartbeat_s", f"{heartbeat_s!r}", "seconds in [0, 1e6]")
        if runtime_env is not None and not isinstance(runtime_env, dict):
            raise ValidationError("runtime_env", f"a {type(runtime_env).__name__}", "a dict, or None")
        self.max_retries, self.num_cpus, self.ship = max_retries, float(num_cpus), ship
        self.heartbeat_s, self.runtime_env = float(heartbeat_s), runtime_env
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))

    def connect(self) -> Any:
        """Connect to the cluster (once per process); returns the ``ray`` module."""
        try:
            import ray
        except ImportError:
            raise QhilError("--executor ray needs Ray: pip install 'qhil[cluster]'") from None
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False,
                         runtime_env=self.runtime_env)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ValidationError("address", f"no Ray cluster at {self.address!r} ({exc})",
                                      "the address of a running cluster (ray start --head …)") from None
        return ray

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, result or exception)`` as the tasks finish. Items of the runner's form
        ``(spec, work_dir)`` run in place or are shipped back (see the module doc)."""
        if not items:
            return
        ray = self.connect()
        task = ray.remote(max_retries=self.max_retries, retry_exceptions=False, num_cpus=self.num_cpus)(_run_task)
        tokens: dict[str, str] = {}
        for item in items:                          # one token per work folder of the items
            work = _work_dir(item)
            if work is not None and work not in tokens:
                tokens[work] = _write_token(Path(work))
        refs = {task.remote(fn, item, tokens.get(_work_dir(item) or ""), self.ship): i for i, item in enumerate(items)}
        last = time.time()
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1, timeout=min(self.heartbeat_s or 5.0, 5.0))
                if self.heartbeat_s and time.time() - last >= self.heartbeat_s:
                    last = time.time()
                    free = ray.available_resources().get("CPU", 0.0)
                    total = ray.cluster_resources().get("CPU", 0.0)
                    self.log(f"ray: {len(items) - len(refs)} of {len(items)} runs returned, {len(refs)} running or queued; "
                             f"cluster CPUs free {free:g} of {total:g}")
                for ref in done:
                    i = refs.pop(ref)
                    try:
                        res = ray.get(ref)
                    except Exception as exc:        # noqa: BLE001 — the runner reports it
                        yield i, _plain_error(exc)
                        continue
                    if isinstance(res, dict) and res.get("_qhil_shipped"):
                        try:
                            res = _import_shipped(res, Path(_work_dir(items[i]) or "."))
                        except Exception as exc:    # noqa: BLE001
                            yield i, RuntimeError(f"shipping the run back failed: {type(exc).__name__}: {exc}")
                            continue
                        if isinstance(res, BaseException):
                            yield i, res
                            continue
                    yield i, res
        finally:
            for ref in refs:                        # the caller stopped early: cancel the rest
                try:
                    ray.cancel(ref, force=True)
                except Exception:                   # noqa: BLE001 — best effort
                    pass
            for work, tok in tokens.items():
                (Path(work) / _token_name(tok)).unlink(missing_ok=True)


# -- the worker side ---------------------------------------------------------------------------
def _work_dir(item: Any) -> str | None:
    """The work folder of a runner item ``(spec, work_dir)``, else None."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str) and hasattr(item[0], "execute"):
        return item[1]
    return None


def _token_name(token: str) -> str:
    return f".ray-token-{token}"


def _write_token(work: Path) -> str:
    token = uuid.uuid4().hex
    work.mkdir(parents=True, exist_ok=True)
    (work / _token_name(token)).write_text(token)
    return token


def _sees(work: str, token: str | None) -> bool:
    """Whether this process sees the driver's work folder (the token file there)."""
    if token is None:
        return False
    try:
        return (Path(work) / _token_name(token)).read_text() == token
    except OSError:
        return False


def _run_task(fn: Callable[[Any], Any], item: Any, token: str | None, ship: str) -> Any:
    """A Ray task: ``fn(item)`` in place, or in a temporary folder with the run shipped back.
    An exception of ``fn`` is returned, not raised (a run that fails is not retried)."""
    work = _work_dir(item)
    if work is None:
        return fn(item)
    if ship == "never" or (ship == "auto" and _sees(work, token)):
        if not _sees(work, token):
            return RuntimeError(f"this worker ({os.uname().nodename}) does not see the work folder {work} "
                                "(ship='never'): use a shared filesystem or ship='auto'")
        try:
            return fn(item)
        except Exception as exc:                    # noqa: BLE001 — reported by the runner
            return exc
    spec = item[0]
    tmp = Path(tempfile.mkdtemp(prefix="qhil-ray-"))
    try:
        try:
            result: Any = fn((spec, str(tmp)))
        except Exception as exc:                    # noqa: BLE001
            result = exc
        return {"_qhil_shipped": True, "result": result, **_bundle(tmp, spec.name)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bundle(tmp: Path, run: str) -> dict[str, Any]:
    """The run's rows of ``tmp/runs.sqlite`` and every other file under ``tmp`` (relative paths)."""
    from qhil.agents.runstore import RunStore
    from qhil.experiments.runner import STORE_NAME
    rows = None
    db = tmp / STORE_NAME
    if db.exists():
        store = RunStore(db)
        try:
            rows = store.export_run(run) if store.status(run) is not None else None
        finally:
            store.close()
    files: dict[str, bytes] = {}
    size = 0
    for p in sorted(tmp.rglob("*")):
        rel = p.relative_to(tmp).as_posix()
        if p.is_file() and not rel.startswith(STORE_NAME) and not p.name.startswith(".ray-token-"):
            size += p.stat().st_size
            if size > MAX_SHIP_BYTES:
                raise RuntimeError(f"run {run!r}: its files exceed {MAX_SHIP_BYTES >> 30} GiB; use a shared work folder")
            files[rel] = p.read_bytes()
    return {"rows": rows, "files": files, "node": os.uname().nodename}


def _import_shipped(res: dict[str, Any], work: Path) -> Any:
    """Driver side: the shipped rows into ``work/runs.sqlite``, the files under ``work`` (a log
    is appended to, any other file replaced atomically); returns the task's result."""
    from qhil.agents.runstore import RunStore
    from qhil.experiments.runner import STORE_NAME
    root = work.resolve()
    for rel, data in res["files"].items():
        dest = (work / rel).resolve()
        if root not in dest.parents:
            raise RuntimeError(f"shipped file {rel!r} lies outside the work folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel.startswith("logs/"):
            with open(dest, "ab") as f:
                f.write(f"-- shipped back from {res['node']}\n".encode() + data)
        else:
            tmp = dest.with_name(dest.name + ".shipped")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
    if res["rows"] is not None:
        store = RunStore(work / STORE_NAME)
        try:
            store.import_run(res["rows"])
        finally:
            store.close()
    return res["result"]


def _plain_error(exc: BaseException) -> BaseException:
    """A task's error for the runner: the original exception of the spec where Ray wrapped one,
    else Ray's (a worker that died more than ``max_retries`` times, a cancelled task)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return cause
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return RuntimeError(f"{type(exc).__name__}: {first}")
