"""The exact driver against independent calculations: dense expm, conservation laws, limits."""
import dataclasses

import numpy as np
import pytest
import scipy.linalg as sla

from qhil.drivers import Experiment, MeasurementSchedule, create_backend
from qhil.envs import ENV1, DickeBattery, XYChain, check_cutoff, ergotropy

FULL = MeasurementSchedule("full_state")

# Small cutoffs are deliberate here: exactness is checked within the truncated space.
pytestmark = pytest.mark.filterwarnings("ignore:truncation of the dicke:RuntimeWarning")


def dense_trajectory(model, controls, dt):
    """Independent reference: dense scipy.linalg.expm of the full Hamiltonian, step by step."""
    drift = model.drift().toarray()
    ops = [h.toarray() for h in model.control_operators()]
    psi = model.initial_state()
    out = [psi]
    for u in np.atleast_2d(np.asarray(controls, float).reshape(len(controls), -1)):
        h = drift + sum(uk * hk for uk, hk in zip(u, ops))
        psi = sla.expm(-1j * dt * h) @ psi
        out.append(psi)
    return np.array(out)


def test_dicke_matches_dense_expm(backend, small_dicke, rng):
    u = rng.uniform(-0.5, 0.5, 12)
    res = backend.run(Experiment(small_dicke, u, 0.3, FULL))[0]
    ref = dense_trajectory(small_dicke, u, 0.3)
    assert np.max(np.abs(res.state - ref)) < 1e-10


def test_xy_chain_matches_dense_expm(backend, rng):
    chain = XYChain(n_spins=4, coupling=0.8)
    u = rng.uniform(-5, 5, (9, 4))
    res = backend.run(Experiment(chain, u, 0.25, FULL))[0]
    assert np.max(np.abs(res.state - dense_trajectory(chain, u, 0.25))) < 1e-10


def test_long_steps_are_split_and_still_exact(backend, small_dicke):
    u = [0.5, -0.5, 0.2]
    res = backend.run(Experiment(small_dicke, u, 7.0, FULL))[0]
    assert np.max(np.abs(res.state - dense_trajectory(small_dicke, u, 7.0))) < 1e-10


def test_norm_and_parity_are_conserved(backend, rng):
    model = DickeBattery(omegas=ENV1, n_max=20)
    u = rng.uniform(-0.3, 0.3, 28)
    res = backend.run(Experiment(model, u, 0.2, FULL))[0]
    assert np.allclose(np.linalg.norm(res.state, axis=1), 1.0, atol=1e-12)
    # P = (⊗ iσ_z) ⊗ e^{iπ a†a}: up to a constant phase, (−1)^(#excited + n)
    n, nf = model.n_qubits, model.aux_dim
    s = np.arange(2 ** n)
    excited = np.array([bin(x).count("1") for x in s])
    parity = ((-1.0) ** (excited[:, None] + np.arange(nf)[None, :])).ravel()
    p = np.real(np.einsum("ki,i,ki->k", res.state.conj(), parity, res.state))
    assert np.allclose(p, p[0], atol=1e-12) and abs(abs(p[0]) - 1) < 1e-12


def test_zero_coupling_leaves_energies_constant(backend):
    """Charge for 6 steps, then λ = 0: H = H_0 is diagonal, so every E_j and the ergotropy freeze."""
    model = DickeBattery(omegas=ENV1, n_max=24)
    u = np.r_[np.full(6, 0.3), np.zeros(10)]
    res = backend.run(Experiment(model, u, 0.2, MeasurementSchedule("second_order")))[0]
    fom = model.figures_of_merit(res)
    frozen = fom["energies"][6:]
    assert np.max(np.abs(frozen[0])) > 0.1                      # the battery did charge
    assert np.max(np.abs(frozen - frozen[0])) < 1e-12
    assert np.max(np.abs(fom["ergotropy"][6:] - fom["ergotropy"][6])) < 1e-12
    assert np.max(np.abs(np.diff(fom["energies"][:7], axis=0))) > 1e-3   # ...and moved before


def test_passive_states_have_zero_ergotropy():
    levels = np.array([0.0, 0.7, 1.1, 1.8])
    passive = np.diag([0.5, 0.3, 0.15, 0.05])          # populations decrease with energy
    assert abs(ergotropy(passive, levels)) < 1e-14
    assert abs(ergotropy(np.eye(4) / 4, levels)) < 1e-14
    excited = np.zeros((4, 4)); excited[3, 3] = 1       # fully charged: ergotropy = E_max − E_min
    assert abs(ergotropy(excited, levels) - 1.8) < 1e-14
    inverted = np.diag([0.05, 0.15, 0.3, 0.5])
    expect = inverted.diagonal() @ levels - passive.diagonal() @ levels
    assert abs(ergotropy(inverted, levels) - expect) < 1e-14


