"""The XY spin chain of seed 004, Eq. (1):

    H(t) = J/2 Σ_{n=1}^{N−1} (σ_x^n σ_x^{n+1} + σ_y^n σ_y^{n+1}) + Σ_n B_n(t) σ_z^n,     ħ = 1

N spins (all measurable), coupling J, one control channel B_n per site.
Basis: qubit 0 = spin 1 = most significant bit, |0⟩ = spin up (Z = +1). The
initial state is a computational basis state given as a bit string (default "100":
one excitation on the first spin, the end-to-end transfer problem of seed 004).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, reduce

import numpy as np
import scipy.sparse as sp

from qhil.drivers import ControlChannel, Model, Result, ValidationError, register_model
from qhil.drivers import checks as check

from .figures import fidelity_density

MAX_SPINS = 12
_PAULI = {"X": np.array([[0, 1], [1, 0]], dtype=complex), "Y": np.array([[0, -1j], [1j, 0]]),
          "Z": np.array([[1, 0], [0, -1]], dtype=complex)}


def _site(op: str, n: int, N: int) -> sp.csr_matrix:
    eye = sp.identity(2, format="csr")
    return reduce(lambda a, b: sp.kron(a, b, format="csr"),
                  [sp.csr_matrix(_PAULI[op]) if k == n else eye for k in range(N)]).tocsr()


def _bitstring(name: str, value: str, n: int) -> str:
    if not isinstance(value, str) or len(value) != n or set(value) - {"0", "1"}:
        raise ValidationError(name, f"{value!r} is not a bit string of length {n}", f"'0'/'1' × {n}")
    return value


@register_model
@dataclass(frozen=True)
class XYChain(Model):
    """XY chain with local z-fields.

    Sign convention: |0⟩ = spin up and the paper's σ's are the computational Paulis, so the
    Pauli labels mean X = σ_x, Y = +σ_y, Z = +σ_z (paper) here, the *opposite* sign relation
    to the Dicke battery (|0⟩ = |g⟩: Y = −σ_y, Z = −σ_z). A bit ``1`` reads ⟨Z⟩ = −1 (spin down).

    n_spins:       N, in 1..12
    coupling:      J, in [−100, 100]
    field_bound:   each B_n ∈ [−field_bound, field_bound]
    initial_bits:  initial computational basis state, e.g. "100"
    target_bits:   target basis state for :meth:`fidelity`, e.g. "001"
    """

    n_spins: int = 3
    coupling: float = 1.0
    field_bound: float = 5.0
    initial_bits: str | None = None
    target_bits: str | None = None

    kind = "xy_chain"

    def __post_init__(self) -> None:
        n = check.integer("n_spins", self.n_spins, 1, MAX_SPINS)
        object.__setattr__(self, "n_spins", n)
        object.__setattr__(self, "coupling", check.finite_float("coupling", self.coupling, -100.0, 100.0))
        object.__setattr__(self, "field_bound",
                           check.finite_float("field_bound", self.field_bound, 0.0, 1000.0, lo_open=True))
        object.__setattr__(self, "initial_bits",
                           _bitstring("initial_bits", self.initial_bits or "1" + "0" * (n - 1), n))
        object.__setattr__(self, "target_bits",
                           _bitstring("target_bits", self.target_bits or "0" * (n - 1) + "1", n))

    @property
    def n_qubits(self) -> int:
        return self.n_spins

    @property
    def controls(self) -> tuple[ControlChannel, ...]:
        b = self.field_bound
        return tuple(ControlChannel(f"B{n + 1}", -b, b, "J") for n in range(self.n_spins))

    @cached_property
    def _operators(self) -> tuple[sp.csr_matrix, tuple[sp.csr_matrix, ...]]:
        N = self.n_spins
        drift = sp.csr_matrix((2 ** N, 2 ** N), dtype=complex)
        for n in range(N - 1):
            drift = drift + 0.5 * self.coupling * (_site("X", n, N) @ _site("X", n + 1, N)
                                                    + _site("Y", n, N) @ _site("Y", n + 1, N))
        drift = sp.csr_matrix(drift.real)   # σxσx + σyσy is real
        return drift, tuple(sp.csr_matrix(_site("Z", n, N).real) for n in range(N))

    def drift(self) -> sp.csr_matrix:
        return self._operators[0]

    def control_operators(self) -> tuple[sp.csr_matrix, ...]:
        return self._operators[1]

    def _basis(self, bits: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=complex)
        v[int(bits, 2)] = 1.0
        return v

    def initial_state(self) -> np.ndarray:
        return self._basis(self.initial_bits)

    def target_state(self) -> np.ndarray:
        return self._basis(self.target_bits)

    def fidelity(self, rho: np.ndarray) -> np.ndarray:
        """F = ⟨target|ρ|target⟩ from the qubit density matrix (..., 2^N, 2^N)."""
        return fidelity_density(rho, self.target_state())

    def figures_of_merit(self, result: Result) -> dict[str, np.ndarray | None]:
        """Per measured step: fidelity to the target (simulators only, else None)."""
        rho = result.qubit_density
        return {"fidelity": None if rho is None else self.fidelity(rho)}
