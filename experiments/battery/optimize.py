"""Closed-loop optimisation of a charging protocol on measured figures of merit, against any
backend (statevector, aer, a lab over ``zmq://``, a :class:`~qhil.lab.device_backend.DeviceBackend`),
recorded evaluation by evaluation and resumable (the work of ``qhil optimize``).

    spec = OptimizeSpec(start=tuple(grape_protocol), method="cmaes", fom="energy", shots=200,
                        max_shots=200_000, reevaluate=3, seed=0, run="cmaes-seed0")
    summary = run_optimization(spec, backend, Path("runs/opt"), on_evaluation=print)

The store ``<work_dir>/optimize.sqlite`` holds a ``runs`` table (config JSON, status, summary)
and an ``evaluations`` table: every measurement (controls, figure of merit, std, shots,
device seconds, kind "candidate" | "reeval" | "reference", wall time), committed before the
next one is made. Running the same spec again replays the stored measurements through the
same (deterministic) optimiser, checking that each requested protocol is the recorded one to
1e-12, and continues live after the last: an interrupted run ends exactly as an uninterrupted
one would (a finished run is replayed without touching the backend). Each live batch's shot
noise is seeded from (seed, index of its first evaluation).
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from qhil.agents.closed_loop import BASES, METHODS
from qhil.drivers import ValidationError
from qhil.drivers import checks as check
from qhil.envs.figure_of_merit import FIGURES
#: default initial steps (x units: ω_0 for piecewise, amplitudes for dCRAB); SPSA moves every
#: component at once, so its first step is small
DEFAULT_SIGMA0 = {"cmaes": 0.03, "nelder-mead": 0.03, "powell": 0.03, "spsa": 0.002}
#: largest budget accepted (evaluations and shots)
MAX_BUDGET = 10**12

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY, config TEXT NOT NULL, status TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, summary TEXT);
CREATE TABLE IF NOT EXISTS evaluations (
    run TEXT NOT NULL, idx INTEGER NOT NULL, kind TEXT NOT NULL, controls TEXT NOT NULL,
    fom REAL NOT NULL, std REAL NOT NULL, shots INTEGER NOT NULL, device_s REAL NOT NULL,
    wall_s REAL NOT NULL, time REAL NOT NULL, PRIMARY KEY (run, idx));
"""


