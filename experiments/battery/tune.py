"""Hyperparameter search over SAC options for one charging cell (env, regime) on Ray Tune.

    rows = tune_sac(TuneSetup(env="env1", regime="second_order", total_steps=6000), "runs/tune")

* The **search space** (:data:`SEARCH_SPACE`): Adam learning rate ``lr`` (log-uniform),
  ``updates_per_step``, ``batch_size`` and the entropy target's limit ``entropy_end``
  (nats on the normalised action); every other SAC option is the setup's base (the defaults,
  with ``learning_starts`` of the setup).
* **ASHA** early stopping (``ray.tune.schedulers.ASHAScheduler``) on the best explored
  terminal ergotropy (Table 1's metric), reported every ``report_every`` episodes.
* **Resumable**: the search lives in ``<work_dir>/tune/<name>`` (``Tuner.restore`` picks it
  up, unfinished trials restart), and each trial's SAC run resumes its own checkpoint
  ``<work_dir>/<run>.pt``.
* **Recorded**: each trial is a run ``tune/<name>/<trial>`` of the run store
  ``<work_dir>/runs.sqlite`` (its episodes and config, as any training run); when the search
  ends each trial's summary (its options, last report, whether ASHA stopped it) is written
  with ``RunStore.finish_run``.

:class:`SACTrialSpec` is one such SAC run as a run spec (:mod:`qhil.experiments.runner`):
the comparison of the best options against the defaults at equal steps and seeds runs
through the one runner (:func:`compare_specs`). Ray is needed only for :func:`tune_sac`
(``pip install 'qhil[cluster]'``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Callable

from qhil.drivers import ValidationError

#: The options searched, as (kind, arguments): ``loguniform`` (lo, hi), ``choice`` (values),
#: ``uniform`` (lo, hi).
SEARCH_SPACE: dict[str, tuple[str, tuple[Any, ...]]] = {
    "lr": ("loguniform", (1e-4, 3e-3)),
    "updates_per_step": ("choice", (0.5, 1.0, 2.0)),
    "batch_size": ("choice", (64, 128, 256)),
    "entropy_end": ("uniform", (-5.0, -1.0)),
}
#: The metric ASHA compares (best terminal ergotropy explored so far; maximised).
METRIC = "best_explored"
REGIMES = ("full_state", "energies", "first_order", "second_order")


@dataclasses.dataclass(frozen=True)
class SACTrialSpec:
    """One SAC charging run on a preset env — a ``qhil train`` run
    (:class:`~qhil.experiments.battery.training.ChargingRunSpec`) with the defaults of
    :class:`SACConfig` and ``total_steps``, ``learning_starts``, ``seed`` and the ``options``
    (a tuple of (name, value) pairs) on top. A run spec: ``execute(work_dir)`` trains (resuming
    its checkpoint), evaluates, records the run ``name`` in ``<work_dir>/runs.sqlite`` and
    returns the summary the run store holds (``best_explored`` and ``deterministic`` terminal
    ergotropies, units of ω_0; steps, episodes, …)."""

    name: str
    env: str = "env1"
    regime: str = "second_order"
    total_steps: int = 3000
    learning_starts: int = 1000
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()
    report_every: int = 0            # episodes between reports to ``report`` (0: none)

    def __post_init__(self) -> None:
        from qhil.envs import ENVIRONMENTS
        if not isinstance(self.name, str) or not self.name:
            raise ValidationError("name", f"{self.name!r}", "a non-empty run name")
        if self.env not in ENVIRONMENTS:
            raise ValidationError("env", f"{self.env!r}", ", ".join(ENVIRONMENTS))
        if self.regime not in REGIMES:
            raise ValidationError("regime", f"{self.regime!r}", ", ".join(REGIMES))
        if isinstance(self.report_every, bool) or not isinstance(self.report_every, int) or self.report_every < 0:
            raise ValidationError("report_every", f"{self.report_every!r}", "an integer ≥ 0 (episodes)")
        self.charging_spec().sac_config()                   # validates the SAC options

    def charging_spec(self) -> Any:
        """The ``qhil train`` run this trial is."""
        from qhil.experiments.battery.training import ChargingRunSpec
        return ChargingRunSpec(env=self.env, regime=self.regime, run=self.name, progress=False,
                               sac={"total_steps": self.total_steps, "learning_starts": self.learning_starts,
                                    "seed": self.seed, **dict(self.options)})

    def execute(self, work_dir: Path, report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train, evaluate, record; with ``report`` (Ray Tune's ``tune.report``), a thread reads
        the run store and reports the best explored ergotropy at every ``report_every``-th
        episode (the value at that episode, whenever it is read)."""
        from qhil.agents.runstore import RunStore
        work_dir = Path(work_dir)
        done = threading.Event()
        watcher = None
        if report is not None and self.report_every:
            watcher = threading.Thread(target=_report_rounds, daemon=True,
                                       args=(work_dir / "runs.sqlite", self.name, self.report_every, report, done))
            watcher.start()
        try:
            self.charging_spec().execute(work_dir)
        finally:
            done.set()
            if watcher is not None:
                watcher.join()
        store = RunStore(work_dir / "runs.sqlite")
        try:
            return store.runs()[self.name]["summary"]
        finally:
            store.close()


