"""State estimation of the measurable qubits from local-basis measurements.

On hardware the ergotropy cannot be read off a single observable: it needs the battery's
reduced state. Measure the schedule ``MeasurementSchedule("tomography", shots=…)`` (every
Pauli on the n qubits, read from the 3^n product settings), then

    rho = estimate_density(result)        # linear inversion + projection, per measured step

Linear inversion: ρ_LI = (I + Σ_P ⟨P⟩ P) / 2^n over all 4^n − 1 non-identity Paulis.
Projection: the closest physical state in the 2-norm, by clipping the eigenvalues onto the
probability simplex (Smolin, Gambetta & Smith, PRL 108, 070502 (2012)).
Cost: 3^n settings × shots per measured step (81 settings for n = 4).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .errors import ValidationError
from .experiment import Result
from .pauli import expectation_matrix, tomography_labels


@lru_cache(maxsize=16)
def _inversion_matrix(n_qubits: int) -> np.ndarray:
    # vec(ρ) = (vec(I) + Σ_P ⟨P⟩ vec(P)) / 2^n; expectation_matrix holds vec(P^T) = conj(vec(P)) rows
    return np.conj(expectation_matrix(tomography_labels(n_qubits), n_qubits)).T / 2 ** n_qubits


def linear_inversion(expectations: np.ndarray, n_qubits: int) -> np.ndarray:
    """ρ_LI from (..., 4^n − 1) Pauli expectation values in :func:`tomography_labels` order."""
    e = np.asarray(expectations, dtype=float)
    if e.shape[-1] != 4 ** n_qubits - 1:
        raise ValidationError("expectations", f"last axis has length {e.shape[-1]}",
                              f"4^n − 1 = {4 ** n_qubits - 1} values in tomography_labels order")
    d = 2 ** n_qubits
    vec = e @ _inversion_matrix(n_qubits).T + np.eye(d).reshape(-1) / d
    return vec.reshape(*e.shape[:-1], d, d)


def project_to_physical(rho: np.ndarray) -> np.ndarray:
    """Closest density matrix (Hermitian, PSD, trace 1) to a Hermitian, trace-1 ρ, (..., d, d)."""
    rho = 0.5 * (rho + np.conj(np.swapaxes(rho, -1, -2)))
    w, v = np.linalg.eigh(rho)                  # ascending
    lam = np.empty_like(w)
    for idx in np.ndindex(w.shape[:-1]):
        mu = w[idx][::-1].copy()                # descending
        d = len(mu)
        acc, i = 0.0, d
        while i > 0 and mu[i - 1] + acc / i < 0:
            acc += mu[i - 1]
            mu[i - 1] = 0.0
            i -= 1
        mu[:i] += acc / max(i, 1)
        lam[idx] = mu[::-1]
    return (v * lam[..., None, :]) @ np.conj(np.swapaxes(v, -1, -2))


def estimate_density(result: Result, n_qubits: int | None = None, physical: bool = True) -> np.ndarray:
    """(M, 2^n, 2^n) state estimates from a result measured with the ``tomography`` schedule."""
    n = n_qubits if n_qubits is not None else _qubits_of(result.labels)
    labels = tomography_labels(n)
    missing = [lab for lab in labels if lab not in result.labels]
    if missing:
        raise ValidationError("result.labels", f"{len(missing)} Paulis were not measured (e.g. {missing[0]})",
                              "a result of MeasurementSchedule('tomography')")
    idx = [result.labels.index(lab) for lab in labels]
    rho = linear_inversion(result.values[:, idx], n)
    return project_to_physical(rho) if physical else rho


def _qubits_of(labels: tuple[str, ...]) -> int:
    n = 1
    while 4 ** n - 1 < len(labels):
        n += 1
    return n
