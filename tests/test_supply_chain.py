"""Seed 004: the XY-chain supply-chain environment and its model-based baselines."""
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from qhil.agents.chain_control import (GrapePolicy, MPCPolicy, RandomPolicy, estimate_state,
                                       fidelity_objective, fidelity_trajectory, grape_xy_chain, rollout)
from qhil.drivers import Capabilities, MeasurementSchedule, ValidationError, create_backend
from qhil.drivers.backend import Backend
from qhil.envs import XYChain
from qhil.envs.supply_chain import (SecuredGreenSCSEnv, SupplyChainEnv, WindowNormalizer,
                                    basis_fidelity_from_z)

T_TRANSFER = np.pi / np.sqrt(2)          # J t of perfect |100⟩ → |001⟩ transfer, N = 3


class NoDensityBackend(Backend):
    """The exact driver seen as hardware: no density matrix, no full state."""

    name = "no-density"

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.inner = create_backend("statevector")

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(full_state=False, exact_expectations=True, qubit_density=False, noise=False)

    def _run(self, batch, seeds):
        return [dataclasses.replace(r, qubit_density=None, state=None) for r in self.inner.run(batch)]


def run_episode(env, actions, seed=0):
    env.reset(seed=seed)
    out = []
    for a in actions:
        out.append(env.step(a))
    return out


# -- reward normalisation ------------------------------------------------------------------

def test_window_normalizer_known_values():
    norm = WindowNormalizer(3)
    norm.reset(2.0)
    assert norm.update(4.0) == 1.0                  # window [2, 4]
    assert norm.update(3.0) == 0.5                  # [2, 4, 3]
    assert norm.update(3.5) == 0.5                  # [4, 3, 3.5]: the 2 has left the window
    assert norm.update(1.0) == 0.0                  # [3, 3.5, 1]
    flat = WindowNormalizer(4)
    flat.reset(1.0)
    assert flat.update(1.0) == 0.5                  # max = min: the documented 0.5


def test_reward_is_eq45_over_sliding_window():
    """Recompute every reward from the raw F, security and emission with a plain loop."""
    W, weights = 4, (1.0, 1.0, 0.5)
    env = SupplyChainEnv(window=W, weights=weights, max_steps=30)
    _, info0 = env.reset(seed=3)
    rng = np.random.default_rng(0)
    raw = [[info0["fidelity"], info0["security"], info0["emission"]]]
    rewards = []
    for _ in range(30):
        _, r, *_, info = env.step(int(rng.integers(8)))
        raw.append([info["fidelity"], info["security"], info["emission"]])
        rewards.append(r)
        assert r == pytest.approx(info["reward_terms"] @ np.array(weights), abs=1e-12)
    raw = np.array(raw)
    for t in range(1, 31):
        win = raw[max(0, t - W + 1): t + 1]
        lo, hi = win.min(0), win.max(0)
        hat = np.where(hi - lo > 1e-12, (raw[t] - lo) / np.where(hi > lo, hi - lo, 1), 0.5)
        assert np.all((hat >= 0) & (hat <= 1))
        assert rewards[t - 1] == pytest.approx(weights[0] * hat[0] + weights[1] * hat[1] - weights[2] * hat[2],
                                               abs=1e-12)


def test_fixed_normalization_ablation():
    env = SupplyChainEnv(normalization="fixed", max_steps=10)
    e_max = 0.01 * 3 * 6.0 ** 2 * env.dt                    # fields at most 5 × (1 + 4 × 0.05)
    for _, r, *_, info in run_episode(env, [5, 7, 0, 3, 6, 1, 2, 4, 7, 7]):
        assert r == pytest.approx(info["fidelity"] + info["security"] - 0.5 * info["emission"] / e_max,
                                  abs=1e-12)
    with pytest.raises(ValidationError):
        SupplyChainEnv(normalization="minmax")


