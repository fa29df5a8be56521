"""``qhil reproduce table1``: seed 000's Table 1 (and Figs. 1–2), resumable; the other targets
(Table 2, Table S1, Figs. S1–S2, history, robust) are in :mod:`.paper_results` and share
this job runner (:func:`run_jobs`) and run store.

    nice -n 10 qhil reproduce table1 --jobs 2                             # start or resume
    qhil reproduce table1 --report-only                                  # tables/figures so far
    nice -n 10 qhil reproduce table1 --setup batched                      # the faster set-up below

3 environments × 4 observation regimes × 5 seeds of ``qhil train``, ``--jobs`` at a time as
separate processes on this machine. Each run records its episodes in
``<work-dir>/runs.sqlite`` and checkpoints to ``<work-dir>/<run>.pt``; a killed reproduction
is resumed by running the same command again (finished runs are skipped, unfinished ones
continue from their last checkpoint). The GRAPE ceilings come from
``docs/results/grape_<env>.json`` (computed with ``qhil grape`` first if missing).

Writes ``docs/results/table1.csv`` (env, regime, mean, ci_half_width, n_seeds,
grape_ceiling, deterministic_mean): ``mean`` is the paper's metric — the best terminal
ergotropy explored during training, averaged over finished seeds, with a 95% Student-t
half-width; ``deterministic_mean`` averages the trained policies' deterministic episodes.
Figures: ``fig1_learning_curves.png`` (EMA γ_G = 0.9 of the return, mean ± std over seeds)
and ``fig2_best_protocols.png`` (Env1: best protocol per regime and its ergotropy).

Two set-ups (``--setup``; flags given explicitly override the set-up's values, and
``--train-args`` are appended after the set-up's):

* ``paper``: the paper's agent, one battery, one update per env step, the observation of
  the current step only; 30,000 env steps per run; ``runs/table1`` → ``docs/results``.
* ``batched`` (ours): 8 batteries stepped together with one update per 8 env steps (8× the
  explored episodes for the same updates), ``--precision auto`` updates (bf16 where the CPU has
  native bf16 and a start-up probe finds it faster, else fp32; the committed runs used bf16),
  4,000 warm-up steps, 56,000 env
  steps (6,501 updates) per run, and memory for the partially observed regimes: E_j and
  first order see the last 28 observations (the whole episode so far, zero-padded), second
  order sees its current observation and the last 28 actions (96 inputs instead of 1,904);
  ``runs/table1_batched`` → ``docs/results/table1_batched``.

Every option is checked when parsed (ranges, names, writable folders, the ``--config`` file and
the ``--train-args`` flags against ``qhil train``'s own parser): a bad one exits 2 naming it,
before any run. Exit status 1 when a training run failed (the table then shows the finished
runs only; none is written when every run failed and none had finished before).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import args as args_mod
from . import pyplot

#: Bounds of the job options.
MAX_JOBS, MAX_SEEDS, MAX_STEPS = 64, 100, 10**8

ENVS = ["env1", "env2", "env3"]
REGIMES = ["second_order", "full_state", "energies", "first_order"]   # run order: the key comparison first
#: Seed 000, Table 1: (mean, CI half-width).
PAPER = {
    ("env1", "full_state"): (4.0445, 0.0323), ("env2", "full_state"): (2.8357, 0.0235),
    ("env3", "full_state"): (3.3777, 0.0235),
    ("env1", "energies"): (3.8496, 0.0459), ("env2", "energies"): (2.6757, 0.0902),
    ("env3", "energies"): (3.0938, 0.1648),
    ("env1", "first_order"): (3.8984, 0.0326), ("env2", "first_order"): (2.6548, 0.0516),
    ("env3", "first_order"): (3.0585, 0.0519),
    ("env1", "second_order"): (3.9683, 0.0139), ("env2", "second_order"): (2.7260, 0.0575),
    ("env3", "second_order"): (3.1966, 0.0397),
}


#: ``--setup`` presets: values for the options left unset on the command line.
SETUPS: dict[str, dict[str, Any]] = {
    "paper": {"total_steps": 30_000, "windows": "", "train_args": "", "work_dir": None,
              "out_dir": Path("docs/results"), "grape_dir": None},
    "batched": {"total_steps": 56_000, "windows": "energies=28,first_order=28,second_order=actions:28",
                "train_args": "--n-envs 8 --updates-per-step 0.125 --learning-starts 4000 --precision auto",
                "work_dir": Path("runs/table1_batched"), "out_dir": Path("docs/results/table1_batched"),
                "grape_dir": Path("docs/results")},
}
#: Targets that read the Table 1 runs, so may name a set-up.
TABLE1_READERS = ["table1", "tableS1", "figS1", "transfer"]

#: Targets besides table1; their runs and reports live in :mod:`.paper_results`.
MORE = ["table2", "tableS1", "figS1", "figS2", "history", "robust", "transfer"]


def _sac_config_file(text: str) -> Path:
    """``--config``: an existing JSON/TOML file of valid SAC options (checked before any run)."""
    from qhil.agents.sac_config import SACConfig
    path = args_mod.input_file(text)
    SACConfig.from_file(path)            # raises ValidationError naming the bad option
    return path


def _train_args(text: str) -> str:
    """``--train-args``: flags every ``qhil train`` accepts, checked now with train's own parser
    (and the SAC options they set with :class:`~qhil.agents.sac_config.SACConfig`)."""
    import shlex

    from .train import add_parser as add_train, sac_config

    class Raising(argparse.ArgumentParser):
        def error(self, message: str) -> Any:          # type: ignore[override]
            raise ValueError(f"qhil train {message}")

    root = Raising(prog="qhil", add_help=False)
    add_train(root.add_subparsers(dest="command"))
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split into flags ({exc})") from None
    given = [w.split("=", 1)[0] for w in words if w.startswith("--")]
    fixed = [f for f in given if f in _JOB_FLAGS]
    if fixed:
        raise ValueError(f"{', '.join(fixed)} set by reproduce itself; use its own options")
    ns = root.parse_args(["train", *words])
    sac_config(ns)                       # SAC values in range (e.g. --gamma 2 is refused)
    return text


#: ``qhil train`` flags each job sets (run identity, length, paths): not for --train-args.
_JOB_FLAGS = ("--env", "--regime", "--seed", "--run", "--run-dir", "--json", "--total-steps", "--config")


def _windows(text: str) -> str:
    parse_windows(text)
    return text


def add_parser(sub: argparse._SubParsersAction) -> None:
    A = args_mod
    s = sub.add_parser("reproduce", help="reproduce a table or figure of seed 000, or an extension (resumable)")
    s.add_argument("what", choices=["table1"] + MORE,
                   help="table1, table2 (robustness), tableS1 (T_0.9), figS1 (seed spread), "
                        "figS2 (reward weight), history (observation window), robust (domain randomisation), "
                        "transfer (Table 1's Env1 policies on Env1–3, no training)")
    s.add_argument("--jobs", type=A.int_in(1, MAX_JOBS), default=2,
                   help=f"training processes at a time, 1..{MAX_JOBS}")
    s.add_argument("--seeds", type=A.int_in(1, MAX_SEEDS), default=5, help=f"seeds 0..S-1, S in 1..{MAX_SEEDS}")
    s.add_argument("--envs", type=A.choice_list(ENVS, joined=True), default=",".join(ENVS))
    s.add_argument("--regimes", type=A.choice_list(REGIMES, joined=True), default=",".join(REGIMES))
    s.add_argument("--setup", choices=list(SETUPS), default="paper",
                   help="table1 (and tableS1, figS1, transfer, which read its runs): 'paper' or 'batched' "
                        "(see the module docstring)")
    s.add_argument("--total-steps", type=A.int_in(1, MAX_STEPS), default=None,
                   help="environment steps per run (resume with the same value; default: the set-up's)")
    s.add_argument("--config", type=A.checked(_sac_config_file, "SAC options file", "input_file"), default=None,
                   help="SAC options file (JSON/TOML) passed to every run")
    s.add_argument("--windows", type=A.checked(_windows, "windows"), default=None,
                   help="table1: window per regime (memory), e.g. 'energies=28,second_order=actions:28': "
                        "K (or observations:K) = the last K observations, actions:K = the current "
                        "observation and the last K actions; regimes not named see one step")
    s.add_argument("--train-args", type=A.checked(_train_args, "qhil train flags"), default=None,
                   help="extra flags for every `qhil train`, e.g. '--hidden 256,256' (after the set-up's)")
    s.add_argument("--work-dir", type=A.output_dir, default=None,
                   help="run store + checkpoints (default: the set-up's for table1, tableS1, figS1 — "
                        "runs/table1 or runs/table1_batched; runs/extended for the others)")
    s.add_argument("--out-dir", type=A.output_dir, default=None, help="default docs/results (paper set-up)")
    s.add_argument("--grape-dir", type=A.output_dir, default=None,
                   help="where the GRAPE ceilings grape_<env>.json are (default: the out dir)")
    s.add_argument("--report-only", action="store_true", help="only aggregate what has finished")
    from .paper_results import add_arguments
    add_arguments(s)
    s.set_defaults(func=run)


def _run_name(env: str, regime: str, seed: int) -> str:
    return f"{env}/{regime}/seed{seed}"


def _summary_path(work: Path, run: str) -> Path:
    return work / "summaries" / (run.replace("/", "_") + ".json")


def apply_setup(args: argparse.Namespace) -> None:
    """Fill the options left unset (None) from the ``--setup`` preset; ``--train-args``
    are appended to the preset's (a flag given twice: the later one counts)."""
    if args.setup != "paper" and args.what not in TABLE1_READERS:
        raise SystemExit(f"--setup {args.setup}: only for {', '.join(TABLE1_READERS)} (got {args.what})")
    preset = SETUPS[args.setup]
    if args.windows is not None and args.windows != preset["windows"] and args.work_dir is None:
        raise SystemExit("--windows other than the set-up's changes the runs: give them a --work-dir of their own")
    if args.train_args is not None:
        args.train_args = f"{preset['train_args']} {args.train_args}".strip()
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("out_dir", "grape_dir") + (() if args.report_only else ("work_dir",)):
        if getattr(args, key) is not None:              # the set-up's folders: usable before any work
            setattr(args, key, _usable_dir(key, getattr(args, key)))


