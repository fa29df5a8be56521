"""Pauli observables on the measurable qubits, their grouping into local settings, and
shot-based estimation.

A Pauli label is written sparsely, a letter then a qubit index per factor, sorted by
qubit: ``"Z0"``, ``"X0Y2"``. A dense label of length n (``"XIZI"``, character i = qubit i)
is accepted on input and converted. A *setting* is one local basis per qubit, a string
over ``XYZ`` of length n (``"XXZY"``); it measures every Pauli whose non-identity factors
agree with it.
"""
from __future__ import annotations

import itertools
import re
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

from .errors import ValidationError

_SPARSE = re.compile(r"([XYZ])(\d+)")
_MATS = {
    "I": np.eye(2, dtype=complex),
    "X": np.array([[0, 1], [1, 0]], dtype=complex),
    "Y": np.array([[0, -1j], [1j, 0]], dtype=complex),
    "Z": np.array([[1, 0], [0, -1]], dtype=complex),
}
# Single-qubit rotations that map the eigenbasis of X / Y / Z onto the computational basis.
_TO_Z = {
    "Z": np.eye(2, dtype=complex),
    "X": np.array([[1, 1], [1, -1]], dtype=complex) / np.sqrt(2),            # H
    "Y": np.array([[1, -1j], [1, 1j]], dtype=complex) / np.sqrt(2),          # H S†
}


def parse_pauli(label: str, n_qubits: int) -> tuple[tuple[int, str], ...]:
    """Return the factors ((qubit, letter), …) of a sparse or dense label, validated."""
    if not isinstance(label, str) or not label:
        raise ValidationError("observable", f"expected a non-empty Pauli label, got {label!r}",
                              "e.g. 'Z0', 'X0Y1' or a dense string like 'XIZI'")
    if len(label) == n_qubits and set(label) <= set("IXYZ"):
        factors = tuple((i, c) for i, c in enumerate(label) if c != "I")
        if not factors:
            raise ValidationError("observable", f"{label!r} is the identity", "a non-identity Pauli")
        return factors
    if _SPARSE.sub("", label) or not _SPARSE.findall(label):
        raise ValidationError("observable", f"cannot parse Pauli label {label!r}",
                              f"letters X/Y/Z each followed by a qubit index 0..{n_qubits - 1}")
    factors = [(int(q), c) for c, q in _SPARSE.findall(label)]
    qubits = [q for q, _ in factors]
    if len(set(qubits)) != len(qubits):
        raise ValidationError("observable", f"{label!r} names a qubit twice", "each qubit at most once")
    bad = [q for q in qubits if q >= n_qubits]
    if bad:
        raise ValidationError("observable", f"{label!r} acts on qubit {bad[0]}",
                              f"qubit indices 0..{n_qubits - 1}")
    return tuple(sorted(factors))


def canonical_label(label: str, n_qubits: int) -> str:
    return "".join(f"{c}{q}" for q, c in parse_pauli(label, n_qubits))


def pauli_matrix(label: str, n_qubits: int) -> np.ndarray:
    """Dense 2^n × 2^n matrix of a Pauli label (qubit 0 = most significant bit)."""
    letters = dict((q, c) for q, c in parse_pauli(label, n_qubits))
    m = np.ones((1, 1), dtype=complex)
    for q in range(n_qubits):
        m = np.kron(m, _MATS[letters.get(q, "I")])
    return m


def expectation_matrix(labels: Sequence[str], n_qubits: int) -> np.ndarray:
    """M with ⟨P_o⟩ = Re(M @ vec(ρ))[o] for a 2^n × 2^n density matrix ρ (row-major vec)."""
    return np.stack([pauli_matrix(lab, n_qubits).T.reshape(-1) for lab in labels])


# -- grouping into local settings ------------------------------------------------------

@lru_cache(maxsize=32)
def qubit_bits(n_qubits: int) -> np.ndarray:
    """(2^n, n) table of the bits of each basis index, qubit 0 = most significant (read-only)."""
    n = n_qubits
    bits = (np.arange(2 ** n)[:, None] >> (n - 1 - np.arange(n))[None, :]) & 1
    bits.flags.writeable = False
    return bits


