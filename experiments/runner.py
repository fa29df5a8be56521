"""The one runner: a list of run specs, the unfinished ones executed on an executor.

    outcomes = run_specs(specs, work_dir, LocalExecutor(jobs=2))

* A **run spec** is a frozen, picklable dataclass with a unique ``name`` and
  ``execute(work_dir) -> summary``: it trains, evaluates and records into the run store
  ``<work_dir>/runs.sqlite`` (:class:`~qhil.agents.runstore.RunStore`), resuming its own
  checkpoint if one is there, and marks the run finished (``RunStore.finish_run``) last.
* The **run store is the single record of finished runs**: specs whose run it records as
  ``done`` are skipped; nothing else (no summary files) says a run is finished.
* An **executor** maps a function over items and yields ``(index, result or exception)`` as
  they finish: :class:`LocalExecutor` (a process pool, nothing to set up; ``jobs=1`` runs
  in this process) or :class:`qhil.experiments.ray_executor.RayExecutor` (a Ray cluster).
* Each run's stdout and stderr go to ``<work_dir>/logs/<name>.log``; a failing run is
  reported (:class:`RunOutcome` ``failed`` with its error) and the others still run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

from qhil.agents.runstore import RunStore
from qhil.drivers import ValidationError

#: The run store's file name inside a work folder.
STORE_NAME = "runs.sqlite"
#: Most worker processes a local executor starts.
MAX_JOBS = 256


@runtime_checkable
class RunSpec(Protocol):
    """What the runner needs of a run spec (a frozen dataclass, picklable)."""

    @property
    def name(self) -> str:
        """Unique run name in its work folder (the run store's key)."""

    def execute(self, work_dir: Path) -> dict[str, Any]:
        """Train, evaluate and record into ``<work_dir>/runs.sqlite``; return the summary."""


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """What became of one spec: ``status`` is ``done`` (run now), ``skipped`` (finished
    before) or ``failed`` (``error`` says why; the run store keeps its partial record)."""

    name: str
    status: str
    summary: dict[str, Any] | None = None
    error: str | None = None
    wall_s: float = 0.0


class Executor(Protocol):
    """Runs ``fn`` over ``items``; yields ``(index, result)`` as each finishes, where a
    failed call's result is the exception it raised."""

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]: ...


class LocalExecutor:
    """A pool of ``jobs`` worker processes (spawned, so each starts clean); ``jobs=1`` runs
    every call in this process, one after the other."""

    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
            raise ValidationError("jobs", f"{jobs!r}", f"an integer in [1, {MAX_JOBS}]")
        self.jobs = jobs

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        if self.jobs == 1 or len(items) <= 1:
            for i, item in enumerate(items):
                try:
                    yield i, fn(item)
                except Exception as exc:            # noqa: BLE001 — reported, the others run
                    yield i, exc
            return
        import multiprocessing as mp
        pool = ProcessPoolExecutor(max_workers=min(self.jobs, len(items)), mp_context=mp.get_context("spawn"))
        try:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = futures.pop(fut)
                    exc = fut.exception()
                    yield i, (exc if exc is not None else fut.result())
        finally:                    # a caller that stops reading cancels the runs not started yet
            pool.shutdown(wait=True, cancel_futures=True)


def log_path(work_dir: Path, name: str) -> Path:
    """Where run ``name``'s output goes."""
    return Path(work_dir) / "logs" / (name.replace("/", "_") + ".log")


def execute_logged(item: tuple[Any, str]) -> dict[str, Any]:
    """Worker entry: run one spec with its stdout/stderr appended to its log file. Errors are
    logged with their traceback and re-raised (as RuntimeError naming the log)."""
    spec, work = item
    work_dir = Path(work)
    path = log_path(work_dir, spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {spec.name} (pid {os.getpid()})", flush=True)
        try:
            return spec.execute(work_dir)
        except Exception as exc:
            traceback.print_exc()
            raise RuntimeError(f"{spec.name}: {type(exc).__name__}: {exc} (log: {path})") from None


def finished(work_dir: str | Path) -> dict[str, dict[str, Any] | None]:
    """{name: summary} of the runs ``<work_dir>/runs.sqlite`` records as finished."""
    db = Path(work_dir) / STORE_NAME
    if not db.exists():
        return {}
    store = RunStore(db)
    try:
        return {name: r["summary"] for name, r in store.runs().items() if r["status"] == "done"}
    finally:
        store.close()


def run_specs(specs: Sequence[Any], work_dir: str | Path, executor: Executor | None = None, *,
              progress: bool = True, log: Callable[[str], None] | None = None) -> list[RunOutcome]:
    """Execute the specs the run store does not record as finished; one outcome per spec, in
    order. ``executor`` defaults to ``LocalExecutor(jobs=1)``. Never raises for a failed run."""
    names = [getattr(s, "name", None) for s in specs]
    for i, (s, n) in enumerate(zip(specs, names)):
        if not isinstance(s, RunSpec) or not isinstance(n, str) or not n:
            raise ValidationError(f"specs[{i}]", f"{type(s).__name__} is not a run spec",
                                  "a frozen dataclass with a name and execute(work_dir)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValidationError("specs", f"run names used twice: {dup[:5]}", "unique names")
    work_dir = Path(work_dir).resolve()          # workers (Ray) may run in another folder
    work_dir.mkdir(parents=True, exist_ok=True)
    executor = executor or LocalExecutor(1)
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    done_before = finished(work_dir)
    todo = [s for s in specs if s.name not in done_before]
    outcomes: dict[str, RunOutcome] = {n: RunOutcome(n, "skipped", done_before[n]) for n in names if n in done_before}
    say(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; {len(todo)} to run on "
        f"{getattr(executor, 'name', type(executor).__name__)} (work dir {work_dir})")
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="runs", unit="run", file=sys.stderr)
    t0 = time.time()
    for i, res in executor.map_unordered(execute_logged, [(s, str(work_dir)) for s in todo]):
        name = todo[i].name
        wall = time.time() - t0
        if isinstance(res, BaseException):
            outcomes[name] = RunOutcome(name, "failed", None, str(res), wall)
            say(f"[{wall:7.0f} s] FAILED {name}: {res}")
        else:
            outcomes[name] = RunOutcome(name, "done", res, None, wall)
            say(f"[{wall:7.0f} s] finished {name}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return [outcomes[n] for n in names]


def failed_message(outcomes: Sequence[RunOutcome], work_dir: str | Path) -> str | None:
    """A one-paragraph report of the failed runs, or None if none failed."""
    bad = [o for o in outcomes if o.status == "failed"]
    if not bad:
        return None
    return (f"{len(bad)} of {len(outcomes)} runs failed: " + ", ".join(o.name for o in bad[:8])
            + (" …" if len(bad) > 8 else "") + f" (logs in {Path(work_dir) / 'logs'})")
