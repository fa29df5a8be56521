"""Seed 004's learned agents on the supply chain: PPO (Eq. 50, GAE), the Eq. (46) ensemble,
Bootstrapped DQN, DDPG, the shared training loop (run store, checkpoints, resume) and the sweeps."""
import json
import pickle

import numpy as np
import pytest
import torch            # a hard dependency: an import failure must fail the suite, not skip it

from qhil.agents.bdqn import BootstrappedDQN, BootstrappedDQNConfig
from qhil.agents.chain_control import RandomPolicy, rollout
from qhil.agents.ddpg import DDPGConfig
from qhil.agents.ensemble import Ensemble, EnsembleConfig, ensemble_weight
from qhil.agents.ppo import PPO, PPOConfig, clipped_surrogate, gae
from qhil.agents.runstore import RunStore
from qhil.experiments.stats import moving_average
from qhil.experiments.supply_chain.specs import curve_stats, make_agent
from qhil.agents.training import GymEpisodes, evaluate, train
from qhil.drivers import ValidationError
from qhil.envs import SupplyChainEnv


# -- PPO: GAE and Eq. (50) by hand ------------------------------------------------------------

def test_gae_matches_a_hand_calculation():
    # three steps, the episode ends after the second; γ = 0.9, λ = 0.5
    r, v, d = np.array([1.0, 2.0, 0.5]), np.array([0.5, 1.0, 2.0]), np.array([0.0, 1.0, 0.0])
    adv, ret = gae(r, v, d, last_value=4.0, gamma=0.9, lam=0.5)
    d2 = 0.5 + 0.9 * 4.0 - 2.0                      # δ_2 = 2.1, bootstrapped from V(s_3) = 4
    d1 = 2.0 - 1.0                                  # δ_1 = 1.0, terminal: no bootstrap
    d0 = 1.0 + 0.9 * 1.0 - 0.5                      # δ_0 = 1.4
    a2, a1 = d2, d1                                 # the episode boundary stops the recursion
    a0 = d0 + 0.9 * 0.5 * a1                        # 1.85
    np.testing.assert_allclose(adv, [a0, a1, a2], atol=1e-12)
    np.testing.assert_allclose(ret, [a0 + 0.5, a1 + 1.0, a2 + 2.0], atol=1e-12)
    # λ = 1, no ends: the discounted return minus the baseline
    adv, _ = gae(np.ones(3), np.zeros(3), np.zeros(3), 0.0, gamma=0.5, lam=1.0)
    np.testing.assert_allclose(adv, [1.75, 1.5, 1.0])


def test_clipped_surrogate_matches_a_hand_calculation():
    ratio = torch.tensor([1.5, 0.5, 1.1, 0.7])
    adv = torch.tensor([2.0, 2.0, -1.0, -3.0])
    logp_old = torch.log(torch.tensor([0.2, 0.4, 0.5, 0.1]))
    logp_new = logp_old + torch.log(ratio)
    # min(ρA, clip(ρ, 0.8, 1.2)A): 1.5·2 vs 1.2·2 → 2.4; 0.5·2 vs 0.8·2 → 1.0;
    # 1.1·−1 vs 1.1·−1 → −1.1; 0.7·−3 = −2.1 vs 0.8·−3 = −2.4 → −2.4
    expect = (2.4 + 1.0 - 1.1 - 2.4) / 4
    assert clipped_surrogate(logp_new, logp_old, adv, 0.2).item() == pytest.approx(expect, abs=1e-6)
    # the clipped side carries no gradient: ρ = 1.5 with A > 0 is flat in θ
    lp = logp_new.clone().requires_grad_(True)
    clipped_surrogate(lp, logp_old, adv, 0.2).backward()
    assert lp.grad[0] == 0 and lp.grad[3] == 0 and lp.grad[1] != 0 and lp.grad[2] != 0


def test_ppo_rollout_updates_when_full_and_config_is_checked():
    agent = PPO(4, 3, PPOConfig(rollout=10, seed=0))
    obs = np.zeros((1, 4), np.float32)
    before = [p.detach().clone() for p in agent.pi.parameters()]
    for t in range(9):
        assert agent.observe(obs, agent.act(obs), np.array([[1.0, 0.0, 0.0]]), obs, np.array([t == 4]), t) is None
    stats = agent.observe(obs, agent.act(obs), np.array([[1.0, 0.0, 0.0]]), obs, np.array([False]), 9)
    assert stats is not None and agent.n_updates == 4 * 4 and len(agent.buf["obs"]) == 0
    assert any((p != q).any() for p, q in zip(agent.pi.parameters(), before))
    with pytest.raises(ValidationError, match="clip"):
        PPOConfig(clip=0.0)
    with pytest.raises(ValueError, match="lr"):
        PPOConfig(lr=-1e-3)


