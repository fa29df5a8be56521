"""A crash-safe record of training runs in SQLite (WAL journal, one transaction per write).

    store = RunStore("runs.sqlite")
    store.start_run("env1/second_order/seed0", config={...})
    store.log_episode(run, episode=…, step=…, ret=…, energy=…, ergotropy=…, protocol=[…])
    store.finish_run(run, summary={...})

Every episode's return, its two headline figures (battery: terminal energy and ergotropy;
supply chain: mean and final fidelity) and its best-so-far objective are kept, any further
named figures of the episode in ``episode_figures`` (JSON); the best protocol (its
``objective`` value and per-step figure) too; per round of episodes the update statistics
(losses, α, entropy, Q values; ``update_metrics``, :meth:`RunStore.updates`). A process killed in
the middle of a write leaves the database at the last committed episode (SQLite's atomic
commit); several processes may write to one file (WAL, busy timeout).
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Sequence

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY, config TEXT NOT NULL, status TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, summary TEXT);
CREATE TABLE IF NOT EXISTS episodes (
    run TEXT NOT NULL, episode INTEGER NOT NULL, step INTEGER NOT NULL,
    ret REAL NOT NULL, energy REAL NOT NULL, ergotropy REAL NOT NULL, best REAL NOT NULL,
    weight REAL, wall REAL NOT NULL, PRIMARY KEY (run, episode));
CREATE TABLE IF NOT EXISTS episode_figures (
    run TEXT NOT NULL, episode INTEGER NOT NULL, figures TEXT NOT NULL, PRIMARY KEY (run, episode));
CREATE TABLE IF NOT EXISTS best (
    run TEXT PRIMARY KEY, objective REAL NOT NULL, episode INTEGER NOT NULL,
    protocol TEXT NOT NULL, trajectory TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS update_metrics (
    run TEXT NOT NULL, episode INTEGER NOT NULL, step INTEGER NOT NULL, updates INTEGER NOT NULL,
    metrics TEXT NOT NULL, wall REAL NOT NULL, PRIMARY KEY (run, episode));
"""
#: The ``best`` table's objective column was called ``ergotropy`` before stores held other
#: objectives (a supply-chain return): such stores are migrated when opened.
_LEGACY_BEST_COLUMN = "ergotropy"


