"""Seed 004's four sweeps on the XY-chain supply chain: their runs, and the tables and figures
beside the paper's numbers (Tables II, III, IV; Fig. 7 has no numbers).

* :func:`sweep_specs` — every run of a sweep (``lr``, ``n``, ``weights`` or ``noise``), seeds
  outermost (an early stop leaves whole seeds).
* :func:`run_sweep` — the unfinished runs through the one runner (:func:`qhil.experiments.run_specs`)
  into ``<work>/runs.sqlite``; a finished run asked for more episodes continues from its checkpoint.
* :func:`write_report` — ``<out>/<sweep>.md``, ``.csv`` and ``.png`` from the finished runs.

Statistics (as the paper): per run, the 10-episode moving average (MA, edge-padded) of the
training return; "mean" = its mean, "best" = its maximum, "final 10" = the mean return of the
last 10 episodes; each averaged over seeds (± standard error over seeds where shown). "eval" is
the deterministic policy's mean return on 5 unseen episodes. Returns of different reward
weights are on different scales (Table III): compare them within a row's weights only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qhil.agents.runstore import RunStore
from qhil.drivers import ValidationError

from ..reports import markdown_table, pyplot, write_csv
from ..runner import STORE_NAME, LocalExecutor, RunOutcome, run_specs
from ..stats import moving_average
from .paper import LRS, NS, PAPER_LR, PAPER_LR_REFS, PAPER_N, PAPER_WEIGHTS, WEIGHTS
from .specs import CHANNELS, LABELS, SweepRun, curve_stats, evaluate_checkpoint, reference_returns

SWEEPS = ("lr", "n", "weights", "noise")
#: The agents of each sweep when none are named.
DEFAULT_AGENTS = {"lr": "ensemble,ppo,dqn,ddpg,bdqn", "n": "ensemble", "weights": "ensemble",
                  "noise": "ensemble,dqn"}
#: The noise sweep's probabilities per step and qubit (Fig. 7), for each of :data:`CHANNELS`.
PROBS = (0.01, 0.02, 0.05)


def sweep_specs(what: str, agents: Sequence[str] | None = None, seeds: int = 2, episodes: int = 60,
                lr: float = 5e-4, lrs: Sequence[float] = LRS, ns: Sequence[int] = NS,
                channels: Sequence[str] = CHANNELS, probs: Sequence[float] = PROBS) -> list[SweepRun]:
    """Every run of sweep ``what``: agents × settings × seeds 0..seeds-1, seeds outermost.
    ``lr`` is the learning rate of the n, weights and noise sweeps; ``lrs`` the lr sweep's."""
    if what not in SWEEPS:
        raise ValidationError("what", f"unknown sweep {what!r}", ", ".join(SWEEPS))
    names = list(agents) if agents else DEFAULT_AGENTS[what].split(",")
    for name, v in (("seeds", seeds), ("episodes", episodes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValidationError("--" + name, f"{v}", "an integer ≥ 1")
    base = dict(sweep=what, episodes=episodes, lr=lr)
    settings: list[dict[str, Any]]
    if what == "lr":
        settings = [{"lr": float(x)} for x in lrs]
        if not settings:
            raise ValidationError("--lrs", "no learning rate", "one or more numbers in (0, 1]")
    elif what == "n":
        if any(not 2 <= int(n) <= 8 for n in ns):
            raise ValidationError("ns", f"{list(ns)}", "integers in [2, 8]")
        settings = [{"n_spins": int(n)} for n in ns]
    elif what == "weights":
        settings = [{"weights": w} for w in WEIGHTS]
    else:
        if any(not 0.0 <= p <= 1.0 for p in probs):
            raise ValidationError("probs", f"{list(probs)}", "probabilities in [0, 1]")
        settings = [{}] + [{"channel": c, "p": float(p)} for c in channels for p in probs]
    return [SweepRun(agent=a, seed=s, **(base | st)) for s in range(seeds) for st in settings for a in names]


def reopen_shorter(specs: Sequence[SweepRun], work: Path) -> list[str]:
    """Runs recorded finished with fewer episodes than their spec asks are marked running again,
    so that the runner continues them from their checkpoints. Returns their names."""
    path = Path(work) / STORE_NAME
    if not path.exists():
        return []
    store = RunStore(path)
    try:
        runs, out = store.runs(), []
        for sp in specs:
            r = runs.get(sp.name)
            if r and r["status"] == "done" and (r["summary"] or {}).get("episodes", 0) < sp.episodes:
                store.start_run(sp.name, r["config"])
                out.append(sp.name)
        return out
    finally:
        store.close()


def references(spec: SweepRun, work: Path) -> dict[str, float]:
    """Random, MPC and GRAPE returns on ``spec``'s environment, cached in ``<work>/references.json``."""
    path = Path(work) / "references.json"
    if path.exists():
        return json.loads(path.read_text())
    refs = reference_returns(spec)
    path.write_text(json.dumps(refs))
    return refs


def run_sweep(specs: Sequence[SweepRun], work: str | Path, executor: Any = None,
              with_references: bool = False, log: Any = None) -> list[RunOutcome]:
    """Run the unfinished runs of ``specs`` on ``executor`` (default: here, one at a time); with
    ``with_references`` also measure the reference returns. One outcome per spec."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    reopen_shorter(specs, work)
    outcomes = run_specs(specs, work, executor or LocalExecutor(1), log=log)
    if with_references and specs:
        references(specs[0], work)
    return outcomes


# -- the report -------------------------------------------------------------------------------
def collect(specs: Sequence[SweepRun], work: str | Path) -> dict[str, dict[str, Any]]:
    """Finished runs (those the run store records as done): name → {spec, returns, fidelity,
    summary, stats}."""
    path = Path(work) / STORE_NAME
    if not path.exists():
        return {}
    store = RunStore(path)
    try:
        runs = store.runs()
        out = {}
        for sp in specs:
            if runs.get(sp.name, {}).get("status") != "done":
                continue
            ep = store.episodes(sp.name)
            out[sp.name] = {"spec": sp, "returns": np.array(ep["ret"]), "fidelity": np.array(ep["energy"]),
                            "summary": runs[sp.name]["summary"], "stats": curve_stats(ep["ret"])}
        return out
    finally:
        store.close()


def _agg(rows: list[dict[str, Any]], key: str) -> tuple[float, float, int]:
    """Mean over seeds, standard error, count."""
    vals = np.array([r["stats"][key] if key in r["stats"] else r["summary"][key] for r in rows], float)
    if len(vals) == 0:
        return float("nan"), float("nan"), 0
    se = float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    return float(vals.mean()), se, len(vals)


def _cell(m: float, se: float | None = None) -> str:
    """A return as the tables show it: 2 decimals, ± the standard error where defined, — if none."""
    if not np.isfinite(m):
        return "—"
    return f"{m:.2f}" if se is None or not np.isfinite(se) else f"{m:.2f} ± {se:.2f}"


def _paper(v: Sequence[float] | None) -> str:
    return " / ".join(f"{x:.2f}" for x in v) if v else "—"


def _group(done: dict[str, dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in done.values() if all(getattr(r["spec"], k) == v for k, v in match.items())]


def common_scale(done: dict[str, dict[str, Any]], work: Path) -> dict[str, float]:
    """Each finished run's trained policy replayed under the default weights (1, 1, 0.5), so
    that runs trained under different weights are compared on one scale (cached in
    ``<work>/eval_default_weights.json``)."""
    path = Path(work) / "eval_default_weights.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    for name, r in done.items():
        if name not in cache:
            cache[name] = evaluate_checkpoint(r["spec"], work, weights=(1.0, 1.0, 0.5))["return"]
    path.write_text(json.dumps(cache, indent=1, sort_keys=True))
    return cache


def table(what: str, specs: Sequence[SweepRun], done: dict[str, dict[str, Any]],
          work: Path) -> tuple[list[str], list[list[str]]]:
    """The sweep's table beside the paper's numbers: (header, rows of cells)."""
    agents = list(dict.fromkeys(sp.agent for sp in specs))
    rows: list[list[str]] = []
    if what == "lr":
        lrs = sorted({sp.lr for sp in specs}, reverse=True)
        head = ["agent"] + [f"MA mean @ {lr:g}" for lr in lrs] + ["best MA (any lr)", "final 10 @ 1e-4",
                                                                   "eval @ best lr", "paper best / @5e-3 / @1e-4"]
        for a in agents:
            cells = [LABELS[a]]
            best, best_lr = -np.inf, None
            for lr in lrs:
                group = _group(done, agent=a, lr=lr)
                cells.append(_cell(*_agg(group, "mean_ma")[:2]))
                b = _agg(group, "best_ma")[0]
                if group and b > best:
                    best, best_lr = b, lr
            cells.append(_cell(best) + (f" (lr {best_lr:g})" if best_lr else ""))
            cells.append(_cell(*_agg(_group(done, agent=a, lr=1e-4), "final10")[:2]))
            cells.append(_cell(*_agg(_group(done, agent=a, lr=best_lr), "eval_return")[:2]) if best_lr else "—")
            cells.append(_paper(PAPER_LR.get(a)))
            rows.append(cells)
        refs_path = Path(work) / "references.json"
        if refs_path.exists():
            for k, v in json.loads(refs_path.read_text()).items():
                paper = {"grape": PAPER_LR_REFS["GRAPE"], "mpc": PAPER_LR_REFS["MPC"]}.get(k)
                rows.append([f"{k} (reference, not learned)"] + [_cell(v)] * len(lrs) + [_cell(v), "", "",
                             _paper(paper)])
        for k, v in PAPER_LR_REFS.items():
            if k in ("ACKTR", "ACER", "Human"):
                rows.append([f"{k} (paper only; not implemented)"] + ["—"] * (len(lrs) + 3) + [_paper(v)])
    elif what == "n":
        head = ["N", "agent", "mean (MA)", "final 10", "best (max MA)", "eval", "eval mean F",
                "paper mean / final 10 / best"]
        for n in sorted({sp.n_spins for sp in specs}):
            for a in agents:
                group = _group(done, agent=a, n_spins=n)
                rows.append([str(n), a] + [_cell(*_agg(group, k)[:2]) for k in
                                           ("mean_ma", "final10", "best_ma", "eval_return", "eval_mean_fidelity")]
                            + [_paper(PAPER_N.get(n))])
    elif what == "weights":
        head = ["No", "(α1, α2, α3)", "agent", "mean (MA)", "final 10", "best (max MA)", "eval mean F",
                "eval return under (1, 1, 0.5)", "paper mean / final 10 / best"]
        common = common_scale(done, work)
        for i, w in enumerate(WEIGHTS):
            for a in agents:
                group = _group(done, agent=a, weights=w)
                vals = np.array([common[r["spec"].name] for r in group if r["spec"].name in common])
                se = vals.std(ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else None
                rows.append([str(i + 1), str(w), a] + [_cell(*_agg(group, k)[:2]) for k in
                                                        ("mean_ma", "final10", "best_ma", "eval_mean_fidelity")]
                            + [_cell(float(vals.mean()) if len(vals) else float("nan"), se)]
                            + [_paper(PAPER_WEIGHTS[i])])
    else:
        head = ["channel", "p", "agent", "mean (MA)", "final 10", "eval", "eval mean F", "paper"]
        for ch, p in dict.fromkeys((sp.channel, sp.p) for sp in specs):
            for a in agents:
                group = _group(done, agent=a, channel=ch, p=p)
                rows.append([ch or "none (exact)", f"{p:g}", a] + [_cell(*_agg(group, k)[:2]) for k in
                            ("mean_ma", "final10", "eval_return", "eval_mean_fidelity")] + ["Fig. 7: no numbers"])
    return head, rows


def write_report(what: str, specs: Sequence[SweepRun], work: str | Path, out: str | Path,
                 episodes: int) -> str:
    """``<out>/<what>.md``, ``.csv`` and ``.png`` from the finished runs of ``specs`` in ``work``
    (``episodes``: the run length named in the text). Returns the Markdown text."""
    work, out = Path(work), Path(out)
    done = collect(specs, work)
    out.mkdir(parents=True, exist_ok=True)
    n_seeds = len({sp.seed for sp in specs})
    scale = (f"{episodes} episodes × 50 steps per run, seeds 0–{n_seeds - 1} "
             f"({len(done)}/{len(specs)} runs finished); mean ± s.e. over seeds")
    head, cells = table(what, specs, done, work)
    rows = [dict(zip(head, c)) for c in cells]
    text = "\n".join([f"# Seed 004 sweep `{what}`\n\n{scale}.\n", *markdown_table(rows, head)]) + "\n"
    (out / f"{what}.md").write_text(text)
    write_csv(out / f"{what}.csv", rows)
    figure(what, specs, done, work, out / f"{what}.png", episodes)
    return text


def figure(what: str, specs: Sequence[SweepRun], done: dict[str, dict[str, Any]], work: Path, path: Path,
           episodes: int) -> None:
    """lr: learning curves per learning rate; n, weights: bars and curves; noise: return and
    fidelity against p."""
    plt = pyplot()
    agents = list(dict.fromkeys(sp.agent for sp in specs))

    def curve(rows: list[dict[str, Any]]) -> np.ndarray | None:
        if not rows:
            return None
        n = min(len(r["returns"]) for r in rows)
        return np.mean([moving_average(r["returns"][:n]) for r in rows], axis=0)

    if what == "lr":
        lrs = sorted({sp.lr for sp in specs}, reverse=True)
        fig, axes = plt.subplots(2, (len(lrs) + 1) // 2, figsize=(4 * ((len(lrs) + 1) // 2), 7), squeeze=False)
        refs = Path(work) / "references.json"
        for ax, lr in zip(axes.flat, lrs):
            for a in agents:
                c = curve(_group(done, agent=a, lr=lr))
                if c is not None:
                    ax.plot(c, label=a)
            if refs.exists():
                for k, v in json.loads(refs.read_text()).items():
                    ax.axhline(v, ls="--", lw=0.8, color="gray")
                    ax.text(0, v, k, fontsize=7, color="gray", va="bottom")
            ax.set_title(f"lr = {lr:g}")
            ax.set_xlabel("episode")
            ax.set_ylabel("return (MA 10)")
        axes.flat[0].legend(fontsize=7)
    elif what in ("n", "weights"):
        keys = sorted({sp.n_spins for sp in specs}) if what == "n" else list(range(len(WEIGHTS)))
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        cache = Path(work) / "eval_default_weights.json"
        for a in agents:
            means, bests = [], []
            for k in keys:
                rows = _group(done, agent=a, **({"n_spins": k} if what == "n" else {"weights": WEIGHTS[k]}))
                means.append(_agg(rows, "mean_ma")[0])
                bests.append(_agg(rows, "best_ma")[0])
                c = curve(rows)
                if c is not None:
                    ax2.plot(c, label=f"{a} {'N=' + str(k) if what == 'n' else 'No ' + str(k + 1)}")
            x = np.arange(len(keys))
            ax1.bar(x - 0.27, bests, 0.27, label=f"{a}: best (max MA)")
            ax1.bar(x, means, 0.27, label=f"{a}: mean (MA)")
            if what == "weights" and cache.exists():
                common = json.loads(cache.read_text())
                ev = [np.mean([common[r["spec"].name] for r in _group(done, agent=a, weights=WEIGHTS[k])
                               if r["spec"].name in common] or [np.nan]) for k in keys]
                ax1.bar(x + 0.27, ev, 0.27, label=f"{a}: eval under (1, 1, 0.5)")
            ax1.set_xticks(x, [str(k) if what == "n" else str(k + 1) for k in keys])
        ax1.set_xlabel("N" if what == "n" else "configuration (Table III row)")
        ax1.set_ylabel("return")
        ax1.legend(fontsize=7)
        ax2.set_xlabel("episode")
        ax2.set_ylabel("return (MA 10)")
        ax2.legend(fontsize=6, ncol=2)
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        chans = [c for c in dict.fromkeys(sp.channel for sp in specs) if c is not None]
        for a in agents:
            base_r = _agg(_group(done, agent=a, channel=None), "final10")[0]
            base_f = _agg(_group(done, agent=a, channel=None), "eval_mean_fidelity")[0]
            for ch in chans:
                ps = sorted({sp.p for sp in specs if sp.channel == ch})
                r = [base_r] + [_agg(_group(done, agent=a, channel=ch, p=p), "final10")[0] for p in ps]
                fdl = [base_f] + [_agg(_group(done, agent=a, channel=ch, p=p), "eval_mean_fidelity")[0] for p in ps]
                axes[0].plot([0] + ps, r, "o-", label=f"{a}, {ch}")
                axes[1].plot([0] + ps, fdl, "o-", label=f"{a}, {ch}")
        axes[0].set_ylabel("return, final 10 training episodes")
        axes[1].set_ylabel("mean fidelity, deterministic policy")
        for ax in axes:
            ax.set_xlabel("p per step and qubit")
        axes[0].legend(fontsize=7)
    fig.suptitle(f"seed 004, sweep {what} ({episodes} episodes per run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
