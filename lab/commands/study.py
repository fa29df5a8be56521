"""``qhil study``: measurement-limited control of the Dicke battery (issue 7).

    nice -n 10 qhil study measurement --regimes second_order,zz --shots 10,100,exact \\
        --frequencies 1,2,final --total-steps 5000 --jobs 1          # start or resume
    qhil study measurement --report-only                            # table + Pareto figure
    qhil study tomography --shots 100,1000,10000 --reps 200         # ergotropy estimator
    qhil study open-closed --policy-regime second_order --reps 32   # GRAPE vs the SAC policy

``measurement`` trains SAC for each configuration (regime × shots per setting × measurement
frequency; ``--noise`` adds Aer channels, ``--reward tomography_terminal`` the hardware
reward), evaluates the deterministic policy (exact ℰ(τ) on the simulator) and writes
``measurement_study.csv/.md`` and ``pareto.png`` under ``--out-dir`` from EVERY finished
configuration in ``--work-dir`` (run the command several times to cover a sub-grid).
Finished configurations are skipped; unfinished ones resume from their checkpoints.
``tomography`` writes ``tomography_ergotropy.csv/.md/.png``; ``open-closed`` writes
``open_closed.csv/.md/.png`` (the closed-loop policy is a configuration of the study, trained
first if it is not finished).

Options are checked when parsed (a bad one exits 2 naming it, before any training). A
configuration that fails is reported and the others go on; ``measurement`` then exits 1, and
also when no configuration has finished (no table is written).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import pyplot

OUT = Path("docs/results/measurement")
WORK = Path("runs/measurement")


def _regimes(text: str) -> str:
    """``--regimes``: comma-separated study regimes (checked by name or Pauli labels)."""
    from qhil.agents.measurement_study import study_observables
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise ValueError("expected one or more regimes")
    for name in names:
        study_observables(name, 4)
    return ",".join(names)


def _regime(text: str) -> str:
    names = _regimes(text).split(",")
    if len(names) != 1:
        raise ValueError("expected one regime")
    return names[0]


def _frequencies(text: str) -> str:
    """``--frequencies``: comma-separated 'm' (every m-th step, 1..1000) or 'final'."""
    from qhil.agents.measurement_study import parse_frequency
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ValueError("expected one or more of 1, m (every m-th step) or 'final'")
    for x in items:
        parse_frequency(x)
    return ",".join(items)


def _frequency(text: str) -> str:
    items = _frequencies(text).split(",")
    if len(items) != 1:
        raise ValueError("expected one frequency")
    return items[0]


def _noise(text: str) -> str:
    from qhil.agents.measurement_study import parse_noise
    parse_noise(text)
    return text


def _levels_text(text: str) -> list[tuple[str, float]]:
    return _levels(text)


def _grape_file(env: str) -> dict[str, Any]:
    """The GRAPE protocol of ``env`` (``docs/results/grape_<env>.json``, from ``qhil grape``)."""
    from qhil.drivers import ValidationError
    path = Path("docs/results") / f"grape_{env}.json"
    try:
        g = json.loads(path.read_text())
        _ = g["protocol"], g["tau"], g["n_steps"]
        return g
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValidationError("env", f"no usable GRAPE protocol {path} ({exc})",
                              f"run `qhil grape --env {env} --out {path}` first") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    from . import args as A
    s = sub.add_parser("study", help="measurement-limited control studies (issue 7)")
    st = s.add_subparsers(dest="study", required=True)

    m = st.add_parser("measurement", help="ergotropy against measurement cost (SAC, resumable)")
    m.add_argument("--regimes", type=A.checked(_regimes, "regimes"), default="energies,first_order,second_order,zz",
                   help="regimes: energies, first_order, second_order, zz (E_j + all Z_iZ_j), custom:P1+P2+…")
    m.add_argument("--shots", type=A.shots_list(), default=[10, 100, 1000, None],
                   help="shots per setting, comma-separated ('exact' = expectation values)")
    m.add_argument("--frequencies", type=A.checked(_frequencies, "frequencies"), default="1,2,final",
                   help="measure every step (1), every m-th (m), or 'final'")
    m.add_argument("--noise", type=A.checked(_noise, "noise"), default=None,
                   help="Aer channels per step, e.g. depolarizing:0.01,bit_flip:0.005")
    m.add_argument("--reward", choices=["exact", "tomography_terminal"], default="exact")
    m.add_argument("--tomography-shots", type=A.shots(), default=1000, help="per setting, for tomography_terminal")
    m.add_argument("--env", choices=["env1", "env2", "env3"], default="env1")
    m.add_argument("--seeds", type=A.int_in(1, 100), default=1, help="seeds 0..S-1, S in 1..100")
    m.add_argument("--total-steps", type=A.int_in(28, 10_000_000), default=5000,
                   help="SAC environment steps per configuration (≥ 28: one episode)")
    m.add_argument("--n-eval", type=A.int_in(2, 100_000), default=32, help="evaluation episodes of the trained policy")
    m.add_argument("--jobs", type=A.int_in(1, 64), default=1, help="configurations trained at a time (processes)")
    m.add_argument("--hidden", type=A.ints(1, 65_536), default=None,
                   help="SAC hidden sizes, e.g. 256,256 (default 512,256)")
    m.add_argument("--precision", choices=["fp32", "bf16", "auto"], default=None,
                   help="SAC update precision (auto: bf16 only where the CPU runs it natively and faster)")
    m.add_argument("--work-dir", type=A.output_dir, default=WORK)
    m.add_argument("--out-dir", type=A.output_dir, default=OUT)
    m.add_argument("--report-only", action="store_true", help="only the table/figure of finished runs")
    m.set_defaults(func=run_measurement)

    t = st.add_parser("tomography", help="bias and spread of the tomography ergotropy estimator")
    t.add_argument("--env", choices=["env1", "env2", "env3"], default="env1")
    t.add_argument("--shots", type=A.shots_list(), default=[100, 1000, 10000])
    t.add_argument("--reps", type=A.int_in(2, 1_000_000), default=200,
                   help="independent tomographies per state and shots")
    t.add_argument("--steps", type=A.ints(1, 10_000, joined=True), default="7,14,21,28",
                   help="GRAPE protocol prefixes k (states after k steps)")
    t.add_argument("--seed", type=A.seed, default=0)
    t.add_argument("--out-dir", type=A.output_dir, default=OUT)
    t.set_defaults(func=run_tomography)

    o = st.add_parser("open-closed", help="GRAPE (open loop) vs a trained SAC policy (closed loop)")
    o.add_argument("--policy-regime", type=A.checked(_regime, "regime"), default="second_order")
    o.add_argument("--policy-shots", type=A.shots(), default=None, help="the policy's training shots ('exact')")
    o.add_argument("--policy-frequency", type=A.checked(_frequency, "frequency"), default="1")
    o.add_argument("--env", choices=["env1", "env2", "env3"], default="env1")
    o.add_argument("--total-steps", type=A.int_in(28, 10_000_000), default=5000,
                   help="of the policy's study configuration")
    o.add_argument("--seed", type=A.seed, default=0, help="of the policy's study configuration")
    o.add_argument("--levels", type=A.checked(_levels_text, "levels"), default=None,
                   help="kind:level list, e.g. none:0,shots:100,depolarizing:0.01,drift:0.05 (default: a grid)")
    o.add_argument("--reps", type=A.int_in(2, 100_000), default=32)
    o.add_argument("--oracle", type=A.int_in(0, 1000), default=5,
                   help="drift rows: re-optimise GRAPE on this many drifted batteries (ω known; ~15 s each)")
    o.add_argument("--work-dir", type=A.output_dir, default=WORK)
    o.add_argument("--out-dir", type=A.output_dir, default=OUT)
    o.set_defaults(func=run_open_closed)


# -- measurement ------------------------------------------------------------------------------
def run_measurement(args: argparse.Namespace) -> int:
    from qhil.agents.measurement_study import (finished_runs, run_study, sac_config_for, study_grid,
                                               study_rows)
    from qhil.drivers import ValidationError
    for name, v, lo in (("seeds", args.seeds, 1), ("total-steps", args.total_steps, 28), ("n-eval", args.n_eval, 2),
                        ("jobs", args.jobs, 1)):
        if v < lo:
            raise ValidationError(name, f"{v}", f"≥ {lo}")
    configs = study_grid(args.regimes.split(","), args.shots, args.frequencies.split(","), noise=args.noise,
                         reward=args.reward, tomography_shots=args.tomography_shots, env=args.env,
                         seeds=range(args.seeds), total_steps=args.total_steps)
    sac: dict[str, Any] = {}
    if args.hidden:
        sac["hidden"] = tuple(args.hidden)
    if args.precision:
        sac["precision"] = args.precision
    sac_config_for(configs[0], **sac)                 # the SAC options, checked before any run
    failures: list[tuple[str, str]] = []
    if not args.report_only:
        run_study(configs, args.work_dir, jobs=args.jobs, n_eval=args.n_eval, sac=sac or None,
                  log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True),
                  failures=failures)
    rows = study_rows(list(finished_runs(args.work_dir).values()))
    if failures:
        print(f"qhil: error: {len(failures)} of {len(configs)} configuration(s) failed, e.g. {failures[0][0]}: "
              f"{failures[0][1]}", file=sys.stderr)
    if not rows:
        print(f"qhil: error: no finished configurations in {args.work_dir}; no table written", file=sys.stderr)
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(args.out_dir / "measurement_study.csv", rows)
    cols = ["regime", "shots", "frequency", "noise", "reward", "train_steps", "eval_mean", "eval_ci95",
            "best_explored", "settings", "measured_steps", "shots_per_episode", "played_steps_per_episode",
            "train_total_shots"]
    _write_md(args.out_dir / "measurement_study.md", rows, cols,
              "Measurement-limited SAC: terminal ergotropy (exact, simulator) against measurement cost per episode",
              _scale_note(rows))
    write_pareto(rows, args.out_dir / "pareto.png")
    _print(rows, cols)
    return 1 if failures else 0


def _scale_note(rows: list[dict]) -> str:
    steps = sorted({r["train_steps"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    return (f"Scale: {len(rows)} configurations, SAC trained {', '.join(map(str, steps))} environment steps each "
            f"(the paper uses 100k), seed(s) {', '.join(map(str, seeds))}; `eval_mean` ± `eval_ci95`: the "
            f"deterministic policy's exact terminal ergotropy over `n_eval` episodes with fresh shot noise in its "
            f"observations (95% Student-t); `best_explored`: best exact terminal ergotropy of any training episode. "
            f"Costs are per episode on hardware: `shots_per_episode` = measured steps × settings × shots (+ 81 × "
            f"tomography shots for the tomography reward), `played_steps_per_episode` = control steps played "
            f"including prefix replays (Σ_k k · settings · shots). Exact configurations (shots 'exact') count 0 shots: "
            f"they are the infinite-shot limit. GRAPE (open loop, no measurement): 4.2716 on Env1.")


def write_pareto(rows: list[dict], path: Path) -> None:
    """Ergotropy against shots and against played steps per episode, Pareto front of the shot runs."""
    plt = pyplot()
    import numpy as np

    from qhil.agents.measurement_study import pareto_front
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    markers = {"1": "o", "2": "s", "final": "^"}
    regimes = sorted({r["regime"] for r in rows})
    colors = {g: plt.cm.tab10(i) for i, g in enumerate(regimes)}
    for ax, key, label in ((axes[0], "shots_per_episode", "shots per episode"),
                           (axes[1], "played_steps_per_episode", "control steps played per episode (prefix replays)")):
        finite = [r for r in rows if r["shots"] != "exact"]
        for r in finite:
            ax.errorbar(r[key], r["eval_mean"], yerr=r["eval_ci95"] if r["eval_ci95"] == r["eval_ci95"] else 0,
                        marker=markers.get(str(r["frequency"]), "D"), color=colors[r["regime"]], ms=6, ls="none",
                        mfc="none" if r["reward"] != "exact" or r["noise"] != "none" else None, alpha=0.85)
        if finite:
            front = pareto_front([r[key] for r in finite], [r["eval_mean"] for r in finite])
            ax.plot([finite[i][key] for i in front], [finite[i]["eval_mean"] for i in front], "k-", lw=1,
                    marker="o", ms=13, mfc="none", label="Pareto front (shot runs)")
        for r in rows:
            if r["shots"] == "exact":
                ax.axhline(r["eval_mean"], color=colors[r["regime"]], lw=0.8,
                           ls={"1": "--", "2": "-.", "final": ":"}.get(str(r["frequency"]), "--"), alpha=0.7)
        ax.axhline(4.2716, color="k", lw=1.2, ls=":", label="GRAPE open loop 4.2716 (no measurement)")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("terminal ergotropy ℰ(τ) (ω_0), exact")
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=colors[g], marker="o", ls="none", label=g) for g in regimes]
    handles += [Line2D([], [], color="gray", marker=m, ls="none", label=f"measure every {f}" if f != "final"
                       else "final only") for f, m in markers.items()]
    handles += [Line2D([], [], color="gray", ls="--", label="exact expectation values (∞ shots)"),
                Line2D([], [], color="k", ls="-", marker="o", ms=9, mfc="none", label="Pareto front (shot runs)"),
                Line2D([], [], color="k", ls=":", label="GRAPE 4.2716"),
                Line2D([], [], color="gray", marker="o", mfc="none", ls="none", label="tomography reward / noise")]
    fig.legend(handles=handles, fontsize=7, loc="center right")
    steps = sorted({r["train_steps"] for r in rows})
    fig.suptitle(f"Measurement-limited SAC on {len(rows)} configurations ({'/'.join(map(str, steps))} training steps, "
                 "one seed): deterministic policy, mean ± 95% CI", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    _ = np


# -- tomography -------------------------------------------------------------------------------
def run_tomography(args: argparse.Namespace) -> int:
    import numpy as np

    from qhil.drivers import ValidationError, create_backend
    from qhil.envs import DickeBattery, ENVIRONMENTS
    from qhil.envs.measurement import tomography_ergotropy_stats
    if args.reps < 2:
        raise ValidationError("reps", f"{args.reps}", "≥ 2")
    g = _grape_file(args.env)
    lam, dt = np.asarray(g["protocol"]), g["tau"] / g["n_steps"]
    try:
        ks = [int(k) for k in args.steps.split(",")]
    except ValueError:
        raise ValidationError("steps", f"{args.steps!r}", f"comma-separated integers in 1..{len(lam)}") from None
    if not all(1 <= k <= len(lam) for k in ks):
        raise ValidationError("steps", f"{ks}", f"integers in 1..{len(lam)}")
    battery, backend = DickeBattery(omegas=ENVIRONMENTS[args.env]), create_backend("statevector")
    states = [(f"GRAPE k={k}", lam[:k]) for k in ks] + [("constant λ=0.3, k=28", np.full(len(lam), 0.3))]
    rows = []
    for name, prot in states:
        for shots in args.shots:
            for physical in (True, False):
                st = tomography_ergotropy_stats(battery, backend, prot, dt, shots, n_rep=args.reps,
                                                seed=args.seed, physical=physical)
                rows.append({"state": name, "k": len(prot), "estimator": "projected" if physical else "linear_inversion",
                             "shots_per_setting": "exact" if shots is None else shots, "exact": st["exact"],
                             "mean": st["mean"], "bias": st["bias"], "std": st["std"], "stderr": st["stderr"],
                             "bias_over_stderr": st["bias_over_stderr"], "rmse": st["rmse"], "n_rep": st["n_rep"],
                             "settings": st["cost"]["settings"], "total_shots": st["cost"]["total_shots"],
                             "played_steps": st["cost"]["played_steps"]})
                print(f"{name:22} {rows[-1]['estimator']:17} shots {rows[-1]['shots_per_setting']!s:>6}: exact "
                      f"{st['exact']:.4f} mean {st['mean']:.4f} bias {st['bias']:+.4f} std {st['std']:.4f} "
                      f"(bias/SE {st['bias_over_stderr']:+.1f})", file=sys.stderr, flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(args.out_dir / "tomography_ergotropy.csv", rows)
    _write_md(args.out_dir / "tomography_ergotropy.md", rows,
              ["state", "estimator", "shots_per_setting", "exact", "mean", "bias", "std", "bias_over_stderr", "rmse",
               "total_shots", "played_steps"],
              "Ergotropy from local-basis tomography of the 4 qubits (81 settings): bias and spread",
              f"{args.reps} independent tomographies per row (statevector simulator, {args.env}), seed {args.seed}. "
              "`projected`: linear inversion then projection onto the physical states (qhil.drivers.tomography); "
              "`linear_inversion`: ρ_LI itself (may be unphysical). `std`: spread of ONE estimate; `bias_over_stderr`: "
              "bias in units of the standard error of the mean. `total_shots`, `played_steps`: hardware cost of ONE "
              "estimate (81 settings × shots; × k replayed steps).")
    _plot_tomography(rows, args.out_dir / "tomography_ergotropy.png")
    return 0


def _plot_tomography(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for est, ls in (("projected", "-"), ("linear_inversion", "--")):
        for i, state in enumerate(dict.fromkeys(r["state"] for r in rows)):
            rs = [r for r in rows if r["state"] == state and r["estimator"] == est and r["shots_per_setting"] != "exact"]
            if not rs:
                continue
            x = [r["shots_per_setting"] for r in rs]
            c = plt.cm.tab10(i)
            axes[0].plot(x, [r["bias"] for r in rs], ls=ls, marker="o", color=c, label=f"{state} ({est})")
            axes[1].plot(x, [r["std"] for r in rs], ls=ls, marker="o", color=c)
    for ax, lab in zip(axes, ("bias  E[ℰ̂] − ℰ  (ω_0)", "std of one estimate (ω_0)")):
        ax.set_xscale("log")
        ax.set_xlabel("shots per setting (81 settings)")
        ax.set_ylabel(lab)
        ax.axhline(0, color="k", lw=0.6)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=6)
    fig.suptitle("Tomography ergotropy estimator: solid = projected (physical), dashed = linear inversion")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- open vs closed loop ----------------------------------------------------------------------
def _levels(text: str | None) -> list[tuple[str, float]]:
    from qhil.agents.open_closed import DEFAULT_LEVELS, PERTURBATIONS, check_perturbation
    from qhil.drivers import ValidationError
    if not text:
        return list(DEFAULT_LEVELS)
    out = []
    for item in text.split(","):
        kind, _, lvl = item.partition(":")
        if kind not in PERTURBATIONS:
            raise ValidationError("levels", f"unknown perturbation {kind!r}", ", ".join(PERTURBATIONS))
        try:
            out.append((kind, float(lvl or 0)))
        except ValueError:
            raise ValidationError("levels", f"{item!r}", "kind:level, e.g. drift:0.05") from None
        check_perturbation(*out[-1])
    return out


def run_open_closed(args: argparse.Namespace) -> int:
    from qhil.agents.measurement_study import StudyConfig, load_policy, run_config
    from qhil.agents.open_closed import compare
    from qhil.drivers import ValidationError
    if args.reps < 2:
        raise ValidationError("reps", f"{args.reps}", "≥ 2")
    levels = args.levels if isinstance(args.levels, list) else _levels(args.levels)
    cfg = StudyConfig(regime=args.policy_regime, shots=args.policy_shots, frequency=args.policy_frequency,
                      env=args.env, seed=args.seed, total_steps=args.total_steps)
    g = _grape_file(args.env)                         # before training: it is needed after
    summary = run_config(cfg, args.work_dir)          # trains it first if the study has not
    agent = load_policy(cfg, args.work_dir)
    rows = compare(agent, cfg, g["protocol"], levels, n_rep=args.reps, seed=0, dt=g["tau"] / g["n_steps"],
                   n_oracle=args.oracle)
    for r in rows:
        r["policy"] = cfg.name
        print(f"{r['perturbation']:12} {r['level']:>8g}: open {r['open_mean']:.4f} ± {r['open_ci95']:.4f}   closed "
              f"{r['closed_mean']:.4f} ± {r['closed_ci95']:.4f}   closed − open {r['closed_minus_open']:+.4f} ± "
              f"{r['diff_ci95']:.4f}", file=sys.stderr, flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(args.out_dir / "open_closed.csv", rows)
    _write_md(args.out_dir / "open_closed.md", rows,
              ["perturbation", "level", "open_mean", "open_ci95", "closed_mean", "closed_ci95", "closed_minus_open",
               "diff_ci95", "n_rep", "oracle_gain", "oracle_gain_ci95", "n_oracle"],
              "Open loop (GRAPE) against closed loop (SAC) under perturbations: exact terminal ergotropy",
              f"Open loop: the GRAPE protocol of docs/results/grape_{args.env}.json. Closed loop: the deterministic "
              f"SAC policy of study configuration `{cfg.name}` (trained {summary['steps']} steps; nominal "
              f"evaluation {summary['eval_mean']:.4f}). {args.reps} repetitions per row, mean ± 95% Student-t; the "
              "difference is paired (same drift draws). shots: the policy's observations per setting (the open loop "
              "measures nothing); depolarizing: Aer channel, probability per step and qubit; drift: ω_j → "
              "ω_j(1 + level·ξ_j), ξ_j ~ N(0,1) per repetition, ergotropy of the drifted battery. `oracle_gain`: "
              "GRAPE re-optimised on the drifted battery (its ω_j known) minus the nominal GRAPE protocol, paired, on "
              "the first `n_oracle` draws: the most that any feedback or recalibration could add.")
    _plot_open_closed(rows, args.out_dir / "open_closed.png")
    return 0


def _plot_open_closed(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    kinds = list(dict.fromkeys(r["perturbation"] for r in rows if r["perturbation"] != "none"))
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(4.2 * max(1, len(kinds)), 3.8), squeeze=False)
    nominal = [r for r in rows if r["perturbation"] == "none"]
    for ax, kind in zip(axes[0], kinds):
        rs = [r for r in rows if r["perturbation"] == kind]
        x = list(range(len(rs)))
        ax.errorbar(x, [r["open_mean"] for r in rs], [r["open_ci95"] for r in rs], marker="s", capsize=3,
                    label="open loop (GRAPE)")
        ax.errorbar(x, [r["closed_mean"] for r in rs], [r["closed_ci95"] for r in rs], marker="o", capsize=3,
                    label="closed loop (SAC)")
        for r in nominal:
            ax.axhline(r["open_mean"], color="C0", lw=0.6, ls=":")
            ax.axhline(r["closed_mean"], color="C1", lw=0.6, ls=":")
        ax.set_xticks(x, [f"{r['level']:g}" for r in rs])
        ax.set_xlabel({"shots": "shots per setting", "depolarizing": "depolarizing p per step",
                       "drift": "relative ω_j drift σ"}.get(kind, kind))
        ax.set_ylabel("terminal ergotropy ℰ(τ) (ω_0)")
        ax.set_title(kind)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- output helpers ---------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if v != v else (f"{v:.4f}" if abs(v) < 1e5 else f"{v:.3g}")
    return str(v)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def _write_md(path: Path, rows: list[dict], cols: Sequence[str], title: str, note: str) -> None:
    lines = [f"# {title}", "", note, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _print(rows: list[dict], cols: Sequence[str]) -> None:
    print("  ".join(cols))
    for r in rows:
        print("  ".join(_fmt(r[c]) for c in cols))