def _int_or_none(name: str, value: Any, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
        raise ValidationError(name, f"{value!r}", f"an integer in [{lo}, {hi}]")
    return int(value)


def _positive(name: str, value: Any, hi: float = 100.0) -> float:
    return check.finite_float(name, value, 0.0, hi, lo_open=True)


@dataclasses.dataclass(frozen=True)
class OptimizeSpec:
    """One closed-loop optimisation run (validated on construction, before any work).

    start:       the start protocol λ (K values, ω_0, within the coupling bound)
    model, env:  the device model (a model dict, e.g. ``DickeBattery.to_dict()``) or a preset name
    tau, n_steps: charging time τ (1/ω_0) and K steps
    method:      cmaes | nelder-mead | powell | spsa;  basis: piecewise | dcrab (``components``)
    fom, shots:  energy | ergotropy, measured with ``shots`` per setting (None: exact)
    max_evals, max_shots: the budget (at least one; every measurement counts)
    reevaluate:  re-measurements of each new incumbent and at the end (default 3 with shots, 0 exact)
    drift_every: measure the reference (``reference``, default the start) every m candidates
    sigma0:      initial step (CMA-ES σ0, simplex size, Powell directions, SPSA first step;
                 default :data:`DEFAULT_SIGMA0`)
    popsize, spsa_c, spsa_a0: CMA-ES population, SPSA perturbation and stability constant A
    seed, run:   the optimiser's and the shot noise's seed; the run's name in the store
    """

    start: tuple[float, ...]
    model: dict[str, Any] | None = None
    env: str = "env1"
    tau: float = 5.6
    n_steps: int = 28
    method: str = "cmaes"
    basis: str = "piecewise"
    components: int | None = None
    fom: str = "energy"
    shots: int | None = 1000
    max_evals: int | None = None
    max_shots: int | None = None
    reevaluate: int | None = None
    drift_every: int | None = None
    reference: tuple[float, ...] | None = None
    sigma0: float | None = None
    popsize: int | None = None
    spsa_c: float | None = None
    spsa_a0: float = 10.0
    seed: int = 0
    run: str = "optimize"

    def __post_init__(self) -> None:
        from qhil.agents.closed_loop import make_parametrisation
        from qhil.envs.figure_of_merit import shots_per_evaluation
        if self.method not in METHODS:
            raise ValidationError("method", f"{self.method!r}", ", ".join(METHODS))
        if self.basis not in BASES:
            raise ValidationError("basis", f"{self.basis!r}", ", ".join(BASES))
        if self.fom not in FIGURES:
            raise ValidationError("fom", f"{self.fom!r}", ", ".join(FIGURES))
        _int_or_none("n_steps", self.n_steps, 1, 10_000)
        _positive("tau", self.tau, 1e4)
        _int_or_none("shots", self.shots, 1, 10_000_000)
        _int_or_none("seed", self.seed, 0, 2**63 - 1)
        if not isinstance(self.run, str) or not self.run.strip():
            raise ValidationError("run", f"{self.run!r}", "a non-empty name")
        for name in ("max_evals", "max_shots"):
            _int_or_none(name, getattr(self, name), 1, MAX_BUDGET)
        if self.max_evals is None and self.max_shots is None:
            raise ValidationError("max_evals", "no budget given", "max_evals and/or max_shots, integers ≥ 1")
        if self.max_shots is not None and self.shots is None:
            raise ValidationError("max_shots", "exact figures (shots=None) spend no shots", "max_evals with exact figures")
        object.__setattr__(self, "reevaluate", _int_or_none("reevaluate", self.reevaluate, 0, 10_000)
                           if self.reevaluate is not None else (0 if self.shots is None else 3))
        _int_or_none("drift_every", self.drift_every, 1, MAX_BUDGET)
        _int_or_none("popsize", self.popsize, 2, 10_000)
        if self.sigma0 is None:
            object.__setattr__(self, "sigma0", DEFAULT_SIGMA0[self.method])
        _positive("sigma0", self.sigma0)
        if self.spsa_c is not None:
            _positive("spsa_c", self.spsa_c)
        if isinstance(self.spsa_a0, bool) or not (isinstance(self.spsa_a0, (int, float)) and 0 <= self.spsa_a0 <= 1e6):
            raise ValidationError("spsa_a0", f"{self.spsa_a0!r}", "a number in [0, 1e6]")
        if self.method != "cmaes" and self.popsize is not None:
            raise ValidationError("popsize", "applies to cmaes only", "omit it")
        if self.method != "spsa" and self.spsa_c is not None:
            raise ValidationError("spsa_c", "applies to spsa only", "omit it")
        if self.reference is not None and self.drift_every is None:
            raise ValidationError("reference", "given without drift_every", "drift_every m with a reference")
        battery = self.battery()
        lo, hi = (float(battery.controls[0].lower), float(battery.controls[0].upper))
        start = tuple(check.protocol("start", self.start, self.n_steps).tolist())
        object.__setattr__(self, "start", start)
        if self.reference is not None:
            ref = check.protocol("reference", self.reference, self.n_steps, (lo, hi))
            object.__setattr__(self, "reference", tuple(ref.tolist()))
        make_parametrisation(self.basis, start, lo, hi, self.components, self.seed)   # checks start, components
        need = 1 + 2 * self.reevaluate + (1 if self.drift_every else 0)
        if self.max_evals is not None and self.max_evals < need:
            raise ValidationError("max_evals", f"{self.max_evals} cannot measure the start and re-evaluate it",
                                  f"an integer ≥ {need} (1 + 2·reevaluate, + 1 with drift_every)")
        per = shots_per_evaluation(battery, self.fom, self.shots)
        if self.max_shots is not None and self.max_shots < need * per:
            raise ValidationError("max_shots", f"{self.max_shots} cannot measure the start and re-evaluate it",
                                  f"an integer ≥ {need * per} ({need} evaluations × {per} shots)")

    def battery(self) -> Any:
        """The device model (DickeBattery)."""
        import qhil.envs  # noqa: F401  (registers the built-in models)
        from qhil.drivers import model_from_dict
        from qhil.envs import ENVIRONMENTS, DickeBattery
        if self.model is not None:
            if not isinstance(self.model, dict):
                raise ValidationError("model", f"expected a model dict, got {type(self.model).__name__}")
            model = model_from_dict(self.model)
            if not isinstance(model, DickeBattery):
                raise ValidationError("model", f"a {model.kind} model", "a Dicke battery")
            return model
        if self.env not in ENVIRONMENTS:
            raise ValidationError("env", f"{self.env!r}", ", ".join(ENVIRONMENTS))
        return DickeBattery(omegas=ENVIRONMENTS[self.env])

    @property
    def dt(self) -> float:
        return self.tau / self.n_steps

    def config(self) -> dict[str, Any]:
        """JSON-friendly settings (the run's identity in the store)."""
        doc = dataclasses.asdict(self)
        doc["start"] = list(self.start)
        doc["reference"] = None if self.reference is None else list(self.reference)
        doc["model"] = self.battery().to_dict()
        return doc


def start_protocol(text: str, battery: Any, n_steps: int, tau: float | None = None) -> np.ndarray:
    """The start protocol (K,) from ``constant:0.3``, a protocol file (GRAPE result, list or
    ``{controls, dt}``) or a ``qhil train --run-dir`` folder (its best explored protocol;
    ``DIR::NAME`` for one of several): :func:`~.deployment.reference_protocol`, errors naming
    ``start``. A recorded Δt must be τ/K (τ default 5.6)."""
    from .deployment import reference_protocol
    return reference_protocol(text, n_steps, 5.6 if tau is None else tau, name="start")[0]


# -- the store ---------------------------------------------------------------------------------
class OptimizeStore:
    """``optimize.sqlite``: runs (config, status, summary) and every evaluation, one transaction each."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=60.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        for stmt in filter(str.strip, _SCHEMA.split(";")):
            self.db.execute(stmt)

    def open_run(self, name: str, config: dict[str, Any]) -> list[dict[str, Any]]:
        """Start or resume ``name``; its stored evaluations (refused if the config differs)."""
        row = self.db.execute("SELECT config FROM runs WHERE run = ?", (name,)).fetchone()
        text = json.dumps(config, sort_keys=True)
        now = time.time()
        if row is None:
            self.db.execute("INSERT INTO runs VALUES (?, ?, 'running', ?, ?, NULL)", (name, text, now, now))
            return []
        if json.loads(row[0]) != json.loads(text):
            old = json.loads(row[0])
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != json.loads(text).get(k))
            raise ValidationError("run", f"run {name!r} was recorded with other settings ({', '.join(diff)})",
                                  "the same settings to resume, or another --run name")
        return self.evaluations(name)

    def evaluations(self, name: str) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT idx, kind, controls, fom, std, shots, device_s, wall_s, time FROM evaluations "
                              "WHERE run = ? ORDER BY idx", (name,))
        return [{"index": i, "kind": k, "controls": json.loads(c), "fom": f, "std": s, "shots": n,
                 "device_s": d, "wall_s": w, "time": t} for i, k, c, f, s, n, d, w, t in cur]

    def append(self, name: str, rows: Sequence[tuple]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                [(name, *r) for r in rows])
            self.db.execute("UPDATE runs SET updated = ? WHERE run = ?", (time.time(), name))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def finish(self, name: str, summary: dict[str, Any]) -> None:
        self.db.execute("UPDATE runs SET status = 'done', summary = ?, updated = ? WHERE run = ?",
                        (json.dumps(summary), time.time(), name))

    def runs(self) -> dict[str, dict[str, Any]]:
        return {r: {"config": json.loads(c), "status": s, "summary": json.loads(m) if m else None}
                for r, c, s, m in self.db.execute("SELECT run, config, status, summary FROM runs")}

    def close(self) -> None:
        self.db.close()


def _batch_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]) & (2**63 - 1)


def run_optimization(spec: OptimizeSpec, backend: Any, work_dir: str | Path, progress: bool = False,
                     on_evaluation: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume, or replay) ``spec`` on ``backend`` (a Backend, or a spec string for
    ``create_backend``); record it in ``<work_dir>/optimize.sqlite``; return the summary:

    best_controls (K, ω_0), best_fom, best_std (1σ), best_reevaluations, evaluations,
    shots_spent, device_s, trace [{evaluation, shots_spent, incumbent_fom, incumbent_std}],
    references (drift), replayed (evaluations read from the store), run, config.

    on_evaluation(record) is called after every evaluation (replayed ones too, with
    ``replayed`` True): evaluation, kind, controls, fom (raw), value (drift-corrected),
    correction, std, shots, device_s, shots_spent, incumbent_fom/std/controls."""
    from qhil.agents.closed_loop import Budget, Measurement, make_parametrisation, optimise
    from qhil.drivers import create_backend
    from qhil.envs.figure_of_merit import measured_figures, shots_per_evaluation
    battery = spec.battery()
    lo, hi = float(battery.controls[0].lower), float(battery.controls[0].upper)
    param = make_parametrisation(spec.basis, spec.start, lo, hi, spec.components, spec.seed)
    config = spec.config()
    store = OptimizeStore(Path(work_dir) / "optimize.sqlite")
    owns_backend = isinstance(backend, str)
    bar = None
    try:
        if owns_backend:
            backend = create_backend(backend)
        if spec.shots is None and not backend.capabilities.exact_expectations:   # before the run is recorded
            raise ValidationError("shots", f"exact figures of merit on {backend.name}, which measures",
                                  "shots per setting ≥ 1")
        stored = store.open_run(spec.run, config)
        per = shots_per_evaluation(battery, spec.fom, spec.shots)
        budget = Budget(spec.max_evals, spec.max_shots, per)
        if progress:
            from tqdm import tqdm
            total = spec.max_evals if spec.max_evals is not None else spec.max_shots // max(per, 1)
            bar = tqdm(total=total, desc=spec.run, unit="eval", file=sys.stderr)

        def measure(controls: np.ndarray, kind: str, index: int) -> list[Measurement]:
            out: list[Measurement] = []
            for i, row in enumerate(controls):
                j = index + i
                if j >= len(stored):
                    break
                rec = stored[j]
                if rec["kind"] != kind or len(rec["controls"]) != len(row) \
                        or np.max(np.abs(np.asarray(rec["controls"]) - row)) > 1e-12:
                    raise ValidationError("run", f"run {spec.run!r} was recorded with other settings "
                                          f"(evaluation {j} differs)", "the same settings, or another run name")
                out.append(Measurement(rec["fom"], rec["std"], rec["shots"], rec["device_s"]))
            live = controls[len(out):]
            if len(live):
                t0 = time.perf_counter()
                figs = measured_figures(battery, backend, live, spec.dt, spec.fom, spec.shots,
                                        seed=_batch_seed(spec.seed, index + len(out)))
                wall = (time.perf_counter() - t0) / len(live)
                now = time.time()
                store.append(spec.run, [(index + len(out) + i, kind, json.dumps(row.tolist()), v, s, n, d, wall, now)
                                        for i, (row, (v, s, n, d)) in enumerate(zip(live, figs))])
                out += [Measurement(*f) for f in figs]
            if bar is not None:
                bar.update(len(controls))
            return out

        def record(rec: dict[str, Any]) -> None:
            rec["replayed"] = rec["evaluation"] <= len(stored)
            if bar is not None and rec["incumbent_fom"] is not None:
                bar.set_postfix(best=f"{rec['incumbent_fom']:.4f}", shots=rec["shots_spent"], refresh=False)
            if on_evaluation is not None:
                on_evaluation(rec)

        result = optimise(param, measure, method=spec.method, budget=budget, reevaluate=spec.reevaluate,
                          drift_every=spec.drift_every,
                          reference=None if spec.reference is None else np.asarray(spec.reference),
                          seed=spec.seed, sigma0=spec.sigma0, popsize=spec.popsize, spsa_c=spec.spsa_c,
                          spsa_a0=spec.spsa_a0, on_evaluation=record)
        summary = {"run": spec.run, "method": spec.method, "basis": spec.basis, "fom": spec.fom,
                   "shots": spec.shots, "best_controls": None if result.best_controls is None
                   else result.best_controls.tolist(), "best_fom": result.best_fom, "best_std": result.best_std,
                   "best_reevaluations": result.best_reevaluations, "evaluations": result.evaluations,
                   "shots_spent": result.shots_spent, "device_s": result.device_s,
                   "start_fom": stored_start(store, spec.run), "trace": result.trace,
                   "references": result.references, "replayed": min(len(stored), result.evaluations),
                   "config": config}
        store.finish(spec.run, summary)
        return summary
    finally:
        if bar is not None:
            bar.close()
        if owns_backend and not isinstance(backend, str):
            backend.close()
        store.close()


def stored_start(store: OptimizeStore, run: str) -> float | None:
    """The first candidate's measured figure (the start protocol's single draw)."""
    row = store.db.execute("SELECT fom FROM evaluations WHERE run = ? AND kind = 'candidate' ORDER BY idx LIMIT 1",
                           (run,)).fetchone()
    return None if row is None else float(row[0])


def summary_line(summary: dict[str, Any]) -> str:
    """One line: method, best figure ± std, evaluations, shots, device seconds."""
    best = "none" if summary["best_fom"] is None else f"{summary['best_fom']:.4f} ± {summary['best_std']:.4f}"
    start = "" if summary["start_fom"] is None else f" (start {summary['start_fom']:.4f})"
    return (f"{summary['run']}: {summary['method']}/{summary['basis']} best {summary['fom']} {best} ω_0"
            f"{start} after {summary['evaluations']} evaluations, "
            f"{summary['shots_spent']} shots, {summary['device_s']:.1f} device s")
