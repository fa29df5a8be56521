"""Noise channels on the measurable qubits: their constructors, conventions and checks.

Channels (applied after every control step, to each listed qubit, in the order given):

* ``bit_flip``:      ρ → (1 − p) ρ + p XρX
* ``phase_flip``:    ρ → (1 − p) ρ + p ZρZ
* ``depolarizing``:  ρ → (1 − p) ρ + p Tr_q(ρ) ⊗ I/2      (Qiskit's convention: X, Y, Z each p/4)
* ``kraus``:         ρ → Σ_k K_k ρ K_k†  for user-given single-qubit Kraus operators

``p`` is a probability per step in [0, 1]. A ``rate`` γ (per unit time, 1/ω_0) is turned
into a per-step probability for the step length Δt: the Lindblad generator γ(PρP − ρ)
(P = X or Z) gives p = (1 − e^{−2γΔt})/2, and γ(Tr_q ρ ⊗ I/2 − ρ) gives p = 1 − e^{−γΔt}.
Applying the channel once after each step's unitary is exact for this discrete model; as a
model of continuous noise it is a splitting with an error of order γ‖[H, ·]‖Δt² per step.

The noise never touches the auxiliary subsystem (the cavity): it has no qubit meaning.

The exact density-matrix engine for these channels is :mod:`qhil.drivers.density`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from . import checks as check
from .errors import ValidationError

CHANNELS = ("bit_flip", "phase_flip", "depolarizing", "kraus")
_PAULI = {"I": np.eye(2, dtype=complex), "X": np.array([[0, 1], [1, 0]], dtype=complex),
          "Y": np.array([[0, -1j], [1j, 0]]), "Z": np.array([[1, 0], [0, -1]], dtype=complex)}
_MAX_RATE = 1e6
_KRAUS_TOL = 1e-10


@dataclasses.dataclass(frozen=True)
class Channel:
    """One noise channel, applied after every control step to each qubit in ``qubits``.

    name:   one of :data:`CHANNELS`
    p:      probability per step, in [0, 1] (give ``p`` or ``rate``, not both)
    rate:   γ per unit time (1/ω_0), ≥ 0; converted per step as in the module docstring
    qubits: measurable qubits it acts on (qhil numbering); None = all of them
    kraus:  for ``name="kraus"``: single-qubit Kraus operators (2×2, Σ K†K = I)
    """

    name: str
    p: float | None = None
    rate: float | None = None
    qubits: tuple[int, ...] | None = None
    kraus: tuple[np.ndarray, ...] | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        where = f"noise[{self.name}]" if isinstance(self.name, str) else "noise"
        if self.name not in CHANNELS:
            raise ValidationError("noise.channel", f"unknown channel {self.name!r}", ", ".join(CHANNELS))
        if self.qubits is not None:
            object.__setattr__(self, "qubits", _qubit_tuple(f"{where}.qubits", self.qubits))
        if self.name == "kraus":
            if self.p is not None or self.rate is not None:
                raise ValidationError(f"{where}", "a Kraus channel takes operators, not p or rate",
                                      "kraus=[K0, K1, ...]")
            object.__setattr__(self, "kraus", _check_kraus(where, self.kraus))
            return
        if self.kraus is not None:
            raise ValidationError(f"{where}.kraus", "operators are only for name='kraus'")
        if (self.p is None) == (self.rate is None):
            raise ValidationError(f"{where}", "give exactly one of p (per step) or rate (per unit time)",
                                  "p in [0, 1] or rate ≥ 0")
        if self.p is not None:
            object.__setattr__(self, "p", check.finite_float(f"{where}.p", self.p, 0.0, 1.0))
        else:
            object.__setattr__(self, "rate", check.finite_float(f"{where}.rate", self.rate, 0.0, _MAX_RATE))

    def probability(self, dt: float) -> float:
        """Error probability per step of length ``dt`` (1/ω_0)."""
        if self.p is not None:
            return float(self.p)
        x = self.rate * dt
        return float(-math.expm1(-x)) if self.name == "depolarizing" else float(-0.5 * math.expm1(-2.0 * x))

    def kraus_operators(self, dt: float) -> list[np.ndarray]:
        """Single-qubit Kraus operators of one step, basis |0⟩ = |g⟩, |1⟩ = |e⟩."""
        if self.name == "kraus":
            return [np.array(k, dtype=complex) for k in self.kraus]
        p = self.probability(dt)
        if self.name == "bit_flip":
            probs = {"I": 1 - p, "X": p}
        elif self.name == "phase_flip":
            probs = {"I": 1 - p, "Z": p}
        else:
            probs = {"I": 1 - 0.75 * p, "X": p / 4, "Y": p / 4, "Z": p / 4}
        return [math.sqrt(q) * _PAULI[s] for s, q in probs.items() if q > 0]

    def targets(self, n_qubits: int) -> tuple[int, ...]:
        return tuple(range(n_qubits)) if self.qubits is None else self.qubits

    def to_dict(self, dt: float | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"channel": self.name, "qubits": None if self.qubits is None else list(self.qubits)}
        if self.name == "kraus":
            d["kraus"] = [[[[z.real, z.imag] for z in row] for row in k] for k in self.kraus]
        else:
            d.update({"p": self.p, "rate": self.rate})
            if dt is not None:
                d["p_per_step"] = self.probability(dt)
        return d


#: Largest qubit index a channel may name (the models stop far below: 10 battery TLS, 12 spins).
MAX_QUBIT_INDEX = 10_000


def _qubit_tuple(name: str, qubits: Any) -> tuple[int, ...]:
    """Validated qubit indices: a non-empty list of distinct integers in [0, MAX_QUBIT_INDEX]
    (whether they exist is checked against the model when an experiment runs)."""
    allowed = f"None (every qubit) or a non-empty list of distinct integers in [0, {MAX_QUBIT_INDEX}]"
    if isinstance(qubits, (str, bytes, dict)) or not hasattr(qubits, "__iter__"):
        raise ValidationError(name, f"expected a list of qubit indices, got {qubits!r}", allowed)
    qs = tuple(check.integer(name, q, 0, MAX_QUBIT_INDEX) for q in qubits)
    if not qs:
        raise ValidationError(name, "is empty: the channel would act on nothing", allowed)
    if len(set(qs)) != len(qs):
        raise ValidationError(name, f"{list(qs)} names a qubit twice", allowed)
    return qs


def bit_flip(p: float | None = None, rate: float | None = None, qubits: Sequence[int] | None = None) -> Channel:
    """ρ → (1 − p) ρ + p XρX on each qubit (p per step in [0, 1], or rate ≥ 0 per unit time 1/ω_0).
    Bad arguments raise :class:`~qhil.drivers.ValidationError`."""
    return Channel("bit_flip", p, rate, qubits)


def phase_flip(p: float | None = None, rate: float | None = None, qubits: Sequence[int] | None = None) -> Channel:
    """ρ → (1 − p) ρ + p ZρZ on each qubit (p per step in [0, 1], or rate ≥ 0 per unit time 1/ω_0).
    Bad arguments raise :class:`~qhil.drivers.ValidationError`."""
    return Channel("phase_flip", p, rate, qubits)


def depolarizing(p: float | None = None, rate: float | None = None, qubits: Sequence[int] | None = None) -> Channel:
    """ρ → (1 − p) ρ + p Tr_q(ρ) ⊗ I/2 on each qubit (p per step in [0, 1], or rate ≥ 0 per unit
    time 1/ω_0). Bad arguments raise :class:`~qhil.drivers.ValidationError`."""
    return Channel("depolarizing", p, rate, qubits)


def kraus_channel(operators: Any, qubits: Sequence[int] | None = None) -> Channel:
    """A user channel from single-qubit Kraus operators (a list of 2×2 arrays, a
    ``qiskit.quantum_info.Kraus`` or a single-qubit ``qiskit_aer.noise.QuantumError``),
    Σ K†K = I within 1e-10. Bad arguments raise :class:`~qhil.drivers.ValidationError`."""
    return Channel("kraus", qubits=qubits, kraus=_kraus_list(operators))


def _kraus_list(operators: Any) -> Any:
    cls = type(operators).__name__
    if cls in ("QuantumError", "Kraus", "SuperOp", "Choi", "Chi", "PTM", "Stinespring"):
        from qiskit.quantum_info import Kraus
        ch = operators.to_quantumchannel() if cls == "QuantumError" else operators
        if cls == "QuantumError" and operators.num_qubits != 1:
            raise ValidationError("noise.kraus", f"expected a single-qubit error, got {operators.num_qubits} qubits",
                                  "a 1-qubit QuantumError, or a NoiseModel for multi-qubit errors")
        try:
            kr = Kraus(ch)
        except Exception as exc:           # qiskit's own error (e.g. not completely positive)
            raise ValidationError("noise.kraus", f"cannot convert the {cls} to Kraus operators: {exc}",
                                  "a completely positive, trace-preserving single-qubit channel") from None
        if kr.num_qubits != 1:
            raise ValidationError("noise.kraus", f"expected a single-qubit channel, got {kr.num_qubits} qubits",
                                  "2×2 Kraus operators")
        return tuple(np.asarray(k, dtype=complex) for k in kr.data)
    return operators


def _check_kraus(where: str, ops: Any) -> tuple[np.ndarray, ...]:
    ops = _kraus_list(ops)
    try:
        mats = [np.asarray(k, dtype=complex) for k in ops]
    except (TypeError, ValueError):
        raise ValidationError(f"{where}.kraus", "expected a list of 2×2 complex matrices") from None
    if not mats or any(m.shape != (2, 2) or not np.all(np.isfinite(m)) for m in mats):
        raise ValidationError(f"{where}.kraus", "expected a non-empty list of finite 2×2 matrices",
                              "single-qubit Kraus operators")
    total = sum(m.conj().T @ m for m in mats)
    if np.max(np.abs(total - np.eye(2))) > _KRAUS_TOL:
        raise ValidationError(f"{where}.kraus", "Σ K†K is not the identity (not trace preserving)",
                              f"Σ K†K = I within {_KRAUS_TOL:g}")
    for m in mats:
        m.setflags(write=False)
    return tuple(mats)


def parse_channels(noise: Any) -> tuple[Channel, ...]:
    """Normalise a noise specification into channels.

    Accepts a :class:`Channel`, a dict ``{"channel": "depolarizing", "p": 0.01, "qubits": [0, 1]}``
    (or ``"rate"``, or ``"kraus": [...]``), a pair ``("bit_flip", 0.02)``, or a list of these.
    """
    if noise is None:
        return ()
    if isinstance(noise, (Channel, dict)) or (isinstance(noise, tuple) and len(noise) == 2
                                               and isinstance(noise[0], str)):
        noise = [noise]
    if isinstance(noise, str):
        raise ValidationError("noise", f"{noise!r} needs a probability, e.g. ({noise!r}, 0.01)",
                              "a Channel, a dict, a (name, p) pair, a list of these, a NoiseModel")
    if not isinstance(noise, (list, tuple)):
        raise ValidationError("noise", f"cannot read {noise!r} as noise",
                              "a Channel, a dict, a (name, p) pair, a list of these, a NoiseModel")
    out = []
    for i, item in enumerate(noise):
        if isinstance(item, Channel):
            out.append(item)
        elif isinstance(item, dict):
            d = dict(item)
            name = d.pop("channel", d.pop("name", None))
            if name is None:
                raise ValidationError(f"noise[{i}]", "missing 'channel'", ", ".join(CHANNELS))
            allowed = {"p", "rate", "qubits", "kraus"}
            if set(d) - allowed:
                raise ValidationError(f"noise[{i}]", f"unknown key(s) {sorted(set(d) - allowed)}",
                                      "channel, p, rate, qubits, kraus")
            if name == "kraus":
                if "p" in d or "rate" in d:
                    raise ValidationError(f"noise[{i}]", "a Kraus channel takes operators, not p or rate")
                out.append(kraus_channel(d.get("kraus"), d.get("qubits")))
            else:
                out.append(Channel(name, d.get("p"), d.get("rate"), d.get("qubits"), d.get("kraus")))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
            out.append(Channel(item[0], p=item[1]))
        else:
            raise ValidationError(f"noise[{i}]", f"cannot read {item!r} as a channel",
                                  "a Channel, a dict, a (name, p) pair")
    return tuple(out)


def check_qubits(channels: Sequence[Channel], n_qubits: int) -> None:
    """Raise unless every channel acts on existing measurable qubits 0..n_qubits−1."""
    for ch in channels:
        for q in ch.targets(n_qubits):
            if q >= n_qubits:
                raise ValidationError(f"noise[{ch.name}].qubits", f"qubit {q} does not exist",
                                      f"measurable qubits 0..{n_qubits - 1}")


def check_assignment(assignment: Any, n_qubits: int) -> np.ndarray | None:
    """Readout assignment A[q][m, t] = P(read m | true t): a (2, 2) matrix for every qubit or
    (n, 2, 2). Returns (n, 2, 2) floats, validated."""
    if assignment is None:
        return None
    try:
        a = np.array(assignment, dtype=float)
    except (TypeError, ValueError):
        raise ValidationError("readout", "expected a (2, 2) or (n_qubits, 2, 2) array of probabilities") from None
    if a.shape == (2, 2):
        a = np.broadcast_to(a, (n_qubits, 2, 2)).copy()
    if a.shape != (n_qubits, 2, 2):
        raise ValidationError("readout", f"has shape {a.shape}", f"(2, 2) or ({n_qubits}, 2, 2)")
    if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
        raise ValidationError("readout", "entries must be probabilities", "[0, 1]")
    if np.max(np.abs(a.sum(axis=1) - 1.0)) > 1e-9:
        raise ValidationError("readout", "each column A[:, t] must sum to 1 (A[m, t] = P(read m | true t))",
                              "columns summing to 1")
    return a


def superoperator(ops: Sequence[np.ndarray]) -> np.ndarray:
    """S = Σ_k K_k ⊗ K̄_k: vec(Σ K ρ K†) = S vec(ρ) (row-major vec, index 2a + b for |a⟩⟨b|)."""
    return sum(np.kron(k, k.conj()) for k in ops)