def _usable_dir(name: str, path: Path) -> Path:
    """``path`` as a folder this command can write (created if needed), else a ValidationError."""
    from qhil.drivers import ValidationError
    try:
        return args_mod.output_dir(str(path))
    except argparse.ArgumentTypeError as exc:
        raise ValidationError("--" + name.replace("_", "-"), str(exc), "a writable folder") from None


def failed_message(failed: list[str], total: int, work: Path) -> str:
    """The line a command prints when some of its runs failed."""
    return (f"qhil: error: {len(failed)} of {total} run(s) failed (e.g. {failed[0]}); "
            f"see {work / 'logs'}; the table shows the finished runs only")


def run(args: argparse.Namespace) -> int:
    apply_setup(args)
    if args.what != "table1":
        from .paper_results import run_target
        return run_target(args)
    envs, regimes = args.envs.split(","), args.regimes.split(",")
    work, out = args.work_dir or Path("runs/table1"), args.out_dir
    if not args.report_only:
        work = _usable_dir("work_dir", work)                        # writable, before any run
    grape = args.grape_dir or out
    windows = parse_windows(args.windows)
    failed: list[str] = []
    n_jobs = 0
    if not args.report_only:
        jobs = [(_run_name(e, r, s), ["--env", e, "--regime", r, "--seed", str(s)]
                 + (windows[r].train_flags() if r in windows else []))
                for s in range(args.seeds) for e in envs for r in regimes]
        _refuse_other_memory(work, [name for name, _ in jobs], windows)
        n_jobs = len(jobs)
        failed = run_jobs(jobs, args, work)
        for env in envs:                 # ceilings last: training is the long part
            _ensure_grape(env, grape)
    if failed and not any(_summaries(envs, regimes, work, args.seeds, windows).values()):
        print(f"qhil: error: all {len(failed)} run(s) failed and none had finished before "
              f"(see {work / 'logs'}); no table written", file=sys.stderr)
        return 1
    rows = write_table(envs, regimes, work, out, args.seeds, grape, windows)
    print_table(rows)
    print_unfinished(work)
    write_figures(envs, regimes, work, out, grape, windows)
    if failed:
        print(failed_message(failed, n_jobs, work), file=sys.stderr)
        return 1
    return 0


