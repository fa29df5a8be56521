"""Measurement grouping for 7–10 qubits (the Dicke battery allows up to 10 TLS): every requested
Pauli is read by some setting, the estimator fed exact outcome probabilities reproduces exact
expectation values of random states, and the number of settings is the one documented in
:class:`qhil.drivers.MeasurementSchedule`. Probabilities and expectation values here are
computed on state tensors, independently of qhil's matrices."""
import itertools

import numpy as np
import pytest

from qhil.drivers import MeasurementSchedule
from qhil.drivers.pauli import estimate_from_counts, outcome_probabilities

#: Settings documented for the second-order regime (MeasurementSchedule docstring).
DOCUMENTED_SECOND_ORDER = {7: 16, 8: 16, 9: 17, 10: 17}
PAULI = {"X": np.array([[0, 1], [1, 0]], complex), "Y": np.array([[0, -1j], [1j, 0]]),
         "Z": np.diag([1.0 + 0j, -1.0])}
TO_Z = {"Z": np.eye(2, dtype=complex), "X": np.array([[1, 1], [1, -1]]) / np.sqrt(2),
        "Y": np.array([[1, -1j], [1, 1j]]) / np.sqrt(2)}     # rows: ⟨+|, ⟨−| of each basis


def factors(label):
    """'X0Y12' → [(0, 'X'), (12, 'Y')] (qhil's sparse labels), parsed here by hand."""
    out, i = [], 0
    while i < len(label):
        j = i + 1
        while j < len(label) and label[j].isdigit():
            j += 1
        out.append((int(label[i + 1:j]), label[i]))
        i = j
    return out


def apply_local(psi, ops, n):
    """(⊗_q ops[q]) ψ on an n-qubit state, qubit 0 = most significant (axis 0 of the tensor)."""
    t = psi.reshape((2,) * n)
    for q, op in ops.items():
        t = np.moveaxis(np.tensordot(op, t, axes=([1], [q])), 0, q)
    return t.reshape(-1)


def expectation(psi, label, n):
    return float(np.real(np.vdot(psi, apply_local(psi, {q: PAULI[c] for q, c in factors(label)}, n))))


def setting_probabilities(psi, setting, n):
    return np.abs(apply_local(psi, {q: TO_Z[c] for q, c in enumerate(setting)}, n)) ** 2


def random_state(n, rng):
    v = rng.normal(size=2 ** n) + 1j * rng.normal(size=2 ** n)
    return v / np.linalg.norm(v)


def expected_labels(n):
    """The second-order regime written out: Z_j, X_j, Y_j, then α_i β_j for i < j."""
    first = [f"Z{j}" for j in range(n)] + [f"{a}{j}" for j in range(n) for a in "XY"]
    pairs = [f"{a}{i}{b}{j}" for i, j in itertools.combinations(range(n), 2) for a in "XYZ" for b in "XYZ"]
    return first, pairs


@pytest.mark.parametrize("n", [7, 8, 9, 10])
def test_second_order_grouping_covers_reproduces_and_has_the_documented_size(n):
    schedule = MeasurementSchedule("second_order")
    labels, settings = schedule.labels(n), schedule.settings(n)
    first, pairs = expected_labels(n)
    assert sorted(labels) == sorted(first + pairs) and len(labels) == 3 * n + 9 * n * (n - 1) // 2
    assert len(settings) == DOCUMENTED_SECOND_ORDER[n]
    assert all(len(s) == n and set(s) <= set("XYZ") for s in settings)
    # every label is read by some setting (its letters agree with the setting on its qubits)
    reads = {lab: [s for s in settings if all(s[q] == c for q, c in factors(lab))] for lab in labels}
    assert all(reads[lab] for lab in labels), [lab for lab in labels if not reads[lab]]
    # exact probabilities in, exact expectation values out, for random states
    rng = np.random.default_rng(n)
    for _ in range(2):
        psi = random_state(n, rng)
        probs = np.stack([setting_probabilities(psi, s, n) for s in settings])
        mean, stderr = estimate_from_counts(probs, labels, settings, n)
        exact = np.array([expectation(psi, lab, n) for lab in labels])
        np.testing.assert_allclose(mean, exact, atol=1e-12)
        assert np.max(np.abs(exact)) > 0.05                       # not a trivially zero state


@pytest.mark.parametrize("n", [7, 10])
def test_first_order_and_energies_keep_their_sizes(n):
    assert MeasurementSchedule("energies").settings(n) == ("Z" * n,)
    assert sorted(MeasurementSchedule("first_order").settings(n)) == ["X" * n, "Y" * n, "Z" * n]


def test_density_matrix_route_at_seven_qubits():
    """qhil's own outcome_probabilities on a mixed 7-qubit state agrees with the tensor route,
    and the estimator then gives Tr(ρ P)."""
    n, rng = 7, np.random.default_rng(11)
    psis = [random_state(n, rng) for _ in range(3)]
    weights = np.array([0.5, 0.3, 0.2])
    rho = sum(w * np.outer(p, p.conj()) for w, p in zip(weights, psis))
    schedule = MeasurementSchedule("second_order")
    labels, settings = schedule.labels(n), schedule.settings(n)
    probs = outcome_probabilities(rho, settings)
    by_hand = sum(w * np.stack([setting_probabilities(p, s, n) for s in settings]) for w, p in zip(weights, psis))
    np.testing.assert_allclose(probs, by_hand, atol=1e-12)
    mean, _ = estimate_from_counts(probs, labels, settings, n)
    exact = sum(w * np.array([expectation(p, lab, n) for lab in labels]) for w, p in zip(weights, psis))
    np.testing.assert_allclose(mean, exact, atol=1e-12)


@pytest.mark.parametrize("n", [4, 7, 10])
def test_shots_pool_over_every_setting_that_reads_a_label(n):
    """Result.stderr pools every setting reading a label: with S shots per setting and k settings
    reading it, the standard error is √((1 − m²)/(k S − 1)). For n = 2..4 (the orthogonal array)
    k = 3 for single-qubit labels and 1 for pairs, as documented."""
    schedule = MeasurementSchedule("second_order")
    labels, settings = schedule.labels(n), schedule.settings(n)
    shots = 1000
    counts = np.full((len(settings), 2 ** n), shots / 2 ** n)       # uniform outcomes: every mean 0
    _, stderr = estimate_from_counts(counts, labels, settings, n)
    k = np.array([sum(all(s[q] == c for q, c in factors(lab)) for s in settings) for lab in labels])
    np.testing.assert_allclose(stderr, np.sqrt(1.0 / (k * shots - 1)), rtol=1e-12)
    if n == 4:
        assert set(k[[len(factors(lab)) == 1 for lab in labels]]) == {3}
        assert set(k[[len(factors(lab)) == 2 for lab in labels]]) == {1}