def test_security_and_co2_follow_the_fields():
    env = SupplyChainEnv(disruption_prob=0.0, noise_level=0.0, max_steps=10)
    steps = run_episode(env, [7] * 10)                 # all fields on
    sec = [s[4]["security"] for s in steps]
    assert sec == pytest.approx([0.5 + 0.05 * k for k in range(1, 11)])
    em = steps[-1][4]["emission"]
    assert em == pytest.approx(0.01 * 3 * 25 * env.dt)
    assert steps[-1][4]["co2_total"] == pytest.approx(10 * em)
    off = run_episode(env, [0] * 10)
    assert all(s[4]["emission"] == 0 and s[4]["security"] == 0.5 for s in off)
    hit = SupplyChainEnv(disruption_prob=1.0, max_steps=5)
    assert [s[4]["security"] for s in run_episode(hit, [0] * 5)] == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0])


# -- supply chain ----------------------------------------------------------------------------

@pytest.mark.parametrize("demand_mean", [10.0, 45.0])
def test_inventory_bookkeeping(demand_mean):
    env = SupplyChainEnv(demand_mean=demand_mean, reorder_point=20, order_up_to=50, max_steps=50)
    _, info = env.reset(seed=11)
    env.action_space.seed(11)
    inv = info["inventory"]
    assert np.all(inv == 50)
    total_in, total_out, unmet = 0.0, 0.0, 0.0
    for _ in range(50):
        *_, info = env.step(env.action_space.sample())
        d, served, received = env.last_demand, info["served"], info["received"]
        assert np.all(served == np.minimum(d, inv))                      # lost sales
        after_demand = inv - served
        assert np.all(received == np.where(after_demand < 20, 50 - after_demand, 0))
        assert np.all(info["inventory"] == after_demand + received)
        assert np.all((info["inventory"] >= 0) & (info["inventory"] <= env.capacity))
        assert np.all(info["unmet"] == d - served)
        total_in += received.sum(); total_out += served.sum(); unmet += info["unmet"].sum()
        inv = info["inventory"]
    assert inv.sum() == pytest.approx(150 + total_in - total_out)
    if demand_mean > 40:
        assert unmet > 0                            # stock-outs happen, and are booked as lost sales


# -- the quantum part --------------------------------------------------------------------------

def test_free_transfer_fidelity_through_the_env():
    """Fields off, no noise: F = sin^4(J t/√2); 1 at J t = π/√2, reached in 10 steps of the default dt."""
    env = SupplyChainEnv(noise_level=0.0)
    assert 10 * env.dt == pytest.approx(T_TRANSFER, rel=1e-14)
    steps = run_episode(env, [0] * 10)
    f = np.array([s[4]["fidelity"] for s in steps])
    t = env.dt * np.arange(1, 11)
    assert np.max(np.abs(f - np.sin(t / np.sqrt(2)) ** 4)) < 1e-12
    assert abs(f[-1] - 1.0) < 1e-12 and abs(f[4] - 0.25) < 1e-12
    # a uniform field only shifts the one-excitation sector's energy: same transfer
    uniform = run_episode(env, [7] * 10)
    assert abs(uniform[-1][4]["fidelity"] - 1.0) < 1e-12
    # a field on the last site alone detunes it and spoils the transfer
    assert run_episode(env, [1] * 10)[-1][4]["fidelity"] < 0.5


def test_field_noise_is_gaussian_relative_and_seeded():
    env = SupplyChainEnv(noise_level=0.05, max_steps=50)
    steps = run_episode(env, [5] * 50, seed=4)        # pattern 101
    fields = np.array([s[4]["fields"] for s in steps])
    dev = (fields - np.array([5.0, 0.0, 5.0])) / 5.0
    assert 0.04 < dev.std() < 0.06 and abs(dev.mean()) < 0.02
    assert 0.035 < dev[:, 1].std() < 0.065                 # additive: the "off" site is noisy too
    assert np.all(np.abs(dev) <= 4 * 0.05 + 1e-12)        # clipped at 4σ, inside the model bounds
    again = np.array([s[4]["fields"] for s in run_episode(env, [5] * 50, seed=4)])
    assert np.array_equal(fields, again)
    other = np.array([s[4]["fields"] for s in run_episode(env, [5] * 50, seed=5)])
    assert not np.array_equal(fields, other)