class Window(NamedTuple):
    """A regime's memory (:class:`~qhil.envs.history.HistoryVectorEnv`): the last ``size``
    observations, or (``of="actions"``) the current observation and the last ``size`` actions."""
    size: int
    of: str = "observations"

    def train_flags(self) -> list[str]:
        """The ``qhil train`` flags (the observation kind is the default, so not spelled out)."""
        return ["--history", str(self.size)] + (["--history-of", self.of] if self.of != "observations" else [])

    def matches(self, config: dict[str, Any]) -> bool:
        """Whether a run's recorded config has this window."""
        return config.get("history") == self.size and config.get("history_of", "observations") == self.of


def same_memory(config: dict[str, Any], windows: dict[str, "Window"]) -> bool:
    """Whether a run's recorded config has the set-up's window for its regime (none if unnamed)."""
    w = windows.get(config.get("regime"))
    return w.matches(config) if w else config.get("history") is None


def _refuse_other_memory(work: Path, names: list[str], windows: dict[str, Window]) -> None:
    """Stop before any training if runs of these names were recorded with another window:
    they would be skipped as finished or resumed with the wrong inputs."""
    db = work / "runs.sqlite"
    if not db.exists():
        return
    from qhil.agents.runstore import RunStore
    store = RunStore(db)
    recorded = store.runs()
    store.close()
    other = [n for n in names if n in recorded and not same_memory(recorded[n]["config"], windows)]
    if other:
        raise SystemExit(f"{work} holds {len(other)} run(s) recorded with another --windows memory than this "
                         f"set-up's (e.g. {other[0]}): give these runs another --work-dir, or move those aside")