# -- the ensemble, Eq. (46) -------------------------------------------------------------------

def test_ensemble_weight_from_returns():
    assert ensemble_weight(10.0, 10.0) == pytest.approx(0.5)
    assert ensemble_weight(15.0, 10.0, temperature=5.0) == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert ensemble_weight(10.0, 15.0, temperature=5.0) == pytest.approx(1 / (1 + np.exp(1.0)))
    assert ensemble_weight(100.0, 0.0, omega_min=0.05) == pytest.approx(0.95)
    assert ensemble_weight(-1e6, 0.0, omega_min=0.05) == pytest.approx(0.05)


def test_ensemble_mixture_and_credit():
    cfg = EnsembleConfig(temperature=5.0, ema=0.5, episode_steps=10)
    ens = Ensemble(4, 3, cfg)
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    ens.omega = 0.3
    ens.dqn.eps = 0.2
    p = ens.probs(obs)
    greedy = ens.dqn.q_values(obs).argmax(-1)
    expect = 0.7 * ens.ppo.probs(obs) + 0.3 * 0.2 / 3
    expect[np.arange(5), greedy] += 0.3 * 0.8
    np.testing.assert_allclose(p, expect, atol=1e-6)            # Eq. (46), π_dqn ε-greedy
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    # credit: DQN's steps earned 1.0 each, PPO's 0.5 → recent returns 10 and 5 (T = 10)
    terms = {True: np.array([[1.0, 0.0, 0.0]]), False: np.array([[0.5, 0.0, 0.0]])}
    o = obs[:1]
    for t, by_dqn in enumerate([True, False, True, False]):
        ens._chosen = np.array([by_dqn])
        ens.observe(o, np.array([[0]]), terms[by_dqn], o, np.array([t == 3]), t)
    assert ens.recent == {"dqn": pytest.approx(10.0), "ppo": pytest.approx(5.0)}
    assert ens.omega == pytest.approx(1 / (1 + np.exp(-1.0)))
    # the next episode: PPO better → the EMA (0.5) moves ω back down
    for t, by_dqn in enumerate([True, False]):
        ens._chosen = np.array([by_dqn])
        ens.observe(o, np.array([[0]]), terms[not by_dqn], o, np.array([t == 1]), t)
    assert ens.recent == {"dqn": pytest.approx(7.5), "ppo": pytest.approx(7.5)}
    assert ens.omega == pytest.approx(0.5)
    assert len(ens.ppo.buf["obs"]) == 6                        # PPO saw every step


# -- Bootstrapped DQN, DDPG -------------------------------------------------------------------

def test_bootstrapped_dqn_masks_and_heads():
    agent = BootstrappedDQN(4, 3, BootstrappedDQNConfig(heads=3, mask_prob=0.5, seed=1))
    stored = agent.to_normalised(np.array([[2], [0], [1], [2]] * 50))
    assert stored.shape == (200, 4) and set(np.unique(stored[:, 1:])) <= {0.0, 1.0}
    assert 0.35 < stored[:, 1:].mean() < 0.65
    # a batch masked to head 0 only: heads 1, 2 get no gradient
    rng = np.random.default_rng(0)
    batch = {"obs": rng.normal(size=(8, 4)).astype(np.float32), "actions": np.zeros((8, 4), np.float32),
             "rewards": np.ones(8, np.float32), "next_obs": rng.normal(size=(8, 4)).astype(np.float32),
             "dones": np.zeros(8, np.float32)}
    batch["actions"][:, 1] = 1.0
    w = [h.weight.detach().clone() for h in agent.q.heads]
    agent.update(batch, 0)
    assert (agent.q.heads[0].weight != w[0]).any()
    assert (agent.q.heads[1].weight == w[1]).all() and (agent.q.heads[2].weight == w[2]).all()
    agent.begin_episode()
    h = agent.head
    q = agent.q_values(batch["obs"])
    np.testing.assert_array_equal(agent.act(batch["obs"])[:, 0], q[:, h].argmax(-1))
    np.testing.assert_array_equal(agent.act(batch["obs"], deterministic=True)[:, 0], q.mean(1).argmax(-1))