def _report_rounds(db: Path, run: str, every: int, report: Callable[[dict[str, Any]], None],
                   done: threading.Event) -> None:
    """Report ``run``'s best-so-far at episodes every, 2 every, … as they appear in the store."""
    from qhil.agents.runstore import RunStore
    nxt = every
    while True:
        finished = done.wait(1.0)
        if db.exists():
            store = RunStore(db)
            try:
                ep = store.episodes(run)
            finally:
                store.close()
            while len(ep["episode"]) >= nxt:
                report({METRIC: float(ep["best"][nxt - 1]), "episode": nxt, "step": int(ep["step"][nxt - 1])})
                nxt += every
        if finished:
            return


@dataclasses.dataclass(frozen=True)
class TuneSetup:
    """A search: ``num_samples`` trials of ``total_steps`` env steps each on (env, regime),
    reporting every ``report_every`` episodes; ASHA keeps 1/``reduction_factor`` of the trials
    at each rung, the first after ``grace_rounds`` reports; ``max_concurrent`` trials at a time
    (1 CPU each); the draws of the search space are seeded by ``search_seed``."""

    name: str = "search"
    env: str = "env1"
    regime: str = "second_order"
    total_steps: int = 3000
    learning_starts: int = 1000
    seed: int = 0
    num_samples: int = 8
    report_every: int = 10
    grace_rounds: int = 2
    reduction_factor: int = 2
    max_concurrent: int = 2
    search_seed: int = 0

    def __post_init__(self) -> None:
        for f, lo, hi in (("num_samples", 1, 10_000), ("report_every", 1, 10**6), ("grace_rounds", 1, 10**6),
                          ("reduction_factor", 2, 100), ("max_concurrent", 1, 1024), ("search_seed", 0, 2**32 - 1)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValidationError(f, f"{v!r}", f"an integer in [{lo}, {hi}]")
        if not isinstance(self.name, str) or not self.name or "/" in self.name or self.name.startswith("."):
            raise ValidationError("name", f"{self.name!r}", "a non-empty folder name without '/'")
        self.trial("probe", ())                              # validates env, regime and the SAC options

    @property
    def rounds(self) -> int:
        """Reports a full trial makes (28-step episodes)."""
        return max(1, math.ceil(self.total_steps / 28) // self.report_every)

    def trial(self, trial_id: str, options: tuple[tuple[str, Any], ...]) -> SACTrialSpec:
        return SACTrialSpec(name=f"tune/{self.name}/{trial_id}", env=self.env, regime=self.regime,
                            total_steps=self.total_steps, learning_starts=self.learning_starts, seed=self.seed,
                            options=options, report_every=self.report_every)


def param_space() -> dict[str, Any]:
    """:data:`SEARCH_SPACE` as Ray Tune domains."""
    from ray import tune
    make = {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
            "choice": lambda a: tune.choice(list(a))}
    return {k: make[kind](args) for k, (kind, args) in SEARCH_SPACE.items()}


def _options(config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    out = []
    for k in sorted(SEARCH_SPACE):
        v = config[k]
        out.append((k, int(v) if k == "batch_size" else float(v)))
    return tuple(out)


def _trainable(config: dict[str, Any], setup: TuneSetup, work_dir: str) -> None:
    """One Tune trial: the SAC run of its options, reporting to Tune."""
    from ray import tune
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    spec = setup.trial(tune.get_context().get_trial_id(), _options(config))
    summary = spec.execute(Path(work_dir), report=tune.report)
    tune.report({METRIC: summary["best_explored"], "deterministic": summary["deterministic"],
                 "episode": summary["episodes"], "step": summary["steps"], "finished": True})


def tune_sac(setup: TuneSetup, work_dir: str | Path, address: str | None = None,
             progress: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) the search; record every trial in the run store; return one row per
    trial (its options, best explored and, for trials that ran to the end, deterministic
    ergotropy; ``stopped`` when ASHA ended it early), best first. ``address``: a Ray cluster
    (``auto``, ``ray://host:10001``) or None to start Ray on this machine."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from qhil.agents.runstore import RunStore
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "tune" / setup.name
    recorded = path / "qhil_setup.json"
    if recorded.exists():                            # a resume must search the same thing
        before = json.loads(recorded.read_text())
        now = json.loads(json.dumps(dataclasses.asdict(setup)))
        changed = {k: (before.get(k), v) for k, v in now.items() if before.get(k) != v}
        if changed:
            raise ValidationError(", ".join(changed), f"search {setup.name!r} in {work_dir} was started with "
                                  f"(recorded, now) {changed}", "the recorded options, or another --name")
    if not ray.is_initialized():
        if address is None:
            ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False)
    trainable = tune.with_resources(tune.with_parameters(_trainable, setup=setup, work_dir=str(work_dir)),
                                    {"cpu": 1})
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space(),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", num_samples=setup.num_samples,
                search_alg=BasicVariantGenerator(random_state=setup.search_seed, max_concurrent=setup.max_concurrent),
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=setup.rounds + 1,
                                        grace_period=min(setup.grace_rounds, setup.rounds),
                                        reduction_factor=setup.reduction_factor)),
            run_config=tune.RunConfig(name=setup.name, storage_path=str(work_dir / "tune"),
                                      verbose=1 if progress else 0))
    if not recorded.exists():
        path.mkdir(parents=True, exist_ok=True)
        recorded.write_text(json.dumps(dataclasses.asdict(setup), indent=1))
    grid = tuner.fit()
    rows = []
    store = RunStore(work_dir / "runs.sqlite")
    try:
        recorded = store.runs()
        for res in grid:
            trial_id = Path(res.path).name.split("_")[1] if res.path else "?"
            m = res.metrics or {}
            trial_id = m.get("trial_id", trial_id)
            run = setup.trial(trial_id, _options(res.config)).name
            row = {"trial": trial_id, **dict(_options(res.config)), METRIC: m.get(METRIC),
                   "deterministic": m.get("deterministic"), "steps": m.get("step"),
                   "stopped": not m.get("finished", False), "error": str(res.error) if res.error else None}
            rows.append(row)
            if run in recorded and recorded[run]["status"] != "done" and not row["error"]:   # stopped by ASHA
                store.finish_run(run, row)
    finally:
        store.close()
    rows.sort(key=lambda r: -(r[METRIC] if r[METRIC] is not None else -math.inf))
    return rows


