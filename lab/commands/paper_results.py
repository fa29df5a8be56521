"""``qhil reproduce table2|tableS1|figS1|figS2|history|robust|transfer``: the rest of seed 000 and its
Sec. V extensions, on the job runner and run store of :mod:`.reproduce`.

    nice -n 10 qhil reproduce table2 --seeds 5                 # train on Env1, select across Env1–3
    qhil reproduce tableS1                                     # T_0.9 from the Table 1 runs (no training)
    qhil reproduce figS1                                       # seed spread of the Table 1 runs
    qhil reproduce transfer --setup batched                    # Table 2 from the Table 1 Env1 policies
    nice -n 10 qhil reproduce figS2 --seeds 5                  # scheduled w vs w = 0.5 vs w = 0
    nice -n 10 qhil reproduce history --history-window 28      # E_j only, with vs without history
    nice -n 10 qhil reproduce robust --omega-range 0.5,1.5     # domain-randomised training
    nice -n 10 qhil reproduce robust --robust-history 8        # …and with an observation window
    qhil reproduce <target> --report-only                      # tables and figures from what finished

Runs for table2, figS2, history and robust share ``runs/extended`` (one run store): each is
a ``qhil train`` on Env1 evaluated every ``--eval-every`` episodes on Env1–Env3
(deterministic policy) with the policy of best mean kept (the paper's Table 2 protocol), and
that policy is also scored on ``--test-random`` held-out disorder realisations U[0.5, 1.5]^4.
Run names: ``env1/<regime>/seed<s>`` (scheduled w: Table 2, Fig. S2's scheduled curve, the
history baseline and reference), ``env1/second_order/w<w>/seed<s>`` (Fig. S2),
``env1/<regime>/hist<K>/seed<s>`` (history), ``env1/second_order/dr<lo>-<hi>[/hist<K>]/seed<s>``
(robust: selected on ``--eval-random`` validation realisations, never on Env1–3).

Outputs in ``--out-dir`` (default docs/results): ``table2.csv`` + ``table2_robustness.png``,
``tableS1.csv`` + ``tableS1_best_so_far.png``, ``figS1.csv`` + ``figS1_seed_distributions.png``,
``figS2.csv`` + ``figS2_reward_weight.png``, ``history.csv`` + ``history.png``,
``robust.csv`` + ``robust.png``. Every table prints ours beside the paper's values and the
scale run (steps, seeds).

``transfer`` trains nothing: it scores the *final* policies of the finished Table 1 Env1 runs
(deterministic, no checkpoint selection, so stricter than Table 2's protocol) on Env1–Env3
and the ``--test-random`` held-out realisations: ``transfer.csv`` (mean ± 95% CI over seeds),
``transfer_seeds.csv`` (per run) and ``transfer.png``, in the set-up's out dir.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import pyplot
from .reproduce import (ENVS, PAPER, Window, _ema, _summary_path, parse_windows, run_jobs, runs_by_cell,
                        t_half_width)

#: Seed 000, Table 2 (trained on Env1, checkpoint by mean over Env1–3): (mean, CI half-width).
PAPER_TABLE2 = {
    ("full_state", "env1"): (4.0024, 0.0246), ("full_state", "env2"): (2.6178, 0.1222),
    ("full_state", "env3"): (3.1248, 0.0905),
    ("energies", "env1"): (3.4844, 0.3115), ("energies", "env2"): (0.9452, 0.6414),
    ("energies", "env3"): (1.9187, 0.7559),
    ("first_order", "env1"): (3.6658, 0.1750), ("first_order", "env2"): (0.9623, 0.6043),
    ("first_order", "env3"): (2.2375, 0.7476),
    ("second_order", "env1"): (3.8776, 0.0537), ("second_order", "env2"): (1.7048, 0.8825),
    ("second_order", "env3"): (2.7069, 0.2357),
}
#: Seed 000, Table S1: T_0.9 in episodes, (mean, CI half-width).
PAPER_S1 = {
    ("env1", "full_state"): (948.8, 166.6), ("env2", "full_state"): (1474.8, 374.0),
    ("env3", "full_state"): (3209.2, 190.8),
    ("env1", "energies"): (1744.0, 390.8), ("env2", "energies"): (1631.8, 418.5),
    ("env3", "energies"): (3436.2, 689.0),
    ("env1", "first_order"): (2039.8, 499.0), ("env2", "first_order"): (1700.6, 276.1),
    ("env3", "first_order"): (3653.4, 1185.5),
    ("env1", "second_order"): (1921.4, 326.0), ("env2", "second_order"): (2097.0, 610.6),
    ("env3", "second_order"): (4350.4, 2530.3),
}
LABELS = {"full_state": "|ψ(t)⟩", "energies": "E_j", "first_order": "E_j+⟨σ⟩",
          "second_order": "E_j+⟨σ⟩+⟨σσ⟩"}


def _weights(text: str) -> str:
    """figS2 ``--weights``: comma-separated ``scheduled`` or fixed w in [0, 1]; the normalised text."""
    import math
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ValueError("expected one or more of 'scheduled' or w in [0, 1]")
    for x in items:
        if x == "scheduled":
            continue
        try:
            w = float(x)
        except ValueError:
            raise ValueError(f"{x!r} is neither 'scheduled' nor a number in [0, 1]") from None
        if not (math.isfinite(w) and 0.0 <= w <= 1.0):
            raise ValueError(f"w = {x} is outside [0, 1]")
    return ",".join(items)


def add_arguments(s: argparse.ArgumentParser) -> None:
    """Options of the targets in this module (table1's are in :mod:`.reproduce`)."""
    from . import args as A
    s.add_argument("--eval-every", type=A.int_in(1, 1_000_000), default=20,
                   help="episodes between cross-env evaluations")
    s.add_argument("--test-random", type=A.int_in(0, 10_000), default=32,
                   help="held-out realisations scored at the end (robust, table2, transfer)")
    s.add_argument("--weights", type=A.checked(_weights, "weights"), default="scheduled,0.5,0",
                   help="figS2: reward weights (scheduled or w in [0, 1])")
    s.add_argument("--history-window", type=A.int_in(1, 64), default=28,
                   help="history: observations in the window, 1..64")
    s.add_argument("--history-regime", choices=["energies", "first_order", "second_order"], default="energies",
                   help="history: the partially observed regime")
    s.add_argument("--omega-range", type=A.floats(0.0, 100.0, low_open=True, length=2, increasing=True,
                                                  joined=True),
                   default="0.5,1.5", help="robust: ω_j ~ U[lo, hi] every episode, 0 < lo < hi ≤ 100")
    s.add_argument("--eval-random", type=A.int_in(1, 10_000), default=8,
                   help="robust: validation realisations for selection, ≥ 1")
    s.add_argument("--robust-history", type=A.int_in(0, 64), default=0,
                   help="robust: also train with an observation window of this many steps (0: no)")


# -- pure helpers (tested) -----------------------------------------------------------------
def t_reach(ergotropy: Sequence[float], fraction: float = 0.9) -> int:
    """T_0.9 of seed 000 (Table S1): the number of training episodes until the best-so-far
    terminal ergotropy first reaches ``fraction`` of its final best value (1 = the first)."""
    x = np.asarray(ergotropy, dtype=float)
    if x.size == 0:
        raise ValueError("ergotropy: empty episode record (allowed: at least one episode)")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: {fraction!r} (allowed: (0, 1])")
    best = np.maximum.accumulate(x)
    return int(np.argmax(best >= fraction * best[-1])) + 1


def mean_ci(x: Sequence[float]) -> tuple[float, float, int]:
    """(mean, 95% Student-t half-width, n); NaN where undefined."""
    x = [float(v) for v in x if v == v]
    return (float(np.mean(x)) if x else float("nan")), t_half_width(x), len(x)


def _fmt(m: float, h: float) -> str:
    return f"{m:.4f} ± {h:.4f}" if h == h else f"{m:.4f}"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


def _summary(work: Path, name: str) -> dict[str, Any] | None:
    p = _summary_path(work, name)
    return json.loads(p.read_text()) if p.exists() else None


def _store(work: Path):
    from qhil.agents.runstore import RunStore
    db = work / "runs.sqlite"
    return RunStore(db) if db.exists() else None


def _grape(out: Path) -> dict[str, float]:
    res = {}
    for env in ENVS:
        p = out / f"grape_{env}.json"
        if p.exists():
            res[env] = float(json.loads(p.read_text())["ergotropy"])
    return res


def _scale(args: argparse.Namespace) -> str:
    return (f"scale: {args.total_steps} environment steps per run, seeds 0..{args.seeds - 1} "
            f"(paper: 5 seeds at its full length){'; ' + args.train_args if args.train_args else ''}")


# -- names and jobs ------------------------------------------------------------------------
def base_name(regime: str, seed: int) -> str:
    return f"env1/{regime}/seed{seed}"


def weight_name(w: str, seed: int) -> str:
    return base_name("second_order", seed) if w == "scheduled" else f"env1/second_order/w{float(w):g}/seed{seed}"


def history_name(regime: str, window: int, seed: int) -> str:
    return f"env1/{regime}/hist{window}/seed{seed}"


def robust_name(lo: float, hi: float, seed: int, window: int = 0) -> str:
    hist = f"/hist{window}" if window else ""
    return f"env1/second_order/dr{lo:g}-{hi:g}{hist}/seed{seed}"


def _omega_range(args: argparse.Namespace) -> tuple[float, float]:
    lo, hi = (float(x) for x in args.omega_range.split(","))
    return lo, hi


def _flags(args: argparse.Namespace, regime: str, seed: int, *extra: str) -> list[str]:
    """Every extended run: Env1, the Table 2 evaluation, held-out test realisations."""
    return ["--env", "env1", "--regime", regime, "--seed", str(seed), "--eval-every", str(args.eval_every),
            "--test-random", str(args.test_random), *extra]


def jobs_for(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(run name, qhil train flags) of a target's runs, in the order they run."""
    seeds = range(args.seeds)
    cross = ("--eval-envs", "env1,env2,env3")
    jobs: list[tuple[str, list[str]]] = []
    if args.what == "table2":
        regimes = args.regimes.split(",")
        jobs = [(base_name(r, s), _flags(args, r, s, *cross)) for s in seeds for r in regimes]
    elif args.what == "figS2":
        for s in seeds:
            for w in args.weights.split(","):
                extra = cross if w == "scheduled" else (*cross, "--weight", str(float(w)))
                jobs.append((weight_name(w, s), _flags(args, "second_order", s, *extra)))
    elif args.what == "history":
        r, k = args.history_regime, args.history_window
        for s in seeds:
            jobs += [(base_name(r, s), _flags(args, r, s, *cross)),
                     (history_name(r, k, s), _flags(args, r, s, *cross, "--history", str(k))),
                     (base_name("full_state", s), _flags(args, "full_state", s, *cross))]
    elif args.what == "robust":
        lo, hi = _omega_range(args)
        dr = ("--omega-range", f"{lo},{hi}", "--eval-random", str(args.eval_random))
        jobs = [(robust_name(lo, hi, s), _flags(args, "second_order", s, *dr)) for s in seeds]
        if args.robust_history:
            k = args.robust_history
            jobs += [(robust_name(lo, hi, s, k), _flags(args, "second_order", s, *dr, "--history", str(k)))
                     for s in seeds]
    return jobs


def run_target(args: argparse.Namespace) -> int:
    """Entry point for every target but table1."""
    import sys

    from .reproduce import _usable_dir, failed_message
    training = args.what in ("table2", "figS2", "history", "robust")
    args.work_dir = args.work_dir or Path("runs/extended" if training else "runs/table1")
    if training and not args.report_only:
        args.work_dir = _usable_dir("work_dir", args.work_dir)      # writable, before any run
    failed: list[str] = []
    n_jobs = 0
    if training and not args.report_only:
        jobs = jobs_for(args)
        n_jobs = len(jobs)
        failed = run_jobs(jobs, args, args.work_dir)
        if failed and not any(_summary(args.work_dir, name) for name, _ in jobs):
            print(f"qhil: error: all {len(failed)} run(s) failed and none had finished before "
                  f"(see {args.work_dir / 'logs'}); no table written", file=sys.stderr)
            return 1
    report = {"table2": report_table2, "tableS1": report_tableS1, "figS1": report_figS1,
              "figS2": report_figS2, "history": report_history, "robust": report_robust,
              "transfer": report_transfer}[args.what]
    report(args)
    if failed:
        print(failed_message(failed, n_jobs, args.work_dir), file=sys.stderr)
        return 1
    return 0


# -- Table 2 -------------------------------------------------------------------------------
def report_table2(args: argparse.Namespace) -> list[dict[str, Any]]:
    work, out = args.work_dir, args.out_dir
    rows = []
    for regime in args.regimes.split(","):
        sums = [x for s in range(args.seeds) if (x := _summary(work, base_name(regime, s))) and "selection" in x]
        for env in ENVS + ["heldout_mean"]:
            rows.append(_table2_row(regime, env, [x["selection"]["report"].get(env, float("nan")) for x in sums],
                                    steps=sums[0]["steps"] if sums else 0))
    _write_csv(out / "table2.csv", rows)
    print("Table 2: trained on Env1, policy selected by mean deterministic terminal ergotropy over Env1–3")
    print(_scale(args))
    _print_and_plot_table2(rows, args.regimes.split(","), f"Table 2 robustness\n{_scale(args)}",
                           out / "table2_robustness.png")
    return rows


def _table2_row(regime: str, env: str, values: Sequence[float], **extra: Any) -> dict[str, Any]:
    m, h, n = mean_ci(values)
    pm, ph = PAPER_TABLE2.get((regime, env), (float("nan"), float("nan")))
    return {"regime": regime, "env": env, "mean": m, "ci_half_width": h, "n_seeds": n,
            "paper_mean": pm, "paper_ci": ph, **extra}


def _print_and_plot_table2(rows: list[dict[str, Any]], regimes: list[str], title: str, path: Path) -> None:
    print(f"{'regime':13} {'env':12} {'ours':>20} {'n':>2} {'paper':>18}")
    for r in rows:
        print(f"{r['regime']:13} {r['env']:12} {_fmt(r['mean'], r['ci_half_width']):>20} {r['n_seeds']:2d} "
              f"{_fmt(r['paper_mean'], r['paper_ci']) if r['paper_mean'] == r['paper_mean'] else '—':>18}")
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, env in zip(axes, ENVS):
        xs = np.arange(len(regimes))
        ours = [next(r for r in rows if r["regime"] == g and r["env"] == env) for g in regimes]
        ax.bar(xs - 0.2, [r["mean"] for r in ours], 0.4, yerr=[np.nan_to_num(r["ci_half_width"]) for r in ours],
               label="ours", capsize=3)
        ax.bar(xs + 0.2, [PAPER_TABLE2[(g, env)][0] for g in regimes], 0.4,
               yerr=[PAPER_TABLE2[(g, env)][1] for g in regimes], label="paper", capsize=3, alpha=0.6)
        ax.set_xticks(xs, [LABELS[g] for g in regimes], fontsize=7)
        ax.set_title(f"{env} (trained on env1)")
        ax.set_ylabel("terminal ergotropy (ω_0)")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- Table S1 and Fig. S1 (from the Table 1 runs) -------------------------------------------
def _table1_runs(work: Path, windows: dict[str, Window]) -> dict[tuple[str, str], list[str]]:
    """(env, regime) → names of the finished Table 1 runs: no weight, randomisation or
    selection, and the set-up's window for the regime (``windows``)."""
    store = _store(work)
    if store is None:
        return {}
    other = {"weight", "omega_range", "omega_spread", "eval_envs", "eval_random"}
    finished = {name: v for name, v in store.runs().items() if v["status"] == "done" and not other & set(v["config"])}
    store.close()
    return runs_by_cell(finished, windows)


def report_tableS1(args: argparse.Namespace) -> list[dict[str, Any]]:
    work, out = args.work_dir, args.out_dir
    runs = _table1_runs(work, parse_windows(args.windows))
    store = _store(work)
    rows, curves = [], {}
    for env in args.envs.split(","):
        for regime in args.regimes.split(","):
            ts, lengths = [], []
            for name in runs.get((env, regime), []):
                erg = store.episodes(name)["ergotropy"]
                ts.append(t_reach(erg))
                lengths.append(len(erg))
                curves[name] = (np.maximum.accumulate(erg), ts[-1])
            m, h, n = mean_ci(ts)
            pm, ph = PAPER_S1[(env, regime)]
            rows.append({"env": env, "regime": regime, "t09_mean": m, "ci_half_width": h, "n_seeds": n,
                         "t09_per_seed": " ".join(map(str, ts)), "paper_mean": pm, "paper_ci": ph,
                         "episodes_per_run": " ".join(map(str, lengths))})
    if store is not None:
        store.close()
    _write_csv(out / "tableS1.csv", rows)
    print("Table S1: T_0.9 = training episodes until the best-so-far terminal ergotropy first reaches "
          f"90% of its final best (finished runs in {work})")
    print("T_0.9 is bounded by the run length: compare with the paper only at equal training length")
    print(f"{'env':5} {'regime':13} {'ours (episodes)':>20} {'n':>2} {'paper':>18}  per seed (of episodes run)")
    for r in rows:
        per = " ".join(f"{t}/{n}" for t, n in zip(r["t09_per_seed"].split(), r["episodes_per_run"].split()))
        print(f"{r['env']:5} {r['regime']:13} {r['t09_mean']:10.1f} ± {r['ci_half_width']:<7.1f} {r['n_seeds']:2d} "
              f"{r['paper_mean']:8.1f} ± {r['paper_ci']:<7.1f}  {per}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (b, t) in curves.items():
        line, = ax.plot(np.arange(1, len(b) + 1), b, lw=1, label=name)
        ax.plot([t], [b[t - 1]], "o", color=line.get_color())
    ax.set_xlabel("episode")
    ax.set_ylabel("best-so-far terminal ergotropy (ω_0)")
    ax.set_title("Table S1: best-so-far curves, dots at T_0.9", fontsize=9)
    if curves:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "tableS1_best_so_far.png", dpi=120)
    plt.close(fig)
    return rows


def report_figS1(args: argparse.Namespace) -> list[dict[str, Any]]:
    work, out = args.work_dir, args.out_dir
    runs = _table1_runs(work, parse_windows(args.windows))
    store = _store(work)
    rows = []
    for env in args.envs.split(","):
        for regime in args.regimes.split(","):
            for name in runs.get((env, regime), []):
                rows.append({"env": env, "regime": regime, "run": name,
                             "best_explored": float(store.episodes(name)["best"][-1])})
    if store is not None:
        store.close()
    _write_csv(out / "figS1.csv", rows)
    plt = pyplot()
    envs = args.envs.split(",")
    order = ["full_state", "energies", "first_order", "second_order"]
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.8), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for i, regime in enumerate(order):
            v = [r["best_explored"] for r in rows if r["env"] == env and r["regime"] == regime]
            if len(v) > 1:
                ax.boxplot([v], positions=[i], widths=0.5)
            ax.plot(np.full(len(v), i) + np.linspace(-0.08, 0.08, len(v)), v, "o", ms=4)
            pm, ph = PAPER[(env, regime)]
            ax.errorbar([i + 0.3], [pm], yerr=[ph], fmt="s", color="gray", ms=4, capsize=3,
                        label="paper mean ± CI" if i == 0 else None)
        ax.set_xticks(range(len(order)), [f"{LABELS[g]}\n(n={sum(r['env'] == env and r['regime'] == g for r in rows)})"
                                          for g in order], fontsize=7)
        ax.set_title(env)
        ax.set_ylabel("best terminal ergotropy in training (ω_0)")
        ax.legend(fontsize=7)
    fig.suptitle(f"Fig. S1: distribution over seeds of finished runs in {work}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "figS1_seed_distributions.png", dpi=120)
    plt.close(fig)
    print(f"Fig. S1: {len(rows)} finished runs → {out / 'figS1_seed_distributions.png'}")
    for env in envs:
        for regime in order:
            v = [r["best_explored"] for r in rows if r["env"] == env and r["regime"] == regime]
            if v:
                print(f"  {env} {regime:13} n={len(v)} " + " ".join(f"{x:.4f}" for x in v))
    return rows


# -- Fig. S2 -------------------------------------------------------------------------------
def report_figS2(args: argparse.Namespace) -> list[dict[str, Any]]:
    work, out = args.work_dir, args.out_dir
    store = _store(work)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = []
    for w in args.weights.split(","):
        names = [weight_name(w, s) for s in range(args.seeds)]
        curves = [np.asarray(store.episodes(n)["ergotropy"]) for n in names] if store else []
        curves = [_ema(c) for c in curves if len(c)]
        sums = [x for n in names if (x := _summary(work, n))]
        label = "scheduled w (Eq. 12)" if w == "scheduled" else f"fixed w = {float(w):g}"
        if curves:
            n = min(len(c) for c in curves)
            c = np.stack([c[:n] for c in curves])
            ax.plot(np.arange(n), c.mean(0), label=f"{label} ({len(curves)} runs)")
            ax.fill_between(np.arange(n), c.mean(0) - c.std(0), c.mean(0) + c.std(0), alpha=0.25)
        for key, vals in (("best_explored", [x["best_explored"]["ergotropy"] for x in sums]),
                          ("final_deterministic_env1", [x["deterministic"]["ergotropy"] for x in sums]),
                          ("final_ema_ergotropy", [c[-1] for c in curves])):
            m, h, n_ = mean_ci(vals)
            rows.append({"weight": w, "metric": key, "mean": m, "ci_half_width": h, "n_seeds": n_})
    if store is not None:
        store.close()
    ax.set_xlabel("episode")
    ax.set_ylabel("terminal ergotropy in training (EMA γ = 0.9)")
    ax.set_title(f"Fig. S2 (Env1, E_j+⟨σ⟩+⟨σσ⟩)\n{_scale(args)}", fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "figS2_reward_weight.png", dpi=120)
    plt.close(fig)
    _write_csv(out / "figS2.csv", rows)
    print("Fig. S2: reward weight, Env1, second-order observations (paper: scheduled best at late training)")
    print(_scale(args))
    for r in rows:
        print(f"  {r['weight']:>9} {r['metric']:26} {_fmt(r['mean'], r['ci_half_width'])} (n={r['n_seeds']})")
    return rows


# -- history -------------------------------------------------------------------------------
def gap_closed(without: float, with_history: float, full: float) -> float:
    """Fraction of the gap (full state − without history) that the history closes."""
    gap = full - without
    return float("nan") if gap == 0 else (with_history - without) / gap


def report_history(args: argparse.Namespace) -> list[dict[str, Any]]:
    work, out = args.work_dir, args.out_dir
    r, k = args.history_regime, args.history_window
    kinds = {f"{r}": lambda s: base_name(r, s), f"{r}+history{k}": lambda s: history_name(r, k, s),
             "full_state": lambda s: base_name("full_state", s)}
    rows = []
    store = _store(work)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    per: dict[str, dict[str, list[float]]] = {}
    for kind, namer in kinds.items():
        sums = [x for s in range(args.seeds) if (x := _summary(work, namer(s)))]
        metrics = {"best_explored": [x["best_explored"]["ergotropy"] for x in sums],
                   "final_deterministic": [x["deterministic"]["ergotropy"] for x in sums],
                   "selected_env1": [x["selection"]["report"]["env1"] for x in sums if "selection" in x]}
        per[kind] = metrics
        for key, vals in metrics.items():
            m, h, n = mean_ci(vals)
            rows.append({"observation": kind, "metric": key, "mean": m, "ci_half_width": h, "n_seeds": n,
                         "per_seed": " ".join(f"{v:.4f}" for v in vals)})
        curves = [_ema(np.asarray(store.episodes(namer(s))["ergotropy"])) for s in range(args.seeds)
                  if store and store.status(namer(s)) is not None]
        if curves:
            n = min(len(c) for c in curves)
            ax.plot(np.arange(n), np.mean([c[:n] for c in curves], 0), label=f"{kind} ({len(curves)} runs)")
    if store is not None:
        store.close()
    for key in ("best_explored", "final_deterministic", "selected_env1"):
        a, b, c = (np.mean(per[kd][key]) if per[kd][key] else float("nan") for kd in kinds)
        rows.append({"observation": "gap closed", "metric": key, "mean": gap_closed(a, b, c),
                     "ci_half_width": float("nan"), "n_seeds": min(len(per[kd][key]) for kd in kinds)})
    _write_csv(out / "history.csv", rows)
    ax.set_xlabel("episode")
    ax.set_ylabel("terminal ergotropy in training (EMA γ = 0.9)")
    ax.set_title(f"History window K = {k} on {LABELS.get(r, r)} (Env1)\n{_scale(args)}", fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=120)
    plt.close(fig)
    print(f"History: Env1, {r} with and without the last {k} observations; full state for reference")
    print(_scale(args))
    for row in rows:
        print(f"  {row['observation']:22} {row['metric']:20} {_fmt(row['mean'], row['ci_half_width'])} "
              f"(n={row['n_seeds']}) {row.get('per_seed', '')}")
    print("  target: close at least half the gap (gap closed ≥ 0.5)")
    return rows


# -- robust --------------------------------------------------------------------------------
def report_robust(args: argparse.Namespace) -> list[dict[str, Any]]:
    work, out = args.work_dir, args.out_dir
    lo, hi = _omega_range(args)
    grape = _grape(args.grape_dir or out)
    kinds = {f"domain-randomised U[{lo:g}, {hi:g}] (selected on {args.eval_random} validation draws)":
             lambda s: robust_name(lo, hi, s)}
    if args.robust_history:
        kinds[f"domain-randomised + history {args.robust_history} (same selection)"] = \
            lambda s: robust_name(lo, hi, s, args.robust_history)
    kinds["Env1 only (Table 2 protocol: selected on Env1–3)"] = lambda s: base_name("second_order", s)
    rows, held = [], {}
    for kind, namer in kinds.items():
        sums = [x for s in range(args.seeds) if (x := _summary(work, namer(s))) and "selection" in x]
        for env in ENVS + ["heldout_mean", "heldout_min"]:
            m, h, n = mean_ci([x["selection"]["report"].get(env, float("nan")) for x in sums])
            pm, ph = PAPER_TABLE2.get(("second_order", env), (float("nan"), float("nan")))
            rows.append({"training": kind, "env": env, "mean": m, "ci_half_width": h, "n_seeds": n,
                         "paper_table2_second_order": pm, "paper_ci": ph, "grape": grape.get(env, float("nan")),
                         "steps": sums[0]["steps"] if sums else 0})
        held[kind] = [v for x in sums for v in x["selection"]["heldout"].values()]
    _write_csv(out / "robust.csv", rows)
    print(f"Robust charging (correlation regime E_j+⟨σ⟩+⟨σσ⟩): deterministic terminal ergotropy of the "
          f"selected policy; held-out = {args.test_random} draws U[0.5, 1.5]^4 (seed 2002)")
    print(_scale(args))
    print(f"{'env':13} " + " | ".join(f"{k[:44]:>44}" for k in kinds) + f" | {'paper T2':>8} | {'GRAPE':>6}")
    for env in ENVS + ["heldout_mean", "heldout_min"]:
        cells = [next(r for r in rows if r["training"] == k and r["env"] == env) for k in kinds]
        pm = cells[0]["paper_table2_second_order"]
        text = [f"{_fmt(c['mean'], c['ci_half_width'])} (n={c['n_seeds']})" for c in cells]
        print(f"{env:13} " + " | ".join(f"{t:>44}" for t in text)
              + f" | {pm:8.4f} | {grape.get(env, float('nan')):6.4f}")
    print("  target: beat the paper's Table 2 (second order) on Env2 and Env3: 1.7048 and 2.7069")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    xs = np.arange(3)
    for i, kind in enumerate(kinds):
        cells = [next(r for r in rows if r["training"] == kind and r["env"] == e) for e in ENVS]
        width = 0.8 / (len(kinds) + 1)
        axes[0].bar(xs - 0.4 + (i + 0.5) * width, [c["mean"] for c in cells], width,
                    yerr=[np.nan_to_num(c["ci_half_width"]) for c in cells], capsize=3, label=kind[:40])
        if held[kind]:
            axes[1].hist(held[kind], bins=20, alpha=0.5, label=kind[:40])
    width = 0.8 / (len(kinds) + 1)
    axes[0].bar(xs + 0.4 - width / 2, [PAPER_TABLE2[("second_order", e)][0] for e in ENVS], width,
                yerr=[PAPER_TABLE2[("second_order", e)][1] for e in ENVS], capsize=3, alpha=0.6,
                label="paper Table 2, second order")
    for j, e in enumerate(ENVS):
        if e in grape:
            axes[0].plot([j - 0.45, j + 0.45], [grape[e]] * 2, "k--", lw=1)
    axes[0].set_xticks(xs, ENVS)
    axes[0].set_ylabel("terminal ergotropy (ω_0); dashed: GRAPE")
    axes[0].legend(fontsize=6)
    axes[1].set_xlabel("terminal ergotropy on held-out realisations (ω_0)")
    axes[1].legend(fontsize=6)
    fig.suptitle(f"Robust charging\n{_scale(args)}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "robust.png", dpi=120)
    plt.close(fig)
    return rows


# -- transfer: Table 2 from the Table 1 Env1 runs (final policies, no selection) -----------------
def report_transfer(args: argparse.Namespace) -> list[dict[str, Any]]:
    from qhil.agents.selection import load_policy, score_policy
    from qhil.drivers import create_backend
    from qhil.envs.dicke import ENVIRONMENTS
    from qhil.envs.robust import heldout_realisations

    from .train import TEST_SEED, checkpoint_path, evaluation_env
    work, out = args.work_dir, args.out_dir
    regimes = args.regimes.split(",")
    windows = parse_windows(args.windows)
    runs = _table1_runs(work, windows)
    backend = create_backend("statevector")          # one propagator cache for every policy
    batteries = {e: ENVIRONMENTS[e] for e in ENVS}
    batteries |= {f"test{i}": w for i, w in enumerate(heldout_realisations(args.test_random, TEST_SEED))}
    rows: list[dict[str, Any]] = []
    per_run: list[dict[str, Any]] = []
    for regime in regimes:
        size, of = windows[regime] if regime in windows else (None, "observations")
        envs = {name: evaluation_env(omegas, regime, size, backend, of) for name, omegas in batteries.items()}
        probe = envs["env1"]
        scored = []
        for run in runs.get(("env1", regime), []):
            checkpoint = checkpoint_path(work, run)
            if not checkpoint.exists():
                continue
            erg = score_policy(load_policy(checkpoint, probe.obs_dim, probe.action_low, probe.action_high), envs)
            held = [v for k, v in erg.items() if k.startswith("test")]
            scored.append({"run": run, "regime": regime, **{e: erg[e] for e in ENVS},
                           "heldout_mean": float(np.mean(held)) if held else float("nan"),
                           "heldout_min": float(np.min(held)) if held else float("nan")})
        per_run += scored
        for env in ENVS + ["heldout_mean", "heldout_min"]:
            rows.append(_table2_row(regime, env, [r[env] for r in scored], window=size or 1, window_of=of))
    _write_csv(out / "transfer.csv", rows)
    _write_csv(out / "transfer_seeds.csv", per_run)
    title = (f"final policies of the Table 1 Env1 runs ({work}), deterministic, no selection; "
             f"held out: {args.test_random} draws U[0.5, 1.5]^4 (seed {TEST_SEED})")
    print("Transfer (Table 2 without selection): " + title)
    _print_and_plot_table2(rows, regimes, "Trained on Env1 only: " + title, out / "transfer.png")
    return rows