class RunStore:
    """SQLite run store at ``path`` (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._tx():
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(stmt)
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(best)")}
            if _LEGACY_BEST_COLUMN in cols and "objective" not in cols:      # an older store
                self._db.execute(f"ALTER TABLE best RENAME COLUMN {_LEGACY_BEST_COLUMN} TO objective")

    def _tx(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                db.execute("ROLLBACK" if exc_type else "COMMIT")
        return _Tx()

    def close(self) -> None:
        self._db.close()

    # -- writing ---------------------------------------------------------------------
    def start_run(self, run: str, config: dict[str, Any]) -> None:
        """Register a run (idempotent: a resumed run keeps its episodes)."""
        now = time.time()
        with self._tx():
            self._db.execute("INSERT OR IGNORE INTO runs VALUES (?, ?, 'running', ?, ?, NULL)",
                             (run, json.dumps(config, sort_keys=True), now, now))
            self._db.execute("UPDATE runs SET status='running', updated=? WHERE run=?", (now, run))

    def truncate(self, run: str, after_episode: int, best: dict[str, Any] | None = None) -> None:
        """Drop episodes past ``after_episode`` (a resume from an older checkpoint), in one
        transaction with the best protocol.

        ``best`` is the best the restored state holds (objective, episode — None if unknown —,
        protocol, trajectory; the checkpoint's own): it replaces the stored best row, so the store never keeps a best
        the state does not have (one found after the checkpoint) nor loses the one it has (an
        older best overwritten by a later one). ``None`` (no best yet): the stored row is
        dropped if it is past ``after_episode``.
        """
        with self._tx():
            self._db.execute("DELETE FROM episodes WHERE run=? AND episode>?", (run, after_episode))
            self._db.execute("DELETE FROM episode_figures WHERE run=? AND episode>?", (run, after_episode))
            self._db.execute("DELETE FROM update_metrics WHERE run=? AND episode>?", (run, after_episode))
            if best is not None:
                if best.get("episode") is None:      # not known (an old checkpoint): the first kept
                    row = self._db.execute(           # episode with that figure, else the last kept
                        "SELECT MIN(episode) FROM episodes WHERE run=? AND episode<=? AND ergotropy=?",
                        (run, after_episode, _objective(best))).fetchone()
                    best = {**best, "episode": row[0] if row and row[0] is not None else max(after_episode, 0)}
                self._write_best(run, best)
                return
            row = self._db.execute("SELECT episode FROM best WHERE run=?", (run,)).fetchone()
            if row and row[0] > after_episode:
                self._db.execute("DELETE FROM best WHERE run=?", (run,))

    def _write_best(self, run: str, best: dict[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO best VALUES (?, ?, ?, ?, ?)",
                         (run, _objective(best), int(best["episode"]),
                          json.dumps(list(map(float, best["protocol"]))),
                          json.dumps(list(map(float, best["trajectory"])))))

    def annotate(self, run: str, **fields: Any) -> None:
        """Add or replace top-level keys of ``run``'s recorded config (e.g. the precision a
        process chose); the other keys are kept."""
        with self._tx():
            row = self._db.execute("SELECT config FROM runs WHERE run=?", (run,)).fetchone()
            if row is None:
                raise KeyError(f"run {run!r} is not in {self.path}")
            cfg = {**json.loads(row[0]), **fields}
            self._db.execute("UPDATE runs SET config=?, updated=? WHERE run=?",
                             (json.dumps(cfg, sort_keys=True), time.time(), run))

    def log_episodes(self, run: str, rows: Sequence[dict[str, Any]], best: dict[str, Any] | None = None) -> None:
        """Append episodes (dicts with episode, step, ret, energy, ergotropy, best, weight and
        optionally ``figures``, a dict of named numbers) and, if given, the new best protocol
        — all in one transaction."""
        now = time.time()
        with self._tx():
            self._db.executemany(
                "INSERT OR REPLACE INTO episodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run, int(r["episode"]), int(r["step"]), float(r["ret"]), float(r["energy"]),
                  float(r["ergotropy"]), float(r["best"]), r.get("weight"), now) for r in rows])
            self._db.executemany(
                "INSERT OR REPLACE INTO episode_figures VALUES (?, ?, ?)",
                [(run, int(r["episode"]), json.dumps(r["figures"], sort_keys=True)) for r in rows if r.get("figures")])
            if best is not None:
                self._write_best(run, best)
            self._db.execute("UPDATE runs SET updated=? WHERE run=?", (now, run))

    def log_updates(self, run: str, episode: int, step: int, updates: int, metrics: dict[str, float]) -> None:
        """Record one round's update statistics (losses, α, entropy, Q values …, as the agent
        reports them; their means over the round), keyed by the round's last ``episode``, with
        the environment ``step`` and the number of ``updates`` so far."""
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO update_metrics VALUES (?, ?, ?, ?, ?, ?)",
                             (run, int(episode), int(step), int(updates),
                              json.dumps({k: float(v) for k, v in metrics.items()}, sort_keys=True), time.time()))

    def finish_run(self, run: str, summary: dict[str, Any]) -> None:
        with self._tx():
            self._db.execute("UPDATE runs SET status='done', summary=?, updated=? WHERE run=?",
                             (json.dumps(summary, sort_keys=True), time.time(), run))

    # -- moving a run between stores (a Ray worker without the work folder ships its run back) ----
    #: Tables holding a run's rows, each keyed by its ``run`` column.
    RUN_TABLES = ("runs", "episodes", "episode_figures", "best", "update_metrics")

    def export_run(self, run: str) -> dict[str, Any]:
        """All of run ``run``'s rows, {table: (columns, rows)}, for :meth:`import_run`
        (plain lists, JSON and pickle safe); KeyError if the store has no such run."""
        if self.status(run) is None:
            raise KeyError(f"run {run!r} is not in {self.path}")
        out: dict[str, Any] = {"run": run}
        for table in self.RUN_TABLES:
            cur = self._db.execute(f"SELECT * FROM {table} WHERE run=?", (run,))
            out[table] = ([d[0] for d in cur.description], [list(r) for r in cur.fetchall()])
        return out

    def import_run(self, bundle: dict[str, Any]) -> None:
        """Replace the run of ``bundle`` (from :meth:`export_run`) by its rows, in one transaction."""
        run = bundle["run"]
        with self._tx():
            for table in self.RUN_TABLES:
                cols, rows = bundle[table]
                known = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if not set(cols) <= known or "run" not in cols:
                    raise ValueError(f"bundle of run {run!r}: unknown columns of {table}: {sorted(set(cols) - known)}")
                self._db.execute(f"DELETE FROM {table} WHERE run=?", (run,))
                if any(r[cols.index("run")] != run for r in rows):
                    raise ValueError(f"bundle of run {run!r} holds rows of another run in {table}")
                self._db.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                                     f"({', '.join('?' * len(cols))})", [tuple(r) for r in rows])

    # -- reading ---------------------------------------------------------------------
    def runs(self) -> dict[str, dict[str, Any]]:
        out = {}
        for run, cfg, status, summary in self._db.execute("SELECT run, config, status, summary FROM runs"):
            out[run] = {"config": json.loads(cfg), "status": status,
                        "summary": json.loads(summary) if summary else None}
        return out

    def status(self, run: str) -> str | None:
        row = self._db.execute("SELECT status FROM runs WHERE run=?", (run,)).fetchone()
        return row[0] if row else None

    def episodes(self, run: str) -> dict[str, list[float]]:
        """Columns episode, step, ret, energy, ergotropy, best, weight (ordered by episode)."""
        cols = ("episode", "step", "ret", "energy", "ergotropy", "best", "weight")
        rows = self._db.execute(f"SELECT {', '.join(cols)} FROM episodes WHERE run=? ORDER BY episode",
                                (run,)).fetchall()
        return {c: [r[i] for r in rows] for i, c in enumerate(cols)}

    def figures(self, run: str) -> dict[str, list[float]]:
        """Columns of the named figures logged with ``run``'s episodes (ordered by episode)."""
        got = self._db.execute("SELECT figures FROM episode_figures WHERE run=? ORDER BY episode", (run,)).fetchall()
        figs = [json.loads(g[0]) for g in got]
        keys = sorted({k for f in figs for k in f})
        return {k: [f.get(k, float("nan")) for f in figs] for k in keys}

    def updates(self, run: str) -> dict[str, list[float]]:
        """Columns episode, step, updates and one per statistic (NaN where a round lacks it),
        one row per round of episodes that updated (ordered by episode)."""
        got = self._db.execute("SELECT episode, step, updates, metrics FROM update_metrics WHERE run=? "
                               "ORDER BY episode", (run,)).fetchall()
        rows = [json.loads(g[3]) for g in got]
        keys = sorted({k for r in rows for k in r})
        return {"episode": [g[0] for g in got], "step": [g[1] for g in got], "updates": [g[2] for g in got],
                **{k: [r.get(k, float("nan")) for r in rows] for k in keys}}

    def best(self, run: str) -> dict[str, Any] | None:
        """The best episode: ``objective`` (terminal ergotropy, or the return), episode,
        protocol, trajectory; ``ergotropy`` repeats ``objective`` for older readers."""
        row = self._db.execute("SELECT objective, episode, protocol, trajectory FROM best WHERE run=?",
                               (run,)).fetchone()
        if row is None:
            return None
        return {"objective": row[0], "ergotropy": row[0], "episode": row[1], "protocol": json.loads(row[2]),
                "trajectory": json.loads(row[3])}


def _objective(best: dict[str, Any]) -> float:
    """A best row's objective (``objective``; ``ergotropy`` in rows written before)."""
    return float(best["objective"] if "objective" in best else best[_LEGACY_BEST_COLUMN])