def test_observation_is_measured_not_the_wavefunction():
    env = SupplyChainEnv(schedule=MeasurementSchedule("energies"), noise_level=0.0)
    obs, _ = env.reset(seed=0)
    assert env.observation_labels == ("Z0", "Z1", "Z2")
    assert obs.shape == (3 + 2 * 3 + 4,)
    assert np.allclose(obs[:3], [-1, 1, 1])           # |100⟩: qubit 0 excited
    obs, *_ = run_episode(env, [0] * 10)[-1]
    assert np.allclose(obs[:3], [1, 1, -1], atol=1e-6)  # transferred to |001⟩
    full = SupplyChainEnv(schedule="full_state", noise_level=0.0)
    obs, _ = full.reset(seed=0)
    assert obs[4] == 1.0 and obs.shape == (16 + 10,)   # Re ψ at index 0b100
    with pytest.raises(ValidationError):
        SupplyChainEnv(schedule="full_state", backend=NoDensityBackend())


def test_runs_without_a_density_matrix():
    """On a driver without ρ the fidelity comes from measured Z-strings; same numbers."""
    exact = SupplyChainEnv(noise_level=0.05)
    hw = SupplyChainEnv(noise_level=0.05, backend=NoDensityBackend())
    assert hw.fidelity_from == "measurement" and exact.fidelity_from == "density"
    actions = np.random.default_rng(1).integers(8, size=20)
    for a, b in zip(run_episode(exact, actions, seed=2), run_episode(hw, actions, seed=2)):
        assert abs(a[4]["fidelity"] - b[4]["fidelity"]) < 1e-12
        assert a[1] == pytest.approx(b[1], abs=1e-9)
        assert np.allclose(a[0], b[0], atol=1e-12)
    assert basis_fidelity_from_z("01", {"Z0": 1.0, "Z1": -1.0, "Z0Z1": -1.0}) == 1.0
    with pytest.raises(ValidationError):
        SupplyChainEnv(target=np.ones(8) / np.sqrt(8), backend=NoDensityBackend())


def test_runs_on_the_aer_driver():
    """The channel-noise driver: noiseless it agrees with the exact driver;
    a bit-flip channel lowers the free-transfer fidelity."""
    from qhil.drivers.channels import bit_flip
    clean, flipped = create_backend("aer", seed=0), create_backend("aer", noise=bit_flip(p=0.02), seed=0)
    exact = run_episode(SupplyChainEnv(noise_level=0.0), [0] * 10)
    aer = run_episode(SupplyChainEnv(noise_level=0.0, backend=clean), [0] * 10)
    for a, b in zip(exact, aer):
        assert np.allclose(a[0], b[0], atol=1e-9) and abs(a[4]["fidelity"] - b[4]["fidelity"]) < 1e-9
    noisy = run_episode(SupplyChainEnv(noise_level=0.0, backend=flipped), [0] * 10)
    assert 0.3 < noisy[-1][4]["fidelity"] < 0.9
    check_env(SupplyChainEnv(backend=flipped, max_steps=5), skip_render_check=True)


def test_target_is_a_parameter():
    env = SupplyChainEnv(noise_level=0.0, target="010")
    f = [s[4]["fidelity"] for s in run_episode(env, [0] * 10)]
    t = env.dt * np.arange(1, 11)
    assert np.allclose(f, np.sin(np.sqrt(2) * t) ** 2 / 2, atol=1e-12)   # |a_2|² = sin²(√2 t)/2
    vec = np.zeros(8); vec[0b001] = 1.0
    assert run_episode(SupplyChainEnv(noise_level=0.0, target=vec), [0] * 10)[-1][4]["fidelity"] \
        == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"continuous": True}, {"schedule": "full_state"},
                                    {"n_spins": 2, "n_warehouses": 1},
                                    {"schedule": MeasurementSchedule("second_order", shots=100)}])
