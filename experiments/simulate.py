"""One protocol on one backend, measured: the work of ``qhil simulate`` (any registered model:
the Dicke battery, the XY chain).

    doc = simulate(SimulateSpec(model=DickeBattery(), controls=[0.3] * 28, dt=0.2, regime="second_order"))

The document's keys (model, backend, dt, n_steps, controls, steps, times, energies, energy,
ergotropy | fidelity, observables{regime, labels, values, stderr}, cost, metadata) are a stable
interface.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class SimulateSpec:
    """model: a driver model; controls: (K,) or (K, C) values per step; dt: step length (1/ω_0);
    backend: driver spec; regime: observation set name or comma-separated Pauli labels (a Dicke
    battery's E_j are always measured); every: measure every m-th step; shots: per setting (None =
    exact); provenance: where the model came from (reported when it is a lab endpoint)."""

    model: Any
    controls: Any
    dt: float
    backend: str = "statevector"
    regime: str = "energies"
    every: int = 1
    shots: int | None = None
    seed: int | None = None
    provenance: Mapping[str, Any] | None = None


def simulate(spec: SimulateSpec) -> dict[str, Any]:
    """Run the protocol; return the result document."""
    from qhil.drivers import Experiment, MeasurementSchedule, create_backend
    from qhil.drivers.schedule import OBSERVATION_SETS
    model = spec.model
    regime = spec.regime if spec.regime in OBSERVATION_SETS else tuple(x for x in spec.regime.split(",") if x)
    schedule = MeasurementSchedule(regime, every=spec.every, shots=spec.shots)
    if model.kind == "dicke" and not schedule.full_state:   # energies E_j are always reported
        labels = schedule.labels(model.n_qubits)
        missing = tuple(z for z in (f"Z{j}" for j in range(model.n_qubits)) if z not in labels)
        if missing:
            schedule = MeasurementSchedule(labels + missing, every=spec.every, shots=spec.shots)
    experiment = Experiment(model, spec.controls, spec.dt, schedule)
    with create_backend(spec.backend, seed=spec.seed) as backend:
        result = backend.run(experiment)[0]
    figures = model.figures_of_merit(result)
    doc = {"model": model.to_dict(), "backend": spec.backend, "dt": experiment.dt,
           "n_steps": experiment.n_steps, "controls": experiment.controls.tolist(),
           "steps": result.steps, "times": result.times, **figures,
           "observables": {"regime": spec.regime, "labels": list(result.labels),
                           "values": result.values, "stderr": result.stderr},
           "cost": result.metadata.get("cost"),
           "metadata": {k: v for k, v in result.metadata.items() if k not in ("cost", "model")}}
    if model.kind == "dicke" and spec.regime == "tomography":
        from qhil.envs.state_estimate import estimate_ergotropy
        est = estimate_ergotropy(model, result, seed=spec.seed if spec.seed is not None else 0)
        doc["ergotropy_tomography"] = est.to_dict()      # from the measured counts alone
    if (spec.provenance or {}).get("source") == "endpoint":
        doc["model_provenance"] = dict(spec.provenance)
    if result.state is not None:
        doc["state"] = np.stack([result.state.real, result.state.imag], -1)
    return doc


def json_default(o: Any) -> Any:
    """JSON for numpy arrays and scalars (``json.dumps(doc, default=json_default)``)."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o).__name__)
