"""MismatchRandomisedEnv (envs/mismatch.py): domain randomisation over the device mismatch.

Physics is checked against independent calculations: a dense matrix-exponential evolution of
the played coupling, a quadrature of the first-order response, Pauli expectations from the
simulator's qubit state.
"""
import dataclasses
import math

import numpy as np
import pytest
import scipy.linalg

from qhil.drivers import Experiment, MeasurementSchedule, ValidationError, create_backend
from qhil.envs import ChargingVectorEnv, DickeBattery
from qhil.envs.history import HistoryVectorEnv
from qhil.envs.mismatch import MismatchRandomisedEnv, first_order_average

pytestmark = pytest.mark.filterwarnings("ignore:photon cutoff:RuntimeWarning")

TAU, K = 2.0, 10          # short episodes: Δt = 0.2 as in the paper's τ = 5.6, K = 28


@pytest.fixture
def battery():
    """N = 3, small cutoff, |λ| ≤ 0.3: a dense cross-check is cheap."""
    return DickeBattery(omegas=(0.9, 1.3, 0.7), n_max=8)


def actions(n_envs, seed=3, low=-0.3, high=0.3):
    rng = np.random.default_rng(seed)
    a = rng.uniform(low, high, (K, n_envs))
    a[:3] = high                                     # at the bound: (1 + ε) λ exceeds it
    return a


def dense_final_qubit_state(model, couplings, dt):
    """ψ(τ) by exact matrix exponentials of H(λ_k) (no driver); the qubits' reduced state."""
    psi = model.initial_state()
    for lam in couplings:
        psi = scipy.linalg.expm(-1j * dt * model.hamiltonian([lam]).toarray()) @ psi
    m = psi.reshape(2 ** model.n_qubits, model.aux_dim)
    return m @ m.conj().T


def ergotropy_of(rho, omegas):
    """Tr(ρ H_B) − min over unitaries: eigenvalues (descending) on levels (ascending)."""
    n = len(omegas)
    bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[::-1]) & 1        # qubit 0 = MSB
    levels = bits @ np.asarray(omegas)
    energy = float(np.real(np.diag(rho)) @ levels)
    passive = np.sort(np.linalg.eigvalsh(rho))[::-1] @ np.sort(levels)
    return energy - passive


def run_episode(env, acts):
    obs, info = env.reset()
    out = [(obs, info)]
    for a in acts:
        out.append(env.step(a))
    return out


# -- (1) no mismatch: the plain env, bit for bit ---------------------------------------------------
@pytest.mark.parametrize("kw", [dict(regime="second_order", shots=50), dict(regime="energies", every=3)])
def test_all_zero_ranges_are_the_plain_env(battery, kw):
    common = dict(n_envs=3, tau=TAU, n_steps=K, weight=None, w_mean=15, w_width=5, **kw)
    plain = ChargingVectorEnv(battery, **common)
    mis = MismatchRandomisedEnv(battery, amplitude_error=0.0, rise_time=0.0, frequency_spread=0.0,
                                readout_error=0.0, mismatch_seed=5, **common)
    plain.seed(11)
    mis.seed(11)
    assert mis.obs_dim == plain.obs_dim and (mis.action_low, mis.action_high) == (plain.action_low, plain.action_high)
    for episode in range(2):
        acts = actions(3, seed=episode)
        for got, want in zip(run_episode(mis, acts), run_episode(plain, acts)):
            for g, w in zip(got, want):
                if isinstance(w, dict):
                    for key in w:
                        assert np.array_equal(g[key], w[key]), key
                else:
                    assert np.array_equal(g, w)
    assert np.array_equal(mis.played, plain.controls)


# -- (2) amplitude error: the terminal ergotropy of (1 + ε) λ -------------------------------------
def test_fixed_amplitude_error_plays_scaled_coupling(battery):
    eps = 0.08
    env = MismatchRandomisedEnv(battery, fixed={"amplitude_error": eps}, n_envs=2, tau=TAU, n_steps=K,
                                weight=0.0, regime="energies")
    acts = actions(2)
    steps = run_episode(env, acts)
    final = steps[-1][-1]["ergotropy"]
    dt = TAU / K
    wide = dataclasses.replace(battery, coupling_bound=1.0)          # room for (1 + ε) λ, same cutoff
    for b in range(2):
        want = ergotropy_of(dense_final_qubit_state(wide, (1 + eps) * acts[:, b], dt), battery.omegas)
        nominal = ergotropy_of(dense_final_qubit_state(wide, acts[:, b], dt), battery.omegas)
        assert final[b] == pytest.approx(want, abs=1e-9)
        assert abs(want - nominal) > 1e-3                 # the mismatch matters: the check can fail
    # the agent's side stays nominal: commanded controls, a_{k−1} normalised with the nominal bounds
    assert np.allclose(env.controls, acts.T)
    assert np.allclose(steps[-1][0][:, -2], acts[-1] / 0.3)
    assert np.allclose(env.played, (1 + eps) * acts.T)