def compare_specs(setup: TuneSetup, options: tuple[tuple[str, Any], ...], seeds: tuple[int, ...],
                  label: str = "tuned") -> list[SACTrialSpec]:
    """Runs of the defaults (``compare/<name>/default/seedN``) and of ``options``
    (``compare/<name>/<label>/seedN``) at the setup's steps, for each seed: equal steps, same seeds."""
    out = []
    for s in seeds:
        for lab, opts in (("default", ()), (label, options)):
            out.append(SACTrialSpec(name=f"compare/{setup.name}/{lab}/seed{s}", env=setup.env, regime=setup.regime,
                                    total_steps=setup.total_steps, learning_starts=setup.learning_starts,
                                    seed=s, options=opts))
    return out


def format_trial(row: dict[str, Any]) -> str:
    """One line of a trial row."""
    opts = ", ".join(f"{k} {row[k]:.3g}" for k in sorted(SEARCH_SPACE))
    b, d = row.get(METRIC), row.get("deterministic")
    return (f"trial {row['trial']}: {opts}: best explored {b if b is None else f'{b:.4f}'}"
            + (f", deterministic {d:.4f}" if d is not None else "")
            + (" (stopped by ASHA)" if row.get("stopped") else "") + (f" ERROR {row['error']}" if row.get("error") else ""))


