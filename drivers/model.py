"""The model contract: what a physical model tells a driver.

Conventions (every driver and every model follows them):

* Hilbert space = qubit_0 ⊗ qubit_1 ⊗ … ⊗ qubit_{n-1} ⊗ aux, with ``aux`` an unmeasured
  subsystem of dimension ``aux_dim`` (the cavity's Fock levels 0..n_max; 1 when absent).
  Basis index = s·aux_dim + m, where qubit 0 is the *most* significant bit of s.
* Computational basis |0⟩ = |g⟩ (ground), |1⟩ = |e⟩ (excited); Z|g⟩ = +|g⟩, so the paper's
  σ_z (σ_z|e⟩ = +|e⟩) equals −Z here, and a TLS energy is ω (1 − ⟨Z⟩)/2.
* H(u) = H_0 + Σ_k u_k H_k with piecewise-constant controls u (units of the model, ħ = 1).
* The qubits are what can be measured; the aux subsystem never is.

Drivers import only this module; concrete models live in ``qhil.envs`` and register here
(directly, or through the ``qhil.models`` entry-point group) so a lab server can rebuild
a model from ``{"kind": ..., "params": ...}``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from functools import cached_property
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from .errors import ValidationError


#: Controls may exceed a bound by this much (relative to the bound's span) from rounding.
BOUND_TOLERANCE = 1e-12
#: Default: a truncated auxiliary mode whose top level holds more than this warns.
AUX_TOP_WARNING = 1e-8


@dataclasses.dataclass(frozen=True)
class ControlChannel:
    """One control: its name, inclusive bounds and units."""

    name: str
    lower: float
    upper: float
    units: str = "ω_0"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Model(ABC):
    """A closed quantum system with piecewise-constant controls.

    Subclasses are frozen dataclasses whose fields are the JSON-serialisable parameters.
    """

    kind: ClassVar[str] = ""
    #: True when ``aux`` truncates an infinite-dimensional mode (drivers then check the
    #: population of its top level and warn above 1e-8).
    aux_truncated: ClassVar[bool] = False

    def aux_truncation_warning(self, top_population: float) -> str | None:
        """What a run says when the truncated aux mode is not converged, judged from the largest
        population of its top level over the measured steps; None when it is fine. Default:
        above :data:`AUX_TOP_WARNING`; models that estimate the error of their figures override it."""
        if top_population > AUX_TOP_WARNING:
            return (f"truncation of the {self.kind} model's auxiliary mode is not converged: its top "
                    f"level holds {top_population:.2e} (> {AUX_TOP_WARNING:g}); raise the cutoff")
        return None

    # -- what a subclass provides ------------------------------------------------------
    @property
    @abstractmethod
    def n_qubits(self) -> int:
        """Number of measurable qubits (TLSs or spins)."""

    @property
    def aux_dim(self) -> int:
        """Dimension of the unmeasured subsystem (1 when there is none)."""
        return 1

    @property
    @abstractmethod
    def controls(self) -> tuple[ControlChannel, ...]:
        """The control channels, in the column order of a controls array."""

    @abstractmethod
    def drift(self) -> sp.csr_matrix:
        """H_0 as a sparse Hermitian matrix of shape (dim, dim)."""

    @abstractmethod
    def control_operators(self) -> tuple[sp.csr_matrix, ...]:
        """H_k for each control channel, sparse Hermitian (dim, dim)."""

    @abstractmethod
    def initial_state(self) -> np.ndarray:
        """|ψ(0)⟩ as a normalised complex vector of length dim."""

    # -- derived ----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return (2 ** self.n_qubits) * self.aux_dim

    @property
    def measurable_qubits(self) -> tuple[int, ...]:
        return tuple(range(self.n_qubits))

    def params(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_dict(self) -> dict[str, Any]:
        """Serialisable description: ``{"kind": ..., "params": {...}}`` (a fresh copy)."""
        return json.loads(self._json)

    @cached_property
    def _json(self) -> str:
        return json.dumps({"kind": self.kind, "params": self.params()}, sort_keys=True)

    @cached_property
    def key(self) -> str:
        """A stable hash of :meth:`to_dict`, used for caches and run logs."""
        return hashlib.sha256(self._json.encode()).hexdigest()[:16]

    @cached_property
    def control_bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lower, upper, tolerance) per channel; values within tolerance of a bound are
        accepted and clipped (rounding), anything further out is rejected."""
        lo = np.array([c.lower for c in self.controls], dtype=float)
        hi = np.array([c.upper for c in self.controls], dtype=float)
        return lo, hi, BOUND_TOLERANCE * np.maximum(1.0, hi - lo)

    @cached_property
    def _bounds_floats(self) -> list[tuple[float, float, float]]:
        """:attr:`control_bounds` as plain floats per channel (the one-step fast path)."""
        return [tuple(map(float, b)) for b in zip(*self.control_bounds)]

    def describe(self) -> dict[str, Any]:
        """What a device or a user needs to know: channels, bounds, qubits, dimensions."""
        return {**self.to_dict(), "n_qubits": self.n_qubits, "aux_dim": self.aux_dim,
                "controls": [c.to_dict() for c in self.controls],
                "measurable_qubits": list(self.measurable_qubits)}

    def hamiltonian(self, u: np.ndarray | list[float]) -> sp.csr_matrix:
        """H(u) = H_0 + Σ_k u_k H_k for one control vector u."""
        u = np.asarray(u, dtype=float).reshape(-1)
        h = self.drift().astype(complex)
        for uk, hk in zip(u, self.control_operators()):
            h = h + uk * hk
        return h.tocsr()

    def step_propagator(self, u: np.ndarray | list[float], dt: float) -> np.ndarray:
        """Dense exp(−i H(u) dt) in the full space, from an eigendecomposition of H(u)."""
        w, v = np.linalg.eigh(self.hamiltonian(u).toarray())
        return (v * np.exp(-1j * w * dt)) @ v.conj().T


_REGISTRY: dict[str, type[Model]] = {}


def register_model(cls: type[Model]) -> type[Model]:
    """Class decorator: make a model rebuildable from its ``kind``."""
    if not cls.kind:
        raise TypeError(f"{cls.__name__} must set a non-empty class attribute 'kind'")
    _REGISTRY[cls.kind] = cls
    return cls


def model_kinds() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def _load_entry_points() -> None:
    for ep in entry_points(group="qhil.models"):
        if ep.name not in _REGISTRY:
            try:
                register_model(ep.load())
            except Exception:  # a broken plugin must not break the others
                continue


def model_from_dict(description: dict[str, Any]) -> Model:
    """Rebuild a model from ``{"kind": ..., "params": {...}}``; validates the parameters."""
    if not isinstance(description, dict) or "kind" not in description:
        raise ValidationError("model", "expected a dict with keys 'kind' and 'params'")
    kind = description["kind"]
    if kind not in _REGISTRY:
        _load_entry_points()
    if kind not in _REGISTRY:
        raise ValidationError("model.kind", f"unknown model kind {kind!r}", ", ".join(model_kinds()))
    params = description.get("params", {})
    if not isinstance(params, dict):
        raise ValidationError("model.params", "expected a mapping of parameter names to values")
    cls = _REGISTRY[kind]
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValidationError("model.params", f"unknown parameter(s) {unknown} for {kind!r}",
                              ", ".join(sorted(names)))
    return cls(**params)
