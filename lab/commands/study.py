"""``qhil study``: measurement-limited control of the Dicke battery (issue 7).

    nice -n 10 qhil study measurement --regimes second_order,zz --shots 10,100,exact \\
        --frequencies 1,2,final --total-steps 5000 --jobs 1          # start or resume
    qhil study measurement --report-only                            # table + Pareto figure
    qhil study tomography --shots 100,1000,10000 --reps 200         # ergotropy estimator
    qhil study open-closed --policy-regime second_order --reps 32   # GRAPE vs the SAC policy

Argument parsing only (the studies: :mod:`qhil.experiments.battery`). Options are checked when
parsed (exit 2 naming the option, before any training). A failed configuration is reported and
the others go on; ``measurement`` then exits 1, and also when none has finished (no table).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from qhil.experiments import run_specs
from qhil.experiments.battery import measurement as M
from qhil.experiments.battery import open_closed as OC
from qhil.experiments.battery import sim_to_real as S
from qhil.experiments.battery import tomography as T

from . import args as A
from .executor_options import add_executor_options, executor_from_args

OUT, WORK, ENVS = Path("docs/results/measurement"), Path("runs/measurement"), ["env1", "env2", "env3"]
#: ``study measurement`` options a ``--setup`` preset may fill: their values when neither sets them.
MEASUREMENT_DEFAULTS = {"total_steps": 5000, "seeds": 1, "work_dir": WORK, "out_dir": OUT}


def _items(check: Callable[[str], Any], name: str, one: bool = False) -> Callable[[str], str]:
    """A checked comma list (``one``: exactly one item)."""
    def parse(text: str) -> str:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items or (one and len(items) != 1):
            raise ValueError("expected one value" if one else "expected one or more values")
        for x in items:
            check(x)
        return ",".join(items)
    return A.checked(parse, name)


def _folders(p: argparse.ArgumentParser, work: bool = True) -> None:
    if work:
        p.add_argument("--work-dir", type=A.output_dir, default=WORK, help="run store and checkpoints")
    p.add_argument("--out-dir", type=A.output_dir, default=OUT, help="tables and figures")


def add_parser(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("study", help="measurement-limited control studies (issue 7)").add_subparsers(
        dest="study", required=True)
    regime, freq = (lambda x: M.study_observables(x, 4)), M.parse_frequency
    m = st.add_parser("measurement", help="ergotropy against measurement cost (SAC, resumable)")
    m.add_argument("--regimes", type=_items(regime, "regimes"), default="energies,first_order,second_order,zz",
                   help="regimes: energies, first_order, second_order, zz (E_j + all Z_iZ_j), custom:P1+P2+…")
    m.add_argument("--shots", type=A.shots_list(), default=[10, 100, 1000, None],
                   help="shots per setting, comma-separated ('exact' = expectation values)")
    m.add_argument("--frequencies", type=_items(freq, "frequencies"), default="1,2,final",
                   help="measure every step (1), every m-th (m), or 'final'")
    m.add_argument("--noise", type=A.checked(lambda t: (M.parse_noise(t), t)[1], "noise"), default=None,
                   help="Aer channels per step, e.g. depolarizing:0.01,bit_flip:0.005")
    m.add_argument("--reward", choices=["exact", "tomography_terminal"], default="exact")
    m.add_argument("--tomography-shots", type=A.shots(), default=1000, help="per setting, for tomography_terminal")
    m.add_argument("--env", choices=ENVS, default="env1")
    m.add_argument("--seeds", type=A.int_in(1, 100), default=None, help="seeds 0..S-1, S in 1..100 (default 1)")
    m.add_argument("--total-steps", type=A.int_in(28, 10_000_000), default=None,
                   help="SAC environment steps per configuration (≥ 28: one episode; default 5000)")
    m.add_argument("--n-eval", type=A.int_in(2, 100_000), default=32, help="evaluation episodes of the trained policy")
    m.add_argument("--hidden", type=A.ints(1, 65_536), default=None, help="SAC hidden sizes (default 512,256)")
    m.add_argument("--precision", choices=["fp32", "bf16", "auto"], default=None,
                   help="SAC update precision (auto: bf16 only where the CPU runs it natively and faster)")
    m.add_argument("--n-envs", type=A.int_in(1, 4096), default=None, help="batteries stepped together (batched)")
    m.add_argument("--updates-per-step", type=A.float_in(0.0, 64.0, low_open=True), default=None,
                   help="SAC gradient updates per environment step")
    m.add_argument("--learning-starts", type=A.int_in(0, 10_000_000), default=None,
                   help="random-action warm-up steps (default min(5000, total/5))")
    m.add_argument("--windows", type=A.checked(lambda t: (_windows(t), t)[1], "windows"), default=None,
                   help="memory per regime, e.g. energies=28,zz=28,second_order=actions:28")
    m.add_argument("--share-open-loop", action="store_true",
                   help="train final-only configurations (open loop) once per seed for all regimes and shots")
    m.add_argument("--priority", action="store_true",
                   help="run the open-loop and every-step configurations first (an interrupted study then "
                        "has whole points where they matter most)")
    m.add_argument("--setup", choices=sorted(M.SETUPS), default=None,
                   help="preset for the options left unset: " + "; ".join(f"{k}: {v['about']}" for k, v in M.SETUPS.items()))
    _folders(m)
    m.add_argument("--report-only", action="store_true", help="only the table/figure of finished runs")
    add_executor_options(m, jobs=1)
    m.set_defaults(func=run_measurement, **{k: None for k in MEASUREMENT_DEFAULTS})
    t = st.add_parser("tomography", help="bias and spread of the tomography ergotropy estimator")
    t.add_argument("--env", choices=ENVS, default="env1")
    t.add_argument("--shots", type=A.shots_list(), default=[100, 1000, 10000])
    t.add_argument("--reps", type=A.int_in(2, 1_000_000), default=200, help="tomographies per state and shots")
    t.add_argument("--steps", type=A.ints(1, 10_000, joined=True), default="7,14,21,28",
                   help="GRAPE protocol prefixes k (states after k steps)")
    t.add_argument("--seed", type=A.seed, default=0)
    _folders(t, work=False)
    t.set_defaults(func=run_tomography)
    r = st.add_parser("sim-to-real", help="which method charges a mismatched device best at equal shots (issue 14)")
    r.add_argument("--severities", type=_items(lambda x: x in S.SEVERITIES or _fail(x, S.SEVERITIES), "severities"),
                   default="mild,severe", help="device mismatch: " + "; ".join(
                       f"{k} = {', '.join(f'{a} {b:g}' for a, b in v.imperfections().items())}"
                       for k, v in S.SEVERITIES.items()))
    r.add_argument("--methods", type=_items(lambda x: x in S.METHODS or _fail(x, S.METHODS), "methods"),
                   default=",".join(S.METHODS), help="comma-separated: " + ", ".join(S.METHODS))
    r.add_argument("--seeds", type=A.int_in(1, 100), default=3, help="seeds 0..S-1")
    defaults = S.StudyOptions()
    for name, lo, hi, help_ in (("budget_shots", 1_000, 10**10, "shots each method may spend on the device"),
                                ("fom_shots", 1, 10**6, "shots of one optimiser evaluation (final energies)"),
                                ("reevaluate", 0, 100, "re-measurements of each new incumbent"),
                                ("deploy_shots", 1, 10**6, "shots per setting of a deployed policy's observations"),
                                ("deploy_episodes", 1, 1000, "episodes a deployed policy plays"),
                                ("train_steps", 28, 10**7, "simulator SAC training steps"),
                                ("residual_shots", 1, 10**6, "shots per setting of the residual SAC on the device"),
                                ("residual_every", 1, 28, "the residual SAC measures every m-th step")):
        r.add_argument("--" + name.replace("_", "-"), type=A.int_in(lo, hi), default=getattr(defaults, name),
                       help=f"{help_} (default {getattr(defaults, name)})")
    r.add_argument("--residual-scale", type=A.float_in(0.0, 0.6, low_open=True), default=defaults.residual_scale,
                   help=f"bound s (ω_0) of the residual correction (default {defaults.residual_scale})")
    r.add_argument("--work-dir", type=A.output_dir, default=Path("runs/sim_to_real"), help="run stores and checkpoints")
    r.add_argument("--out-dir", type=A.output_dir, default=Path("docs/results/sim_to_real"), help="table and figure")
    r.add_argument("--report-only", action="store_true", help="only the table/figure of finished runs")
    add_executor_options(r, jobs=1)
    r.set_defaults(func=run_sim_to_real)
    o = st.add_parser("open-closed", help="GRAPE (open loop) vs a trained SAC policy (closed loop)")
    o.add_argument("--policy-regime", type=_items(regime, "regime", one=True), default="second_order")
    o.add_argument("--policy-shots", type=A.shots(), default=None, help="the policy's training shots ('exact')")
    o.add_argument("--policy-frequency", type=_items(freq, "frequency", one=True), default="1")
    o.add_argument("--env", choices=ENVS, default="env1")
    o.add_argument("--total-steps", type=A.int_in(28, 10_000_000), default=5000, help="of the policy's configuration")
    o.add_argument("--seed", type=A.seed, default=0, help="of the policy's study configuration")
    o.add_argument("--levels", type=A.checked(OC.parse_levels, "levels"), default=None,
                   help="kind:level list, e.g. none:0,shots:100,depolarizing:0.01,drift:0.05 (default: a grid)")
    o.add_argument("--reps", type=A.int_in(2, 100_000), default=32)
    o.add_argument("--oracle", type=A.int_in(0, 1000), default=5,
                   help="drift rows: re-optimise GRAPE on this many drifted batteries (ω known; ~15 s each)")
    _folders(o)
    o.set_defaults(func=run_open_closed)


def _windows(text: str) -> dict[str, tuple[int, str]]:
    """``energies=28,second_order=actions:28`` → {regime: (size, of)} (ValueError naming the part)."""
    out: dict[str, tuple[int, str]] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, spec = item.partition("=")
        M.study_observables(name, 4)
        of, colon, k = spec.rpartition(":")
        if (of or colon) and of not in ("observations", "actions"):
            raise ValueError(f"the window of {name} holds observations or actions, not {of!r}")
        if not (k.isascii() and k.isdecimal() and 1 <= int(k) <= M.N_STEPS):
            raise ValueError(f"the window of {name} must be an integer in [1, {M.N_STEPS}], got {k!r}")
        out[name] = (int(k), of or "observations")
    return out


def run_measurement(args: argparse.Namespace) -> int:
    preset = M.SETUPS.get(args.setup or "", {})
    for key, value in {**MEASUREMENT_DEFAULTS, **preset}.items():   # the preset, then the defaults,
        if key != "about" and (getattr(args, key) is None or getattr(args, key) is False):   # unset: fill
            setattr(args, key, value)
    configs = M.study_grid(args.regimes.split(","), args.shots, args.frequencies.split(","), noise=args.noise,
                           reward=args.reward, tomography_shots=args.tomography_shots, env=args.env,
                           seeds=range(args.seeds), total_steps=args.total_steps, n_envs=args.n_envs or 1,
                           windows=_windows(args.windows or ""), share_open_loop=args.share_open_loop)
    if args.priority:
        configs = M.by_priority(configs)
    sac = {k: v for k, v in (("hidden", tuple(args.hidden) if args.hidden else None), ("precision", args.precision),
                             ("updates_per_step", args.updates_per_step),
                             ("learning_starts", args.learning_starts)) if v is not None}
    specs, executor = M.measurement_runs(configs, args.n_eval, sac), executor_from_args(args)   # all checked
    outcomes = [] if args.report_only else run_specs(specs, args.work_dir, executor)
    return _report(outcomes, lambda: M.write_report(args.work_dir, args.out_dir), args.work_dir)


def _report(outcomes: list, write: Callable[[], Any], work_dir: Path) -> int:
    """Say which runs failed, write the report of what finished; the exit status (1: a run
    failed, or nothing has finished, so no table)."""
    bad = [o for o in outcomes if o.status == "failed"]
    if bad:
        print(f"qhil: error: {len(bad)} of {len(outcomes)} run(s) failed, e.g. {bad[0].name}: {bad[0].error}",
              file=sys.stderr)
    if not write():
        print(f"qhil: error: no finished runs in {work_dir}; no table written", file=sys.stderr)
        return 1
    return 1 if bad else 0


def _fail(value: str, allowed: Any) -> bool:
    raise ValueError(f"unknown value {value!r} (allowed: {', '.join(allowed)})")


def run_sim_to_real(args: argparse.Namespace) -> int:
    from qhil.lab.device_backend import study_device
    names = ("budget_shots", "fom_shots", "reevaluate", "deploy_shots", "deploy_episodes", "train_steps",
             "residual_shots", "residual_every", "residual_scale")
    opts = S.StudyOptions(**{k: getattr(args, k) for k in names})
    sev, methods = args.severities.split(","), args.methods.split(",")
    S.study_specs(sev, methods, range(args.seeds), opts, study_device)          # checked before any run
    outcomes = [] if args.report_only else S.run_study(sev, methods, range(args.seeds), opts, study_device,
                                                       args.work_dir, executor_from_args(args))
    return _report(outcomes, lambda: S.write_report(args.work_dir, args.out_dir), args.work_dir)


def run_tomography(args: argparse.Namespace) -> int:
    T.write_report(T.tomography_rows(args.env, args.shots, args.reps, args.steps, args.seed), args.out_dir,
                   args.env, args.reps, args.seed)
    return 0


def run_open_closed(args: argparse.Namespace) -> int:
    cfg = M.StudyConfig(regime=args.policy_regime, shots=args.policy_shots, frequency=args.policy_frequency,
                        env=args.env, seed=args.seed, total_steps=args.total_steps)
    try:
        OC.run_open_closed(cfg, args.levels or OC.parse_levels(None), args.work_dir, args.out_dir, args.reps,
                           args.oracle)
    except OC.PolicyNotTrained as exc:
        print(f"qhil: error: {exc}", file=sys.stderr)
        return 1
    return 0