def test_check_env(kwargs):
    check_env(SupplyChainEnv(**kwargs), skip_render_check=True)


def test_alias_registration_and_validation():
    assert SecuredGreenSCSEnv is SupplyChainEnv
    env = gym.make("qhil/SecuredGreenSCS-v0", n_spins=2)
    assert env.unwrapped.n_spins == 2
    with pytest.raises(ValidationError):
        SupplyChainEnv().nominal_fields(8)
    with pytest.raises(ValidationError):
        SupplyChainEnv(weights=(1.0, 1.0))
    env = SupplyChainEnv(max_steps=2)
    run_episode(env, [0, 0])
    with pytest.raises(RuntimeError):
        env.step(0)


# -- baselines -----------------------------------------------------------------------------

@pytest.mark.parametrize("objective", ["final", "mean"])
def test_grape_gradient_matches_finite_differences(objective):
    model = XYChain(n_spins=3, field_bound=6.0)
    u = np.random.default_rng(0).uniform(-5, 5, (6, 3))
    value, grad = fidelity_objective(model, u, 0.3, objective=objective)
    fd = np.zeros_like(u)
    h = 1e-6
    for idx in np.ndindex(u.shape):
        e = np.zeros_like(u); e[idx] = h
        fd[idx] = (fidelity_objective(model, u + e, 0.3, objective=objective)[0]
                   - fidelity_objective(model, u - e, 0.3, objective=objective)[0]) / (2 * h)
    assert np.max(np.abs(grad - fd)) < 1e-8 * max(1.0, np.max(np.abs(fd))) + 1e-9
    assert np.max(np.abs(fd)) > 1e-3                  # the check is not vacuous
    f = fidelity_trajectory(model, u, 0.3)
    assert value == pytest.approx(f[-1] if objective == "final" else f[1:].mean(), abs=1e-14)


def test_grape_beats_random():
    env = SupplyChainEnv(continuous=True, max_steps=20)
    policy = GrapePolicy(env, objective="mean", seed=0, maxiter=100)
    rnd = RandomPolicy(env, seed=0)
    g = [rollout(env, policy, seed=s).mean_fidelity for s in range(3)]
    r = [rollout(env, rnd, seed=s).mean_fidelity for s in range(3)]
    assert policy.result.objective > 0.7
    assert min(g) > max(r) + 0.2
    # discrete variant: relaxed to [0, B_on], rounded, polished by flips
    disc = SupplyChainEnv(max_steps=20)
    gd = GrapePolicy(disc, objective="mean", seed=0, maxiter=100)
    bits = (gd.result.fields > 2.5).astype(int)
    assert gd.rounded_objective >= fidelity_trajectory(disc.model, bits * 5.0, disc.dt)[1:].mean() - 1e-12
    rd = RandomPolicy(disc, seed=0)
    assert np.mean([rollout(disc, gd, seed=s).mean_fidelity for s in range(3)]) \
        > np.mean([rollout(disc, rd, seed=s).mean_fidelity for s in range(3)]) + 0.2
    # the transfer with time to spare (1.5 × π/√2) from random starting fields
    for seed in range(2):
        res = grape_xy_chain(env.model, 15, env.dt, objective="final", bounds=(-5, 5), seed=seed, maxiter=100)
        assert res.fidelities[-1] > 1 - 1e-6 and res.fidelities[0] < 1e-12


def test_estimate_state_is_exact_in_the_sector():
    model = XYChain(n_spins=3)
    rng = np.random.default_rng(5)
    psi = np.zeros(8, complex)
    psi[[0b100, 0b010, 0b001]] = rng.normal(size=3) + 1j * rng.normal(size=3)
    psi /= np.linalg.norm(psi)
    labels = MeasurementSchedule("second_order").labels(3)
    from qhil.drivers.pauli import pauli_matrix
    values = np.array([np.real(np.vdot(psi, pauli_matrix(lab, 3) @ psi)) for lab in labels])
    est = estimate_state(model, labels, values)
    assert abs(np.vdot(psi, est)) ** 2 > 1 - 1e-10


