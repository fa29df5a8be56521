"""Ergotropy (seed 000, Eq. 6) on coherent and degenerate states, against values worked out by hand.

ℰ(ρ) = Tr(ρ H_B) − Σ_k r_k ε_k with r_1 ≥ r_2 ≥ … the eigenvalues of ρ and ε_1 ≤ ε_2 ≤ … those
of H_B (the passive state). Basis: qubit 0 = most significant bit, |0⟩ = |g⟩, |1⟩ = |e⟩, so
H_B = Σ_j ω_j |e_j⟩⟨e_j| has levels (|00⟩, |01⟩, |10⟩, |11⟩) = (0, ω_1, ω_0, ω_0 + ω_1).
"""
import numpy as np
import pytest

from qhil.envs import DickeBattery, ergotropy


def proj(v):
    v = np.asarray(v, dtype=complex)
    v = v / np.linalg.norm(v)
    return np.outer(v, v.conj())


def test_levels_follow_the_documented_ordering():
    assert DickeBattery(omegas=(0.8, 1.4), n_max=4).battery_levels.tolist() == [0.0, 1.4, 0.8, 2.2]


# -- one qubit ---------------------------------------------------------------------------------

def test_plus_state_holds_half_its_energy_as_ergotropy_and_dephasing_destroys_it():
    """|+⟩ = (|g⟩ + |e⟩)/√2, H_B = ω|e⟩⟨e|, ω = 1.3: E = ω/2 = 0.65; ρ is pure, so the passive
    state is |g⟩ (energy 0): ℰ = 0.65. Its dephased twin diag(1/2, 1/2) has the same energy but
    eigenvalues (1/2, 1/2) on levels (0, ω): passive energy 0.65, ℰ = 0 — only coherence charges it."""
    levels = np.array([0.0, 1.3])
    plus = proj([1, 1])
    assert ergotropy(plus, levels) == pytest.approx(0.65, abs=1e-14)
    assert ergotropy(np.diag(np.diag(plus)), levels) == pytest.approx(0.0, abs=1e-14)
    # |−⟩ and |+i⟩ = (|g⟩ + i|e⟩)/√2: the phase does not matter
    assert ergotropy(proj([1, -1]), levels) == pytest.approx(0.65, abs=1e-14)
    assert ergotropy(proj([1, 1j]), levels) == pytest.approx(0.65, abs=1e-14)


def test_mixed_coherent_qubit():
    """ρ = [[0.7, 0.3], [0.3, 0.3]] (ρ_gg = 0.7), ω = 1.3. Energy 0.3·1.3 = 0.39. Eigenvalues
    1/2 ± √(0.2² + 0.3²) = 0.5 ± √0.13 = 0.860555…, 0.139445…; passive energy 0.139445…·1.3.
    ℰ = 1.3·(0.3 − 0.5 + √0.13) = 1.3·0.160555… = 0.208722…"""
    rho = np.array([[0.7, 0.3], [0.3, 0.3]])
    hand = 1.3 * (0.3 - 0.5 + np.sqrt(0.13))
    assert hand == pytest.approx(0.2087217, abs=1e-7)
    assert ergotropy(rho, np.array([0.0, 1.3])) == pytest.approx(hand, abs=1e-14)
    # the same coherence with a complex phase: eigenvalues depend on |ρ_ge| only
    rho_c = np.array([[0.7, 0.3j], [-0.3j, 0.3]])
    assert ergotropy(rho_c, np.array([0.0, 1.3])) == pytest.approx(hand, abs=1e-14)


# -- two qubits, ω = (0.8, 1.4): levels (0, 1.4, 0.8, 2.2) --------------------------------------

LEVELS2 = np.array([0.0, 1.4, 0.8, 2.2])


def test_two_qubit_coherent_pure_states():
    """Pure states: ℰ = E (the passive state is |gg⟩). (|00⟩ + |11⟩)/√2: E = 2.2/2 = 1.1;
    (|01⟩ + |10⟩)/√2: E = (1.4 + 0.8)/2 = 1.1; (|00⟩ + |01⟩ + |10⟩ + |11⟩)/2 = |+⟩|+⟩:
    E = (0 + 1.4 + 0.8 + 2.2)/4 = 1.1."""
    for vec in ([1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1]):
        assert ergotropy(proj(vec), LEVELS2) == pytest.approx(1.1, abs=1e-14)