def test_make_agent_checks_the_action_space():
    with pytest.raises(ValidationError, match="agent"):
        make_agent("ddpg", SupplyChainEnv(n_spins=2, n_warehouses=1))
    with pytest.raises(ValidationError, match="agent"):
        make_agent("dqn", SupplyChainEnv(n_spins=2, n_warehouses=1, continuous=True))
    with pytest.raises(ValidationError, match="agent"):
        make_agent("acktr", SupplyChainEnv(n_spins=2, n_warehouses=1))
    with pytest.raises(ValueError, match="tau"):
        DDPGConfig(tau=2.0)


def test_moving_average_is_edge_padded():
    np.testing.assert_allclose(moving_average(np.arange(5.0), 3), [1 / 3, 1, 2, 3, 11 / 3])
    st = curve_stats(np.r_[np.zeros(10), np.ones(10)], 10)
    assert st["final10"] == 1.0 and st["best_ma"] == pytest.approx(1.0) and st["mean_ma"] == pytest.approx(9.5 / 20)   # MA_i = clip(i − 5, 0, 10)/10


# -- the shared loop: store, figures, checkpoints, resume -------------------------------------

@pytest.mark.parametrize("name", ["dqn", "ppo", "ensemble", "bdqn", "ddpg"])
def test_shared_loop_records_and_resumes(tmp_path, name):
    def go(episodes, store, ckpt):
        env = SupplyChainEnv(n_spins=2, n_warehouses=1, max_steps=6, continuous=name == "ddpg")
        agent = make_agent(name, env, lr=1e-3, seed=2, total_steps=6 * episodes)
        if name != "ppo":
            (agent.cfg.dqn if name == "ensemble" else agent.cfg).learning_starts = 8
        if name in ("ppo", "ensemble"):
            (agent.cfg.ppo if name == "ensemble" else agent.cfg).rollout = 8   # spans the interruption
        train(agent, GymEpisodes(env, seed=5), store=store, run="r", checkpoint=ckpt, checkpoint_every=1,
              progress=False)
        return agent, env
    straight, env = go(7, RunStore(tmp_path / "a.sqlite"), tmp_path / "a.pt")
    store_b = RunStore(tmp_path / "b.sqlite")
    go(3, store_b, tmp_path / "b.pt")                # interrupted after 3 episodes
    resumed, _ = go(7, store_b, tmp_path / "b.pt")   # the same command again
    a, b = RunStore(tmp_path / "a.sqlite").episodes("r"), store_b.episodes("r")
    assert a["episode"] == b["episode"] == list(range(7))
    np.testing.assert_allclose(a["ret"], b["ret"], atol=1e-9)
    np.testing.assert_allclose(a["energy"], b["energy"], atol=1e-12)       # mean fidelity
    figs = store_b.figures("r")
    assert len(figs["mean_fidelity"]) == 7 and figs["mean_fidelity"] == pytest.approx(b["energy"])
    assert {"final_fidelity", "security", "co2_total", "unmet"} <= set(figs)
    sd_a, sd_b = straight.state_dict(), resumed.state_dict()
    assert json.dumps(sd_a["config"], sort_keys=True) == json.dumps(sd_b["config"], sort_keys=True)
    ev = evaluate(resumed, env, seeds=[1, 2])["deterministic"]
    # the resumed agent plays exactly like the uninterrupted one…
    ev_straight = evaluate(straight, env, seeds=[1, 2])["deterministic"]
    np.testing.assert_allclose(ev["returns"], ev_straight["returns"], atol=1e-9)
    assert ev["mean_fidelity"] == pytest.approx(ev_straight["mean_fidelity"], abs=1e-12)
    # …and the evaluation is its deterministic episodes, replayed here by hand
    returns, fids = [], []
    for seed in (1, 2):
        obs, done, ret = env.reset(seed=seed)[0], False, 0.0
        while not done:
            a = resumed.act(obs[None], deterministic=True)[0]
            a = np.asarray(a, np.float32) if env.continuous else int(np.asarray(a).reshape(-1)[0])
            obs, r, term, trunc, info = env.step(a)
            ret, done = ret + float(r), term or trunc
            fids.append(info["fidelity"])
        returns.append(ret)
    np.testing.assert_allclose(ev["returns"], returns, atol=1e-9)
    assert ev["mean_fidelity"] == pytest.approx(np.mean(fids), abs=1e-12)     # equal-length episodes


# -- every agent learns something real (slow) ------------------------------------------------

