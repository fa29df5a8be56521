"""Deploying on a device: a trained charging run's policy (closed loop), a protocol (open loop)
or a user's policy function, measured step by step, the final state by local tomography, beside
the simulator's prediction for the same model (the work of ``qhil deploy``).

    doc = deploy(DeploySpec(endpoint="zmq://127.0.0.1:5555", run=Path("runs/x"), shots=1000))
    plot_deployment(doc, Path("deploy.png"))

A run (:func:`load_run`) brings everything it was trained with (model, regime, memory window,
action bounds, τ, K); the device must match (:func:`device_mismatches`) unless
``allow_mismatch`` names the difference. Every executed experiment is appended to a JSON-lines
log (:class:`ExperimentLog`) through a :class:`RecordingBackend`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qhil.drivers import Backend

from ..reports import pyplot
from ..simulate import json_default  # noqa: F401  (the summary document's JSON)
from .training import checkpoint_path, evaluation_env

#: what ``allow_mismatch`` may let through
MISMATCH_KINDS = ("model", "channels", "bounds", "dt")


@dataclasses.dataclass(frozen=True)
class DeploySpec:
    """What to deploy, where and how (the options of ``qhil deploy``).

    endpoint:   zmq://host:port (a lab server), or statevector | aer to rehearse
    run, run_name: a charging run folder (run store + checkpoint) and which of its runs
    protocol:   open loop: a protocol file (list, {controls, dt} or a GRAPE result) or ``best``
    policy:     closed loop: ``module:function`` (or ``file.py:function``), for ``steps`` steps
    dt:         step length (1/ω_0); else from the run or the protocol file
    regime:     measured observables (protocol/policy; a run uses its own); E_j always measured
    every:      open loop: measure every m-th step
    shots, tomography_shots: shots per setting (0 = exact); tomography default = shots
    no_tomography: skip the final tomography
    allow_mismatch: kinds of device difference (:data:`MISMATCH_KINDS`) to let through
    clip:       clip a policy function's outputs to the bounds
    model_json: the model for a protocol or policy (default: the device's)
    log:        JSON-lines file of every executed experiment (appended)
    timeout, owner, hold_lock, server_key, client_cert: the lab connection (zmq)
    seed:       shot-noise seed
    """

    endpoint: str
    run: Path | None = None
    run_name: str | None = None
    protocol: str | None = None
    policy: str | None = None
    steps: int | None = None
    dt: float | None = None
    regime: str | None = None
    every: int = 1
    shots: int = 1000
    tomography_shots: int | None = None
    no_tomography: bool = False
    allow_mismatch: tuple[str, ...] = ()
    clip: bool = False
    model_json: dict[str, Any] | None = None
    log: Path = Path("qhil-deploy.jsonl")
    timeout: float = 10.0
    owner: str | None = None
    hold_lock: bool = False
    server_key: str | None = None
    client_cert: str | None = None
    seed: int | None = None


# -- what is deployed ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """What ``qhil train`` recorded for one run: enough to rebuild its observation exactly."""

    run_dir: Path
    name: str
    config: dict[str, Any]
    battery: Any               # DickeBattery
    regime: str
    history: int | None
    history_of: str
    tau: float
    n_steps: int
    checkpoint: Path
    best: dict[str, Any] | None

    @property
    def dt(self) -> float:
        return self.tau / self.n_steps


def load_run(run_dir: str | Path, name: str | None = None) -> TrainedRun:
    """The run ``name`` (default: the only one) of a ``qhil train --run-dir`` folder."""
    import qhil.envs  # noqa: F401  (registers the built-in models)
    from qhil.agents.runstore import RunStore
    from qhil.drivers import ValidationError, model_from_dict
    from qhil.envs import ENVIRONMENTS, DickeBattery

    run_dir = Path(run_dir)
    db = run_dir / "runs.sqlite"
    if not db.is_file():
        raise ValidationError("run", f"{str(run_dir)!r} holds no run store (runs.sqlite)", "a `qhil train --run-dir` folder")
    store = RunStore(db)
    try:
        runs = store.runs()
        if name is None:
            if len(runs) != 1:
                raise ValidationError("run-name", f"{str(run_dir)!r} holds {len(runs)} runs", ", ".join(sorted(runs)) or "none")
            name = next(iter(runs))
        if name not in runs:
            raise ValidationError("run-name", f"no run {name!r} in {str(run_dir)!r}", ", ".join(sorted(runs)))
        best = store.best(name)
    finally:
        store.close()
    cfg = runs[name]["config"]
    if "model" in cfg:
        battery = model_from_dict(cfg["model"])
    elif cfg.get("env") in ENVIRONMENTS:        # runs recorded before the digital twin: a preset
        battery = DickeBattery(omegas=ENVIRONMENTS[cfg["env"]])
    else:
        raise ValidationError("run", f"run {name!r} records no model", "a run recorded by `qhil train`")
    ckpt = checkpoint_path(run_dir, name)
    if not ckpt.is_file():
        raise ValidationError("run", f"run {name!r} has no checkpoint {str(ckpt)!r}", "a run with a policy checkpoint")
    return TrainedRun(run_dir, name, cfg, battery, cfg["regime"], cfg.get("history"),
                      cfg.get("history_of") or "observations", float(cfg.get("tau", 5.6)),
                      int(cfg.get("n_steps", 28)), ckpt, best)


def load_policy(spec: str) -> Callable[..., Any]:
    """``module:function`` or ``path/file.py:function`` → the callable."""
    from qhil.drivers import ValidationError
    mod, _, attr = spec.rpartition(":")
    if not mod or not attr:
        raise ValidationError("policy", f"cannot parse {spec!r}", "module:function or file.py:function")
    try:
        if mod.endswith(".py"):
            sp = importlib.util.spec_from_file_location(Path(mod).stem, mod)
            module = importlib.util.module_from_spec(sp)      # type: ignore[arg-type]
            sp.loader.exec_module(module)                      # type: ignore[union-attr]
        else:
            module = importlib.import_module(mod)
        fn = getattr(module, attr)
    except (ImportError, AttributeError, OSError, SyntaxError) as exc:
        raise ValidationError("policy", f"cannot load {spec!r} ({exc})") from None
    if not callable(fn):
        raise ValidationError("policy", f"{spec!r} is not callable")
    return fn


def read_protocol(path: str | Path) -> tuple[np.ndarray, float | None, dict[str, Any] | None]:
    """(controls (K,) or (K, C), dt or None, model dict or None) from a protocol file: a list,
    ``{"controls": …, "dt": …}``, or a ``qhil grape`` result (``protocol``, ``tau``, ``n_steps``,
    ``omegas``, ``n_max``)."""
    from qhil.drivers import ValidationError
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValidationError("protocol", f"cannot read {str(path)!r} ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:
        raise ValidationError("protocol", f"{str(path)!r} is not JSON ({exc})") from None
    model = None
    if isinstance(doc, list):
        controls, dt = doc, None
    elif isinstance(doc, dict) and "protocol" in doc and "tau" in doc:        # a GRAPE result
        controls = doc["protocol"]
        steps = doc.get("n_steps", len(controls))
        dt = float(doc["tau"]) / int(steps)
        if isinstance(doc.get("model"), dict):
            model = doc["model"]
        elif "omegas" in doc:                                                  # written before the twin
            model = {"kind": "dicke", "params": {"omegas": doc["omegas"], "n_max": doc.get("n_max")}}
    elif isinstance(doc, dict) and "controls" in doc:
        controls, dt = doc["controls"], doc.get("dt")
    else:
        raise ValidationError("protocol", f"{str(path)!r} holds no controls",
                              "a list, {\"controls\": …, \"dt\": …} or a `qhil grape` result")
    try:
        arr = np.asarray(controls, dtype=float)
    except (TypeError, ValueError):
        raise ValidationError("protocol", f"{str(path)!r}: controls are not numbers") from None
    if arr.ndim not in (1, 2) or arr.shape[0] < 1 or not np.all(np.isfinite(arr)):
        raise ValidationError("protocol", f"{str(path)!r}: controls of shape {arr.shape}",
                              "K ≥ 1 finite values, or K rows of one value per channel")
    return arr, (None if dt is None else float(dt)), model


# -- the device -----------------------------------------------------------------------------
def reference_protocol(protocol: str | Path, n_steps: int, tau: float, name: str = "protocol"
                       ) -> tuple[Any, dict[str, Any]]:
    """A protocol λ (K,) and where it came from (a residual reference, an optimiser's start). ``protocol``:
    ``constant:x`` (λ = x ω_0 every step), a protocol file (a ``qhil grape`` result, a list,
    ``{"controls", "dt"}``), or a ``qhil train`` run folder (its best explored protocol;
    ``DIR::NAME`` picks a run of several). The length must be K and a recorded Δt must be τ/K; errors name ``name``."""
    from qhil.drivers import ValidationError
    text = str(protocol)
    if text.startswith("constant:"):
        try:
            x = float(text.split(":", 1)[1])
        except ValueError:
            raise ValidationError(name, f"{text!r}", "constant:x with x a number (λ in ω_0)") from None
        return np.full(n_steps, x), {"protocol": text}
    folder, _, run_name = text.partition("::")
    path = Path(folder)
    if path.is_dir():
        try:
            src = load_run(path, run_name or None)
        except ValidationError as exc:
            raise renamed(exc, name) from None
        if not src.best or not src.best.get("protocol"):
            raise ValidationError(name, f"run {src.name!r} in {folder!r} has no best protocol", "a trained run")
        ref, dt = np.asarray(src.best["protocol"], dtype=float), src.dt
        prov = {"protocol": text, "run": src.name, "ergotropy": src.best.get("objective")}
    else:
        try:
            ref, dt, _ = read_protocol(path)
        except ValidationError as exc:
            raise renamed(exc, name) from None
        prov = {"protocol": text}
    if ref.ndim == 2 and ref.shape[1] == 1:
        ref = ref[:, 0]
    if ref.ndim != 1 or len(ref) != n_steps:
        raise ValidationError(name, f"{text!r} holds a protocol of shape {ref.shape}",
                              f"{n_steps} steps (the run's K)")
    if dt is not None and not math.isclose(dt, tau / n_steps, rel_tol=1e-9):
        raise ValidationError(name, f"{text!r} was played at Δt = {dt:g}",
                              f"Δt = τ/K = {tau / n_steps:g} (the matching τ)")
    return ref, prov


def renamed(exc: Any, name: str) -> Any:
    """``exc`` (a ValidationError of a helper) as one naming the option ``name``."""
    from qhil.drivers import ValidationError
    text = str(exc)
    if exc.allowed and text.endswith(f" (allowed: {exc.allowed})"):
        text = text[: -len(f" (allowed: {exc.allowed})")]
    return ValidationError(name, text, exc.allowed)


def device_mismatches(info: dict[str, Any], battery: Any, dt: float) -> dict[str, str]:
    """How a lab device (its ``describe``) differs from ``battery`` played at step ``dt``:
    {kind: what differs}, kinds from :data:`MISMATCH_KINDS`; empty when it matches."""
    out: dict[str, str] = {}
    mine = battery.to_dict()
    theirs = info.get("model")
    if theirs is not None:
        diffs = []
        if theirs.get("kind") != mine["kind"]:
            diffs.append(f"kind: run {mine['kind']!r}, device {theirs.get('kind')!r}")
        a, b = mine["params"], theirs.get("params") or {}
        for k in sorted(set(a) | set(b)):
            if not _same(a.get(k), b.get(k)):
                diffs.append(f"{k}: run {a.get(k)!r}, device {b.get(k)!r}")
        if diffs:
            out["model"] = "; ".join(diffs)
    chans = {c["name"]: c for c in info.get("channels", [])}
    names = [c.name for c in battery.controls]
    if sorted(names) != sorted(chans):
        out["channels"] = f"run {names}, device {sorted(chans)}"
    else:
        bad = [f"{c.name}: run [{c.lower:g}, {c.upper:g}], device [{chans[c.name]['lower']:g}, "
               f"{chans[c.name]['upper']:g}]" for c in battery.controls
               if not (_same(c.lower, chans[c.name]["lower"]) and _same(c.upper, chans[c.name]["upper"]))]
        if bad:
            out["bounds"] = "; ".join(bad)
    max_dt = (info.get("limits") or {}).get("max_dt")
    device_dt = info.get("dt", (info.get("calibration") or {}).get("dt"))
    if max_dt is not None and dt > max_dt:
        out["dt"] = f"run Δt = {dt:g}, device allows at most {max_dt:g}"
    elif device_dt is not None and not _same(dt, device_dt):
        out["dt"] = f"run Δt = {dt:g}, device plays Δt = {device_dt:g}"
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-15)
    return a == b


class RecordingBackend(Backend):
    """``backend`` itself, except that every (experiment, result) it runs is handed to ``record``."""

    def __init__(self, backend: Backend, record: Callable[[Any, Any], None]) -> None:
        super().__init__(None)
        self.inner, self._record = backend, record
        self.name = backend.name

    @property
    def capabilities(self) -> Any:
        return self.inner.capabilities

    def run(self, experiments: Any, *, seed: int | None = None) -> list[Any]:
        from qhil.drivers import Experiment
        batch = [experiments] if isinstance(experiments, Experiment) else list(experiments)
        results = self.inner.run(batch, seed=seed)
        for e, r in zip(batch, results):
            self._record(e, r)
        return results

    def _run(self, batch: list, seeds: Any) -> list:       # never called: run() delegates
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.inner.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


class ExperimentLog:
    """Appends every executed experiment to a JSON-lines file and adds up its cost."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.cost = {"experiments": 0, "circuits": 0, "settings": 0, "total_shots": 0, "played_steps": 0,
                     "prefix_replays": 0, "device_s": 0.0}
        self._device_s_known = True
        self._file = open(path, "a")

    def __call__(self, experiment: Any, result: Any) -> None:
        bridge = result.metadata.get("bridge") or {}
        rec = {"time": time.time(), "request_id": bridge.get("request_id"),
               "driver": result.metadata.get("driver"), "experiment": experiment.to_dict(),
               "steps": result.steps.tolist(), "labels": list(result.labels), "values": result.values.tolist(),
               "stderr": result.stderr.tolist(), "settings": list(result.settings or ()),
               "counts": None if result.counts is None else result.counts.tolist(),
               "bridge": bridge or None, "cost": result.metadata.get("cost")}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        self.count += 1
        c = experiment.cost()
        self.cost["experiments"] += 1
        self.cost["circuits"] += c.circuits
        self.cost["settings"] += c.settings
        self.cost["total_shots"] += c.total_shots
        self.cost["played_steps"] += c.played_steps
        self.cost["prefix_replays"] += c.circuits * max(c.shots_per_setting, 1)
        if bridge.get("device_s") is not None:
            self.cost["device_s"] += float(bridge["device_s"])
        else:
            self._device_s_known = False

    def totals(self) -> dict[str, Any]:
        out = dict(self.cost)
        if not self._device_s_known:
            out["device_s"] = None           # simulators report no device time
        return out

    def close(self) -> None:
        self._file.close()


def _open_backend(spec: DeploySpec, check_model: bool) -> Any:
    from qhil.drivers import create_backend
    if not spec.endpoint.startswith("zmq://"):
        return create_backend(spec.endpoint, seed=spec.seed)
    opts: dict[str, Any] = {"timeout": spec.timeout, "check_model": check_model}
    if spec.server_key:
        opts.update(server_key=spec.server_key, client_cert=spec.client_cert)
    if spec.owner is not None:
        opts["owner"] = spec.owner
    return create_backend(spec.endpoint, seed=spec.seed, **opts)


# -- deployment -------------------------------------------------------------------------------
def _energies(battery: Any, records: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Measured E_j ± stderr at the last measured step of each recorded result (closed loop)
    or every measured step of one result (open loop), as {steps, energies, stderr}."""
    n = battery.n_qubits
    steps, e, se = [], [], []
    for _, r in records:
        z = [f"Z{j}" for j in range(n)]
        if not all(lab in r.labels for lab in z):
            continue
        cols = [r.labels.index(lab) for lab in z]
        for i, k in enumerate(r.steps):
            steps.append(int(k))
            e.append(battery.tls_energies_from_z(r.values[i, cols]))
            se.append(np.asarray(battery.omegas) / 2 * r.stderr[i, cols])
    return {"steps": steps, "energies": np.asarray(e).tolist(), "stderr": np.asarray(se).tolist()}


def simulate_protocol(battery: Any, controls: np.ndarray, dt: float) -> dict[str, Any]:
    """The exact driver's E_j, E and ℰ after every step of ``controls`` on ``battery``."""
    from qhil.drivers import Experiment, MeasurementSchedule, create_backend
    with create_backend("statevector") as sv:
        [res] = sv.run(Experiment(battery, controls, dt, MeasurementSchedule("energies")))
    f = battery.figures_of_merit(res)
    return {"steps": res.steps.tolist(), "energies": np.asarray(f["energies"]).tolist(),
            "energy": np.asarray(f["energy"]).tolist(), "ergotropy": np.asarray(f["ergotropy"]).tolist()}


def deploy(spec: DeploySpec) -> dict[str, Any]:
    """Deploy what ``spec`` names on its endpoint; return the summary document (what was played,
    measured E_j per step, the tomography estimate, the simulator's prediction, the agreement and
    the cost). Every inconsistency is refused (ValidationError naming the option) before any work."""
    import qhil.envs  # noqa: F401  (registers the built-in models)
    from qhil.drivers import ValidationError, model_from_dict
    t_start = time.perf_counter()
    run = load_run(spec.run, spec.run_name) if spec.run is not None else None
    if spec.run_name is not None and run is None:
        raise ValidationError("run-name", "given without --run", "--run RUN_DIR --run-name NAME")
    if run is None and spec.protocol is None and spec.policy is None:
        raise ValidationError("run", "nothing to deploy", "--run RUN_DIR, --protocol FILE or --policy module:function")
    if spec.protocol == "best" and run is None:
        raise ValidationError("protocol", "`best` needs --run", "--run RUN_DIR --protocol best")
    if spec.policy is not None and spec.protocol is not None:
        raise ValidationError("policy", "a policy and a protocol both say what to play", "one of them")
    if spec.policy is not None and run is not None:
        raise ValidationError("policy", "--policy and --run both name a policy", "one of them")
    if spec.policy is not None and spec.steps is None:
        raise ValidationError("steps", "closed loop with --policy needs --steps", "an integer ≥ 1")
    if spec.policy is None and (spec.steps is not None or spec.clip):      # nothing silently ignored
        raise ValidationError("steps" if spec.steps is not None else "clip", "applies to --policy only",
                              "--policy module:function --steps K [--clip]")
    if spec.protocol is None and spec.every != 1:
        raise ValidationError("every", "applies to --protocol only (a closed loop measures every step)",
                              "--protocol FILE --every m")
    if run is not None and spec.regime is not None and spec.protocol is None:
        raise ValidationError("regime", f"the run measures {run.regime!r}; a trained policy sees only its own "
                              "observation", "omit --regime with --run")
    if spec.hold_lock and (spec.owner is None or not spec.endpoint.startswith("zmq://")):
        raise ValidationError("hold-lock", "needs a lab endpoint and an owner", "--endpoint zmq://… --owner NAME")
    shots = spec.shots or None
    tomo_shots = shots if spec.tomography_shots is None else (spec.tomography_shots or None)

    # what is played, on which model, at which Δt
    model, dt, controls, source = None, spec.dt, None, None
    if run is not None:
        model, source = run.battery, {"run": str(run.run_dir), "run_name": run.name}
        if dt is not None and not math.isclose(dt, run.dt, rel_tol=1e-12):
            raise ValidationError("dt", f"{dt:g}, but the run was trained at Δt = τ/K = {run.dt:g}", f"{run.dt:g} or omit --dt")
        dt = run.dt
    if spec.protocol == "best":
        if not run.best or not run.best.get("protocol"):
            raise ValidationError("protocol", f"run {run.name!r} has no best explored protocol yet")
        controls, source = np.asarray(run.best["protocol"], dtype=float), {**source, "protocol": "best explored",
                                                                            "best_explored": run.best["ergotropy"]}
    elif spec.protocol is not None:
        controls, file_dt, file_model = read_protocol(spec.protocol)
        source = {**(source or {}), "protocol": str(spec.protocol)}
        if file_dt is not None and dt is not None and not math.isclose(file_dt, dt, rel_tol=1e-12):
            raise ValidationError("dt", f"{dt:g}, but {spec.protocol} gives Δt = {file_dt:g}", f"{file_dt:g}")
        dt = dt if dt is not None else file_dt
        if model is None and file_model is not None and spec.model_json is None:
            model = model_from_dict(file_model)
    if spec.model_json is not None:
        if run is not None:
            raise ValidationError("model-json", "a run deploys its own model", "omit --model-json with --run")
        model = model_from_dict(spec.model_json)
    if dt is None:
        raise ValidationError("dt", "not given on the command line, by the run or in the protocol file",
                              "a step length in (0, 1000]")

    log = ExperimentLog(spec.log)
    try:
        allowed = set(spec.allow_mismatch)
        with _open_backend(spec, check_model="model" not in allowed) as raw_backend, \
                (raw_backend.locked() if spec.hold_lock else contextlib.nullcontext()):
            info = raw_backend.describe() if spec.endpoint.startswith("zmq://") else None
            if model is None:
                if info is None or not info.get("model"):
                    raise ValidationError("model-json", "the device reports no model; give one")
                model = model_from_dict(info["model"])
            mismatch = device_mismatches(info, model, dt) if info is not None else {}
            refused = {k: v for k, v in mismatch.items() if k not in allowed}
            if refused:
                raise ValidationError(
                    ",".join(refused), "the device differs from what is deployed: "
                    + "; ".join(f"[{k}] {v}" for k, v in refused.items()),
                    "a matching device, or --allow-mismatch " + ",".join(refused))
            backend = RecordingBackend(raw_backend, log)
            doc: dict[str, Any] = {"endpoint": spec.endpoint, "model": model.to_dict(), "dt": dt,
                                   "shots": shots, "source": source, "mismatch_allowed": mismatch or None}
            if controls is not None:
                played, final = _open_loop(spec, model, backend, controls, dt, shots)
                doc["mode"] = "open loop"
            elif run is not None:
                played, final, doc["policy_prediction"] = _run_policy(spec, run, backend, shots)
                doc["mode"] = "closed loop (trained run, deterministic policy)"
            else:
                played, final = _callable_policy(spec, model, backend, dt, shots)
                doc["mode"] = "closed loop (--policy)"
            doc["controls"] = np.asarray(played).tolist()
            # E_j = ω_j (1 − ⟨Z_j⟩)/2 are the battery's figures; other models report none here
            doc["measured"] = (_energies(model, final) if model.kind == "dicke"
                               else {"steps": [], "energies": [], "stderr": []})
            if model.kind == "dicke":
                doc["tomography"] = _final_tomography(spec, model, backend, played, dt, tomo_shots, final)
        doc["cost"] = {**log.totals(), "wall_s": time.perf_counter() - t_start}
        if model.kind == "dicke":
            doc["prediction"] = simulate_protocol(model, played, dt)
            doc["agreement"] = agreement(doc)
        doc["log"] = str(spec.log)
    finally:
        log.close()
    return doc


def agreement(doc: dict[str, Any]) -> dict[str, Any]:
    """Measured vs the simulator's prediction for the played protocol: the largest |ΔE_j|
    (units ω_0) and |ΔE_j|/stderr over the measured steps, and the tomography ergotropy's
    deviation in units of its stated σ."""
    m, sim = doc["measured"], doc["prediction"]
    out: dict[str, Any] = {}
    if m["steps"]:
        e = np.asarray(m["energies"])
        ref = np.asarray(sim["energies"])[[sim["steps"].index(k) for k in m["steps"]]]
        dev = np.abs(e - ref)
        se = np.asarray(m["stderr"])
        out["max_abs_energy_error"] = float(dev.max())
        out["max_energy_error_over_stderr"] = float(np.max(dev[se > 0] / se[se > 0])) if np.any(se > 0) else None
    tomo = doc.get("tomography")
    if tomo:
        est = tomo["ergotropy"]
        out["ergotropy_error"] = est["value"] - sim["ergotropy"][-1]
        out["ergotropy_error_over_std"] = out["ergotropy_error"] / est["std"] if est["std"] > 0 else None
    return out


def _open_loop(spec: DeploySpec, model: Any, backend: Any, controls: np.ndarray, dt: float,
               shots: int | None) -> tuple[np.ndarray, list]:
    from qhil.drivers import Experiment, MeasurementSchedule
    schedule = MeasurementSchedule(_regime(spec.regime or "energies", model), every=spec.every, shots=shots)
    exp = Experiment(model, controls, dt, schedule)
    [res] = backend.run(exp, seed=spec.seed)
    return exp.controls, [(exp, res)]


def _regime(text: str, model: Any) -> Any:
    """A regime name, or comma-separated Pauli labels; E_j (the Z_j) are always measured."""
    from qhil.drivers.schedule import OBSERVATION_SETS
    if text in OBSERVATION_SETS:
        return text
    labels = tuple(x for x in text.split(",") if x)
    if model.kind == "dicke":
        labels += tuple(z for z in (f"Z{j}" for j in range(model.n_qubits)) if z not in labels)
    return labels


def as_trained(run: TrainedRun, env: Any) -> Any:
    """``env`` as the run's policy acted on it: a residual run's action is a correction to its
    reference protocol (:class:`~qhil.envs.residual.ResidualActionEnv`), not λ itself."""
    from .training import _residual_env
    residual = run.config.get("residual")
    return _residual_env(env, None if not residual else (np.asarray(residual["reference"], float),
                                                        float(residual["scale"])))


def _run_policy(spec: DeploySpec, run: TrainedRun, backend: Any, shots: int | None
                ) -> tuple[np.ndarray, list, dict[str, Any]]:
    """The run's deterministic policy, closed loop on ``backend``, and the same policy on the
    exact simulator of the run's model (the prediction)."""
    from qhil.agents.selection import load_policy as load_agent
    from qhil.agents.training import deterministic_episode
    from qhil.drivers import create_backend

    steps: list[tuple[Any, Any]] = []
    inner = RecordingBackend(backend, lambda e, r: steps.append((e, r)))
    shape = {"tau": run.tau, "n_steps": run.n_steps}
    env = as_trained(run, evaluation_env(run.battery, run.regime, run.history, inner, run.history_of, weight=1.0,
                                          shots=shots, **shape))
    env.seed(spec.seed)
    agent = load_agent(run.checkpoint, env.obs_dim, env.action_low, env.action_high)
    ep = deterministic_episode(agent, env)
    with create_backend("statevector") as sv:
        sim_env = as_trained(run, evaluation_env(run.battery, run.regime, run.history, sv, run.history_of, **shape))
        sim = deterministic_episode(agent, sim_env)
    played = np.asarray(ep["protocol"], dtype=float).reshape(-1, 1)
    return played, steps, {"protocol": sim["protocol"], "ergotropy": sim["ergotropy"], "energy": sim["energy"]}


def _callable_policy(spec: DeploySpec, model: Any, backend: Any, dt: float, shots: int | None
                     ) -> tuple[np.ndarray, list]:
    from qhil.drivers import Experiment, MeasurementSchedule, ValidationError
    policy = load_policy(spec.policy)
    kw = set(inspect.signature(policy).parameters)
    sched = MeasurementSchedule(_regime(spec.regime or "energies", model), final_only=True, shots=shots)
    lo, hi, _ = model.control_bounds
    applied = np.zeros((0, len(model.controls)))
    steps: list[tuple[Any, Any]] = []
    for k in range(spec.steps + 1):
        exp = Experiment(model, applied, dt, sched)
        [res] = backend.run(exp, seed=None if spec.seed is None else spec.seed + k)
        steps.append((exp, res))
        if k == spec.steps:
            break
        extra = {n: v for n, v in (("step", k), ("n_steps", spec.steps)) if n in kw}
        u = np.asarray(policy(res.values[-1].copy(), **extra), dtype=float).reshape(-1)
        if u.size != len(model.controls):
            raise ValidationError("policy", f"returned {u.size} value(s) at step {k}",
                                  f"{len(model.controls)} (channels {[c.name for c in model.controls]})")
        if spec.clip:
            u = np.clip(u, lo, hi)
        applied = np.vstack([applied, u])
    return applied, steps


def _final_tomography(spec: DeploySpec, model: Any, backend: Any, played: np.ndarray, dt: float,
                      shots: int | None, final: list) -> dict[str, Any] | None:
    """The ergotropy estimate from local tomography of the final state (the open-loop result's
    own last step when it was measured in the tomography regime)."""
    from qhil.drivers import Experiment, MeasurementSchedule
    from qhil.envs.state_estimate import estimate_ergotropy
    exp, res = final[-1]
    if not (exp.schedule.observables == "tomography" and int(res.steps[-1]) == exp.n_steps):
        if spec.no_tomography:
            return None
        exp = Experiment(model, played, dt, MeasurementSchedule("tomography", final_only=True, shots=shots))
        [res] = backend.run(exp, seed=None if spec.seed is None else spec.seed + 7919)
    est = estimate_ergotropy(model, res, seed=spec.seed if spec.seed is not None else 0)
    return {"ergotropy": est.to_dict(), "step": int(res.steps[-1]), "shots": shots, "text": str(est),
            "energies": _energies(model, [(exp, res)])["energies"][-1]}


# -- output -----------------------------------------------------------------------------------
def plot_deployment(doc: dict[str, Any], path: Path) -> None:
    """Three panels: the played protocol; measured E_j per step beside the simulator's; the
    tomography ergotropy estimate beside the simulator's prediction."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    u = np.asarray(doc["controls"], dtype=float).reshape(len(doc["controls"]), -1)
    t = np.arange(len(u) + 1) * doc["dt"]
    for c in range(u.shape[1]):
        ax[0].stairs(u[:, c], t, label="played" if c == 0 else None, linewidth=1.8)
    pred = doc.get("policy_prediction")
    if pred:
        ax[0].stairs(np.asarray(pred["protocol"]), t, linestyle="--", label="policy on the simulator")
    ax[0].set(xlabel="t (1/ω₀)", ylabel="λ (ω₀)", title="protocol")
    ax[0].legend(fontsize=8)
    m = doc["measured"]
    if m["steps"]:
        e, se = np.asarray(m["energies"]), np.asarray(m["stderr"])
        tk = np.asarray(m["steps"]) * doc["dt"]
        for j in range(e.shape[1]):
            ax[1].errorbar(tk, e[:, j], yerr=se[:, j], fmt="o", ms=3, label=f"E_{j} measured")
    sim = doc.get("prediction")
    if sim:
        ts = np.asarray(sim["steps"]) * doc["dt"]
        ax[1].plot(ts, np.asarray(sim["energies"]), "k-", linewidth=0.8)
        ax[1].plot([], [], "k-", linewidth=0.8, label="simulator (played protocol)")
    ax[1].set(xlabel="t (1/ω₀)", ylabel="E_j (ω₀)", title="qubit energies")
    ax[1].legend(fontsize=7)
    names, vals, errs = [], [], []
    if doc.get("tomography"):
        est = doc["tomography"]["ergotropy"]
        names.append("device\n(tomography)")
        vals.append(est["value"])
        errs.append(1.96 * est["std"])
    if sim:
        names.append("simulator\n(played)")
        vals.append(sim["ergotropy"][-1])
        errs.append(0.0)
    if pred:
        names.append("simulator\n(policy)")
        vals.append(pred["ergotropy"])
        errs.append(0.0)
    ax[2].errorbar(range(len(vals)), vals, yerr=errs, fmt="o", capsize=5)
    ax[2].set_xticks(range(len(vals)), names, fontsize=8)
    ax[2].set_xlim(-0.6, len(vals) - 0.4)
    if vals:      # no offset axis: differences below 1e-3 ω₀ (exact agreement) show as one level
        lo, hi = min(v - e for v, e in zip(vals, errs)), max(v + e for v, e in zip(vals, errs))
        pad = max(0.1 * (hi - lo), 1e-3 * max(1.0, abs(hi)))
        ax[2].set_ylim(lo - pad, hi + pad)
        ax[2].ticklabel_format(axis="y", useOffset=False)
    ax[2].set(ylabel="final ergotropy (ω₀)", title="ergotropy (95 % interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """What a deployment did, in a few lines: measured energy beside the simulator's, the
    tomography ergotropy, the agreement and the cost."""
    c = doc["cost"]
    m = doc["measured"]
    lines = [f"deployed on {doc['endpoint']} ({doc['mode']}): {len(doc['controls'])} steps of Δt = {doc['dt']:g}"]
    if m["steps"]:
        e_final = np.sum(m["energies"][-1])
        lines.append(f"  measured energy at k = {m['steps'][-1]}: {e_final:.4f} ω₀"
                     + (f" (simulator, same protocol: {doc['prediction']['energy'][-1]:.4f})" if doc.get("prediction") else ""))
    if doc.get("tomography"):
        lines.append(f"  ergotropy from tomography: {doc['tomography']['text']}")
    if doc.get("prediction"):
        lines.append(f"  simulator's prediction for the played protocol: ℰ = {doc['prediction']['ergotropy'][-1]:.4f}")
        a = doc["agreement"]
        if "max_abs_energy_error" in a:
            ratio = a["max_energy_error_over_stderr"]
            lines.append(f"  measured E_j vs the simulator: max |ΔE_j| = {a['max_abs_energy_error']:.2e} ω₀"
                         + (f" ({ratio:.1f} stderr)" if ratio is not None else ""))
    if doc.get("policy_prediction"):
        lines.append(f"  the same policy on the simulator: ℰ = {doc['policy_prediction']['ergotropy']:.4f}")
    dev = "n/a (simulator)" if c["device_s"] is None else f"{c['device_s']:.2f} s"
    lines.append(f"  cost: {c['experiments']} experiments, {c['settings']} settings, {c['total_shots']} shots, "
                 f"{c['prefix_replays']} prefix replays ({c['played_steps']} steps played), device {dev}, "
                 f"wall {c['wall_s']:.2f} s")
    return lines