def _covers(setting: str, factors: tuple[tuple[int, str], ...]) -> bool:
    return all(setting[q] == c for q, c in factors)


def _orthogonal_array(n: int) -> list[str]:
    """Strength-2 covering array over {Z, X, Y}: every pair of qubits sees all 9 basis pairs.

    n ≤ 4: the 9-row orthogonal array from GF(3) (optimal). Larger n: a deterministic
    greedy construction.
    """
    sym = "ZXY"
    if n <= 4:
        rows = []
        for a, b in itertools.product(range(3), repeat=2):
            cols = [a, b, (a + b) % 3, (a + 2 * b) % 3][:n]
            rows.append("".join(sym[c] for c in cols))
        return sorted(set(rows), key=rows.index)
    needed = {(i, j, a, b) for i, j in itertools.combinations(range(n), 2)
              for a in sym for b in sym}
    rng = np.random.default_rng(0)
    rows = []
    while needed:
        best, best_cov = None, -1
        for _ in range(300):
            cand = list(rng.choice(list(sym), size=n))
            for q in range(n):  # one pass of coordinate ascent
                scores = []
                for s in sym:
                    cand[q] = s
                    scores.append(sum((i, j, cand[i], cand[j]) in needed
                                      for i, j in itertools.combinations(range(n), 2)))
                cand[q] = sym[int(np.argmax(scores))]
            cov = sum((i, j, cand[i], cand[j]) in needed for i, j in itertools.combinations(range(n), 2))
            if cov > best_cov:
                best, best_cov = "".join(cand), cov
        rows.append(best)
        needed -= {(i, j, best[i], best[j]) for i, j in itertools.combinations(range(n), 2)}
    return rows


def _greedy_cover(obs: list[tuple[tuple[int, str], ...]], pool: list[str]) -> list[str] | None:
    left = set(range(len(obs)))
    chosen: list[str] = []
    while left:
        gains = [sum(_covers(s, obs[i]) for i in left) for s in pool]
        k = int(np.argmax(gains))
        if gains[k] == 0:
            return None
        chosen.append(pool[k])
        left -= {i for i in left if _covers(pool[k], obs[i])}
    return chosen


@lru_cache(maxsize=256)
def group_settings(labels: tuple[str, ...], n_qubits: int) -> tuple[str, ...]:
    """A small set of local settings from which every label can be read.

    Every Pauli of weight ≤ 2 is covered by a strength-2 covering array (9 settings for
    n = 4 instead of 3^2·C(4,2)+… separate ones); heavier Paulis are merged greedily.
    """
    obs = [parse_pauli(lab, n_qubits) for lab in labels]
    if not obs:
        return ()
    oa = _orthogonal_array(n_qubits)
    uniform = [c * n_qubits for c in "ZXY"]
    light = [o for o in obs if len(o) <= 2]
    heavy = [o for o in obs if len(o) > 2]
    options = [c for c in (_greedy_cover(light, uniform + oa), _greedy_cover(light, oa)) if c is not None]
    chosen = min(options, key=len) if light else []
    for o in heavy:  # merge each heavy Pauli into a compatible partial setting, or open one
        if any(_covers(s, o) for s in chosen):
            continue
        chosen.append("".join(dict(o).get(q, "Z") for q in range(n_qubits)))
    return tuple(chosen)


# -- state tomography: every Pauli, read from the 3^n product settings ----------------

@lru_cache(maxsize=16)
def tomography_labels(n_qubits: int) -> tuple[str, ...]:
    """All 4^n − 1 non-identity Paulis on n qubits (sparse labels), in product order (the
    labels state tomography reads)."""
    out = []
    for letters in itertools.product("IXYZ", repeat=n_qubits):
        lab = "".join(f"{c}{q}" for q, c in enumerate(letters) if c != "I")
        if lab:
            out.append(lab)
    return tuple(out)


@lru_cache(maxsize=16)
def tomography_settings(n_qubits: int) -> tuple[str, ...]:
    """The 3^n local product bases; together they read every Pauli."""
    return tuple("".join(s) for s in itertools.product("XYZ", repeat=n_qubits))


# -- shot sampling ----------------------------------------------------------------------

