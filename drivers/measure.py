"""Turning states into measurement results: reduced qubit states, exact Pauli
expectation values, and shot sampling per local setting. Shared by every simulator
driver and the lab emulator, so they all measure the same way."""
from __future__ import annotations

import warnings

import numpy as np

from .pauli import estimate_from_counts, expectation_matrix, outcome_probabilities, sample_counts


def qubit_density(states: np.ndarray, n_qubits: int, aux_dim: int) -> np.ndarray:
    """Reduced density matrices of the qubits, (M, 2^n, 2^n), from full states (M, dim)."""
    psi = states.reshape(states.shape[0], 2 ** n_qubits, aux_dim)
    return psi @ psi.conj().transpose(0, 2, 1)


_EXP_MATS: dict[tuple, np.ndarray] = {}


def measure_density(rho: np.ndarray, labels: tuple[str, ...], settings: tuple[str, ...],
                    shots: int | None, rng: np.random.Generator, n_qubits: int,
                    assignment: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Measure Pauli labels on qubit states ρ (M, 2^n, 2^n): exact values when shots is
    None, else multinomial shots per setting. Returns (values, stderr, counts, settings)."""
    m = rho.shape[0]
    if not labels:
        return np.zeros((m, 0)), np.zeros((m, 0)), None, ()
    if shots is None:
        key = (labels, n_qubits)
        if key not in _EXP_MATS:
            _EXP_MATS[key] = expectation_matrix(labels, n_qubits)
        values = np.real(rho.reshape(m, -1) @ _EXP_MATS[key].T)
        return values, np.zeros_like(values), None, settings
    counts = np.stack([sample_counts(outcome_probabilities(r, settings, assignment), shots, rng) for r in rho])
    values, stderr = estimate_from_counts(counts, labels, settings, n_qubits)
    return values, stderr, counts, settings




def warn_if_truncated(model, top: float, warned: set[str]) -> None:
    """Warn once per model (tracked in ``warned``) when its cutoff is not converged, as the model
    judges from the top aux level's population ``top`` (:meth:`Model.aux_truncation_warning`)."""
    if model.key in warned:
        return
    message = model.aux_truncation_warning(top)
    if message is not None:
        warned.add(model.key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