def parse_windows(text: str) -> dict[str, Window]:
    """``'energies=28,second_order=actions:28'`` → {regime: Window}; names, kinds and sizes
    checked (SystemExit with a message naming ``--windows``: exit status 1)."""
    out: dict[str, Window] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, spec = item.partition("=")
        if name not in REGIMES or name == "full_state":
            raise SystemExit(f"--windows: regime {name!r} must be one of energies, first_order, second_order")
        of, colon, k = spec.rpartition(":")
        if of not in ("observations", "actions") and (colon or of):
            raise SystemExit(f"--windows: window of {name} holds observations or actions, got {of!r}")
        if not (k.isascii() and k.isdecimal()) or not 1 <= int(k) <= 28:
            raise SystemExit(f"--windows: window of {name} must be an integer in [1, 28], got {k!r}")
        out[name] = Window(int(k), of or "observations")
    return out


def _ensure_grape(env: str, grape_dir: Path) -> None:
    """Compute the GRAPE ceiling of ``env`` into ``grape_dir`` if missing (a failure is reported,
    not raised: the table then shows no ceiling for that env)."""
    path = grape_dir / f"grape_{env}.json"
    if not path.exists():
        done = subprocess.run([sys.executable, "-m", "qhil.lab.cli", "grape", "--env", env, "--starts", "10",
                               "--out", str(path)])
        if done.returncode != 0:
            print(f"qhil: warning: GRAPE ceiling of {env} failed (exit {done.returncode}); "
                  "the table has no ceiling for it", file=sys.stderr)


def run_jobs(jobs: list[tuple[str, list[str]]], args: argparse.Namespace, work: Path) -> list[str]:
    """Run the unfinished jobs (run name, ``qhil train`` flags), ``args.jobs`` processes at a
    time; each resumes its checkpoint. ``--total-steps``, ``--config`` and ``--train-args``
    apply to every job. Returns the names of the jobs that failed (non-zero exit)."""
    from qhil.drivers import ValidationError
    if not (isinstance(args.jobs, int) and 1 <= args.jobs <= MAX_JOBS):
        raise ValidationError("--jobs", f"{args.jobs!r}", f"an integer in [1, {MAX_JOBS}]")
    pending = [j for j in jobs if not _summary_path(work, j[0]).exists()]
    failed: list[str] = []
    print(f"{args.what}: {len(jobs) - len(pending)} of {len(jobs)} runs already finished; "
          f"{len(pending)} to go, {args.jobs} at a time (work dir {work})", file=sys.stderr)
    running: list[tuple[subprocess.Popen, str, Any]] = []
    (work / "logs").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    while pending or running:
        while pending and len(running) < args.jobs:
            name, flags = pending.pop(0)
            cmd = [sys.executable, "-m", "qhil.lab.cli", "train", *flags, "--run", name,
                   "--total-steps", str(args.total_steps), "--run-dir", str(work),
                   "--no-progress", "--json", str(_summary_path(work, name))]
            if args.config is not None:
                cmd += ["--config", str(args.config)]
            cmd += args.train_args.split()
            log = open(work / "logs" / (name.replace("/", "_") + ".log"), "a")
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), name, log))
            print(f"[{time.time() - t0:7.0f} s] started {name}", file=sys.stderr)
        time.sleep(2.0)
        for p, name, log in list(running):
            if p.poll() is not None:
                running.remove((p, name, log))
                log.close()
                status = "finished" if p.returncode == 0 else f"FAILED (exit {p.returncode}, see logs)"
                if p.returncode != 0:
                    failed.append(name)
                print(f"[{time.time() - t0:7.0f} s] {status} {name}", file=sys.stderr)
    return failed


