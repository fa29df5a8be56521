"""The charging environment (seed 000, Sec. III A): gymnasium contract, reward, batching."""
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from qhil.drivers import Capabilities, UnsupportedError, create_backend
from qhil.drivers.backend import Backend
from qhil.envs import ENV1, ChargingEnv, ChargingVectorEnv, DickeBattery


@pytest.fixture(scope="module")
def battery():
    return DickeBattery(omegas=ENV1)


@pytest.mark.parametrize("regime", ["energies", "first_order", "second_order", "full_state"])
def test_check_env_passes(regime, battery):
    env = ChargingEnv(battery=battery, regime=regime)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert obs[-1] == 0.0 and obs[-2] == 0.0          # t_0/τ and a_{−1}


def test_reward_telescopes_to_terminal_ergotropy_when_w_is_zero(battery, rng):
    env = ChargingEnv(battery=battery, regime="energies", weight=0.0)
    env.reset(seed=0)
    total, done = 0.0, False
    lam = rng.uniform(-0.3, 0.3, 28)
    for a in lam:
        _, r, done, _, info = env.step(np.array([a], np.float32))
        total += r
    assert done
    # ℰ(0) = 0 for |g…g⟩: the return is the terminal ergotropy, checked on a separate driver call
    from qhil.drivers import Experiment, MeasurementSchedule
    [res] = create_backend("statevector").run(
        [Experiment(battery, lam.astype(np.float32).astype(float), 0.2, MeasurementSchedule("energies", final_only=True))])
    assert total == pytest.approx(float(battery.ergotropy(res.qubit_density[-1])), abs=1e-9)
    assert total == pytest.approx(info["ergotropy"], abs=1e-12)


def test_reward_with_w_one_is_energy_and_info_has_both(battery, rng):
    env = ChargingVectorEnv(battery=battery, regime="energies", weight=1.0)
    _, info0 = env.reset()
    total = 0.0
    for _ in range(28):
        _, r, done, _, info = env.step(rng.uniform(-0.3, 0.3, 1))
        total += r[0]
        assert info["reward_terms"].shape == (1, 2)
    assert total == pytest.approx(info["energy"][0] - info0["energy"][0], abs=1e-12)
    assert info["ergotropy"][0] <= info["energy"][0] + 1e-12


def test_scheduled_weight_follows_eq12(battery):
    env = ChargingVectorEnv(battery=battery, regime="energies", w_mean=100, w_width=50)
    env.reset()
    _, _, _, _, info = env.step([0.3])
    assert info["weight"][0] == pytest.approx(1 / (1 + np.exp((0 - 100) / 50)))
    env.n_step = 100
    _, _, _, _, info = env.step([0.3])
    assert info["weight"][0] == pytest.approx(0.5)


def test_observation_is_what_the_driver_measures(battery, rng):
    env = ChargingVectorEnv(battery=battery, regime="first_order")
    env.reset()
    lam = rng.uniform(-0.3, 0.3, 5)
    for a in lam:
        obs, _, _, _, info = env.step([a])
    n = battery.n_qubits
    np.testing.assert_allclose(obs[0, :n], info["tls_energies"][0], atol=1e-6)   # E_j
    np.testing.assert_allclose(obs[0, n:3 * n], 0.0, atol=1e-6)                  # parity: ⟨X⟩ = ⟨Y⟩ = 0
    assert obs[0, -2] == pytest.approx(lam[-1] / 0.3, abs=1e-6)                  # a_{k−1} on [−1, 1]
    assert obs[0, -1] == pytest.approx(5 / 28)                                   # t_k / τ


