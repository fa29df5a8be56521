"""Experiments (what to run) and results (what comes back), shared by every driver."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import checks as check
from .errors import ValidationError
from .model import Model
from .schedule import MeasurementCost, MeasurementSchedule

MAX_STEPS = 100_000
MAX_DT = 1_000.0


def as_controls(model: Model, controls: Any, name: str = "controls") -> np.ndarray:
    """Validate a piecewise-constant control sequence; return a read-only (K, n_controls) array.

    A 1-D sequence is accepted for a single-channel model.
    """
    chans = model.controls
    try:
        arr = np.array(controls, dtype=float)
    except (TypeError, ValueError):
        raise ValidationError(name, "expected an array of numbers") from None
    if arr.ndim == 1 and (len(chans) == 1 or arr.size == 0):
        arr = arr.reshape(-1, len(chans))
    if arr.ndim != 2 or arr.shape[1] != len(chans):
        raise ValidationError(name, f"has shape {arr.shape}",
                              f"(n_steps, {len(chans)}) for channels {[c.name for c in chans]}")
    if arr.shape[0] > MAX_STEPS:
        raise ValidationError(name, f"has {arr.shape[0]} steps", f"0..{MAX_STEPS} steps")
    lo, hi, tol = model.control_bounds
    outside = ~((arr >= lo - tol) & (arr <= hi + tol))      # also true for NaN
    if outside.any():
        k, c = np.argwhere(outside)[0]
        ch = chans[c]
        if not np.isfinite(arr[k, c]):
            raise ValidationError(f"{name}[{k}, {ch.name}]", f"is {arr[k, c]}", "finite numbers")
        raise ValidationError(f"{name}[{k}, {ch.name}]", f"{arr[k, c]:g} is out of bounds",
                              f"[{ch.lower:g}, {ch.upper:g}] {ch.units}")
    np.clip(arr, lo, hi, out=arr)
    arr.setflags(write=False)
    return arr


def _one_row(model: Model, controls: Any) -> np.ndarray | None:
    """Fast path of :func:`as_controls` for one step given as plain numbers (the RL hot path);
    None when the input is anything else or out of bounds (the full check then reports it)."""
    try:
        values = [float(x) for x in np.ravel(controls)]
    except (TypeError, ValueError):
        return None
    bounds = model._bounds_floats
    if len(values) != len(bounds):
        return None
    for v, (a, b, t) in zip(values, bounds):
        if not a - t <= v <= b + t:          # also rejects NaN
            return None
    return np.array([[min(max(v, a), b) for v, (a, b, _) in zip(values, bounds)]])


@dataclass(frozen=True, eq=False)
class Experiment:
    """Prepare ``model.initial_state()``, play ``controls`` (K steps of length ``dt``), measure
    according to ``schedule``. Validated on construction."""

    model: Model
    controls: np.ndarray
    dt: float
    schedule: MeasurementSchedule = field(default_factory=MeasurementSchedule)

    def __post_init__(self) -> None:
        if not isinstance(self.model, Model):
            raise ValidationError("model", f"expected a qhil Model, got {type(self.model).__name__}")
        if not isinstance(self.schedule, MeasurementSchedule):
            raise ValidationError("schedule", f"expected a MeasurementSchedule, got {type(self.schedule).__name__}")
        object.__setattr__(self, "dt", check.finite_float("dt", self.dt, 0.0, MAX_DT, lo_open=True))
        object.__setattr__(self, "controls", as_controls(self.model, self.controls))
        self.schedule.labels(self.model.n_qubits)  # raises on unknown observables

    @property
    def n_steps(self) -> int:
        return len(self.controls)

    def extend(self, controls: Any) -> "Experiment":
        """The same experiment with more control steps appended (only the new rows are
        validated): how an RL environment grows its episode one action at a time."""
        new = _one_row(self.model, controls)
        if new is None:
            new = as_controls(self.model, controls)
        if self.n_steps + new.shape[0] > MAX_STEPS:
            raise ValidationError("controls", f"would have {self.n_steps + new.shape[0]} steps",
                                  f"0..{MAX_STEPS} steps")
        grown = np.concatenate([self.controls, new])
        grown.setflags(write=False)
        e = object.__new__(Experiment)           # fields already validated: skip __post_init__
        e.__dict__.update(model=self.model, controls=grown, dt=self.dt, schedule=self.schedule)
        return e

    def cost(self) -> MeasurementCost:
        """Measurement cost on hardware (settings, shots, prefix replays)."""
        return self.schedule.cost(self.model.n_qubits, self.n_steps)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "controls": self.controls.tolist(), "dt": self.dt,
                "schedule": self.schedule.to_dict()}


@dataclass(frozen=True, eq=False)
class Result:
    """Outcome of one experiment. M = measured steps, O = observables, n = measurable qubits.

    steps:          (M,) step index k of each measurement (state after k control steps)
    times:          (M,) k·dt
    labels:         (O,) canonical Pauli labels, computational basis (Z = diag(1, −1)). Against
                    the papers: Dicke battery (|0⟩ = |g⟩, paper matrices in the (e, g) order)
                    X = σ_x, Y = −σ_y, Z = −σ_z; XY chain (|0⟩ = spin up) X, Y, Z = σ_x, σ_y, σ_z.
    values:         (M, O) expectation values ⟨P⟩ (exact, or shot means)
    stderr:         (M, O) standard errors (0 for exact values). Each label pools the shots of
                    every setting that reads it: with S shots per setting and k such settings,
                    √((1 − m²)/(kS − 1)). Second order on 2–4 qubits: k = 3 for single-qubit
                    labels, 1 for pairs (3× the shots); 5–10 qubits: k varies by label.
    qubit_density:  (M, 2^n, 2^n) reduced state of the measurable qubits — simulators only,
                    else None. It is a diagnostic for rewards and checks, not an observation.
    state:          (M, dim) full state vector — only for the ``full_state`` regime.
    counts:         (M, S, 2^n) raw bitstring counts per setting — shot runs only.
    settings:       (S,) local basis settings used.
    metadata:       driver name, versions, seed, cost, model and timing.
    """

    steps: np.ndarray
    times: np.ndarray
    labels: tuple[str, ...]
    values: np.ndarray
    stderr: np.ndarray
    qubit_density: np.ndarray | None = None
    state: np.ndarray | None = None
    counts: np.ndarray | None = None
    settings: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def value(self, label: str) -> np.ndarray:
        """(M,) values of one observable, by sparse label (e.g. ``"X0X1"``)."""
        if label not in self.labels:
            raise ValidationError("label", f"{label!r} was not measured", ", ".join(self.labels))
        return self.values[:, self.labels.index(label)]

    @property
    def final(self) -> np.ndarray:
        """(O,) values at the last measured step."""
        return self.values[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (complex arrays as [re, im] pairs)."""
        def arr(a):
            if a is None:
                return None
            a = np.asarray(a)
            return np.stack([a.real, a.imag], -1).tolist() if np.iscomplexobj(a) else a.tolist()
        return {f.name: (arr(getattr(self, f.name)) if isinstance(getattr(self, f.name), np.ndarray)
                         else getattr(self, f.name)) for f in dataclasses.fields(self)}
