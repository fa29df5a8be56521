"""``qhil reproduce``: seed 000's tables and figures and their Sec. V extensions, resumable
(the work: :mod:`qhil.experiments.battery.reproduce`).

    nice -n 10 qhil reproduce table1 --jobs 2                    # start or resume
    qhil reproduce table1 --report-only                         # tables/figures so far
    nice -n 10 qhil reproduce table1 --setup batched             # 8 batteries per step, memory windows
    nice -n 10 qhil reproduce table2 --seeds 5                  # Env1, selected across Env1–3
    qhil reproduce tableS1 | figS1 | transfer                   # from the Table 1 runs, no training
    nice -n 10 qhil reproduce figS2 | history | robust          # reward weight, windows, randomisation
    qhil reproduce table1 --executor ray --address auto         # the runs on a Ray cluster

Runs execute through :func:`qhil.experiments.run_specs`; the run store (``<work-dir>/runs.sqlite``)
records which are finished, and the same command resumes the others. ``--setup`` presets fill the
options left unset; ``--train-args`` (``qhil train`` flags, after the preset's) set fields of every
run. A bad option exits 2 naming it, before any run; exit 1 when a run failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path
from typing import Any

from . import args as A
from .executor_options import add_executor_options, executor_from_args

_JOB_FLAGS = ("--env", "--regime", "--seed", "--run", "--run-dir", "--json", "--total-steps", "--config")


def _train_args(text: str) -> str:
    """``--train-args``: flags of ``qhil train``, checked now with its parser (ValueError)."""
    from .train import train_fields
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split into flags ({exc})") from None
    fixed = [f for w in words if (f := w.split("=", 1)[0]) in _JOB_FLAGS]
    if fixed:
        raise ValueError(f"{', '.join(fixed)} set by reproduce itself; use its own options")
    train_fields(words)
    return text


def _sac_file(text: str) -> Path:
    from qhil.agents.sac_config import SACConfig
    SACConfig.from_file(path := A.input_file(text))          # raises ValidationError naming the option
    return path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from qhil.experiments.battery.options import SETUPS, TARGETS, check_weights
    from qhil.experiments.battery.records import ENVS, REGIMES, parse_windows
    s = sub.add_parser("reproduce", help="reproduce a table or figure of seed 000, or an extension (resumable)")
    s.add_argument("what", choices=TARGETS, help="table1, table2 (robustness), tableS1 (T_0.9), figS1 (seed spread), "
                   "figS2 (reward weight), history (observation window), robust (domain randomisation), "
                   "transfer (Table 1's Env1 policies on Env1–3, no training)")
    add_executor_options(s, jobs=2)
    s.add_argument("--seeds", type=A.int_in(1, 100), default=5, help="seeds 0..S-1, S in 1..100")
    s.add_argument("--envs", type=A.choice_list(ENVS, joined=True), default=",".join(ENVS))
    s.add_argument("--regimes", type=A.choice_list(REGIMES, joined=True), default=",".join(REGIMES))
    s.add_argument("--setup", choices=list(SETUPS), default="paper", help="table1 (and tableS1, figS1, transfer): "
                   "'paper' (30,000 steps, one battery) or 'batched' (8 batteries, memory windows, 56,000 steps)")
    s.add_argument("--total-steps", type=A.int_in(1, 10**8), default=None,
                   help="environment steps per run (resume with the same value; default: the set-up's)")
    s.add_argument("--config", type=A.checked(_sac_file, "SAC options file", "input_file"), default=None,
                   help="SAC options file (JSON/TOML) for every run")
    s.add_argument("--windows", type=A.checked(lambda t: (parse_windows(t), t)[1], "windows"), default=None,
                   help="table1: memory per regime, e.g. 'energies=28,second_order=actions:28' (K or "
                        "observations:K = the last K observations; actions:K = the observation and the last K actions)")
    s.add_argument("--train-args", type=A.checked(_train_args, "qhil train flags"), default=None,
                   help="qhil train flags for every run, e.g. '--hidden 256,256' (after the set-up's)")
    s.add_argument("--work-dir", type=A.output_dir, default=None, help="run store + checkpoints (default: the "
                   "set-up's, runs/table1 or runs/table1_batched; runs/extended for table2, figS2, history, robust)")
    s.add_argument("--out-dir", type=A.output_dir, default=None, help="default docs/results (paper set-up)")
    s.add_argument("--grape-dir", type=A.output_dir, default=None, help="GRAPE ceilings (default: the out dir)")
    s.add_argument("--report-only", action="store_true", help="only aggregate what has finished")
    s.add_argument("--eval-every", type=A.int_in(1, 1_000_000), default=20, help="episodes between cross-env evaluations")
    s.add_argument("--test-random", type=A.int_in(0, 10_000), default=32,
                   help="held-out realisations scored at the end (robust, table2, transfer)")
    s.add_argument("--weights", type=A.checked(check_weights, "weights"), default="scheduled,0.5,0",
                   help="figS2: reward weights (scheduled or w in [0, 1])")
    s.add_argument("--history-window", type=A.int_in(1, 64), default=28, help="history: window, 1..64")
    s.add_argument("--history-regime", choices=["energies", "first_order", "second_order"], default="energies")
    s.add_argument("--omega-range", type=A.floats(0.0, 100.0, low_open=True, length=2, increasing=True, joined=True),
                   default="0.5,1.5", help="robust: ω_j ~ U[lo, hi] every episode, 0 < lo < hi ≤ 100")
    s.add_argument("--eval-random", type=A.int_in(1, 10_000), default=8, help="robust: validation realisations, ≥ 1")
    s.add_argument("--robust-history", type=A.int_in(0, 64), default=0, help="robust: also with a window (0: no)")
    s.set_defaults(func=run)


def apply_setup(args: argparse.Namespace) -> None:
    """Fill the options left unset from the ``--setup`` preset; ``--train-args`` are appended to
    the preset's (a flag given twice: the later one counts)."""
    from qhil.experiments.battery.options import SETUPS, TABLE1_READERS
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


def options(args: argparse.Namespace) -> Any:
    """The :class:`ReproduceOptions` of the parsed (and set-up filled) arguments."""
    from qhil.experiments.battery.options import TRAINING, ReproduceOptions

    from .train import train_fields
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(ReproduceOptions) if hasattr(args, f.name)}
    kw |= {"envs": tuple(args.envs.split(",")), "regimes": tuple(args.regimes.split(",")),
           "weights": tuple(args.weights.split(",")), "train_fields": train_fields(shlex.split(args.train_args)),
           "omega_range": tuple(float(x) for x in args.omega_range.split(","))}
    opts = ReproduceOptions(**kw)
    dirs = {k: _usable_dir(k, getattr(opts, k)) for k in ("out_dir", "grape_dir") if getattr(opts, k) is not None}
    if not opts.report_only and (opts.work_dir is not None or opts.what in TRAINING):
        dirs["work_dir"] = _usable_dir("work_dir", opts.work)        # writable, before any run
    return dataclasses.replace(opts, **dirs)


def _usable_dir(name: str, path: Path) -> Path:
    """``path`` as a folder this command can write (created if needed), else a ValidationError."""
    from qhil.drivers import ValidationError
    try:
        return A.output_dir(str(path))
    except argparse.ArgumentTypeError as exc:
        raise ValidationError("--" + name.replace("_", "-"), str(exc), "a writable folder") from None


def run(args: argparse.Namespace) -> int:
    from qhil.experiments.battery.reproduce import reproduce
    apply_setup(args)
    opts = options(args)
    return reproduce(opts, None if opts.report_only and args.executor == "ray" else executor_from_args(args))