@pytest.mark.slow   # 60 training episodes each: ~10–40 s per agent on two busy cores
@pytest.mark.parametrize("name", ["dqn", "ppo", "ensemble", "bdqn", "ddpg"])
def test_every_agent_beats_random_on_one_warehouse_two_spins(name):
    """N = 2, one warehouse, Eq. (45)'s reward: 60 training episodes, then the deterministic
    policy on 10 unseen seeds beats the random policy in mean fidelity and in return."""
    env = SupplyChainEnv(n_spins=2, n_warehouses=1, continuous=name == "ddpg")
    agent = make_agent(name, env, lr=5e-4, seed=0, total_steps=60 * env.max_steps)
    train(agent, GymEpisodes(env, seed=0), progress=False)
    seeds = range(500, 510)
    ev = evaluate(agent, env, seeds=seeds)["deterministic"]
    rnd = [rollout(env, RandomPolicy(env, seed=0), seed=s) for s in seeds]
    assert ev["mean_fidelity"] > np.mean([x.mean_fidelity for x in rnd]) + 0.2
    assert ev["return"] > np.mean([x.ret for x in rnd]) + 1.0


# -- the sweep command -----------------------------------------------------------------------

def test_sweep_runs_resumes_and_reports(tmp_path, capsys):
    from qhil.experiments.supply_chain.specs import SweepRun, evaluate_checkpoint, make_env
    from qhil.experiments.supply_chain.sweeps import run_sweep, sweep_specs, write_report
    specs = sweep_specs("noise", ["dqn"], seeds=1, episodes=1, channels=["phase_flip"], probs=[0.05])
    work = tmp_path / "w" / "noise"
    assert [o.status for o in run_sweep(specs, work)] == ["done", "done"]
    store = RunStore(work / "runs.sqlite")
    runs = store.runs()
    assert sorted(runs) == ["noise/dqn/lr=0.0005/N=3/w=1,1,0.5/phase_flip=0.05/seed0",
                            "noise/dqn/lr=0.0005/N=3/w=1,1,0.5/seed0"]
    assert all(r["status"] == "done" for r in runs.values())
    noisy = runs["noise/dqn/lr=0.0005/N=3/w=1,1,0.5/phase_flip=0.05/seed0"]["summary"]
    # the channel acts: the noisy run's env (make_env, which evaluate_checkpoint below replays to
    # 1e-9) loses fidelity against the clean one under the same free evolution
    fid = {}
    for channel in (None, "phase_flip"):
        env = make_env(SweepRun(sweep="noise", agent="dqn", seed=0, episodes=1, channel=channel, p=0.05))
        env.reset(seed=3)
        fid[channel] = np.mean([env.step(0)[4]["fidelity"] for _ in range(env.max_steps)])
    assert fid["phase_flip"] < fid[None] - 0.01, fid
    text = write_report("noise", specs, work, tmp_path / "o", episodes=1)
    assert "phase_flip" in text and "Fig. 7: no numbers" in text and "(2/2 runs finished)" in text
    for ext in ("md", "csv", "png"):
        assert (tmp_path / "o" / f"noise.{ext}").stat().st_size > 0
    assert (tmp_path / "o" / "noise.md").read_text() == text
    wall = {k: v["summary"]["wall_s"] for k, v in runs.items()}
    assert [o.status for o in run_sweep(specs, work)] == ["skipped", "skipped"]     # finished runs are skipped
    assert {k: v["summary"]["wall_s"] for k, v in RunStore(work / "runs.sqlite").runs().items()} == wall
    spec = specs[1]
    assert spec.channel == "phase_flip"
    assert pickle.loads(pickle.dumps(spec)) == spec                                  # ships to a worker
    replay = evaluate_checkpoint(spec, work)                                       # the trained policy, again
    assert replay["return"] == pytest.approx(noisy["eval_return"], abs=1e-9)
    assert evaluate_checkpoint(spec, work, weights=(0, 0, 0))["return"] == 0.0
    longer = sweep_specs("noise", ["dqn"], seeds=1, episodes=2, channels=["phase_flip"], probs=[0.05])
    assert [o.status for o in run_sweep(longer, work)] == ["done", "done"]          # continued, not restarted
    store = RunStore(work / "runs.sqlite")
    assert all(store.episodes(k)["episode"] == [0, 1] for k in runs)
    with pytest.raises(ValidationError, match="probs"):
        sweep_specs("noise", ["dqn"], probs=[2.0])