def test_two_qubit_mixed_coherent_state():
    """ρ = ½|Φ⁺⟩⟨Φ⁺| + ½|01⟩⟨01|: eigenvalues (½, ½, 0, 0) (orthogonal parts). Energy
    ½·1.1 + ½·1.4 = 1.25; passive ½·0 + ½·0.8 = 0.4 (sorted levels 0, 0.8, 1.4, 2.2): ℰ = 0.85."""
    rho = 0.5 * proj([1, 0, 0, 1]) + 0.5 * proj([0, 1, 0, 0])
    assert ergotropy(rho, LEVELS2) == pytest.approx(0.85, abs=1e-14)
    # the battery model gives the same (its levels are these for ω = (0.8, 1.4))
    assert DickeBattery(omegas=(0.8, 1.4), n_max=4).ergotropy(rho) == pytest.approx(0.85, abs=1e-14)


def test_batched_input_is_evaluated_state_by_state():
    rhos = np.stack([proj([1, 0, 0, 1]), 0.5 * proj([1, 0, 0, 1]) + 0.5 * proj([0, 1, 0, 0]), np.eye(4) / 4])
    np.testing.assert_allclose(ergotropy(rhos, LEVELS2), [1.1, 0.85, 0.0], atol=1e-14)


# -- a degenerate Hamiltonian: ω_0 = ω_1 = 1, levels (0, 1, 1, 2) ---------------------------------

LEVELS_DEG = np.array([0.0, 1.0, 1.0, 2.0])


def test_degenerate_levels_diagonal_states():
    """diag(0.1, 0.2, 0.3, 0.4): E = 0.2 + 0.3 + 2·0.4 = 1.3; passive (0.4, 0.3, 0.2, 0.1)·(0, 1, 1, 2)
    = 0.3 + 0.2 + 0.2 = 0.7: ℰ = 0.6. diag(0.5, 0.2, 0.3, 0): the two middle populations sit in one
    degenerate level in either order, so it is already passive: E = 0.5, passive 0.3 + 0.2 = 0.5, ℰ = 0."""
    assert ergotropy(np.diag([0.1, 0.2, 0.3, 0.4]), LEVELS_DEG) == pytest.approx(0.6, abs=1e-14)
    assert ergotropy(np.diag([0.5, 0.2, 0.3, 0.0]), LEVELS_DEG) == pytest.approx(0.0, abs=1e-14)


def test_degenerate_levels_coherent_states():
    """Singlet (|01⟩ − |10⟩)/√2, pure: E = 1, ℰ = 1. ½|ψ⁻⟩⟨ψ⁻| + ½|00⟩⟨00|: eigenvalues (½, ½, 0, 0),
    E = ½, passive ½·0 + ½·1 = ½: ℰ = 0, although ρ has coherences (inside the degenerate level).
    ½|Φ⁺⟩⟨Φ⁺| + ½|01⟩⟨01|: E = ½·1 + ½·1 = 1, passive ½: ℰ = ½."""
    singlet = proj([0, 1, -1, 0])
    assert ergotropy(singlet, LEVELS_DEG) == pytest.approx(1.0, abs=1e-14)
    mixed = 0.5 * singlet + 0.5 * proj([1, 0, 0, 0])
    assert np.abs(mixed[1, 2]) == pytest.approx(0.25)                         # a real coherence
    assert ergotropy(mixed, LEVELS_DEG) == pytest.approx(0.0, abs=1e-14)
    rho = 0.5 * proj([1, 0, 0, 1]) + 0.5 * proj([0, 1, 0, 0])
    assert ergotropy(rho, LEVELS_DEG) == pytest.approx(0.5, abs=1e-14)
    assert DickeBattery.homogeneous(2, n_max=4).ergotropy(rho) == pytest.approx(0.5, abs=1e-14)
