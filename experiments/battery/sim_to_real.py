"""The sim-to-real study (issue 14): given a device that is not the model and a shot budget,
which method charges the battery best?

The "device" is the pulse emulator with model mismatch (:data:`SEVERITIES`: amplitude error,
rise time, a frequency random walk per experiment, readout error). Every method sees it
only through measurements and pays for every shot. Methods, on Env1:

* ``grape``: open-loop GRAPE computed on the nominal model, played as is (0 shots to learn);
* ``cmaes`` / ``nelder-mead``: closed-loop optimisation of the measured final energy,
  started from GRAPE (:mod:`qhil.experiments.battery.optimize`);
* ``sac_nominal``: SAC trained on the nominal simulator (correlation regime), then deployed;
* ``sac_randomised``: SAC trained with domain randomisation over the mismatch, then deployed;
* ``sac_residual``: residual SAC (a bounded correction to GRAPE) trained on the device from
  scratch;
* ``sac_residual_deployed``: residual SAC trained on the simulator with domain randomisation
  over the mismatch (the device's own measurement schedule and shots), then deployed as is;
* ``sac_residual_finetuned``: that policy, fine-tuned on the device (``init_from``).

Each method's hand-over protocol is scored with the emulator's TRUE final state (a
study-only diagnostic: ``backend.true_states``), beside what the method itself measured.
The device backend is injected (``device_factory(battery, mismatch, seed)``, a picklable
module-level function; ``qhil study sim-to-real`` passes the lab's emulator), so this layer
never imports the lab. Runs go through the one runner into ``<work>/runs.sqlite``: a killed
study resumes.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from qhil.drivers import ValidationError
from qhil.drivers.measure import qubit_density

from ..reports import print_rows, pyplot, write_csv, write_markdown
from ..runner import LocalExecutor, finished, run_specs
from ..stats import t_half_width

#: The methods compared, in the table's order.
METHODS = ("grape", "cmaes", "nelder-mead", "sac_nominal", "sac_randomised", "sac_residual",
           "sac_residual_deployed", "sac_residual_finetuned")
#: The arms that play a simulator-trained policy on the device (as is, or fine-tuned there).
DEPLOYED = ("sac_nominal", "sac_randomised", "sac_residual_deployed")
#: The arms that train residual SAC on the device.
RESIDUAL_ON_DEVICE = ("sac_residual", "sac_residual_finetuned")
#: The device's seed (drift walk and shot noise) is this plus the run's seed.
DEVICE_SEED = 7_000
#: The sub-folder of the work folder that holds the simulator-trained policies.
POLICIES = "policies"
#: The optimisers' basis: dCRAB, a few randomised Fourier components on top of GRAPE (QuOCS).
OPT_BASIS, OPT_COMPONENTS = "dcrab", 4
#: Where the nominal GRAPE protocols are (``grape_<env>.json``).
GRAPE_DIR = Path("docs/results")


@dataclass(frozen=True)
class Mismatch:
    """How the device differs from the model (the emulator's imperfections).

    amplitude_error: relative coupling error ε (device plays (1 + ε)λ)
    rise_time:       first-order low-pass time constant (1/ω_0)
    frequency_drift: σ (ω_0) of each qubit frequency's random walk, one step per experiment
    readout_error:   P(read 1 | 0) = P(read 0 | 1)
    """

    name: str
    amplitude_error: float
    rise_time: float
    frequency_drift: float
    readout_error: float

    def imperfections(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("amplitude_error", "rise_time", "frequency_drift", "readout_error")}


#: Two severities (issue 14: 3 % / 8 % amplitude, rise time 0.02 / 0.05, a drift, 2 % readout).
SEVERITIES = {"mild": Mismatch("mild", 0.03, 0.02, 0.0005, 0.02),
              "severe": Mismatch("severe", 0.08, 0.05, 0.001, 0.02)}


@dataclass(frozen=True)
class StudyOptions:
    """What every run of the study shares. Shots are per local setting.

    budget_shots:    shots each method may spend on the device (learning + deployment)
    fom_shots:       shots of one optimiser evaluation (final energies, one setting)
    deploy_shots:    shots per setting of a deployed policy's observations (correlation regime)
    deploy_episodes: episodes a deployed policy plays (its score: their mean)
    train_steps:     simulator SAC training steps (batched Table 1 scale: 56k)
    residual_scale:  bound s (ω_0) of the residual correction
    residual_shots / residual_every: the residual SAC's measurements on the device
    """

    env: str = "env1"
    budget_shots: int = 300_000
    fom_shots: int = 1000
    reevaluate: int = 3
    deploy_shots: int = 100
    deploy_episodes: int = 4
    train_steps: int = 56_000
    residual_scale: float = 0.03
    residual_shots: int = 20
    residual_every: int = 7
    residual_hidden: tuple[int, ...] = (64, 64)

    def __post_init__(self) -> None:
        from qhil.envs import ENVIRONMENTS
        if self.env not in ENVIRONMENTS:
            raise ValidationError("env", f"unknown environment {self.env!r}", ", ".join(ENVIRONMENTS))
        for name, lo, hi in (("budget_shots", 1_000, 10**10), ("fom_shots", 1, 10**6), ("reevaluate", 0, 100),
                             ("deploy_shots", 1, 10**6), ("deploy_episodes", 1, 1000),
                             ("train_steps", 28, 10**7), ("residual_shots", 1, 10**6), ("residual_every", 1, 28)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValidationError(name, f"{v!r}", f"an integer in [{lo}, {hi}]")
        if not (isinstance(self.residual_scale, (int, float)) and 0.0 < self.residual_scale <= 0.6):
            raise ValidationError("residual_scale", f"{self.residual_scale!r}", "(0, 0.6] (ω_0)")


def residual_measurement(opts: StudyOptions) -> dict[str, Any]:
    """What residual SAC observes and is rewarded by, in the simulator and on the device alike
    (:class:`ChargingRunSpec` fields): the correlation regime every ``residual_every`` steps at
    ``residual_shots`` per setting, the final energy (w = 1), corrections of at most
    ``residual_scale`` around the nominal GRAPE protocol."""
    return {"shots": opts.residual_shots, "every": opts.residual_every, "weight": 1.0,
            "tomography_shots": opts.residual_shots * 5, "residual": str(GRAPE_DIR / f"grape_{opts.env}.json"),
            "residual_scale": opts.residual_scale}


def battery_of(opts: StudyOptions) -> Any:
    from qhil.envs import ENVIRONMENTS, DickeBattery
    return DickeBattery(omegas=ENVIRONMENTS[opts.env])


def grape_of(opts: StudyOptions, results: str | Path = "docs/results") -> np.ndarray:
    """The nominal model's GRAPE protocol (``<results>/grape_<env>.json``)."""
    from .measurement import grape_protocol
    return np.asarray(grape_protocol(opts.env, results)["protocol"], dtype=float)


def randomisation_ranges(m: Mismatch) -> dict[str, float]:
    """The domain-randomisation ranges that cover the device ``m``: ε ~ U[−a, a], τ_r ~ U[0, r],
    readout p ~ U[0, p]; per-qubit frequency offsets of σ = 30 × the drift per experiment (the
    walk's spread after ~900 experiments)."""
    return {"amplitude_error": m.amplitude_error, "rise_time": m.rise_time,
            "frequency_spread": 30.0 * m.frequency_drift, "readout_error": m.readout_error}


def true_ergotropy(backend: Any, battery: Any, controls: np.ndarray, dt: float) -> float:
    """ℰ (ω_0) of the emulator's true final state after ``controls``, at its current drift."""
    psi = backend.true_states(np.asarray(controls, float).reshape(-1, 1), dt)
    rho = qubit_density(psi, battery.n_qubits, battery.aux_dim)
    return float(np.asarray(battery.ergotropy(rho)).ravel()[-1])


@dataclass(frozen=True)
class PolicyRun:
    """Train one simulator SAC policy (nominal, or randomised over ``mismatch``) for the study.
    ``residual``: a residual policy around GRAPE that observes exactly as the device arms do
    (``residual_every``, ``residual_shots``, measured-energy reward w = 1), so that it can be
    fine-tuned there."""

    opts: StudyOptions
    seed: int
    mismatch: Mismatch | None = None
    residual: bool = False

    @property
    def name(self) -> str:
        kind = "nominal" if self.mismatch is None else "randomised-" + self.mismatch.name
        return f"train/{'residual-' if self.residual else ''}{kind}/seed{self.seed}"

    def spec(self) -> Any:
        from .training import ChargingRunSpec
        o = self.opts
        sac = {"seed": self.seed, "total_steps": o.train_steps, "updates_per_step": 0.125,
               "learning_starts": 4_000, "precision": "auto"}
        extra = {} if self.mismatch is None else {"mismatch": randomisation_ranges(self.mismatch)}
        if self.residual:
            return ChargingRunSpec(env=o.env, regime="second_order", sac=sac | {"hidden": o.residual_hidden},
                                   **residual_measurement(o), n_envs=8, run=self.name, **extra)
        return ChargingRunSpec(env=o.env, regime="second_order", sac=sac, history=28, history_of="actions",
                               n_envs=8, run=self.name, **extra)

    def execute(self, work_dir: Path) -> dict[str, Any]:
        return self.spec().execute(work_dir)


@dataclass(frozen=True)
class MethodRun:
    """One method on one device (severity) with one seed; the study's run spec."""

    method: str
    mismatch: Mismatch
    seed: int
    opts: StudyOptions
    device_factory: Callable[..., Any]

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValidationError("method", f"unknown method {self.method!r}", ", ".join(METHODS))

    @property
    def name(self) -> str:
        return f"{self.mismatch.name}/{self.method}/seed{self.seed}"

    def policy(self) -> PolicyRun | None:
        """The simulator policy a deployed or fine-tuned SAC arm starts from (None for the others)."""
        if self.method in ("sac_residual_deployed", "sac_residual_finetuned"):
            return PolicyRun(self.opts, self.seed, self.mismatch, residual=True)
        if self.method not in ("sac_nominal", "sac_randomised"):
            return None
        return PolicyRun(self.opts, self.seed, None if self.method == "sac_nominal" else self.mismatch)

    def execute(self, work_dir: Path) -> dict[str, Any]:
        import shutil

        from qhil.agents.runstore import RunStore

        from .deployment import RecordingBackend
        from .training import ShotCounter
        work_dir = Path(work_dir)
        # An unfinished method run starts again from scratch: an optimiser's replayed evaluations
        # do not step the emulator's drift walk, and the study's shot trace is not checkpointed,
        # so a partial resume would not be the same experiment.
        scratch = work_dir / "methods" / self.name.replace("/", "_")
        shutil.rmtree(scratch, ignore_errors=True)
        meter = ShotCounter()
        battery, dt = battery_of(self.opts), 0.2
        # the same imperfections for every method and seed; drift walk and shot noise seeded per seed
        device = self.device_factory(battery, self.mismatch.imperfections(), DEVICE_SEED + self.seed)
        backend = RecordingBackend(device, meter)
        trace: list[dict[str, float]] = []

        def score(controls: np.ndarray, measured: float | None = None, std: float | None = None) -> float:
            value = true_ergotropy(device, battery, controls, dt)
            trace.append({"shots": meter.shots, "true_ergotropy": value,
                          "measured": np.nan if measured is None else float(measured),
                          "measured_std": np.nan if std is None else float(std)})
            return value

        arm = {"grape": _grape, "cmaes": _optimiser, "nelder-mead": _optimiser, "sac_nominal": _deployed,
               "sac_randomised": _deployed, "sac_residual": _residual, "sac_residual_deployed": _deployed,
               "sac_residual_finetuned": _residual}[self.method]
        store = RunStore(work_dir / "runs.sqlite")
        try:
            store.start_run(self.name, {"method": self.method, "mismatch": dataclasses.asdict(self.mismatch),
                                        "seed": self.seed, "options": dataclasses.asdict(self.opts)})
        finally:
            store.close()
        handed = arm(self, backend, battery, dt, score, scratch)
        final = handed.get("final_true")
        if final is None:
            final = score(handed["controls"], handed.get("measured"), handed.get("measured_std"))
        summary = {"method": self.method, "severity": self.mismatch.name, "seed": self.seed,
                   "final_true_ergotropy": final, "final_measured": handed.get("measured"),
                   "final_measured_std": handed.get("measured_std"), "measured_kind": handed.get("kind"),
                   "shots_spent": meter.shots, "experiments": meter.experiments, "device_s": meter.device_s,
                   "study_dt": dt,
                   "controls": np.asarray(handed["controls"], float).ravel().tolist(), "trace": trace,
                   "details": handed.get("details", {})}
        store = RunStore(work_dir / "runs.sqlite")
        try:
            store.finish_run(self.name, json.loads(json.dumps(summary, default=float)))
        finally:
            store.close()
        return summary


def _grape(run: MethodRun, backend: Any, battery: Any, dt: float, score: Callable, work: Path) -> dict[str, Any]:
    """Open loop: the nominal GRAPE protocol, as is; its final energy measured once."""
    from qhil.envs.figure_of_merit import measured_figure
    protocol = grape_of(run.opts)
    e, std, _, _ = measured_figure(battery, backend, protocol, dt, "energy", run.opts.fom_shots, seed=run.seed)
    return {"controls": protocol, "measured": e, "measured_std": std, "kind": "final energy"}


def _optimiser(run: MethodRun, backend: Any, battery: Any, dt: float, score: Callable, work: Path) -> dict[str, Any]:
    """Closed-loop optimisation of the measured final energy from GRAPE (dCRAB basis, the
    incumbent re-measured), within the shot budget; each new incumbent scored as it appears."""
    from .optimize import OptimizeSpec, run_optimization
    o = run.opts
    spec = OptimizeSpec(start=grape_of(o), model=battery.to_dict(), env=o.env, method=run.method, basis=OPT_BASIS,
                        components=OPT_COMPONENTS, fom="energy", shots=o.fom_shots, max_shots=o.budget_shots,
                        reevaluate=o.reevaluate, seed=run.seed, run=run.name)
    last: list[Any] = [None]

    def on_evaluation(record: dict[str, Any]) -> None:
        inc = record.get("incumbent_controls")
        if inc is not None and (last[0] is None or not np.array_equal(inc, last[0])):
            last[0] = np.array(inc, float)
            score(last[0], record.get("incumbent_fom"), record.get("incumbent_std"))

    summary = run_optimization(spec, backend, work, on_evaluation=on_evaluation)
    return {"controls": np.asarray(summary["best_controls"], float), "measured": summary["best_fom"],
            "measured_std": summary["best_std"], "kind": "final energy (incumbent, re-measured)",
            "details": {"evaluations": summary["evaluations"], "start_fom": summary["start_fom"],
                        "basis": OPT_BASIS, "components": OPT_COMPONENTS}}


def _deployed(run: MethodRun, backend: Any, battery: Any, dt: float, score: Callable, work: Path) -> dict[str, Any]:
    """A simulator-trained policy played closed loop on the device, ``deploy_episodes`` episodes,
    each scored: second-order observations with ``deploy_shots`` per setting at every step, or
    a residual policy with its own measurements (:func:`residual_measurement`) and the reference
    and scale its run recorded."""
    from qhil.agents.selection import load_policy as load_agent
    from qhil.agents.training import deterministic_episode

    from .deployment import as_trained, load_run
    from .training import checkpoint_path, evaluation_env
    policies, trained = work.parent.parent / POLICIES, run.policy()
    if trained.residual:
        r = residual_measurement(run.opts)
        env = as_trained(load_run(policies, trained.name), evaluation_env(
            battery, "second_order", None, backend, weight=1.0, shots=r["shots"], every=r["every"]))
    else:
        env = evaluation_env(battery, "second_order", 28, backend, "actions", weight=1.0,
                             shots=run.opts.deploy_shots)
    env.seed(run.seed)
    agent = load_agent(checkpoint_path(policies, trained.name), env.obs_dim, env.action_low, env.action_high)
    true, measured = [], []
    for _ in range(run.opts.deploy_episodes):
        ep = deterministic_episode(agent, env)
        measured.append(ep["energy"])            # the device's measured final energy (no state here)
        true.append(score(np.asarray(ep["protocol"], float), ep["energy"]))
    return {"controls": np.asarray(ep["protocol"], float), "final_true": float(np.mean(true)),
            "measured": float(np.mean(measured)), "measured_std": float(np.std(measured, ddof=1)) if len(measured) > 1
            else None, "kind": "final energy (mean over deployment episodes)",
            "details": {"episodes_true": true, "episodes_measured": measured}}


def _residual(run: MethodRun, backend: Any, battery: Any, dt: float, score: Callable, work: Path) -> dict[str, Any]:
    """Residual SAC on the device: λ_k = GRAPE_k + s·a_k, correlation-regime observations every
    ``residual_every`` steps with ``residual_shots`` per setting, the measured-energy reward
    (w = 1); as many episodes as the shot budget allows after the final evaluation (one
    episode and a terminal tomography). Every 10th training episode's played protocol is scored.
    From scratch (``sac_residual``), or fine-tuning the simulator's residual policy
    (``sac_residual_finetuned``: its networks, a fresh buffer, a short uniform warm-up)."""
    from qhil.drivers import MeasurementSchedule

    from .training import ChargingRunSpec
    o = run.opts
    source = run.policy()
    init = {} if source is None else {"init_from": str(work.parent.parent / POLICIES), "init_run": source.name}
    sched = MeasurementSchedule("second_order", every=o.residual_every, shots=o.residual_shots)
    per_episode = sched.cost(battery.n_qubits, 28).total_shots
    tomography = 3 ** battery.n_qubits * o.residual_shots * 5  # the final evaluation's ℰ estimate
    episodes = (o.budget_shots - per_episode - tomography) // per_episode
    if episodes < 2:
        raise ValidationError("budget_shots", f"{o.budget_shots} leaves {episodes} residual SAC episodes",
                              f"≥ {4 * per_episode + tomography} shots")
    seen = [0]

    def every_tenth(experiment: Any, result: Any) -> None:
        if experiment.n_steps == 28:
            seen[0] += 1
            if seen[0] % 10 == 0:
                score(np.asarray(experiment.controls, float).ravel())

    from qhil.experiments.battery.deployment import RecordingBackend
    spec = ChargingRunSpec(env=o.env, regime="second_order", backend=RecordingBackend(backend, every_tenth),
                           sac={"seed": run.seed, "total_steps": int(episodes) * 28, "hidden": o.residual_hidden,
                                "learning_starts": 10 * 28 if source is None else 64, "batch_size": 64},
                           **residual_measurement(o), checkpoint_seconds=None, run=run.name, **init)
    summary = spec.execute(work)
    det = summary["deterministic"]
    return {"controls": np.asarray(det["protocol"], float), "measured": det["ergotropy"],
            "measured_std": None, "kind": "tomography ergotropy (deterministic policy)",
            "details": {"episodes": summary["episodes"], "steps": summary["steps"],
                        "train_shots": summary.get("shots_spent"),
                        "best_explored_measured_energy": summary["best_explored"].get("energy_measured")}}


# -- the study: specs, runner, report -----------------------------------------------------------
def study_specs(severities: Sequence[str], methods: Sequence[str], seeds: Sequence[int], opts: StudyOptions,
                device_factory: Callable[..., Any]) -> tuple[list[PolicyRun], list[MethodRun]]:
    """The simulator policies the SAC arms need, and one :class:`MethodRun` per severity ×
    method × seed (validated before any run)."""
    for s in severities:
        if s not in SEVERITIES:
            raise ValidationError("severities", f"unknown severity {s!r}", ", ".join(SEVERITIES))
    if not callable(device_factory):
        raise ValidationError("device_factory", f"{device_factory!r}", "a function (battery, imperfections, seed) → backend")
    runs = [MethodRun(m, SEVERITIES[s], seed, opts, device_factory) for s in severities for m in methods for seed in seeds]
    policies = {p.name: p for p in (r.policy() for r in runs) if p is not None}
    return list(policies.values()), runs


def run_study(severities: Sequence[str], methods: Sequence[str], seeds: Sequence[int], opts: StudyOptions,
              device_factory: Callable[..., Any], work_dir: str | Path, executor: Any = None) -> list[Any]:
    """Train the simulator policies (``<work>/policies``), then run every method on its device
    (``<work>/runs.sqlite``); finished runs are skipped. Returns the runner's outcomes."""
    policies, runs = study_specs(severities, methods, seeds, opts, device_factory)
    work = Path(work_dir)
    executor = executor or LocalExecutor(1)
    out = run_specs(policies, work / POLICIES, executor) if policies else []
    failed = {o.name for o in out if o.status == "failed"}
    ready = [r for r in runs if r.policy() is None or r.policy().name not in failed]
    return out + run_specs(ready, work, executor)


#: The report table's columns.
REPORT_COLUMNS = ["severity", "method", "n_seeds", "true_ergotropy", "true_ci95", "true_min", "true_max",
                  "measured", "measured_kind", "shots_spent", "device_s"]


def study_rows(work_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-run rows, rows aggregated over seeds per severity and method) of the finished runs."""
    runs = [s for s in finished(work_dir).values() if s and "method" in s]
    per = [{"severity": s["severity"], "method": s["method"], "seed": s["seed"],
            "true_ergotropy": s["final_true_ergotropy"], "measured": s["final_measured"],
            "measured_std": s["final_measured_std"], "measured_kind": s["measured_kind"],
            "shots_spent": s["shots_spent"], "experiments": s["experiments"], "device_s": s["device_s"]}
           for s in runs]
    order = {m: i for i, m in enumerate(METHODS)}
    per.sort(key=lambda r: (r["severity"], order[r["method"]], r["seed"]))
    agg = []
    for sev in sorted({r["severity"] for r in per}):
        for m in METHODS:
            rows = [r for r in per if r["severity"] == sev and r["method"] == m]
            if not rows:
                continue
            t = [r["true_ergotropy"] for r in rows]
            meas = [r["measured"] for r in rows if r["measured"] is not None]
            agg.append({"severity": sev, "method": m, "n_seeds": len(rows), "true_ergotropy": float(np.mean(t)),
                        "true_ci95": t_half_width(t), "true_min": float(np.min(t)), "true_max": float(np.max(t)),
                        "measured": float(np.mean(meas)) if meas else float("nan"),
                        "measured_kind": rows[0]["measured_kind"],
                        "shots_spent": float(np.mean([r["shots_spent"] for r in rows])),
                        "device_s": float(np.mean([r["device_s"] for r in rows]))})
    return per, agg


def trace_on_grid(trace: Sequence[dict[str, float]], grid: np.ndarray) -> np.ndarray:
    """The true ergotropy of a run's latest scored protocol after x shots, for x on ``grid``: the
    last trace entry with shots ≤ x (NaN before the first). Optimisers: the incumbent (what they
    would hand over); residual SAC: every 10th training episode, then the deterministic policy."""
    shots = np.array([t["shots"] for t in trace], float)
    vals = np.array([t["true_ergotropy"] for t in trace], float)
    idx = np.searchsorted(shots, grid, side="right") - 1
    return np.where(idx >= 0, vals[np.clip(idx, 0, None)], np.nan) if len(trace) else np.full(len(grid), np.nan)


def write_report(work_dir: str | Path, out_dir: str | Path, echo: bool = True) -> list[dict[str, Any]]:
    """``sim_to_real.csv/.md`` (aggregated), ``sim_to_real_runs.csv`` (per run) and
    ``sim_to_real.png`` (true ergotropy against shots spent, per severity) of every finished run."""
    per, agg = study_rows(work_dir)
    if not agg:
        return agg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "sim_to_real_runs.csv", per, ".6g")
    write_csv(out / "sim_to_real.csv", agg, ".6g")
    note = ("`true_ergotropy`: the emulator's true final state after the protocol each method hands over (a "
            "study-only diagnostic; deployed policies: mean over their deployment episodes), mean over seeds ± 95% "
            "Student-t half-width over seeds (`true_ci95`). `measured`: what the method itself measured (final "
            "energy Σ_j E_j, ω_0; optimisers: the re-measured incumbent). `shots_spent`: every shot on the device, "
            "learning and deployment. Severities: " + "; ".join(
                f"{m.name}: amplitude {m.amplitude_error:g}, rise time {m.rise_time:g}, drift σ {m.frequency_drift:g} "
                f"per experiment, readout {m.readout_error:g}" for m in SEVERITIES.values()))
    write_markdown(out / "sim_to_real.md", agg, REPORT_COLUMNS, "Sim-to-real: Env1 on the mismatched emulator", note)
    write_figure(work_dir, out / "sim_to_real.png")
    if echo:
        print_rows(agg, REPORT_COLUMNS)
    return agg


def write_figure(work_dir: str | Path, path: Path) -> None:
    """True ergotropy of the hand-over protocol against shots spent, one panel per severity."""
    plt = pyplot()
    runs = [s for s in finished(work_dir).values() if s and "method" in s]
    severities = sorted({s["severity"] for s in runs})
    fig, axes = plt.subplots(1, len(severities), figsize=(6.5 * len(severities), 6.0), squeeze=False)
    top = max(s["shots_spent"] for s in runs) or 1
    grid = np.unique(np.geomspace(1e3, max(top, 1e3), 60).round())
    for ax, sev in zip(axes[0], severities):
        for i, m in enumerate(METHODS):
            mine = [s for s in runs if s["severity"] == sev and s["method"] == m]
            if not mine:
                continue
            color = plt.cm.tab10(i)
            if m == "grape":
                v = [s["final_true_ergotropy"] for s in mine]
                ax.axhline(float(np.mean(v)), color=color, ls=":", lw=1.5, label=f"{m} (open loop, 0 shots to learn)")
                continue
            if m in DEPLOYED:
                for s in mine:
                    pts = [(t["shots"], t["true_ergotropy"]) for t in s["trace"]]
                    ax.plot(*zip(*pts), marker="o", ls="none", color=color, ms=4, alpha=0.7,
                            label=f"{m} (deployed)" if s is mine[0] else None)
                continue
            curves = np.array([trace_on_grid(s["trace"], grid) for s in mine])
            known = ~np.isnan(curves).any(axis=0)         # shots where every seed has handed something over
            mean = np.where(known, curves.mean(axis=0), np.nan)
            what = ("every 10th training episode, then the deterministic policy" if m in RESIDUAL_ON_DEVICE
                    else "the incumbent")
            ax.plot(grid, mean, color=color, lw=1.6, label=f"{m}: {what} (mean of {len(mine)} seeds)")
            if len(curves) > 1:
                ax.fill_between(grid[known], curves[:, known].min(axis=0), curves[:, known].max(axis=0),
                                color=color, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("shots spent on the device")
        ax.set_ylabel("true terminal ergotropy ℰ(τ) (ω_0)")
        m = SEVERITIES[sev]
        ax.set_title(f"{sev}: amplitude {m.amplitude_error:g}, rise {m.rise_time:g}, drift {m.frequency_drift:g}, "
                     f"readout {m.readout_error:g}", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()      # one legend below the panels (off the data)
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.03 * (len(labels) + 1) / 2, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