def test_amplitude_draws_per_battery_reproducible(battery):
    kw = dict(amplitude_error=0.05, rise_time=0.1, readout_error=0.03, mismatch_seed=9, n_envs=4,
              tau=TAU, n_steps=K, regime="energies", weight=0.0)
    env = MismatchRandomisedEnv(battery, **kw)
    first = env.draw()
    env.n_step = 7 * 4 * K                                            # round 7
    later = env.draw()
    again = MismatchRandomisedEnv(battery, **kw)
    again.n_step = 7 * 4 * K                                          # a resumed run at round 7
    assert np.array_equal(again.draw()["amplitude_error"], later["amplitude_error"])
    eps = first["amplitude_error"]
    assert np.all(np.abs(eps) <= 0.05) and len(set(eps)) == 4 and not np.array_equal(eps, later["amplitude_error"])
    assert np.all((first["rise_time"] >= 0) & (first["rise_time"] <= 0.1))
    assert np.all((first["readout_error"] >= 0) & (first["readout_error"] <= 0.03))


# -- (3) rise time: the played sequence is the step average of the first-order response ------------
def quadrature_average(u, tau, dt, m=4000):
    """Step averages of dy/dt = (u − y)/τ, y(0) = 0, by the midpoint rule on the exact solution."""
    y, out = 0.0, []
    s = (np.arange(m) + 0.5) / m * dt
    for uk in u:
        out.append(float(np.mean(uk + (y - uk) * np.exp(-s / tau))))
        y = uk + (y - uk) * math.exp(-dt / tau)
    return np.array(out)