def test_homogeneous_is_the_uniform_special_case():
    a = DickeBattery.homogeneous(3, omega_0=1.1, n_max=8)
    b = DickeBattery(omegas=(1.1, 1.1, 1.1), n_max=8)
    assert a.key == b.key
    assert (a.drift() != b.drift()).nnz == 0


def test_reference_value_env1_constant_coupling(backend):
    """Issue figure: λ = 0.3 on Env1, τ = 5.6, Δt = 0.2 gives ergotropy 1.7889 when converged."""
    model = DickeBattery(omegas=ENV1)
    res = backend.run(Experiment(model, np.full(28, 0.3), 0.2, MeasurementSchedule(final_only=True)))[0]
    assert abs(float(model.ergotropy(res.qubit_density[-1])) - 1.7889) < 5e-5


def test_default_cutoff_is_converged(backend):
    """Doubling the default cutoff moves the final ergotropy by < 1e-6 on the hungriest protocol."""
    model = DickeBattery(omegas=ENV1)
    report = check_cutoff(model, np.full(28, 0.3), 0.2, backend=backend)
    assert report["converged"], report
    assert report["ergotropy_change"] < 1e-6
    assert report["n_max"]["top_population"] < 1e-8


def test_low_cutoff_warns_and_is_wrong(backend):
    model = DickeBattery(omegas=ENV1, n_max=12)
    with pytest.warns(RuntimeWarning, match="not converged"):
        report = check_cutoff(model, np.full(28, 0.3), 0.2, backend=backend)
    assert not report["converged"]
    assert report["ergotropy_change"] > 1e-2      # low cutoffs are wrong by several percent


#: A resonant bang-bang drive (parametric pumping of the cavity), ω_j = 0.5: the most
#: photon-hungry admissible protocol found by a search over periodic ±0.3 patterns.
PUMPING = np.array([0.3] * 4 + [-0.3] * 15 + [0.3] * 9)


def test_default_cutoff_warns_on_parametric_pumping_and_60_photons_converge(backend):
    """n_max = 40 converges for constant λ and every RL/GRAPE protocol we have seen, but not
    for a resonant bang-bang drive: the run warns, and n_max = 60 converges."""
    model = DickeBattery(omegas=[0.5] * 4)
    with pytest.warns(RuntimeWarning, match="not converged"):
        low = check_cutoff(model, PUMPING, 0.2, backend=backend)
    assert not low["converged"] and low["ergotropy_change"] > 1e-4
    assert check_cutoff(DickeBattery(omegas=[0.5] * 4, n_max=60), PUMPING, 0.2, backend=backend)["converged"]


def test_driver_warns_on_truncated_aux(backend):
    model = DickeBattery(omegas=ENV1, n_max=10)
    with pytest.warns(RuntimeWarning, match="top level holds"):
        res = backend.run(Experiment(model, np.full(28, 0.3), 0.2, MeasurementSchedule(final_only=True)))[0]
    assert res.metadata["aux_top_population"] > 1e-8


def test_sector_is_the_parity_block(backend):
    model = DickeBattery(omegas=ENV1, n_max=9)
    assert backend.propagator(model).dim == model.dim // 2
    chain = XYChain(n_spins=5)
    assert backend.propagator(chain).dim == 5        # one excitation among 5 sites


def test_xy_transfer_fidelity_known_value(backend):
    """N = 3, fields off: |100⟩ → |001⟩ is perfect at J t = π/√2 (mirror-symmetric chain)."""
    chain = XYChain(n_spins=3, coupling=1.0)
    t = np.pi / np.sqrt(2)
    res = backend.run(Experiment(chain, np.zeros((1, 3)), t, MeasurementSchedule(final_only=True)))[0]
    assert abs(float(chain.fidelity(res.qubit_density[-1])) - 1.0) < 1e-12
    half = backend.run(Experiment(chain, np.zeros((1, 3)), t / 2, MeasurementSchedule(final_only=True)))[0]
    assert abs(float(chain.fidelity(half.qubit_density[-1])) - 0.25) < 1e-12   # sin^4(π/4)


