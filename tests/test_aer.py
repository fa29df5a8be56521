"""The noisy-channel driver ("aer"): Qiskit Aer and the block engine against the exact
driver, against an independent numpy density-matrix calculation, and against each other."""
import dataclasses
import warnings

import numpy as np
import pytest
import scipy.linalg as sla

from qhil.drivers import Experiment, MeasurementSchedule, ValidationError, create_backend
from qhil.drivers.aer import aer_permutation, exact_with_readout, register_qubits
from qhil.drivers.channels import Channel, bit_flip, depolarizing, kraus_channel, phase_flip
from qhil.drivers.density import BlockDensityEngine
from qhil.envs import ENV1, DickeBattery, XYChain

# Small cutoffs are deliberate: exactness is checked within the truncated space.
pytestmark = [pytest.mark.filterwarnings("ignore:truncation of the dicke:RuntimeWarning"),
              # qiskit-aer 0.18 touches properties qiskit 1.3 deprecates; not ours to fix
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

ENGINES = ["aer", "block"]
SECOND = MeasurementSchedule("second_order")
X = np.array([[0, 1], [1, 0]], dtype=complex)
Y = np.array([[0, -1j], [1j, 0]])
Z = np.diag([1.0 + 0j, -1.0])


@pytest.fixture
def dicke():
    """N = 3, cutoff 7 photons: 24 states, 3 + 3 Aer qubits."""
    return DickeBattery(omegas=(0.9, 1.3, 0.7), n_max=7, coupling_bound=0.5)


# -- an independent reference: dense expm, full-space ρ, channels written out ------------------

def on_qubit(op, q, model):
    """op on qubit q (qubit 0 = most significant) ⊗ identity on the rest and on the aux mode."""
    n = model.n_qubits
    return np.kron(np.kron(np.kron(np.eye(2 ** q), op), np.eye(2 ** (n - 1 - q))), np.eye(model.aux_dim))


def depolarize(rho, q, p, model):
    """(1 − p) ρ + p · I/2 ⊗ Tr_q ρ, by reshaping (not through Kraus operators)."""
    n, aux = model.n_qubits, model.aux_dim
    shape = (2 ** q, 2, 2 ** (n - 1 - q) * aux)
    t = rho.reshape(shape + shape)
    traced = np.einsum("aibcid->abcd", t)
    mixed = np.einsum("abcd,ij->aibcjd", traced, np.eye(2) / 2).reshape(rho.shape)
    return (1 - p) * rho + p * mixed


def reference(model, controls, dt, channels):
    """Qubit density matrices after every step. channels: list of (kind, p, qubits)."""
    drift = model.drift().toarray()
    ops = [h.toarray() for h in model.control_operators()]
    psi = model.initial_state()
    rho = np.outer(psi, psi.conj())
    n, aux = model.n_qubits, model.aux_dim
    out = []

    def reduce(r):
        return np.einsum("iaja->ij", r.reshape(2 ** n, aux, 2 ** n, aux))

    out.append(reduce(rho))
    for u in np.asarray(controls, float).reshape(len(controls), -1):
        u_step = sla.expm(-1j * dt * (drift + sum(uk * hk for uk, hk in zip(u, ops))))
        rho = u_step @ rho @ u_step.conj().T
        for kind, p, qubits in channels:
            for q in qubits:
                if kind == "depolarizing":
                    rho = depolarize(rho, q, p, model)
                else:
                    pauli = on_qubit(X if kind == "bit_flip" else Z, q, model)
                    rho = (1 - p) * rho + p * pauli @ rho @ pauli
        out.append(reduce(rho))
    return np.array(out)


# -- zero noise = the exact driver --------------------------------------------------------------

@pytest.mark.parametrize("engine, method", [("aer", "automatic"), ("aer", "density_matrix"), ("block", "automatic")])
def test_zero_noise_equals_exact_driver_dicke(dicke, engine, method):
    u = np.random.default_rng(1).uniform(-0.5, 0.5, 8)
    exp = Experiment(dicke, u, 0.3, SECOND)
    exact = create_backend("statevector").run(exp)[0]
    res = create_backend("aer", engine=engine, aer_method=method,
                         noise=[depolarizing(0.0), bit_flip(rate=0.0)]).run(exp)[0]
    assert res.metadata["engine"] == engine
    assert np.max(np.abs(res.qubit_density - exact.qubit_density)) < 1e-9
    assert np.max(np.abs(res.values - exact.values)) < 1e-9
    assert res.labels == exact.labels and np.array_equal(res.steps, exact.steps)
    assert abs(res.metadata["aux_top_population"] - exact.metadata["aux_top_population"]) < 1e-9
    assert set(exact.metadata) <= set(res.metadata)            # same keys (and a few more)


@pytest.mark.parametrize("engine", ENGINES)
def test_zero_noise_equals_exact_driver_xy_chain(chain, engine):
    u = np.random.default_rng(2).uniform(-5, 5, (6, 3))
    exp = Experiment(chain, u, 0.25, MeasurementSchedule("second_order", every=2))
    exact = create_backend("statevector").run(exp)[0]
    res = create_backend("aer", engine=engine).run(exp)[0]
    assert np.max(np.abs(res.qubit_density - exact.qubit_density)) < 1e-9
    assert np.max(np.abs(res.values - exact.values)) < 1e-9
    assert res.values.shape == exact.values.shape


# -- channels against the numpy reference ------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["depolarizing", "bit_flip", "phase_flip"])
def test_channel_matches_numpy_density_matrix(dicke, engine, kind):
    u = np.random.default_rng(3).uniform(-0.5, 0.5, 6)
    p = 0.07
    exp = Experiment(dicke, u, 0.3, SECOND)
    res = create_backend("aer", engine=engine, noise={"channel": kind, "p": p}).run(exp)[0]
    ref = reference(dicke, u, 0.3, [(kind, p, range(3))])
    assert np.max(np.abs(res.qubit_density - ref)) < 1e-9
    noiseless = reference(dicke, u, 0.3, [])
    assert np.max(np.abs(ref - noiseless)) > 1e-3          # the channel did something


@pytest.mark.parametrize("engine", ENGINES)
def test_several_channels_rates_and_subsets_of_qubits(chain, engine):
    u = np.random.default_rng(4).uniform(-5, 5, (5, 3))
    dt, gamma = 0.3, 0.4
    noise = [depolarizing(0.05, qubits=[0, 2]), bit_flip(rate=gamma, qubits=[1]), ("phase_flip", 0.1)]
    res = create_backend("aer", engine=engine, noise=noise).run(Experiment(chain, u, dt, SECOND))[0]
    p_rate = (1 - np.exp(-2 * gamma * dt)) / 2
    ref = reference(chain, u, dt, [("depolarizing", 0.05, [0, 2]), ("bit_flip", p_rate, [1]),
                                   ("phase_flip", 0.1, [0, 1, 2])])
    assert np.max(np.abs(res.qubit_density - ref)) < 1e-9


def test_rates_follow_the_lindblad_equation():
    """p(rate) reproduces exp(t·L) of the single-qubit Lindbladian on a superposition."""
    gamma, dt = 0.7, 0.3
    rho = np.array([[0.8, 0.3 - 0.2j], [0.3 + 0.2j, 0.2]])
    for kind, ops in (("bit_flip", [X]), ("phase_flip", [Z]), ("depolarizing", [X, Y, Z])):
        # L ρ = Σ_P c (PρP − ρ): c = γ for flips, γ/4 per Pauli for depolarizing (→ γ(I/2 − ρ))
        c = gamma if kind != "depolarizing" else gamma / 4
        eye = np.eye(2)
        lind = sum(c * (np.kron(P, P.conj()) - np.kron(eye, eye)) for P in ops)
        exact = (sla.expm(lind * dt) @ rho.reshape(-1)).reshape(2, 2)
        ch = Channel(kind, rate=gamma)
        got = sum(k @ rho @ k.conj().T for k in ch.kraus_operators(dt))
        assert np.max(np.abs(got - exact)) < 1e-12, kind


def test_energy_and_ergotropy_fall_as_p_grows():
    battery = DickeBattery(omegas=ENV1, n_max=20)
    exp = Experiment(battery, np.full(28, 0.3), 0.2, MeasurementSchedule("energies", final_only=True))
    energy, ergotropy = [], []
    for p in (0.0, 0.003, 0.01, 0.03):
        res = create_backend("aer", engine="block", noise=depolarizing(p)).run(exp)[0]
        energy.append(float(battery.figures_of_merit(res)["energy"][-1]))
        ergotropy.append(float(battery.ergotropy(res.qubit_density[-1])))
        # the measured Z_j give the same energies as the density matrix
        e_z = battery.tls_energies_from_z(res.values[-1]).sum()
        assert abs(e_z - energy[-1]) < 1e-12
    assert np.all(np.diff(energy) < 0) and np.all(np.diff(ergotropy) < 0), (energy, ergotropy)
    assert ergotropy[-1] < 0.5 * ergotropy[0]


# -- the block engine itself -------------------------------------------------------------------

def test_block_engine_keeps_two_parity_blocks_and_interpolates_exactly():
    battery = DickeBattery(omegas=ENV1, n_max=15)          # 256 states: blocks of 128
    eng = BlockDensityEngine(battery, [depolarizing(0.02)], 0.2)
    assert eng.block_dims == [128, 128]
    for b in eng.blocks:
        assert b.interp is not None
        for u in (-0.3, -0.1234, 0.0, 0.2718, 0.3):
            ur, ui = eng.unitaries(b, np.array([[u]]))[0]
            full = battery.step_propagator([u], 0.2)[np.ix_(b.idx, b.idx)]
            assert np.max(np.abs(ur + 1j * ui - full)) < 1e-12
    # phase flips never leave the initial block
    assert BlockDensityEngine(battery, [phase_flip(0.1)], 0.2).block_dims == [128]


def test_block_engine_full_density_matches_reference_with_interpolation():
    battery = DickeBattery(omegas=ENV1, n_max=15)
    u = np.random.default_rng(5).uniform(-0.3, 0.3, 5)
    res = create_backend("aer", engine="block", noise=[bit_flip(0.02), depolarizing(0.01)]).run(
        Experiment(battery, u, 0.2, MeasurementSchedule("energies")))[0]
    ref = reference(battery, u, 0.2, [("bit_flip", 0.02, range(4)), ("depolarizing", 0.01, range(4))])
    assert np.max(np.abs(res.qubit_density - ref)) < 1e-9


def test_prefix_cache_rl_stepping_equals_one_run(dicke):
    u = np.random.default_rng(6).uniform(-0.5, 0.5, 6)
    backend = create_backend("aer", noise=depolarizing(0.05), engine="block")
    exp = Experiment(dicke, u[:1], 0.3, SECOND)
    backend.run(exp)
    assert backend.steps_propagated == 1
    for k in range(2, 7):
        exp = exp.extend(u[k - 1:k])
        before = backend.steps_propagated
        stepped = backend.run(exp)[0]
        assert backend.steps_propagated - before == 1
    fresh = create_backend("aer", noise=depolarizing(0.05), engine="block").run(Experiment(dicke, u, 0.3, SECOND))[0]
    assert np.max(np.abs(stepped.qubit_density - fresh.qubit_density)) < 1e-13


# -- user channels: Kraus and NoiseModel ---------------------------------------------------------

def amplitude_damping(g):
    return [np.array([[1, 0], [0, np.sqrt(1 - g)]]), np.array([[0, np.sqrt(g)], [0, 0]])]


def test_user_kraus_and_noise_model_agree_between_engines(dicke):
    from qiskit_aer.noise import (NoiseModel, amplitude_damping_error, phase_damping_error,
                                  thermal_relaxation_error)
    u = np.random.default_rng(7).uniform(-0.5, 0.5, 5)
    exp = Experiment(dicke, u, 0.3, SECOND)
    nm = NoiseModel()
    nm.add_quantum_error(amplitude_damping_error(0.1), "id", [0])
    nm.add_quantum_error(phase_damping_error(0.2), "id", [2])
    nm.add_quantum_error(thermal_relaxation_error(50.0, 30.0, 4.0, excited_state_population=0.1), "id", [1])
    for noise in ([kraus_channel(amplitude_damping(0.15), qubits=[1])], nm):
        a = create_backend("aer", engine="aer", noise=noise).run(exp)[0]
        b = create_backend("aer", engine="auto", noise=noise).run(exp)[0]
        assert b.metadata["engine"] == "block"
        assert np.max(np.abs(a.qubit_density - b.qubit_density)) < 1e-9
    # damping drains the excited populations: less energy than without noise
    clean = create_backend("aer", engine="block").run(exp)[0]
    assert dicke.energy(b.qubit_density[-1]) < dicke.energy(clean.qubit_density[-1])


def test_general_kraus_goes_to_aer_and_block_refuses_it(dicke):
    theta = 0.3                                  # a coherent over-rotation mixed with identity
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    ops = [np.sqrt(0.9) * np.eye(2), np.sqrt(0.1) * rot]
    u = np.random.default_rng(8).uniform(-0.5, 0.5, 3)
    res = create_backend("aer", noise=kraus_channel(ops, qubits=[0])).run(Experiment(dicke, u, 0.3, SECOND))[0]
    assert res.metadata["engine"] == "aer"
    assert abs(np.trace(res.qubit_density[-1]) - 1) < 1e-12
    with pytest.raises(ValidationError, match="engine"):
        create_backend("aer", engine="block", noise=kraus_channel(ops))


def test_noise_never_touches_the_cavity_register(dicke):
    backend = create_backend("aer", engine="aer", noise=[depolarizing(0.1), bit_flip(0.1)])
    qc = backend.circuit(Experiment(dicke, [0.1, 0.2], 0.3, SECOND))
    n = dicke.n_qubits
    assert register_qubits(dicke) == 3 and qc.num_qubits == n + 3
    noisy = [inst for inst in qc.data if inst.operation.name not in ("unitary", "save_density_matrix",
                                                                      "save_probabilities", "x")]
    assert noisy and all(qc.find_bit(q).index < n for inst in noisy for q in inst.qubits)
    # the qubit map: qhil index (s, m) → Aer index rev(s) + 2^n m, a permutation
    perm = aer_permutation(dicke)
    assert len(set(perm.tolist())) == dicke.dim and perm.max() < 2 ** (n + 3)


# -- measurement: shots, standard errors, readout, seeds -----------------------------------------

def test_shots_agree_with_exact_values_and_stderr_shrinks(dicke):
    u = np.random.default_rng(9).uniform(-0.5, 0.5, 4)
    backend = create_backend("aer", noise=depolarizing(0.05), engine="block", seed=11)
    exact = backend.run(Experiment(dicke, u, 0.3, SECOND))[0]
    few = backend.run(Experiment(dicke, u, 0.3, dataclasses.replace(SECOND, shots=400)))[0]
    many = backend.run(Experiment(dicke, u, 0.3, dataclasses.replace(SECOND, shots=40_000)))[0]
    for res in (few, many):
        assert res.counts.shape == (5, len(res.settings), 8)
        assert np.all(np.abs(res.values - exact.values) <= 4 * res.stderr + 1e-12)
    live = few.stderr > 0.02
    ratio = few.stderr[live] / many.stderr[live]
    assert np.all(np.abs(ratio / 10 - 1) < 0.15)               # ∝ 1/√shots
    assert np.max(np.abs(many.values - exact.values)) < np.max(np.abs(few.values - exact.values))


def test_readout_assignment(dicke):
    u = np.random.default_rng(10).uniform(-0.5, 0.5, 3)
    a = np.array([[0.97, 0.08], [0.03, 0.92]])         # A[m, t] = P(read m | true t)
    sched = MeasurementSchedule("first_order")
    clean = create_backend("aer", engine="block").run(Experiment(dicke, u, 0.3, sched))[0]
    exact = create_backend("aer", engine="block", readout=a).run(Experiment(dicke, u, 0.3, sched))[0]
    # ⟨Z⟩ read through A: P(read 0) − P(read 1) = (a00 − a10) P0 + (a01 − a11) P1
    z = clean.values[:, :3]
    p0 = (1 + z) / 2
    expect = (a[0, 0] - a[1, 0]) * p0 + (a[0, 1] - a[1, 1]) * (1 - p0)
    assert np.max(np.abs(exact.values[:, :3] - expect)) < 1e-12
    shots = create_backend("aer", engine="block", readout=a, seed=3).run(
        Experiment(dicke, u, 0.3, dataclasses.replace(sched, shots=20_000)))[0]
    assert np.all(np.abs(shots.values - exact.values) <= 4 * shots.stderr + 1e-12)
    assert np.allclose(exact_with_readout(clean.qubit_density, clean.labels, clean.settings, 3,
                                          np.broadcast_to(np.eye(2), (3, 2, 2))), clean.values, atol=1e-12)


def test_seeded_runs_are_reproducible(dicke):
    exp = Experiment(dicke, [0.2, -0.1, 0.4], 0.3, MeasurementSchedule("energies", shots=100))
    r1 = create_backend("aer", noise=bit_flip(0.1), seed=5).run(exp)[0]
    r2 = create_backend("aer", noise=bit_flip(0.1), seed=5).run(exp)[0]
    r3 = create_backend("aer", noise=bit_flip(0.1), seed=6).run(exp)[0]
    assert np.array_equal(r1.counts, r2.counts) and r1.metadata["seed"] == r2.metadata["seed"]
    assert not np.array_equal(r1.counts, r3.counts)
    r4 = create_backend("aer", noise=bit_flip(0.1), engine="aer").run(exp, seed=r1.metadata["seed"])[0]
    assert np.array_equal(r1.counts, r4.counts)                 # same seed, same sample on either engine


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("noise, param, allowed", [
    ({"channel": "depolarizing", "p": 1.5}, "noise[depolarizing].p", "[0, 1]"),
    ({"channel": "bit_flip", "p": -0.01}, "noise[bit_flip].p", "[0, 1]"),
    (("phase_flip", float("nan")), "noise[phase_flip].p", "[0, 1]"),
    ({"channel": "bit_flip", "rate": -1.0}, "noise[bit_flip].rate", "[0,"),
    ({"channel": "amplitude_flip", "p": 0.1}, "noise.channel", "bit_flip, phase_flip, depolarizing"),
    ({"channel": "bit_flip", "p": 0.1, "rate": 0.1}, "noise[bit_flip]", "p in [0, 1]"),
    ({"channel": "kraus", "kraus": [np.eye(2), np.eye(2)]}, "noise[kraus].kraus", "Σ K†K = I"),
    ({"channel": "bit_flip", "p": 0.1, "prob": 3}, "noise[0]", "channel, p, rate"),
])
def test_bad_noise_is_rejected_at_construction(noise, param, allowed):
    with pytest.raises(ValidationError) as info:
        create_backend("aer", noise=noise)
    assert info.value.parameter.startswith(param) and allowed in (info.value.allowed or "")


def test_noise_on_missing_qubits_is_rejected_before_anything_runs(dicke):
    from qiskit_aer.noise import NoiseModel, depolarizing_error
    exp = Experiment(dicke, [0.1, 0.2], 0.3, SECOND)
    for engine in ENGINES:
        backend = create_backend("aer", engine=engine, noise=[depolarizing(0.1), bit_flip(0.1, qubits=[1, 3])])
        with pytest.raises(ValidationError) as info:
            backend.run([exp, exp])
        assert info.value.parameter == "noise[bit_flip].qubits" and "0..2" in info.value.allowed
        assert backend.steps_propagated == 0
    nm = NoiseModel()
    nm.add_quantum_error(depolarizing_error(0.1, 1), "id", [4])        # the cavity register
    backend = create_backend("aer", noise=nm)
    with pytest.raises(ValidationError, match="cavity register") as info:
        backend.run(exp)
    assert info.value.parameter == "noise.NoiseModel" and backend.steps_propagated == 0


@pytest.mark.parametrize("readout, fragment", [
    (np.eye(3), "(2, 2)"), ([[0.9, 0.2], [0.2, 0.8]], "columns summing to 1"), ([[1.2, 0], [-0.2, 1]], "[0, 1]"),
])
def test_bad_readout_is_rejected(dicke, readout, fragment):
    backend = create_backend("aer", readout=readout)
    with pytest.raises(ValidationError) as info:
        backend.run(Experiment(dicke, [0.1], 0.3, SECOND))
    assert info.value.parameter == "readout" and fragment in info.value.allowed


def test_bad_options_and_full_state(dicke):
    backend = create_backend("aer", engine="aer", aer_method="statevector", noise=depolarizing(0.1))
    with pytest.raises(ValidationError, match="aer_method"):
        backend.run(Experiment(dicke, [0.1], 0.3, SECOND))
    assert backend.steps_propagated == 0
    with pytest.raises(ValidationError, match="engine"):
        create_backend("aer", engine="fast")
    with pytest.raises(ValidationError, match="aer_method"):
        create_backend("aer", aer_method="mps")
    with pytest.raises(ValidationError, match="full state"):
        create_backend("aer").run(Experiment(XYChain(), [[0, 0, 0]], 0.1, MeasurementSchedule("full_state")))


# -- the cutoff check and the converged battery (slow: Aer on 10 qubits) -------------------------

def test_unconverged_cutoff_warns_on_both_engines():
    battery = DickeBattery(omegas=(1.0, 1.2), n_max=4, coupling_bound=1.0)
    exp = Experiment(battery, np.full(6, 1.0), 0.3, MeasurementSchedule("energies"))
    tops = []
    for engine in ENGINES:
        with pytest.warns(RuntimeWarning, match="not converged"):
            tops.append(create_backend("aer", engine=engine, noise=depolarizing(0.02)).run(exp)[0]
                        .metadata["aux_top_population"])
    assert tops[0] > 1e-8 and abs(tops[0] - tops[1]) < 1e-12


@pytest.mark.slow
def test_converged_battery_block_engine_equals_aer():
    battery = DickeBattery(omegas=ENV1)                     # n_max = 40: 4 + 6 Aer qubits
    u = np.random.default_rng(12).uniform(-0.3, 0.3, 2)
    exp = Experiment(battery, u, 0.2, SECOND)
    noise = [depolarizing(0.02), bit_flip(0.01), phase_flip(0.01)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)          # converged: no cutoff warning
        a = create_backend("aer", engine="aer", noise=noise).run(exp)[0]
        b = create_backend("aer", engine="block", noise=noise).run(exp)[0]
    assert np.max(np.abs(a.qubit_density - b.qubit_density)) < 1e-9
    assert a.metadata["aux_top_population"] < 1e-8


def test_noise_model_errors_on_other_instructions_are_ignored_with_a_warning(dicke):
    from qiskit_aer.noise import NoiseModel, ReadoutError, depolarizing_error
    nm = NoiseModel()
    nm.add_quantum_error(depolarizing_error(0.1, 2), "cx", [0, 1])
    nm.add_readout_error(ReadoutError([[0.9, 0.1], [0.2, 0.8]]), [2])
    with pytest.warns(RuntimeWarning, match="cx"):
        backend = create_backend("aer", noise=nm)
    res = backend.run(Experiment(dicke, [0.1, 0.2], 0.3, MeasurementSchedule("energies")))[0]
    clean = create_backend("aer").run(Experiment(dicke, [0.1, 0.2], 0.3, MeasurementSchedule("energies")))[0]
    assert np.max(np.abs(res.qubit_density - clean.qubit_density)) < 1e-12     # cx errors never fire
    assert res.metadata["readout"][2] == [[0.9, 0.2], [0.1, 0.8]]               # A[read, true]
    p0 = (1 + clean.values[:, 2]) / 2                     # P(qubit 2 in |0⟩)
    assert np.allclose(res.values[:, 2], (0.9 - 0.1) * p0 + (0.2 - 0.8) * (1 - p0), atol=1e-12)
    assert np.allclose(res.values[:, :2], clean.values[:, :2], atol=1e-12)
    with pytest.warns(RuntimeWarning, match="cx"), pytest.raises(ValidationError, match="given twice"):
        create_backend("aer", noise=nm, readout=np.eye(2))


# -- NoiseModel import: all-qubit errors, readout, refusals, and no silent loss of noise ----------

def test_all_qubit_id_error_acts_on_every_qubit_like_the_same_kraus_channel(dicke):
    """add_all_qubit_quantum_error(…, "id"): Aer applying the model itself, the block engine on
    the imported channels and a qhil Kraus channel on every qubit agree, and differ from no noise."""
    from qiskit_aer.noise import NoiseModel, amplitude_damping_error
    nm = NoiseModel()
    nm.add_all_qubit_quantum_error(amplitude_damping_error(0.2), "id")
    exp = Experiment(dicke, np.random.default_rng(3).uniform(-0.5, 0.5, 4), 0.3, SECOND)
    by_aer = create_backend("aer", engine="aer", noise=nm).run(exp)[0]
    by_block = create_backend("aer", engine="block", noise=nm).run(exp)[0]
    by_kraus = create_backend("aer", engine="block", noise=kraus_channel(amplitude_damping(0.2))).run(exp)[0]
    clean = create_backend("aer", engine="block").run(exp)[0]
    assert np.max(np.abs(by_aer.qubit_density - by_block.qubit_density)) < 1e-9
    assert np.max(np.abs(by_kraus.qubit_density - by_block.qubit_density)) < 1e-12
    assert np.max(np.abs(by_block.qubit_density - clean.qubit_density)) > 1e-2     # the noise acts
    assert [c["qubits"] for c in by_block.metadata["noise"]] == [None]             # on every qubit


def test_all_qubit_readout_error_with_a_local_override(dicke):
    from qiskit_aer.noise import NoiseModel, ReadoutError
    nm = NoiseModel()
    nm.add_all_qubit_readout_error(ReadoutError([[0.9, 0.1], [0.2, 0.8]]))        # P(read | true), rows = true
    nm.add_readout_error(ReadoutError([[0.97, 0.03], [0.06, 0.94]]), [1])          # overrides qubit 1
    exp = Experiment(dicke, [0.2, -0.1, 0.3], 0.3, MeasurementSchedule("energies"))
    res = create_backend("aer", noise=nm).run(exp)[0]
    clean = create_backend("aer").run(exp)[0]
    a_all, a_one = [[0.9, 0.2], [0.1, 0.8]], [[0.97, 0.06], [0.03, 0.94]]          # A[read, true]
    assert res.metadata["readout"] == [a_all, a_one, a_all]
    for q, a in enumerate([a_all, a_one, a_all]):
        p0 = (1 + clean.values[:, q]) / 2
        expect = (a[0][0] - a[1][0]) * p0 + (a[0][1] - a[1][1]) * (1 - p0)
        assert np.allclose(res.values[:, q], expect, atol=1e-12)
    assert np.allclose(res.qubit_density, clean.qubit_density, atol=1e-13)         # readout only


def test_correlated_readout_and_multi_qubit_id_errors_are_refused():
    from qiskit_aer.noise import NoiseModel, ReadoutError, depolarizing_error
    nm = NoiseModel()
    swap = np.eye(4)[[0, 2, 1, 3]] * 0.1 + np.eye(4) * 0.9                        # 2-qubit readout error
    nm.add_readout_error(ReadoutError(swap), [0, 1])
    with pytest.raises(ValidationError, match="correlated readout") as info:
        create_backend("aer", noise=nm)
    assert info.value.parameter == "noise.NoiseModel"
    # qiskit-aer itself refuses a 2-qubit error on "id"; a model that holds one anyway
    # (another qiskit-aer, or a hand-edited table) must not be half-applied
    for table in ("_local_quantum_errors", "_default_quantum_errors"):
        nm = NoiseModel()
        err = depolarizing_error(0.1, 2)
        getattr(nm, table)["id"] = {(0, 1): err} if table == "_local_quantum_errors" else err
        with pytest.raises(ValidationError, match="2-qubit error on 'id'"):
            create_backend("aer", noise=nm)


def test_unreadable_noise_model_fails_loudly_instead_of_running_noiseless(monkeypatch):
    """If qiskit-aer renames the private tables qhil reads, construction raises; it never
    falls back to an empty model (a noiseless run that looks noisy)."""
    from qiskit_aer.noise import NoiseModel, depolarizing_error

    from qhil.drivers import UnsupportedError
    nm = NoiseModel()
    nm.add_all_qubit_quantum_error(depolarizing_error(0.1, 1), "id")
    nm._all_qubit_errors = nm.__dict__.pop("_default_quantum_errors")             # an upstream rename
    monkeypatch.setattr(NoiseModel, "to_dict", lambda self, serializable=False: {"errors": [{}]})
    with pytest.raises(UnsupportedError, match="_default_quantum_errors"):
        create_backend("aer", noise=nm)
    # tables that are present but disagree with the public to_dict() (e.g. a new place for errors)
    nm = NoiseModel()
    monkeypatch.setattr(NoiseModel, "to_dict", lambda self, serializable=False: {"errors": [{"type": "qerror"}]})
    with pytest.raises(UnsupportedError, match="to_dict"):
        create_backend("aer", noise=nm)


def test_custom_noise_passes_are_refused():
    from qiskit_aer.noise import NoiseModel
    nm = NoiseModel()
    nm._custom_noise_passes.append(object())          # what add_custom_noise_pass would store
    with pytest.raises(ValidationError, match="custom noise passes"):
        create_backend("aer", noise=nm)


# -- every public channel constructor validates its arguments -----------------------------------

@pytest.mark.parametrize("make, param", [
    (lambda: bit_flip(p=0.1, qubits=5), "noise[bit_flip].qubits"),
    (lambda: phase_flip(p=0.1, qubits="01"), "noise[phase_flip].qubits"),
    (lambda: depolarizing(p=0.1, qubits=[0, 0]), "noise[depolarizing].qubits"),
    (lambda: depolarizing(p=0.1, qubits=[]), "noise[depolarizing].qubits"),
    (lambda: bit_flip(p=0.1, qubits=[-1]), "noise[bit_flip].qubits"),
    (lambda: bit_flip(p=0.1, qubits=[0.5]), "noise[bit_flip].qubits"),
    (lambda: bit_flip(p=1.5), "noise[bit_flip].p"),
    (lambda: phase_flip(p=float("nan")), "noise[phase_flip].p"),
    (lambda: depolarizing(p=float("inf")), "noise[depolarizing].p"),
    (lambda: bit_flip(p="0.1"), "noise[bit_flip].p"),
    (lambda: bit_flip(p=True), "noise[bit_flip].p"),
    (lambda: phase_flip(rate=-0.1), "noise[phase_flip].rate"),
    (lambda: depolarizing(rate=float("inf")), "noise[depolarizing].rate"),
    (lambda: bit_flip(), "noise[bit_flip]"),
    (lambda: bit_flip(p=0.1, rate=0.1), "noise[bit_flip]"),
    (lambda: kraus_channel(None), "noise[kraus].kraus"),
    (lambda: kraus_channel(5), "noise[kraus].kraus"),
    (lambda: kraus_channel([np.eye(3)]), "noise[kraus].kraus"),
    (lambda: kraus_channel([np.eye(2) * np.nan]), "noise[kraus].kraus"),
    (lambda: kraus_channel([np.eye(2)], qubits=3), "noise[kraus].qubits"),
    (lambda: Channel("amplitude", p=0.1), "noise.channel"),
])
def test_channel_constructors_raise_validation_errors(make, param):
    with pytest.raises(ValidationError) as info:
        make()
    assert info.value.parameter == param


def test_non_cptp_qiskit_channel_and_unreadable_noise_are_validation_errors(dicke):
    from qiskit.quantum_info import SuperOp

    from qhil.drivers.channels import parse_channels
    with pytest.raises(ValidationError) as info:
        kraus_channel(SuperOp(np.diag([1.0, 2.0, 2.0, 1.0])))              # not completely positive
    assert info.value.parameter in ("noise.kraus", "noise[kraus].kraus")
    with pytest.raises(ValidationError, match="cannot read 5"):
        parse_channels(5)
    with pytest.raises(ValidationError) as info:
        BlockDensityEngine(dicke, [bit_flip(0.1)], dt=-0.3)
    assert info.value.parameter == "dt"
    with pytest.raises(ValidationError) as info:
        BlockDensityEngine(dicke, [bit_flip(0.1)], dt=0.3, threads=0)
    assert info.value.parameter == "threads"