def test_rise_time_played_sequence(battery):
    tau_r, eps = 0.15, -0.04
    env = MismatchRandomisedEnv(battery, fixed={"rise_time": tau_r, "amplitude_error": eps}, n_envs=2,
                                tau=TAU, n_steps=K, weight=0.0, regime="energies")
    acts = actions(2, seed=8)
    steps = run_episode(env, acts)
    dt = TAU / K
    for b in range(2):
        want = quadrature_average((1 + eps) * acts[:, b], tau_r, dt)
        assert np.allclose(env.played[b], want, atol=1e-8)
        assert np.max(np.abs(want - (1 + eps) * acts[:, b])) > 0.01          # the lag is visible
        erg = ergotropy_of(dense_final_qubit_state(dataclasses.replace(battery, coupling_bound=1.0),
                                                   want, dt), battery.omegas)
        assert steps[-1][-1]["ergotropy"][b] == pytest.approx(erg, abs=1e-7)
    # τ → 0: the played value tends to the input
    u = (1 + eps) * acts.T
    gaps = [np.max(np.abs(first_order_average(u, t, dt) - u)) for t in (1e-2, 1e-4, 1e-8)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-6
    assert np.array_equal(first_order_average(u, 0.0, dt), u)


# -- (4) readout error: Pauli expectations contracted by (1 − 2p)^w --------------------------------
def pauli_expectation(rho, ops):
    """Tr(ρ ⊗_q P_q) for {qubit: 2×2 matrix}, qubit 0 the most significant."""
    eye = np.eye(2)
    full = np.array([[1.0]])
    for q in range(int(round(math.log2(rho.shape[0])))):
        full = np.kron(full, ops.get(q, eye))
    return float(np.real(np.trace(rho @ full)))


def test_readout_error_contracts_observations(battery):
    p = 0.1
    kw = dict(n_envs=1, tau=TAU, n_steps=K, weight=0.0, regime="second_order")
    env = MismatchRandomisedEnv(battery, fixed={"readout_error": p}, **kw)
    plain = ChargingVectorEnv(battery, **kw)
    acts = actions(1, seed=4)
    got, want = run_episode(env, acts), run_episode(plain, acts)
    # the state (and so the exact reward) is untouched by the readout
    assert np.array_equal(got[-1][1], want[-1][1])
    assert np.array_equal(got[-1][-1]["ergotropy"], want[-1][-1]["ergotropy"])
    state = create_backend("statevector").run(
        Experiment(battery, acts, TAU / K, MeasurementSchedule("energies", final_only=True)))[0].qubit_density[-1]
    z, x = np.diag([1.0, -1.0]), np.array([[0.0, 1.0], [1.0, 0.0]])
    obs = got[-1][0][0]
    labels = list(env.labels)
    zz = pauli_expectation(state, {0: z, 2: z})
    assert abs(zz) > 0.05
    assert obs[labels.index("Z0Z2")] == pytest.approx((1 - 2 * p) ** 2 * zz, abs=1e-6)
    assert obs[labels.index("X1")] == pytest.approx((1 - 2 * p) * pauli_expectation(state, {1: x}), abs=1e-6)
    for j, w in enumerate(battery.omegas):   # E_j from the contracted ⟨Z_j⟩, nominal ω_j
        assert obs[j] == pytest.approx(w * (1 - (1 - 2 * p) * pauli_expectation(state, {j: z})) / 2, abs=1e-6)


def test_readout_error_with_shots_flips_bits_before_sampling(battery):
    p, shots = 0.15, 40_000
    env = MismatchRandomisedEnv(battery, fixed={"readout_error": p}, n_envs=1, tau=TAU, n_steps=K,
                                weight=0.0, regime=["Z0Z2"], shots=shots)
    env.seed(2)
    acts = actions(1, seed=4)
    obs = run_episode(env, acts)[-1][0][0]
    state = create_backend("statevector").run(
        Experiment(battery, acts, TAU / K, MeasurementSchedule("energies", final_only=True)))[0].qubit_density[-1]
    z = np.diag([1.0, -1.0])
    zz = pauli_expectation(state, {0: z, 2: z})
    col = list(env.labels).index("Z0Z2")
    assert abs(obs[col] - (1 - 2 * p) ** 2 * zz) < 0.02 < abs(obs[col] - zz)      # stderr ≈ 0.005


# -- frequency offsets: ω_j + δ_j in the dynamics -------------------------------------------------
def test_fixed_frequency_offset_changes_the_dynamics(battery):
    delta = np.array([0.03, -0.02, 0.01])
    env = MismatchRandomisedEnv(battery, fixed={"frequency_offset": delta}, n_envs=1, tau=TAU, n_steps=K,
                                weight=0.0, regime="energies")
    acts = actions(1, seed=6)
    final = run_episode(env, acts)[-1][-1]["ergotropy"][0]
    drifted = dataclasses.replace(battery, omegas=tuple(np.asarray(battery.omegas) + delta))
    # evolved with ω + δ, scored with the nominal H_B
    assert final == pytest.approx(ergotropy_of(dense_final_qubit_state(drifted, acts[:, 0], TAU / K),
                                               battery.omegas), abs=1e-9)


def test_frequency_draws_differ_per_battery(battery):
    env = MismatchRandomisedEnv(battery, frequency_spread=0.01, mismatch_seed=1, n_envs=3, tau=TAU,
                                n_steps=K, weight=0.0, regime="energies")
    _, info = env.reset()
    d = info["frequency_offset"]
    assert d.shape == (3, 3) and len({tuple(r) for r in d}) == 3 and np.all(np.abs(d) <= 0.04)


# -- composition with the history window ------------------------------------------------------------
def test_history_window_sees_commanded_actions(battery):
    env = HistoryVectorEnv(MismatchRandomisedEnv(battery, amplitude_error=0.2, rise_time=0.3, mismatch_seed=2,
                                                 n_envs=2, tau=TAU, n_steps=K, regime="energies"), 3, of="actions")
    env.reset()
    obs, *_ = env.step([0.3, -0.15])
    assert np.allclose(obs[:, -1], [1.0, -0.5])                    # normalised by the nominal bound
    assert not np.allclose(env.played[:, 0], [0.3, -0.15])          # while the battery got the mismatch
    assert env.obs_dim == env.env.obs_dim + 3


# -- (5) bad input is refused, naming the parameter and its range -----------------------------------
@pytest.mark.parametrize("name, value", [("amplitude_error", -0.1), ("amplitude_error", 0.6),
                                         ("rise_time", 11.0), ("rise_time", float("nan")),
                                         ("frequency_spread", 0.5), ("frequency_spread", -1e-3),
                                         ("readout_error", 0.51), ("readout_error", "x")])
def test_bad_ranges_refused(battery, name, value):
    with pytest.raises(ValidationError) as err:
        MismatchRandomisedEnv(battery, **{name: value})
    assert err.value.parameter == name and err.value.allowed and "[0" in err.value.allowed


@pytest.mark.parametrize("kw, name", [
    (dict(fixed={"gain": 0.1}), "fixed"),
    (dict(fixed={"amplitude_error": -1.0}), "amplitude_error"),
    (dict(fixed={"frequency_offset": [-1.0, 0.0, 0.0]}), "frequency_offset"),
    (dict(readout_error=0.02, regime="full_state"), "readout_error"),
    (dict(amplitude_error=0.02, reward="tomography_terminal", regime="energies"), "reward"),
    (dict(mismatch_seed=-1), "mismatch_seed"),
])
def test_bad_options_refused(battery, kw, name):
    with pytest.raises(ValidationError) as err:
        MismatchRandomisedEnv(battery, **kw)
    assert err.value.parameter == name