def test_prefix_cache_costs_one_step_and_is_exact(rng):
    model = DickeBattery(omegas=ENV1, n_max=16)
    u = rng.uniform(-0.3, 0.3, 10)
    sched = MeasurementSchedule("second_order", final_only=True)
    cached = create_backend("statevector")
    for k in range(0, 11):             # k = 0: the initial state, nothing to propagate
        before = cached.steps_propagated
        r_cached = cached.run(Experiment(model, u[:k], 0.2, sched))[0]
        assert cached.steps_propagated - before == (1 if k > 0 else 0)
    again = cached.steps_propagated
    cached.run(Experiment(model, u[:7], 0.2, sched))            # a prefix already cached: no step at all
    assert cached.steps_propagated == again
    fresh = create_backend("statevector", cache_size=0).run(Experiment(model, u, 0.2, sched))[0]
    assert np.allclose(r_cached.values, fresh.values, atol=1e-13)


def test_batch_with_mixed_lengths_equals_separate_runs(backend, rng):
    model = DickeBattery(omegas=ENV1, n_max=16)
    sched = MeasurementSchedule("first_order", every=3)
    exps = [Experiment(model, rng.uniform(-0.3, 0.3, k), 0.2, sched) for k in (0, 5, 11, 28)]
    batch = backend.run(exps)
    for e, r in zip(exps, batch):
        alone = create_backend("statevector", cache_size=0).run(e)[0]
        assert np.array_equal(r.steps, alone.steps)
        assert np.allclose(r.values, alone.values, atol=1e-12)


def test_step_propagator_is_unitary_and_matches_driver(small_dicke):
    u = np.array([0.37])
    U = small_dicke.step_propagator(u, 0.2)
    assert np.allclose(U.conj().T @ U, np.eye(small_dicke.dim), atol=1e-12)
    ref = sla.expm(-1j * 0.2 * small_dicke.hamiltonian(u).toarray())
    assert np.max(np.abs(U - ref)) < 1e-12


def test_models_serialise_round_trip():
    from qhil.drivers import model_from_dict, model_kinds
    for m in (DickeBattery(omegas=(1.0, 0.8), n_max=6), XYChain(n_spins=4, coupling=0.5)):
        again = model_from_dict(m.to_dict())
        assert again == m and again.key == m.key
    assert {"dicke", "xy_chain"} <= set(model_kinds())
    assert dataclasses.replace(DickeBattery(n_max=6), n_max=7).key != DickeBattery(n_max=6).key


def test_extend_equals_a_fresh_experiment(backend, rng):
    model = DickeBattery(omegas=ENV1, n_max=12)
    u = rng.uniform(-0.3, 0.3, 5)
    e = Experiment(model, u[:2], 0.2, MeasurementSchedule(final_only=True))
    grown = e.extend(u[2:])
    assert np.array_equal(grown.controls, Experiment(model, u, 0.2).controls)
    assert grown.n_steps == 5 and e.n_steps == 2
    with pytest.raises(Exception, match=r"controls\[0, coupling\]"):
        e.extend([0.5])


@pytest.mark.parametrize("model", [DickeBattery(omegas=ENV1, n_max=6), XYChain(n_spins=3)],
                         ids=["dicke", "xy_chain"])
def test_sector_partial_trace_equals_dense_partial_trace(model):
    """ChebyshevPropagator.qubit_density (grouped products on the sector) against a dense
    Tr_aux |ψ⟩⟨ψ| of the embedded states (qubits are the slow index, the aux the fast one)."""
    from qhil.drivers.propagate import ChebyshevPropagator
    prop = ChebyshevPropagator(model)
    rng = np.random.default_rng(5)
    psi = rng.normal(size=(prop.dim, 3)) + 1j * rng.normal(size=(prop.dim, 3))
    full = prop.embed(psi).reshape(3, 2 ** model.n_qubits, model.aux_dim)
    dense = np.einsum("bqn,brn->bqr", full, full.conj())
    assert np.max(np.abs(prop.qubit_density(psi) - dense)) < 1e-12


def test_partial_trace_with_overlapping_level_groups():
    """Sector levels whose qubit configurations overlap without being equal (level 0: q ∈ {0, 1},
    level 1: q ∈ {1, 2}) must add up, not overwrite, in the reduced state."""
    from qhil.drivers.propagate import ChebyshevPropagator
    model = DickeBattery(omegas=[1.0, 1.2], n_max=2, initial_photons=1)   # aux_dim 3, q ∈ 0..3
    aux = model.aux_dim
    sector = np.array(sorted([0 * aux + 0, 1 * aux + 0, 1 * aux + 1, 2 * aux + 1]))
    prop = ChebyshevPropagator(model, sector=sector)
    rng = np.random.default_rng(2)
    psi = rng.normal(size=(4, 2)) + 1j * rng.normal(size=(4, 2))
    full = prop.embed(psi).reshape(2, 2 ** model.n_qubits, aux)
    dense = np.einsum("bqn,brn->bqr", full, full.conj())
    assert np.max(np.abs(prop.qubit_density(psi) - dense)) < 1e-12