def _summaries(envs: list[str], regimes: list[str], work: Path, n_seeds: int,
               windows: dict[str, Window]) -> dict[tuple[str, str], list[dict]]:
    """(env, regime) → summaries of the finished runs of seeds < n_seeds with the set-up's window."""
    out: dict[tuple[str, str], list[dict]] = {}
    for env in envs:
        for regime in regimes:
            found = [json.loads(p.read_text()) for s in range(n_seeds)
                     if (p := _summary_path(work, _run_name(env, regime, s))).exists()]
            out[(env, regime)] = [r for r in found if same_memory(r["config"], windows)]
    return out


def t_half_width(x: list[float], level: float = 0.95) -> float:
    """Half-width of the Student-t confidence interval of the mean (NaN for one value)."""
    from scipy.stats import t
    n = len(x)
    if n < 2:
        return float("nan")
    return float(t.ppf(0.5 + level / 2, n - 1) * np.std(x, ddof=1) / math.sqrt(n))


def write_table(envs: list[str], regimes: list[str], work: Path, out: Path, n_seeds: int,
                grape_dir: Path, windows: dict[str, Window]) -> list[dict[str, Any]]:
    rows = []
    for (env, regime), runs in _summaries(envs, regimes, work, n_seeds, windows).items():
        best = [r["best_explored"]["ergotropy"] for r in runs]
        det = [r["deterministic"]["ergotropy"] for r in runs]
        g = grape_dir / f"grape_{env}.json"
        rows.append({"env": env, "regime": regime, "mean": float(np.mean(best)) if best else float("nan"),
                     "ci_half_width": t_half_width(best), "n_seeds": len(best),
                     "grape_ceiling": json.loads(g.read_text())["ergotropy"] if g.exists() else float("nan"),
                     "deterministic_mean": float(np.mean(det)) if det else float("nan")})
    with open(out / "table1.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'env':5} {'regime':13} {'best explored (ours)':>22} {'paper':>17} {'n':>2} "
          f"{'GRAPE':>7} {'%GRAPE':>7} {'deterministic':>13}")
    for r in rows:
        pm, pc = PAPER.get((r["env"], r["regime"]), (float("nan"), float("nan")))
        pct = 100 * r["mean"] / r["grape_ceiling"] if r["grape_ceiling"] == r["grape_ceiling"] else float("nan")
        print(f"{r['env']:5} {r['regime']:13} {r['mean']:10.4f} ± {r['ci_half_width']:<8.4f}  "
              f"{pm:7.4f} ± {pc:<6.4f} {r['n_seeds']:2d} {r['grape_ceiling']:7.4f} {pct:6.1f}% "
              f"{r['deterministic_mean']:13.4f}")


def print_unfinished(work: Path) -> None:
    """Runs still training (not in the table): steps so far and best explored ergotropy so far."""
    db = work / "runs.sqlite"
    if not db.exists():
        return
    from qhil.agents.runstore import RunStore
    store = RunStore(db)
    for name, v in sorted(store.runs().items()):
        if v["status"] != "done":
            ep = store.episodes(name)
            if ep["step"]:
                print(f"in progress: {name}: {ep['step'][-1]} of {v['config']['sac']['total_steps']} steps, "
                      f"best explored so far {ep['best'][-1]:.4f}")
    store.close()