def test_vector_env_equals_single_envs(battery, rng):
    lam = rng.uniform(-0.3, 0.3, (3, 28))
    vec = ChargingVectorEnv(battery=battery, regime="second_order", n_envs=3, weight=0.3)
    singles = [ChargingEnv(battery=battery, regime="second_order", weight=0.3,
                           backend=create_backend("statevector")) for _ in range(3)]
    vo, _ = vec.reset()
    so = [s.reset(seed=0)[0] for s in singles]
    np.testing.assert_allclose(vo, np.stack(so), atol=1e-6)
    for k in range(28):
        vo, vr, vd, _, vi = vec.step(lam[:, k])
        outs = [s.step(np.array([lam[i, k]], np.float32)) for i, s in enumerate(singles)]
        np.testing.assert_allclose(vo, np.stack([o[0] for o in outs]), atol=1e-5)
        np.testing.assert_allclose(vr, [o[1] for o in outs], atol=1e-6)
        np.testing.assert_allclose(vi["ergotropy"], [o[4]["ergotropy"] for o in outs], atol=1e-6)
        assert list(vd) == [o[2] for o in outs]
    assert vd.all()
    with pytest.raises(RuntimeError, match="reset"):
        vec.step(lam[:, 0])


class _NoDensity(Backend):
    """A hardware-like backend: expectation values only, no qubit_density, no state."""

    name = "no-density"

    def __init__(self):
        super().__init__(0)
        self.inner = create_backend("statevector")

    @property
    def capabilities(self):
        return Capabilities(full_state=False, exact_expectations=True, qubit_density=False, noise=False)

    def _run(self, batch, seeds):
        import dataclasses
        return [dataclasses.replace(r, qubit_density=None, state=None) for r in self.inner.run(batch)]


def test_backend_without_density_rejects_ergotropy_reward_and_runs_energy_reward(battery):
    with pytest.raises(UnsupportedError, match="qubit_density"):
        ChargingVectorEnv(battery=battery, regime="second_order", backend=_NoDensity())
    with pytest.raises(UnsupportedError, match="full_state"):
        ChargingVectorEnv(battery=battery, regime="full_state", backend=_NoDensity(), weight=1.0)
    env = ChargingVectorEnv(battery=battery, regime="second_order", backend=_NoDensity(), weight=1.0)
    ref = ChargingVectorEnv(battery=battery, regime="second_order", weight=1.0)
    o, _ = env.reset()
    o2, _ = ref.reset()
    for a in (0.3, -0.1, 0.2):
        o, r, _, _, info = env.step([a])
        o2, r2, _, _, _ = ref.step([a])
    np.testing.assert_allclose(o, o2, atol=1e-6)
    np.testing.assert_allclose(r, r2, atol=1e-12)
    assert np.isnan(info["ergotropy"]).all()


def test_shot_noise_is_seeded(battery):
    def episode(seed):
        env = ChargingEnv(battery=battery, regime="energies", shots=200)
        obs, _ = env.reset(seed=seed)
        return np.stack([env.step(np.array([0.3], np.float32))[0] for _ in range(3)])
    np.testing.assert_array_equal(episode(5), episode(5))
    assert not np.array_equal(episode(5), episode(6))


def test_a_third_party_agent_trains_unchanged(battery):
    sb3 = pytest.importorskip("stable_baselines3")
    env = ChargingEnv(battery=battery, regime="energies", w_mean=200, w_width=100)
    model = sb3.SAC("MlpPolicy", env, learning_starts=56, batch_size=32, seed=0, verbose=0,
                    policy_kwargs={"net_arch": [32, 32]})
    model.learn(total_timesteps=140)
    obs, _ = env.reset(seed=1)
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(action)


def test_runs_unchanged_on_another_driver():
    """The same env on the Aer driver (noiseless) gives the exact driver's observations and rewards."""
    aer = create_backend("aer")                   # qiskit-aer is a dependency: a failure here is a failure
    small = DickeBattery(omegas=(0.9, 1.3, 0.7), n_max=10)
    envs = [ChargingVectorEnv(battery=small, regime="second_order", n_envs=2, weight=0.5, backend=b)
            for b in (aer, create_backend("statevector"))]
    for env in envs:
        env.reset()
    for lam in ([0.3, -0.2], [0.1, 0.3], [-0.3, 0.0]):
        (o1, r1, *_), (o2, r2, *_) = (env.step(lam) for env in envs)
        np.testing.assert_allclose(o1, o2, atol=1e-6)
        np.testing.assert_allclose(r1, r2, atol=1e-9)