def _rotation(setting: str) -> np.ndarray:
    u = np.ones((1, 1), dtype=complex)
    for c in setting:
        u = np.kron(u, _TO_Z[c])
    return u


def _apply_assignment(p: np.ndarray, assignment: np.ndarray, n: int) -> np.ndarray:
    """p' = (⊗_q A_q) p for outcome probabilities p over n qubits; A_q[m, t] = P(m | t)."""
    t = p.reshape((2,) * n)
    for q in range(n):
        t = np.moveaxis(np.tensordot(assignment[q], t, axes=([1], [q])), 0, q)
    return t.reshape(-1)


def outcome_probabilities(rho: np.ndarray, settings: Sequence[str],
                          assignment: np.ndarray | None = None) -> np.ndarray:
    """(S, 2^n) probabilities of each bitstring, per setting, for qubit density matrix ρ."""
    n = len(settings[0]) if settings else 0
    out = np.empty((len(settings), 2 ** n))
    for k, s in enumerate(settings):
        u = _rotation(s)
        p = np.clip(np.real(np.einsum("ij,jk,ik->i", u, rho, u.conj(), optimize=True)), 0.0, None)
        if assignment is not None:
            p = _apply_assignment(p, assignment, n)
        out[k] = p / p.sum()
    return out


@lru_cache(maxsize=256)
def _sign_tables(labels: tuple[str, ...], settings: tuple[str, ...], n: int) -> np.ndarray:
    """T[o, s, b] = eigenvalue (±1) of observable o for outcome b in setting s, 0 if s can't read o."""
    bits = qubit_bits(n)
    table = np.zeros((len(labels), len(settings), 2 ** n))
    for o, lab in enumerate(labels):
        f = parse_pauli(lab, n)
        qs = [q for q, _ in f]
        sign = (-1.0) ** bits[:, qs].sum(axis=1)
        for s, st in enumerate(settings):
            if _covers(st, f):
                table[o, s] = sign
    return table


@lru_cache(maxsize=256)
def _estimator(labels: tuple[str, ...], settings: tuple[str, ...], n: int) -> tuple[np.ndarray, np.ndarray]:
    table = _sign_tables(labels, settings, n)
    reads = ((np.abs(table) @ np.ones(2 ** n)) > 0).astype(float)     # (O, S): s reads o
    table.flags.writeable = reads.flags.writeable = False
    return table, reads


def estimate_from_counts(counts: np.ndarray, labels: tuple[str, ...], settings: tuple[str, ...],
                         n_qubits: int) -> tuple[np.ndarray, np.ndarray]:
    """Means and standard errors (..., O) of each label from counts (..., S, 2^n), pooling
    every setting that can read a label. The standard error is the sample standard deviation
    of the ±1 outcomes over √(shots used). Leading axes (e.g. measured steps) are batched."""
    table, reads = _estimator(tuple(labels), tuple(settings), n_qubits)
    counts = np.asarray(counts, dtype=float)
    shots = counts.sum(axis=-1) @ reads.T                       # (..., O)
    mean = np.einsum("osb,...sb->...o", table, counts) / shots
    var = np.clip(1.0 - mean ** 2, 0.0, None) * shots / np.maximum(shots - 1, 1)
    return mean, np.sqrt(var / shots)


def sample_counts(probs: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Multinomial counts (S, 2^n) for each setting's outcome distribution."""
    return np.stack([rng.multinomial(shots, p) for p in probs])


def all_two_local(n_qubits: int) -> list[str]:
    """Every Pauli of weight 1 and 2 on n qubits (sparse labels)."""
    out = [f"{a}{i}" for i in range(n_qubits) for a in "XYZ"]
    out += [f"{a}{i}{b}{j}" for i, j in itertools.combinations(range(n_qubits), 2)
            for a in "XYZ" for b in "XYZ"]
    return out


def iter_labels(labels: Iterable[str], n_qubits: int) -> tuple[str, ...]:
    """Canonicalise and de-duplicate labels, keeping the first occurrence's order."""
    seen: dict[str, None] = {}
    for lab in labels:
        seen.setdefault(canonical_label(lab, n_qubits), None)
    return tuple(seen)
