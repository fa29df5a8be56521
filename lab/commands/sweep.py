"""``qhil sweep``: seed 004's sweeps on the XY-chain supply chain, resumable, with tables and figures.

    nice -n 10 qhil sweep lr --agents ensemble,ppo,dqn,ddpg,bdqn --seeds 2 --episodes 60 --jobs 1
    qhil sweep n --seeds 2 --episodes 60                   # N ∈ {2, …, 6}, Table IV
    qhil sweep weights --seeds 2 --episodes 60             # Table III's eight (α1, α2, α3)
    qhil sweep noise --agents ensemble,dqn --probs 0.01,0.02,0.05   # Fig. 7, Aer driver
    qhil sweep lr --report-only                            # tables/figures from finished runs

Each run (agent × setting × seed) is one :func:`qhil.agents.supply_sweep.run_one`: the shared
training loop, episodes in ``<work-dir>/<sweep>/runs.sqlite``, checkpoints under
``<work-dir>/<sweep>/ckpt``. ``--jobs`` runs go at a time as separate processes
(``ProcessPoolExecutor``); the same command again skips finished runs and resumes the others.
The report prints a table beside the paper's numbers (Table II, III, IV; Fig. 7 has no numbers)
and writes ``<out>/<sweep>.md``, ``<out>/<sweep>.csv`` and ``<out>/<sweep>.png``.

Statistics (as the paper): per run, the 10-episode moving average (MA, edge-padded) of the
training return; "mean" = its mean, "best" = its maximum, "final 10" = the mean return of the
last 10 episodes; each averaged over seeds (± standard error over seeds where shown). "eval" is
the deterministic policy's mean return on 5 unseen episodes. Returns of different reward
weights are on different scales (Table III): compare them within a row's weights only.

Options are checked when parsed (a bad one exits 2 naming it, before any run). A run that
fails is reported and the others go on; the command then exits 1 (no table if all failed).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from . import pyplot

SWEEPS = ("lr", "n", "weights", "noise")
LRS = (5e-3, 2.5e-3, 1e-3, 5e-4, 2.5e-4, 1e-4)
NS = (2, 3, 4, 5, 6)
#: Table III, rows 1–8.
WEIGHTS = ((0.5, 1.0, 0.5), (1.0, 1.0, 0.5), (1.0, 0.5, 0.5), (1.0, 1.0, 1.0),
           (2.0, 1.0, 0.5), (1.0, 2.0, 0.5), (0.1, 0.1, 0.1), (2.0, 2.0, 2.0))
#: Table II: best (max), avg @ lr 0.005, avg @ lr 0.0001.
PAPER_LR = {"ensemble": (20.51, 14.85, 20.51), "ppo": (20.20, 13.95, 19.61), "dqn": (19.60, 13.25, 18.91),
            "ddpg": (18.70, 12.35, 18.01), "bdqn": (18.20, 11.85, 17.51)}
PAPER_LR_REFS = {"ACKTR": (19.10, 12.75, 18.41), "ACER": (17.80, 11.25, 16.91), "GRAPE": (13.00,) * 3,
                 "MPC": (12.20,) * 3, "Human": (13.10,) * 3}
#: Table III: mean, final 10, best.
PAPER_WEIGHTS = [(18.72, 19.10, 19.61), (20.12, 20.33, 20.51), (17.85, 18.10, 18.91), (17.43, 17.61, 18.41),
                 (16.95, 17.20, 18.01), (16.10, 16.35, 17.50), (14.95, 15.20, 16.80), (14.10, 14.45, 15.90)]
#: Table IV: mean (MA), final 10 (MA), best (max MA).
PAPER_N = {2: (18.53, 19.20, 19.61), 3: (19.49, 20.48, 20.51), 4: (17.74, 18.25, 18.91),
           5: (17.51, 17.85, 18.41), 6: (16.83, 17.30, 18.01)}
DEFAULT_AGENTS = {"lr": "ensemble,ppo,dqn,ddpg,bdqn", "n": "ensemble", "weights": "ensemble",
                  "noise": "ensemble,dqn"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from qhil.agents.supply_sweep import AGENTS, CHANNELS

    from . import args as A
    s = sub.add_parser("sweep", help="seed 004 sweeps on the XY-chain supply chain (resumable)")
    s.add_argument("what", choices=SWEEPS)
    s.add_argument("--agents", type=A.choice_list(AGENTS, joined=True), default=None,
                   help="comma list of ensemble,ppo,dqn,ddpg,bdqn "
                   "(default: all for lr, ensemble for n and weights, ensemble,dqn for noise)")
    s.add_argument("--seeds", type=A.int_in(1, 100), default=2, help="seeds 0..S-1 per setting, S in 1..100")
    s.add_argument("--episodes", type=A.int_in(1, 1_000_000), default=60,
                   help="training episodes per run (50 steps each)")
    s.add_argument("--jobs", type=A.int_in(1, 64), default=1, help="runs at a time (separate processes), 1..64")
    s.add_argument("--lr", type=A.float_in(0.0, 1.0, low_open=True), default=5e-4,
                   help="learning rate for the n, weights and noise sweeps, in (0, 1]")
    s.add_argument("--lrs", type=A.floats(0.0, 1.0, low_open=True), default=list(LRS),
                   help="learning rates of the lr sweep, each in (0, 1]")
    s.add_argument("--ns", type=A.ints(2, 8), default=list(NS), help="chain lengths of the n sweep, each in 2..8")
    s.add_argument("--channels", type=A.choice_list(CHANNELS, joined=True), default="bit_flip,depolarizing,phase_flip")
    s.add_argument("--probs", type=A.floats(0.0, 1.0), default=[0.01, 0.02, 0.05],
                   help="noise probabilities per step and qubit, each in [0, 1]")
    s.add_argument("--references", action="store_true",
                   help="also measure random, MPC and GRAPE returns (lr sweep: flat lines)")
    s.add_argument("--work-dir", type=A.output_dir, default=Path("runs/seed004"))
    s.add_argument("--out", type=A.output_dir, default=Path("docs/results/seed004"))
    s.add_argument("--report-only", action="store_true", help="only aggregate the finished runs")
    s.set_defaults(func=run)


def _floats(text: str | list[float], name: str) -> list[float]:
    """A list of numbers from the option (already parsed) or its comma-separated text."""
    from qhil.drivers import ValidationError
    if not isinstance(text, str):
        return [float(x) for x in text]
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValidationError(name, f"expected comma-separated numbers, got {text!r}") from None


def specs(args: argparse.Namespace) -> list[Any]:
    """Every run of the sweep, seeds outermost (an early stop leaves whole seeds)."""
    from qhil.agents.supply_sweep import RunSpec
    from qhil.drivers import ValidationError
    agents = (args.agents or DEFAULT_AGENTS[args.what]).split(",")
    for name in ("seeds", "episodes", "jobs"):
        if getattr(args, name) < 1:
            raise ValidationError("--" + name, f"{getattr(args, name)}", "an integer ≥ 1")
    base = dict(sweep=args.what, episodes=args.episodes, lr=args.lr)
    settings: list[dict[str, Any]]
    if args.what == "lr":
        settings = [{"lr": lr} for lr in _floats(args.lrs, "lrs")]
        if not settings:
            raise ValidationError("--lrs", "no learning rate", "one or more numbers in (0, 1]")
    elif args.what == "n":
        ns = [int(x) for x in _floats(args.ns, "ns")]
        if any(not 2 <= n <= 8 for n in ns):
            raise ValidationError("ns", f"{ns}", "integers in [2, 8]")
        settings = [{"n_spins": n} for n in ns]
    elif args.what == "weights":
        settings = [{"weights": w} for w in WEIGHTS]
    else:
        probs = _floats(args.probs, "probs")
        if any(not 0.0 <= p <= 1.0 for p in probs):
            raise ValidationError("probs", f"{probs}", "probabilities in [0, 1]")
        settings = [{}] + [{"channel": c, "p": p} for c in args.channels.split(",") for p in probs]
    return [RunSpec(agent=a, seed=s, **(base | st)) for s in range(args.seeds) for st in settings for a in agents]


def _one(spec: Any, work: str) -> tuple[str, dict[str, Any]]:
    from qhil.agents.supply_sweep import run_one
    return spec.name(), run_one(spec, work)


def _references(spec: Any, work: Path) -> dict[str, float]:
    path = work / "references.json"
    if path.exists():
        return json.loads(path.read_text())
    from qhil.agents.supply_sweep import reference_returns
    refs = reference_returns(spec)
    path.write_text(json.dumps(refs))
    return refs


def run(args: argparse.Namespace) -> int:
    from .reproduce import _usable_dir
    all_specs = specs(args)
    work = _usable_dir("work_dir", args.work_dir / args.what)
    failed: list[str] = []
    if not args.report_only:
        t0 = time.perf_counter()

        def done(i: int, name: str, summ: dict[str, Any]) -> None:
            print(f"[{i + 1}/{len(all_specs)}] {name}: eval {summ.get('eval_return', float('nan')):.2f} "
                  f"({summ.get('run_s', 0):.0f} s)", file=sys.stderr, flush=True)

        def fail(i: int, name: str, exc: BaseException) -> None:
            failed.append(name)
            print(f"[{i + 1}/{len(all_specs)}] {name}: FAILED ({type(exc).__name__}: {exc})", file=sys.stderr,
                  flush=True)

        if args.jobs == 1:
            for i, sp in enumerate(all_specs):
                try:
                    done(i, *_one(sp, str(work)))
                except Exception as exc:                       # noqa: BLE001 — reported, the others run
                    fail(i, sp.name(), exc)
        else:
            with ProcessPoolExecutor(max_workers=args.jobs) as pool:
                futs = {pool.submit(_one, sp, str(work)): sp for sp in all_specs}
                for i, f in enumerate(as_completed(futs)):
                    try:
                        done(i, *f.result())
                    except Exception as exc:                   # noqa: BLE001
                        fail(i, futs[f].name(), exc)
        if args.references:
            _references(all_specs[0], work)
        print(f"sweep {args.what}: {len(all_specs)} runs, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if failed and len(failed) == len(all_specs) and not _collect(all_specs, work):
        print(f"qhil: error: all {len(failed)} run(s) failed (e.g. {failed[0]}); no table written", file=sys.stderr)
        return 1
    report(args, all_specs, work)
    if failed:
        print(f"qhil: error: {len(failed)} of {len(all_specs)} run(s) failed (e.g. {failed[0]}); "
              "the table shows the finished runs only", file=sys.stderr)
        return 1
    return 0


# -- the report -------------------------------------------------------------------------------

def _collect(all_specs: list[Any], work: Path) -> dict[str, dict[str, Any]]:
    """Finished runs: name → {spec, returns, fidelity, summary, stats}."""
    from qhil.agents.runstore import RunStore
    from qhil.agents.supply_sweep import curve_stats
    path = work / "runs.sqlite"
    if not path.exists():
        return {}
    store = RunStore(path)
    runs = store.runs()
    out = {}
    for sp in all_specs:
        name = sp.name()
        if runs.get(name, {}).get("status") != "done":
            continue
        ep = store.episodes(name)
        out[name] = {"spec": sp, "returns": np.array(ep["ret"]), "fidelity": np.array(ep["energy"]),
                     "summary": runs[name]["summary"], "stats": curve_stats(ep["ret"])}
    store.close()
    return out


def _agg(rows: list[dict[str, Any]], key: str) -> tuple[float, float, int]:
    """Mean over seeds, standard error, count."""
    vals = np.array([r["stats"][key] if key in r["stats"] else r["summary"][key] for r in rows], float)
    if len(vals) == 0:
        return float("nan"), float("nan"), 0
    se = float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    return float(vals.mean()), se, len(vals)


def _fmt(m: float, se: float | None = None) -> str:
    if not np.isfinite(m):
        return "—"
    return f"{m:.2f}" if se is None or not np.isfinite(se) else f"{m:.2f} ± {se:.2f}"


def _group(done: dict[str, dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in done.values() if all(getattr(r["spec"], k) == v for k, v in match.items())]


def _common_scale(done: dict[str, dict[str, Any]], work: Path) -> dict[str, float]:
    """Each finished run's trained policy replayed under the default weights (1, 1, 0.5), so
    that runs trained under different weights are compared on one scale (cached)."""
    from qhil.agents.supply_sweep import evaluate_checkpoint
    path = work / "eval_default_weights.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    for name, r in done.items():
        if name not in cache:
            cache[name] = evaluate_checkpoint(r["spec"], work, weights=(1.0, 1.0, 0.5))["return"]
    path.write_text(json.dumps(cache, indent=1, sort_keys=True))
    return cache


def report(args: argparse.Namespace, all_specs: list[Any], work: Path) -> None:
    from qhil.agents.supply_sweep import LABELS
    done = _collect(all_specs, work)
    args.out.mkdir(parents=True, exist_ok=True)
    agents = list(dict.fromkeys(sp.agent for sp in all_specs))
    n_seeds = len({sp.seed for sp in all_specs})
    scale = (f"{args.episodes} episodes × 50 steps per run, seeds 0–{n_seeds - 1} "
             f"({len(done)}/{len(all_specs)} runs finished); mean ± s.e. over seeds")
    lines, table = [], []
    if args.what == "lr":
        lrs = sorted({sp.lr for sp in all_specs}, reverse=True)
        head = ["agent"] + [f"MA mean @ {lr:g}" for lr in lrs] + ["best MA (any lr)", "final 10 @ 1e-4",
                                                                   "eval @ best lr", "paper best / @5e-3 / @1e-4"]
        for a in agents:
            cells = [LABELS[a]]
            best, best_lr = -np.inf, None
            for lr in lrs:
                rows = _group(done, agent=a, lr=lr)
                m, se, _ = _agg(rows, "mean_ma")
                cells.append(_fmt(m, se))
                b, _, _ = _agg(rows, "best_ma")
                if rows and b > best:
                    best, best_lr = b, lr
            cells.append(_fmt(best) + (f" (lr {best_lr:g})" if best_lr else ""))
            cells.append(_fmt(*_agg(_group(done, agent=a, lr=1e-4), "final10")[:2]))
            cells.append(_fmt(*_agg(_group(done, agent=a, lr=best_lr), "eval_return")[:2]) if best_lr else "—")
            p = PAPER_LR.get(a)
            cells.append(" / ".join(f"{x:.2f}" for x in p) if p else "—")
            table.append(cells)
        refs_path = work / "references.json"
        if refs_path.exists():
            refs = json.loads(refs_path.read_text())
            for k, v in refs.items():
                paper = {"grape": PAPER_LR_REFS["GRAPE"], "mpc": PAPER_LR_REFS["MPC"]}.get(k)
                table.append([f"{k} (reference, not learned)"] + [_fmt(v)] * len(lrs) + [_fmt(v), "", "",
                              " / ".join(f"{x:.2f}" for x in paper) if paper else "—"])
        for k, v in PAPER_LR_REFS.items():
            if k in ("ACKTR", "ACER", "Human"):
                table.append([f"{k} (paper only; not implemented)"] + ["—"] * (len(lrs) + 3)
                             + [" / ".join(f"{x:.2f}" for x in v)])
    elif args.what == "n":
        head = ["N", "agent", "mean (MA)", "final 10", "best (max MA)", "eval", "eval mean F",
                "paper mean / final 10 / best"]
        for n in sorted({sp.n_spins for sp in all_specs}):
            for a in agents:
                rows = _group(done, agent=a, n_spins=n)
                table.append([str(n), a] + [_fmt(*_agg(rows, k)[:2]) for k in ("mean_ma", "final10", "best_ma",
                                                                             "eval_return", "eval_mean_fidelity")]
                             + [" / ".join(f"{x:.2f}" for x in PAPER_N[n]) if n in PAPER_N else "—"])
    elif args.what == "weights":
        head = ["No", "(α1, α2, α3)", "agent", "mean (MA)", "final 10", "best (max MA)", "eval mean F",
                "eval return under (1, 1, 0.5)", "paper mean / final 10 / best"]
        common = _common_scale(done, work)
        for i, w in enumerate(WEIGHTS):
            for a in agents:
                rows = _group(done, agent=a, weights=w)
                vals = np.array([common[r["spec"].name()] for r in rows if r["spec"].name() in common])
                se = vals.std(ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else None
                table.append([str(i + 1), str(w), a] + [_fmt(*_agg(rows, k)[:2]) for k in
                                                         ("mean_ma", "final10", "best_ma", "eval_mean_fidelity")]
                             + [_fmt(float(vals.mean()) if len(vals) else float("nan"), se)]
                             + [" / ".join(f"{x:.2f}" for x in PAPER_WEIGHTS[i])])
    else:
        head = ["channel", "p", "agent", "mean (MA)", "final 10", "eval", "eval mean F", "paper"]
        settings = list(dict.fromkeys((sp.channel, sp.p) for sp in all_specs))
        for ch, p in settings:
            for a in agents:
                rows = _group(done, agent=a, channel=ch, p=p)
                table.append([ch or "none (exact)", f"{p:g}", a] + [_fmt(*_agg(rows, k)[:2]) for k in
                             ("mean_ma", "final10", "eval_return", "eval_mean_fidelity")] + ["Fig. 7: no numbers"])
    lines.append(f"# Seed 004 sweep `{args.what}`\n\n{scale}.\n")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    lines += ["| " + " | ".join(c) + " |" for c in table]
    text = "\n".join(lines) + "\n"
    print(text)
    (args.out / f"{args.what}.md").write_text(text)
    with open(args.out / f"{args.what}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(table)
    _figure(args, all_specs, done, agents)


def _figure(args: argparse.Namespace, all_specs: list[Any], done: dict[str, dict[str, Any]],
            agents: list[str]) -> None:
    plt = pyplot()

    from qhil.agents.supply_sweep import moving_average

    def curve(rows: list[dict[str, Any]]) -> np.ndarray | None:
        if not rows:
            return None
        n = min(len(r["returns"]) for r in rows)
        return np.mean([moving_average(r["returns"][:n]) for r in rows], axis=0)

    if args.what == "lr":
        lrs = sorted({sp.lr for sp in all_specs}, reverse=True)
        fig, axes = plt.subplots(2, (len(lrs) + 1) // 2, figsize=(4 * ((len(lrs) + 1) // 2), 7), squeeze=False)
        for ax, lr in zip(axes.flat, lrs):
            for a in agents:
                c = curve(_group(done, agent=a, lr=lr))
                if c is not None:
                    ax.plot(c, label=a)
            refs = args.work_dir / "lr" / "references.json"
            if refs.exists():
                for k, v in json.loads(refs.read_text()).items():
                    ax.axhline(v, ls="--", lw=0.8, color="gray")
                    ax.text(0, v, k, fontsize=7, color="gray", va="bottom")
            ax.set_title(f"lr = {lr:g}")
            ax.set_xlabel("episode")
            ax.set_ylabel("return (MA 10)")
        axes.flat[0].legend(fontsize=7)
    elif args.what in ("n", "weights"):
        keys = sorted({sp.n_spins for sp in all_specs}) if args.what == "n" else list(range(len(WEIGHTS)))
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for a in agents:
            means, bests = [], []
            for k in keys:
                rows = _group(done, agent=a, **({"n_spins": k} if args.what == "n" else {"weights": WEIGHTS[k]}))
                means.append(_agg(rows, "mean_ma")[0])
                bests.append(_agg(rows, "best_ma")[0])
                c = curve(rows)
                if c is not None:
                    ax2.plot(c, label=f"{a} {'N=' + str(k) if args.what == 'n' else 'No ' + str(k + 1)}")
            x = np.arange(len(keys))
            ax1.bar(x - 0.27, bests, 0.27, label=f"{a}: best (max MA)")
            ax1.bar(x, means, 0.27, label=f"{a}: mean (MA)")
            cache = args.work_dir / "weights" / "eval_default_weights.json"
            if args.what == "weights" and cache.exists():
                common = json.loads(cache.read_text())
                ev = [np.mean([common[r["spec"].name()] for r in _group(done, agent=a, weights=WEIGHTS[k])
                               if r["spec"].name() in common] or [np.nan]) for k in keys]
                ax1.bar(x + 0.27, ev, 0.27, label=f"{a}: eval under (1, 1, 0.5)")
            ax1.set_xticks(x, [str(k) if args.what == "n" else str(k + 1) for k in keys])
        ax1.set_xlabel("N" if args.what == "n" else "configuration (Table III row)")
        ax1.set_ylabel("return")
        ax1.legend(fontsize=7)
        ax2.set_xlabel("episode")
        ax2.set_ylabel("return (MA 10)")
        ax2.legend(fontsize=6, ncol=2)
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        chans = [c for c in dict.fromkeys(sp.channel for sp in all_specs) if c is not None]
        for a in agents:
            base_r = _agg(_group(done, agent=a, channel=None), "final10")[0]
            base_f = _agg(_group(done, agent=a, channel=None), "eval_mean_fidelity")[0]
            for ch in chans:
                ps = sorted({sp.p for sp in all_specs if sp.channel == ch})
                r = [base_r] + [_agg(_group(done, agent=a, channel=ch, p=p), "final10")[0] for p in ps]
                fdl = [base_f] + [_agg(_group(done, agent=a, channel=ch, p=p), "eval_mean_fidelity")[0] for p in ps]
                axes[0].plot([0] + ps, r, "o-", label=f"{a}, {ch}")
                axes[1].plot([0] + ps, fdl, "o-", label=f"{a}, {ch}")
        axes[0].set_ylabel("return, final 10 training episodes")
        axes[1].set_ylabel("mean fidelity, deterministic policy")
        for ax in axes:
            ax.set_xlabel("p per step and qubit")
        axes[0].legend(fontsize=7)
    fig.suptitle(f"seed 004, sweep {args.what} ({args.episodes} episodes per run)")
    fig.tight_layout()
    fig.savefig(args.out / f"{args.what}.png", dpi=110)
    plt.close(fig)
