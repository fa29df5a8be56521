"""Measured times of a Table 1 reproduction, read from its work dir (no training).

    .venv/bin/python benchmarks/table1_times.py runs/table1_batched
    .venv/bin/python benchmarks/table1_times.py runs/table1_batched --target 4.0445 --env env1

Prints, per regime, the min/mean/max of the runs' ``wall_s`` (training seconds, summed over
resumes, from ``summaries/*.json``) and their total in core-seconds; then, for each run of
``--env``, the first episode whose terminal ergotropy reaches ``--target`` and its time since
the run was created (the run store's episode time stamps). That time includes any pause
between a kill and a resume, so the run's ``wall_s`` is printed beside the span of its stamps:
they agree for a run that was never resumed.
"""
from __future__ import annotations

import argparse
import collections
import json
import sqlite3
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work_dir", type=Path, help="a reproduce work dir (runs.sqlite, summaries/)")
    p.add_argument("--target", type=float, default=4.0445, help="ergotropy (ω_0) to time; default Table 1 Env1 full state")
    p.add_argument("--env", default="env1", help="runs of this env are timed to the target")
    a = p.parse_args()
    db = a.work_dir / "runs.sqlite"
    if not db.exists():
        print(f"{db}: no run store", file=sys.stderr)
        return 1
    walls: dict[str, list[float]] = collections.defaultdict(list)
    wall_of: dict[str, float] = {}
    for path in sorted((a.work_dir / "summaries").glob("*.json")):
        s = json.loads(path.read_text())
        walls[s["regime"]].append(s["wall_s"])
        wall_of[s["run"]] = s["wall_s"]
    for regime, w in walls.items():
        print(f"{regime}: {len(w)} runs, wall min/mean/max {min(w):.0f}/{sum(w) / len(w):.0f}/{max(w):.0f} s")
    print(f"total {sum(map(sum, walls.values())):.0f} core-s over {len(wall_of)} runs")

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    print(f"{a.env} runs reaching {a.target} (first episode at or above it; time since the run was created):")
    for run, created in con.execute("SELECT run, created FROM runs WHERE run LIKE ? ORDER BY run", (f"{a.env}/%",)):
        hit = con.execute("SELECT episode, step, wall FROM episodes WHERE run = ? AND ergotropy >= ? "
                          "ORDER BY episode LIMIT 1", (run, a.target)).fetchone()
        best, last = con.execute("SELECT max(ergotropy), max(wall) FROM episodes WHERE run = ?", (run,)).fetchone()
        if best is None:
            continue
        text = (f"episode {hit[0]}, step {hit[1]}, {hit[2] - created:.0f} s" if hit
                else f"not reached (best {best:.4f})")
        print(f"  {run}: {text}  [stamps span {last - created:.0f} s, wall_s {wall_of.get(run, float('nan')):.0f} s]")
    con.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
