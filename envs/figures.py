"""Figures of merit computed from (reduced) quantum states."""
from __future__ import annotations

import numpy as np


def ergotropy(rho: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Ergotropy of ρ for a Hamiltonian diagonal in the computational basis, Eq. (6) of seed 000.

    rho:    (..., d, d) density matrices
    levels: (d,) eigenvalues of H_B (diagonal of H_B)
    Returns Tr(ρ H_B) − Σ_i r_i ε_i with r sorted decreasing and ε increasing (passive state).
    """
    rho = np.asarray(rho)
    energy = np.real(np.diagonal(rho, axis1=-2, axis2=-1)) @ levels
    r = np.linalg.eigvalsh(rho)[..., ::-1]          # decreasing
    passive = r @ np.sort(levels)
    return np.maximum(energy - passive, 0.0) if np.ndim(energy) == 0 else np.clip(energy - passive, 0.0, None)


def fidelity(psi: np.ndarray, target: np.ndarray) -> np.ndarray:
    """F = |⟨target|ψ⟩|² for state vectors (..., d)."""
    return np.abs(np.asarray(psi) @ np.conj(target)) ** 2


def fidelity_density(rho: np.ndarray, target: np.ndarray) -> np.ndarray:
    """F = ⟨target|ρ|target⟩ for density matrices (..., d, d) and a pure target."""
    t = np.asarray(target)
    return np.real(np.einsum("i,...ij,j->...", t.conj(), rho, t))