def compare(setup: TuneSetup, rows: list[dict[str, Any]], seeds: tuple[int, ...], work_dir: str | Path,
            jobs: int = 2, progress: bool = True) -> dict[str, Any]:
    """Train the best trial's options and the defaults at the setup's steps on ``seeds`` (the
    one runner, a local pool of ``jobs``); {"rows": per (setup, seed), "summary": per setup
    (mean and 95 % CI half-width over seeds), "text", "failed"}."""
    from qhil.experiments.runner import LocalExecutor, failed_message, run_specs
    from qhil.experiments.stats import mean_ci
    best = next((r for r in rows if r.get(METRIC) is not None and not r.get("error")), None)
    if best is None:
        raise ValidationError("rows", "no trial of the search reported a result", "a search with a finished trial")
    options = tuple((k, best[k]) for k in sorted(SEARCH_SPACE))
    specs = compare_specs(setup, options, seeds)
    outcomes = run_specs(specs, work_dir, LocalExecutor(jobs), progress=progress)
    per_seed, summary = [], []
    for spec, o in zip(specs, outcomes):
        if o.summary is not None:
            per_seed.append({"setup": spec.name.split("/")[-2], "seed": spec.seed,
                             METRIC: o.summary[METRIC], "deterministic": o.summary["deterministic"]})
    for lab in ("default", "tuned"):
        got = [r for r in per_seed if r["setup"] == lab]
        row: dict[str, Any] = {"setup": lab, "runs": len(got)}
        for k in (METRIC, "deterministic"):
            m, h, _ = mean_ci([r[k] for r in got])
            row[k], row[k + "_ci95"] = m, h
        row |= {k: (dict(options)[k] if lab == "tuned" else _default(k)) for k in sorted(SEARCH_SPACE)}
        summary.append(row)
    text = "\n".join(f"{r['setup']:>8}: best explored {r[METRIC]:.4f} ± {r[METRIC + '_ci95']:.4f}, deterministic "
                     f"{r['deterministic']:.4f} ± {r['deterministic_ci95']:.4f} ({r['runs']} seeds)" for r in summary)
    return {"rows": per_seed, "summary": summary, "options": dict(options), "text": text,
            "failed": failed_message(outcomes, work_dir)}


def _default(option: str) -> Any:
    from qhil.agents.sac_config import SACConfig
    return getattr(SACConfig(), option)


def write_report(setup: TuneSetup, rows: list[dict[str, Any]], comparison: dict[str, Any] | None,
                 out: str | Path) -> list[Path]:
    """``tune_<name>_trials.csv`` and, with a comparison, ``tune_<name>_compare.csv`` and a
    Markdown page ``tune_<name>.md`` of both."""
    from qhil.experiments.reports import markdown_table, write_csv
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cols = ["trial", *sorted(SEARCH_SPACE), METRIC, "deterministic", "steps", "stopped"]
    trials = [{c: _cell(c, r.get(c)) for c in cols} for r in rows]
    paths = [out / f"tune_{setup.name}_trials.csv"]
    write_csv(paths[0], trials)
    lines = [f"# qhil tune: {setup.env} {setup.regime}", "",
             f"{setup.num_samples} trials of {setup.total_steps} env steps (learning starts {setup.learning_starts}, "
             f"SAC seed {setup.seed}, search seed {setup.search_seed}); ASHA on the best explored ergotropy every "
             f"{setup.report_every} episodes, grace {setup.grace_rounds} reports, reduction factor "
             f"{setup.reduction_factor}.", "", "## Trials (best first)", "", *markdown_table(trials, cols)]
    if comparison is not None:
        paths.append(out / f"tune_{setup.name}_compare.csv")
        write_csv(paths[-1], comparison["summary"])
        ccols = ["setup", "runs", METRIC, METRIC + "_ci95", "deterministic", "deterministic_ci95", *sorted(SEARCH_SPACE)]
        lines += ["", f"## Best options vs the defaults at {setup.total_steps} steps, same seeds "
                  f"({', '.join(str(r['seed']) for r in comparison['rows'] if r['setup'] == 'default')})", "",
                  *markdown_table([{c: _cell(c, r[c]) for c in ccols} for r in comparison["summary"]], ccols),
                  "", "Per seed:", "",
                  *markdown_table(comparison["rows"], ["setup", "seed", METRIC, "deterministic"])]
    paths.append(out / f"tune_{setup.name}.md")
    paths[-1].write_text("\n".join(lines) + "\n")
    return paths


def _cell(col: str, v: Any) -> Any:
    """A table cell: the learning rate to 3 significant figures, a missing value as an empty cell."""
    if v is None:
        return ""
    return f"{v:.3g}" if col == "lr" else v
