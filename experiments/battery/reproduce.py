"""``reproduce``: seed 000's tables and figures and its Sec. V extensions, resumable.

    status = reproduce(ReproduceOptions(what="table1", seeds=5), LocalExecutor(jobs=2))

The training targets (table1, table2, figS2, history, robust) build their charging runs as
:class:`~.training.ChargingRunSpec`s and hand them to :func:`qhil.experiments.run_specs`, which
skips the runs the work folder's run store records as finished and resumes the others from their
checkpoints; then the target's report is written from what has finished. tableS1, figS1 and
transfer report on the Table 1 runs without training. Run names: ``<env>/<regime>/seed<s>``
(Table 1, and Env1 with the scheduled w for table2, figS2, history, robust's reference),
``env1/second_order/w<w>/seed<s>`` (Fig. S2), ``env1/<regime>/hist<K>/seed<s>`` (history),
``env1/second_order/dr<lo>-<hi>[/hist<K>]/seed<s>`` (robust).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from ..runner import run_specs
from .fig_s1 import report_figS1
from .fig_s2 import report_figS2
from .grape import ensure_grape
from .history import report_history
from .options import ReproduceOptions
from .records import (RunSummary, Window, base_name, finished_summaries, history_name, parse_windows, recorded_runs,
                      robust_name, same_memory, weight_name)
from .robust import report_robust
from .table1 import print_table, print_unfinished, table1_specs, write_figures, write_table
from .table2 import report_table2
from .table_s1 import report_tableS1
from .training import ChargingRunSpec
from .transfer import report_transfer

REPORTS: dict[str, Callable[[ReproduceOptions], Any]] = {
    "table2": report_table2, "tableS1": report_tableS1, "figS1": report_figS1, "figS2": report_figS2,
    "history": report_history, "robust": report_robust, "transfer": report_transfer}


def sac_options(opts: ReproduceOptions, seed: int) -> Any:
    """The SAC options of a run of seed ``seed``: the config file (if any), then ``--train-args``'
    SAC options, then the seed and the run length."""
    from qhil.agents.sac_config import SACConfig
    overrides = {**dict(opts.train_fields.get("sac", {})), "seed": seed, "total_steps": opts.total_steps}
    if opts.config is not None:
        return SACConfig.from_file(opts.config, **overrides)
    return SACConfig.from_dict(overrides)


def specs_for(opts: ReproduceOptions) -> list[ChargingRunSpec]:
    """The runs of a training target, in the order they start ([] for the others)."""
    fields = {k: v for k, v in opts.train_fields.items() if k != "sac"}
    if opts.config is not None:           # an older options file's w_mean/w_width: the env's schedule
        from qhil.agents.sac_config import SACConfig
        legacy: dict[str, float] = {}
        SACConfig.from_file(opts.config, legacy)
        fields = {**legacy, **fields}

    def sac(seed: int) -> Any:
        return sac_options(opts, seed)

    if opts.what == "table1":
        return table1_specs(opts.envs, opts.regimes, opts.seeds, parse_windows(opts.windows), sac, fields)

    def env1(regime: str, seed: int, name: str, **extra: Any) -> ChargingRunSpec:
        kw = {"eval_every": opts.eval_every, "test_random": opts.test_random, **extra, **fields}   # flags: last wins
        return ChargingRunSpec(env="env1", regime=regime, sac=sac(seed), run=name, **kw)

    seeds = range(opts.seeds)
    cross = {"eval_envs": ("env1", "env2", "env3")}
    specs: list[ChargingRunSpec] = []
    if opts.what == "table2":
        specs = [env1(r, s, base_name(r, s), **cross) for s in seeds for r in opts.regimes]
    elif opts.what == "figS2":
        for s in seeds:
            for w in opts.weights:
                weight = {} if w == "scheduled" else {"weight": float(w)}
                specs.append(env1("second_order", s, weight_name(w, s), **cross, **weight))
    elif opts.what == "history":
        r, k = opts.history_regime, opts.history_window
        for s in seeds:
            specs += [env1(r, s, base_name(r, s), **cross), env1(r, s, history_name(r, k, s), **cross, history=k),
                      env1("full_state", s, base_name("full_state", s), **cross)]
    elif opts.what == "robust":
        lo, hi = opts.omega_range
        dr = {"omega_range": (lo, hi), "eval_random": opts.eval_random}
        specs = [env1("second_order", s, robust_name(lo, hi, s), **dr) for s in seeds]
        if opts.robust_history:
            k = opts.robust_history
            specs += [env1("second_order", s, robust_name(lo, hi, s, k), **dr, history=k) for s in seeds]
    return specs


def refuse_other_memory(work: Path, names: list[str], windows: dict[str, Window]) -> None:
    """Stop before any training if runs of these names were recorded with another window:
    they would be skipped as finished or resumed with the wrong inputs."""
    recorded = recorded_runs(work)
    other = [n for n in names if n in recorded and not same_memory(recorded[n]["config"], windows)]
    if other:
        raise SystemExit(f"{work} holds {len(other)} run(s) recorded with another --windows memory than this "
                         f"set-up's (e.g. {other[0]}): give these runs another --work-dir, or move those aside")


def reproduce(opts: ReproduceOptions, executor: Any = None) -> int:
    """Run the target's unfinished runs on ``executor`` (None: one at a time here), then write
    its report. Exit status: 0, or 1 when a run failed (the report shows the finished runs; none
    is written when every run failed and none had finished before)."""
    work = opts.work
    specs = [] if opts.report_only else specs_for(opts)
    outcomes = []
    if specs:
        if opts.what == "table1":
            refuse_other_memory(work, [s.name for s in specs], parse_windows(opts.windows))
        outcomes = run_specs(specs, work, executor)
        failed = [o for o in outcomes if o.status == "failed"]
        if opts.what == "table1":
            for env in opts.envs:                 # ceilings last: training is the long part
                ensure_grape(env, opts.grape)
        if failed and len(failed) == len(outcomes):
            print(f"qhil: error: all {len(failed)} run(s) failed and none had finished before "
                  f"(see {work / 'logs'}); no table written", file=sys.stderr)
            return 1
    if opts.what == "table1":
        windows = parse_windows(opts.windows)
        rows = write_table(opts.envs, opts.regimes, work, Path(opts.out_dir), opts.seeds, opts.grape, windows)
        print_table(rows)
        print_unfinished(work)
        write_figures(list(opts.envs), list(opts.regimes), work, Path(opts.out_dir), opts.grape, windows)
    else:
        REPORTS[opts.what](opts)
    failed = [o.name for o in outcomes if o.status == "failed"]
    if failed:
        print(f"qhil: error: {len(failed)} of {len(outcomes)} run(s) failed (e.g. {failed[0]}); "
              f"see {work / 'logs'}; the table shows the finished runs only", file=sys.stderr)
        return 1
    return 0


__all__ = ["ReproduceOptions", "RunSummary", "finished_summaries", "reproduce", "sac_options", "specs_for"]
