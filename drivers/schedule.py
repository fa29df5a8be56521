"""Measurement schedules: what is measured, when, and how precisely."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from . import checks as check
from .errors import ValidationError
from .pauli import all_two_local, group_settings, iter_labels, tomography_labels, tomography_settings

#: The four observation regimes of seed 000, Sec. IV B.
REGIMES = ("full_state", "energies", "first_order", "second_order")
#: Every Pauli on the measurable qubits, read from the 3^n product settings (state estimation).
TOMOGRAPHY = "tomography"
OBSERVATION_SETS = REGIMES + (TOMOGRAPHY,)
MAX_SHOTS = 10_000_000


def regime_observables(regime: str, n_qubits: int) -> tuple[str, ...]:
    """Pauli labels of a regime: ``energies`` = Z_j; ``first_order`` adds X_j, Y_j;
    ``second_order`` adds α_i β_j for i < j and α, β ∈ {X, Y, Z}; ``full_state`` = none
    (the state vector itself is returned, simulators only)."""
    if regime not in OBSERVATION_SETS:
        raise ValidationError("observables", f"unknown regime {regime!r}",
                              f"one of {', '.join(OBSERVATION_SETS)} or a list of Pauli labels")
    if regime == TOMOGRAPHY:
        return tomography_labels(n_qubits)
    z = [f"Z{j}" for j in range(n_qubits)]
    if regime == "full_state":
        return ()
    if regime == "energies":
        return tuple(z)
    first = z + [f"{a}{j}" for j in range(n_qubits) for a in "XY"]
    if regime == "first_order":
        return tuple(first)
    two = [lab for lab in all_two_local(n_qubits) if len(lab) > 2]
    return tuple(first + two)


@dataclass(frozen=True)
class MeasurementSchedule:
    """What is measured, when, and how precisely.

    observables: a regime name (see :data:`REGIMES`), ``"tomography"`` (every Pauli, for state
                 estimation with :mod:`qhil.drivers.tomography`) or a list of Pauli labels.
    every:       measure after every m-th step (k = 0, m, 2m, …); the final step is always
                 measured. Ignored when ``final_only``.
    final_only:  measure only after the last step.
    shots:       None for exact expectation values, else shots per local basis setting.

    Settings (:meth:`settings`, deterministic): energies 1 (Z…Z); first order 3 (Z…Z, X…X,
    Y…Y); second order 3 for one qubit, 9 for 2–4 qubits (an orthogonal array: every pair of
    qubits sees each of the 9 basis pairs once), and from a greedy covering array 13, 15, 16,
    16, 17, 17 for 5, 6, 7, 8, 9, 10 qubits. A label is estimated from *every* setting that
    reads it, so labels get different numbers of shots: second order on 2–4 qubits reads each
    single-qubit label in 3 settings and each pair in 1 (see :class:`~qhil.drivers.Result`).
    """

    observables: str | tuple[str, ...] = "energies"
    every: int = 1
    final_only: bool = False
    shots: int | None = None

    def __post_init__(self) -> None:
        obs = self.observables
        if isinstance(obs, str):
            if obs not in OBSERVATION_SETS:
                raise ValidationError("observables", f"unknown regime {obs!r}",
                                      f"one of {', '.join(OBSERVATION_SETS)} or a list of Pauli labels")
        else:
            try:
                obs = tuple(obs)
            except TypeError:
                raise ValidationError("observables", f"expected a regime or a list, got {obs!r}") from None
            if not obs or not all(isinstance(o, str) for o in obs):
                raise ValidationError("observables", "expected a non-empty list of Pauli labels")
            object.__setattr__(self, "observables", obs)
        check.integer("every", self.every, 1, 1_000_000)
        if not isinstance(self.final_only, (bool, np.bool_)):
            raise ValidationError("final_only", f"expected a bool, got {self.final_only!r}")
        if self.shots is not None:
            object.__setattr__(self, "shots", check.integer("shots", self.shots, 1, MAX_SHOTS))
            if self.observables == "full_state":
                raise ValidationError("shots", "the full state cannot be estimated from shots",
                                      "shots=None with observables='full_state'")

    @property
    def full_state(self) -> bool:
        return self.observables == "full_state"

    def labels(self, n_qubits: int) -> tuple[str, ...]:
        """Canonical Pauli labels for a model with ``n_qubits`` measurable qubits."""
        return _labels(self.observables, n_qubits)

    def settings(self, n_qubits: int) -> tuple[str, ...]:
        """Local basis settings that cover :meth:`labels`."""
        if self.observables == TOMOGRAPHY:
            return tomography_settings(n_qubits)
        return group_settings(self.labels(n_qubits), n_qubits)

    def measured_steps(self, n_steps: int) -> np.ndarray:
        """Step indices k (state after k control steps) at which a measurement is made
        (a read-only array, shared between calls)."""
        return _measured_steps(self, n_steps)

    def _measured_steps(self, n_steps: int) -> np.ndarray:
        if self.final_only:
            ks = [n_steps]
        else:
            ks = list(range(0, n_steps + 1, self.every))
            if ks[-1] != n_steps:
                ks.append(n_steps)
        out = np.array(ks)
        out.setflags(write=False)
        return out

    def cost(self, n_qubits: int, n_steps: int) -> "MeasurementCost":
        return _cost(self, n_qubits, n_steps)

    def _cost(self, n_qubits: int, n_steps: int) -> "MeasurementCost":
        """What the schedule costs on hardware, where each readout destroys the state."""
        steps = self.measured_steps(n_steps)
        n_set = 0 if self.full_state else len(self.settings(n_qubits))
        reps = self.shots or 1
        return MeasurementCost(
            measured_steps=len(steps), settings=n_set, shots_per_setting=self.shots or 0,
            circuits=len(steps) * n_set, total_shots=len(steps) * n_set * (self.shots or 0),
            played_steps=int(steps.sum()) * n_set * reps)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not isinstance(self.observables, str):
            d["observables"] = list(self.observables)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MeasurementSchedule":
        if not isinstance(d, dict):
            raise ValidationError("schedule", "expected a mapping")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValidationError("schedule", f"unknown field(s) {sorted(unknown)}",
                                  "observables, every, final_only, shots")
        obs = d.get("observables", "energies")
        return cls(**{**d, "observables": obs if isinstance(obs, str) else tuple(obs)})


@lru_cache(maxsize=4096)
def _measured_steps(schedule: MeasurementSchedule, n_steps: int) -> np.ndarray:
    return schedule._measured_steps(n_steps)


@lru_cache(maxsize=4096)
def measured_step_set(schedule: MeasurementSchedule, n_steps: int) -> frozenset[int]:
    """:meth:`MeasurementSchedule.measured_steps` as a set of ints (the drivers' lookups)."""
    return frozenset(int(k) for k in _measured_steps(schedule, n_steps))


@lru_cache(maxsize=4096)
def _cost(schedule: MeasurementSchedule, n_qubits: int, n_steps: int) -> "MeasurementCost":
    return schedule._cost(n_qubits, n_steps)


@lru_cache(maxsize=256)
def _labels(observables: str | tuple[str, ...], n_qubits: int) -> tuple[str, ...]:
    if isinstance(observables, str):
        return regime_observables(observables, n_qubits)
    return iter_labels(observables, n_qubits)


@dataclass(frozen=True)
class MeasurementCost:
    """Cost of one experiment's measurements.

    circuits:     distinct (prefix, setting) pairs to run;
    total_shots:  prepare-play-measure repetitions (0 for exact expectation values);
    played_steps: control steps played including every prefix replay
                  (Σ_k k · settings · max(shots, 1)).
    """

    measured_steps: int
    settings: int
    shots_per_setting: int
    circuits: int
    total_shots: int
    played_steps: int

    def to_dict(self) -> dict[str, int]:
        return dict(self._dict)

    @cached_property
    def _dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __add__(self, other: "MeasurementCost") -> "MeasurementCost":
        return MeasurementCost(*(a + b if f.name not in ("settings", "shots_per_setting") else max(a, b)
                                 for f, a, b in zip(dataclasses.fields(self),
                                                    dataclasses.astuple(self), dataclasses.astuple(other))))