def _ema(x: np.ndarray, g: float = 0.9) -> np.ndarray:
    """Ḡ_t = γ_G Ḡ_{t−1} + (1 − γ_G) G_t (seed 000, Sec. IV C), Ḡ_0 = G_0."""
    out = np.empty(len(x))
    acc = x[0] if len(x) else 0.0
    for i, v in enumerate(x):
        acc = g * acc + (1 - g) * v if i else v
        out[i] = acc
    return out


def runs_by_cell(runs: dict[str, dict[str, Any]], windows: dict[str, Window]) -> dict[tuple[str, str], list[str]]:
    """(env, regime) → names of the recorded runs (``RunStore.runs()``) with the set-up's window
    for their regime, sorted; cells without such runs are left out."""
    out: dict[tuple[str, str], list[str]] = {}
    for name, v in sorted(runs.items()):
        if same_memory(v["config"], windows):
            out.setdefault((v["config"].get("env"), v["config"].get("regime")), []).append(name)
    return out


def write_figures(envs: list[str], regimes: list[str], work: Path, out: Path, grape_dir: Path,
                  windows: dict[str, Window]) -> None:
    plt = pyplot()

    from qhil.agents.runstore import RunStore
    db = work / "runs.sqlite"
    if not db.exists():
        return
    store = RunStore(db)
    labels = {"full_state": r"$|\psi(t)\rangle$", "energies": r"$E_j$", "first_order": r"$E_j+\langle\sigma\rangle$",
              "second_order": r"$E_j+\langle\sigma\rangle+\langle\sigma\sigma\rangle$"}
    by_cell = runs_by_cell(store.runs(), windows)      # finished or still training: figures show progress
    # Fig. 1: EMA learning curves
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.8), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for regime in regimes:
            curves = [_ema(np.asarray(store.episodes(name)["ret"])) for name in by_cell.get((env, regime), [])]
            curves = [c for c in curves if len(c)]
            if not curves:
                continue
            # unfinished runs are shorter: each episode averages the runs that reached it
            c = np.full((len(curves), max(len(x) for x in curves)), np.nan)
            for i, x in enumerate(curves):
                c[i, :len(x)] = x
            m, s = np.nanmean(c, 0), np.nanstd(c, 0)
            ep = np.arange(c.shape[1])
            ax.plot(ep, m, label=f"{labels[regime]} ({len(curves)} runs)")
            ax.fill_between(ep, m - s, m + s, alpha=0.25)
        ax.set_title(env)
        ax.set_xlabel("episode")
        ax.set_ylabel("return (EMA, γ_G = 0.9)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fig1_learning_curves.png", dpi=120)
    plt.close(fig)
    # Fig. 2: best protocol per regime (Env1, or the first env) and its ergotropy trajectory
    env = "env1" if "env1" in envs else envs[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for regime in regimes:
        bests = [store.best(name) for name in by_cell.get((env, regime), [])]
        bests = [b for b in bests if b is not None]
        if not bests:
            continue
        b = max(bests, key=lambda x: x["ergotropy"])
        lam = np.asarray(b["protocol"])
        t = np.arange(len(lam) + 1) * 0.2
        axes[0].step(t, np.append(lam, lam[-1]), where="post", label=f"{labels[regime]}")
        axes[1].plot(t, b["trajectory"], marker=".", label=f"{labels[regime]}: {b['ergotropy']:.4f}")
    g = grape_dir / f"grape_{env}.json"
    if g.exists():
        gr = json.loads(g.read_text())
        lam = np.asarray(gr["protocol"])
        t = np.arange(len(lam) + 1) * gr["tau"] / gr["n_steps"]
        axes[0].step(t, np.append(lam, lam[-1]), where="post", color="k", ls="--", lw=1, label="GRAPE")
        axes[1].axhline(gr["ergotropy"], color="k", ls="--", lw=1, label=f"GRAPE {gr['ergotropy']:.4f}")
    axes[0].set_xlabel("t (1/ω_0)")
    axes[0].set_ylabel("λ(t) (ω_0)")
    axes[1].set_xlabel("t (1/ω_0)")
    axes[1].set_ylabel("ergotropy (ω_0)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{env}: best protocol per regime (best over seeds) and its ergotropy")
    fig.tight_layout()
    fig.savefig(out / "fig2_best_protocols.png", dpi=120)
    plt.close(fig)
    store.close()