def test_mpc_reaches_high_fidelity():
    env = SupplyChainEnv(noise_level=0.05, max_steps=25)
    mpc = MPCPolicy(env, horizon=3)
    stats = [rollout(env, mpc, seed=s) for s in range(2)]
    for st in stats:
        assert st.max_fidelity > 0.98
        assert np.mean(st.fidelities[-10:]) > 0.95     # and holds it against the noise
    rnd = RandomPolicy(env, seed=0)
    assert np.mean([rollout(env, rnd, seed=s).mean_fidelity for s in range(2)]) \
        < np.mean([s.mean_fidelity for s in stats]) - 0.3


def test_mpc_continuous_variant():
    env = SupplyChainEnv(continuous=True, noise_level=0.05, max_steps=20)
    st = rollout(env, MPCPolicy(env, horizon=4, maxiter=30), seed=0)
    assert st.max_fidelity > 0.98 and np.mean(st.fidelities[-5:]) > 0.9


# -- Double DQN (Table I) ----------------------------------------------------------------

def train_dqn(env, agent, episodes):
    """Table I's Double DQN through the shared training loop (replay buffer, ε decay hook)."""
    from qhil.agents.training import GymEpisodes, train
    agent.cfg.total_steps = episodes * env.max_steps
    return train(agent, GymEpisodes(env, seed=10_000 * agent.cfg.seed), progress=False)


def test_double_dqn_target_uses_online_argmax():
    import torch                                            # a dependency: no skip
    from qhil.agents.dqn import DQN, DQNConfig
    agent = DQN(4, 3, DQNConfig(seed=0))
    with torch.no_grad():                                   # online prefers a=2, target values 2 low
        agent.q[-1].weight.zero_(); agent.q[-1].bias.copy_(torch.tensor([0.0, 1.0, 5.0]))
        agent.q_targ[-1].weight.zero_(); agent.q_targ[-1].bias.copy_(torch.tensor([9.0, 7.0, -1.0]))
    y = agent.td_target(torch.tensor([0.5, 0.5]), torch.zeros(2, 4), torch.tensor([0.0, 1.0]))
    assert y.tolist() == pytest.approx([0.5 + 0.95 * -1.0, 0.5])   # not max Q_targ = 9
    eps = [agent.eps]
    for _ in range(3):
        agent.end_step(); eps.append(agent.eps)
    assert eps == pytest.approx([1.0, 0.995, 0.995 ** 2, 0.995 ** 3])


@pytest.mark.slow   # 8 s idle, ~20 s on two busy cores
def test_dqn_beats_random_on_one_warehouse_two_spins():
    """Eq. (45)'s reward, N = 2, one warehouse: 60 episodes (3,000 steps) of Table I's Double DQN."""
    from qhil.agents.dqn import DQN, DQNConfig
    env = SupplyChainEnv(n_spins=2, n_warehouses=1)
    agent = DQN(env.observation_space.shape[0], env.action_space.n, DQNConfig(seed=0), env.weights)
    train_dqn(env, agent, 60)
    assert agent.eps < 0.01 + 1e-12 and agent.n_updates > 2_900

    def greedy(obs):
        return int(agent.act(obs[None], deterministic=True)[0, 0])
    seeds = range(500, 510)
    dqn = [rollout(env, greedy, seed=s) for s in seeds]
    rnd = [rollout(env, RandomPolicy(env, seed=0), seed=s) for s in seeds]
    assert np.mean([x.ret for x in dqn]) > np.mean([x.ret for x in rnd]) + 2.0
    assert np.mean([x.mean_fidelity for x in dqn]) > np.mean([x.mean_fidelity for x in rnd]) + 0.25
