"""Reading a work folder of charging runs: which runs are finished (the run store says), their
summaries, the memory windows of a set-up, run names and the GRAPE ceilings.

A run's summary comes from its run store's finish record (:func:`~.training.train_run`); work
folders written before the runner also hold ``summaries/<run>.json``, read only for fields the
store's record lacks (the held-out scores of a selected policy).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

ENVS = ["env1", "env2", "env3"]
REGIMES = ["second_order", "full_state", "energies", "first_order"]   # run order: the key comparison first
STORE_NAME = "runs.sqlite"


class Window(NamedTuple):
    """A regime's memory (:class:`~qhil.envs.history.HistoryVectorEnv`): the last ``size``
    observations, or (``of="actions"``) the current observation and the last ``size`` actions."""
    size: int
    of: str = "observations"

    def spec_fields(self) -> dict[str, Any]:
        """The :class:`~.training.ChargingRunSpec` fields of this window."""
        return {"history": self.size, "history_of": self.of}

    def matches(self, config: dict[str, Any]) -> bool:
        """Whether a run's recorded config has this window."""
        return config.get("history") == self.size and config.get("history_of", "observations") == self.of


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


def same_memory(config: dict[str, Any], windows: dict[str, Window]) -> bool:
    """Whether a run's recorded config has the set-up's window for its regime (none if unnamed)."""
    w = windows.get(config.get("regime"))
    return w.matches(config) if w else config.get("history") is None


def runs_by_cell(runs: dict[str, dict[str, Any]], windows: dict[str, Window]) -> dict[tuple[str, str], list[str]]:
    """(env, regime) → names of the recorded runs (``RunStore.runs()``) with the set-up's window
    for their regime, sorted; cells without such runs are left out."""
    out: dict[tuple[str, str], list[str]] = {}
    for name, v in sorted(runs.items()):
        if same_memory(v["config"], windows):
            out.setdefault((v["config"].get("env"), v["config"].get("regime")), []).append(name)
    return out


def open_store(work: Path) -> Any:
    """The work folder's run store, or None if it has none."""
    from qhil.agents.runstore import RunStore
    db = Path(work) / STORE_NAME
    return RunStore(db) if db.exists() else None


def recorded_runs(work: Path) -> dict[str, dict[str, Any]]:
    """``RunStore.runs()`` of the work folder ({} without a store)."""
    store = open_store(work)
    if store is None:
        return {}
    try:
        return store.runs()
    finally:
        store.close()


def legacy_summary_path(work: Path, run: str) -> Path:
    """Where the job runner before :func:`qhil.experiments.run_specs` wrote a run's full summary."""
    return Path(work) / "summaries" / (run.replace("/", "_") + ".json")


class RunSummary(NamedTuple):
    """What the reports read of a finished run (terminal ergotropies in ω_0)."""
    steps: int
    best_explored: float
    deterministic: float
    config: dict[str, Any]
    selection_report: dict[str, float] | None
    selection_heldout: dict[str, float] | None


def finished_summaries(work: Path, names: list[str] | None = None) -> dict[str, RunSummary]:
    """{name: summary} of the runs the store records as finished (all, or those in ``names``)."""
    runs = recorded_runs(work)
    out: dict[str, RunSummary] = {}
    for name, rec in runs.items():
        if rec["status"] != "done" or (names is not None and name not in names):
            continue
        s = rec["summary"] or {}
        report, heldout = s.get("selection_report"), s.get("selection_heldout")
        if report is not None and heldout is None:            # recorded before the runner: the JSON has it
            path = legacy_summary_path(work, name)
            if path.exists():
                heldout = json.loads(path.read_text()).get("selection", {}).get("heldout")
        out[name] = RunSummary(int(s.get("steps", 0)), s.get("best_explored", float("nan")),
                               s.get("deterministic", float("nan")), rec["config"], report, heldout)
    return out


def table1_runs(work: Path, windows: dict[str, Window]) -> dict[tuple[str, str], list[str]]:
    """(env, regime) → names of the finished Table 1 runs: no weight, randomisation or
    selection, and the set-up's window for the regime (``windows``)."""
    other = {"weight", "omega_range", "omega_spread", "eval_envs", "eval_random"}
    finished = {name: v for name, v in recorded_runs(work).items()
                if v["status"] == "done" and not other & set(v["config"])}
    return runs_by_cell(finished, windows)


def grape_ceilings(grape_dir: Path) -> dict[str, float]:
    """{env: GRAPE ergotropy} of the ``grape_<env>.json`` files in ``grape_dir``."""
    res = {}
    for env in ENVS:
        p = Path(grape_dir) / f"grape_{env}.json"
        if p.exists():
            res[env] = float(json.loads(p.read_text())["ergotropy"])
    return res


# -- run names ----------------------------------------------------------------------------
def table1_name(env: str, regime: str, seed: int) -> str:
    return f"{env}/{regime}/seed{seed}"


def base_name(regime: str, seed: int) -> str:
    """An Env1 run with the scheduled weight (Table 2, Fig. S2, history, robust's reference)."""
    return f"env1/{regime}/seed{seed}"


def weight_name(w: str, seed: int) -> str:
    return base_name("second_order", seed) if w == "scheduled" else f"env1/second_order/w{float(w):g}/seed{seed}"


def history_name(regime: str, window: int, seed: int) -> str:
    return f"env1/{regime}/hist{window}/seed{seed}"


def robust_name(lo: float, hi: float, seed: int, window: int = 0) -> str:
    hist = f"/hist{window}" if window else ""
    return f"env1/second_order/dr{lo:g}-{hi:g}{hist}/seed{seed}"
