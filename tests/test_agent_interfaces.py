"""Agents that know nothing of seeds (issue 15, items 4 and 5): protocols, one network module,
figures from the env, the env-owned reward weight, update metrics (run store, TensorBoard)
and the run store's objective column."""
from __future__ import annotations

import json
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from qhil.agents import networks as N
from qhil.agents.dqn import DQN, DQNConfig
from qhil.agents.protocols import Agent, OffPolicyAgent, OnPolicyAgent, check_agent
from qhil.agents.runstore import RunStore
from qhil.agents.sac import SAC
from qhil.agents.sac_config import SACConfig
from qhil.agents.training import GymEpisodes, train, train_off_policy
from qhil.drivers import ValidationError
from qhil.envs import RewardWeight, make_charging_env, scheduled_weight


# -- protocols -----------------------------------------------------------------------------
class _NoAct:
    cfg, rng = None, np.random.default_rng(0)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass


class _ActsButNeverLearns(_NoAct):
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return np.zeros((len(obs), 1))


def test_an_object_missing_a_method_is_refused_naming_it():
    with pytest.raises(ValidationError, match="lacks act") as err:
        check_agent(_NoAct())
    assert err.value.parameter == "agent"
    with pytest.raises(ValidationError, match="learns neither from replay .*random_action.*observe"):
        check_agent(_ActsButNeverLearns())
    env = make_charging_env("env1", "energies")
    with pytest.raises(ValidationError, match="lacks act"):           # before any work starts
        train_off_policy(_NoAct(), env, progress=False)
    assert env.n_step == 0


def test_the_agents_satisfy_their_protocols():
    from qhil.agents.ppo import PPO
    sac = SAC(4, -0.3, 0.3, SACConfig(hidden=(8,), batch_size=4))
    dqn, ppo = DQN(4, 3), PPO(4, 3)
    assert isinstance(sac, OffPolicyAgent) and isinstance(dqn, OffPolicyAgent)
    assert isinstance(ppo, OnPolicyAgent) and not isinstance(ppo, OffPolicyAgent)
    assert not isinstance(_NoAct(), Agent) and isinstance(_ActsButNeverLearns(), Agent)
    assert not hasattr(sac, "reward_weights")          # the weight of Eq. (11) is the env's


# -- networks ------------------------------------------------------------------------------
#: Sums of the outputs at torch seed 0 of the per-agent network copies these replace
#: (commit aa3f392: sac.mlp/SoftQ/Actor, bdqn.MultiHeadQ, ppo._mlp_tanh), then Actor.sample at seed 1.
_BEFORE = [1.4410345554351807, 0.7746282666921616, -5.692715257406235, 1.8280781544744968,
           0.017967551888432354, 1.0700018915813416, -2.9496905356645584]


def test_networks_give_the_outputs_of_the_per_agent_copies_they_replace():
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 5 * 6).reshape(5, 6)
    a = torch.linspace(-0.5, 0.5, 5 * 2).reshape(5, 2)
    nets = [N.mlp(6, (8, 8), 3), N.SoftQ(6, 2, (8, 8)), N.Actor(6, 2, (8, 8)), N.MultiHeadQ(6, (8, 8), 4, 3),
            N.tanh_mlp(6, (8, 8), 4, 0.01)]
    with torch.no_grad():
        vals = [nets[0](x), nets[1](x, a), torch.cat(nets[2](x), -1), nets[3](x), nets[4](x)]
        torch.manual_seed(1)
        act, logp = nets[2].sample(x)
    got = [float(v.double().sum()) for v in vals] + [float(act.double().sum()), float(logp.double().sum())]
    np.testing.assert_allclose(got, _BEFORE, rtol=1e-6, atol=1e-7)
    assert [n for n, _ in nets[2].named_parameters()][:2] == ["body.0.weight", "body.0.bias"]


def test_no_agent_module_defines_its_own_network():
    agents = Path(N.__file__).parent
    for f in agents.glob("*.py"):
        if f.name != "networks.py":
            assert not re.search(r"nn\.(Linear|Sequential)\(|class \w+\(nn\.Module\)", f.read_text()), f.name


# -- figures from the env's info -----------------------------------------------------------
class _CustomEnv(gym.Env):
    """Two actions; each step reports its own figures under names the loop has never heard of."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        figs = {"purity": 0.5 + 0.1 * self.t, "leakage": float(action)}
        return (np.full(2, self.t / 4, np.float32), float(action), self.t == 4, False,
                {"reward_terms": np.array([float(action)]), "figures": figs})


class _DeclaredEnv(_CustomEnv):
    episode_figures = {"mean_purity": ("purity", "mean"), "total_leakage": ("leakage", "sum")}
    headline_figures = ("mean_purity", "total_leakage")
    trajectory_figure = "purity"

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, r, term, trunc, info = super().step(action)
        return obs, r, term, trunc, {"reward_terms": info["reward_terms"], **info.pop("figures")}


def test_a_custom_envs_figures_are_recorded_by_their_names(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    agent = DQN(2, 2, DQNConfig(hidden=(8,), batch_size=4, learning_starts=4, total_steps=12, seed=1),
                reward_weights=(1.0,))
    train(agent, GymEpisodes(_CustomEnv(), seed=0), store=store, run="custom", progress=False)
    figs = store.figures("custom")
    assert sorted(figs) == ["leakage", "purity"] and figs["purity"] == pytest.approx([0.9] * 3)
    assert "fidelity" not in json.dumps(store.episodes("custom"))
    agent = DQN(2, 2, DQNConfig(hidden=(8,), batch_size=4, learning_starts=4, total_steps=12, seed=1),
                reward_weights=(1.0,))
    train(agent, GymEpisodes(_DeclaredEnv(), seed=0), store=store, run="declared", progress=False)
    figs, ep = store.figures("declared"), store.episodes("declared")
    assert figs["mean_purity"] == pytest.approx([0.75] * 3)
    assert figs["total_leakage"] == ep["ergotropy"] == pytest.approx(ep["ret"])      # the headline columns
    assert store.best("declared")["trajectory"] == pytest.approx([0.6, 0.7, 0.8, 0.9])


# -- the env owns the reward weight ----------------------------------------------------------
def test_a_fixed_weight_is_exact_and_the_schedule_is_eq12():
    for w in (0.0, 0.3, 1.0):
        env = make_charging_env("env1", "energies", weight=w)
        for step in (0, 10**6, 10**12):
            assert env.reward_weights(step).tolist() == np.array([w, 1 - w], np.float32).tolist()
        assert RewardWeight(w=w)(10**15) == w and RewardWeight(w=w).scaled(1e-3) == RewardWeight(w=w)
    sched = RewardWeight(mean=100, width=10)
    assert sched(130) == scheduled_weight(130, 100, 10) and sched.scaled(2)(260) == pytest.approx(sched(130))
    env = make_charging_env("env1", "energies", reward_weight=sched)
    assert (env.weight, env.w_mean, env.w_width) == (None, 100, 10)
    with pytest.raises(ValidationError, match="^weight"):
        RewardWeight(w=1.5)
    with pytest.raises(ValidationError, match="^reward_weight"):
        make_charging_env("env1", "energies", reward_weight=(0.5,))


def test_no_flat_sigmoid_is_left_in_the_package():
    root = Path(N.__file__).parents[1]
    for sub in ("drivers", "envs", "agents", "experiments", "lab"):
        for f in (root / sub).rglob("*.py"):
            assert not re.search("|".join(f"1e{k}" for k in (18, 21)), f.read_text()), f


def test_older_sac_options_and_checkpoints_give_the_envs_schedule(tmp_path):
    opts: dict[str, float] = {}
    cfg = SACConfig.from_dict({"gamma": 0.9, "w_mean": 300.0, "w_width": 150.0}, opts)
    assert cfg.gamma == 0.9 and opts == {"w_mean": 300.0, "w_width": 150.0}
    assert "w_mean" not in cfg.to_dict()
    flat_mean, flat_width = 10.0**21, 10.0**18                            # the old flat "fixed" weights
    assert RewardWeight.from_legacy(-flat_mean, flat_width) == RewardWeight(w=0.0)
    assert RewardWeight.from_legacy(flat_mean, flat_width) == RewardWeight(w=1.0)
    assert RewardWeight.from_legacy(-0.0 * flat_mean, flat_width) == RewardWeight(w=0.5)
    assert RewardWeight.from_legacy(300, 150) == RewardWeight(None, 300, 150)
    with pytest.raises(ValidationError, match="^w_width"):
        SACConfig.from_dict({"w_width": -1.0})

    def run(weight: RewardWeight, total: int) -> Any:
        env = make_charging_env("env1", "energies", n_envs=2, reward_weight=weight)
        agent = SAC(env.obs_dim, env.action_low, env.action_high,
                    SACConfig(hidden=(8,), batch_size=8, learning_starts=28, total_steps=total, seed=2))
        return train_off_policy(agent, env, checkpoint=tmp_path / "c.pt", progress=False)

    run(RewardWeight(None, 300, 150), 56)
    blob = torch.load(tmp_path / "c.pt", weights_only=False)          # as written before the env owned w
    del blob["env_reward_weight"]
    blob["agent"]["config"] |= {"w_mean": 300.0, "w_width": 150.0}
    torch.save(blob, tmp_path / "c.pt")
    assert run(RewardWeight(None, 300, 150), 112).step == 112          # resumes: the same schedule
    blob["agent"]["config"] |= {"w_mean": -flat_mean, "w_width": flat_width}   # an old fixed w = 0
    torch.save(blob, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="reward weight"):
        run(RewardWeight(None, 300, 150), 112)
    assert run(RewardWeight(w=0.0), 112).step == 112


# -- metrics per update round, TensorBoard ------------------------------------------------------
def test_update_metrics_per_round_in_the_store_and_tensorboard(tmp_path):
    env = make_charging_env("env1", "energies", n_envs=2, weight=0.0)
    agent = SAC(env.obs_dim, env.action_low, env.action_high,
                SACConfig(hidden=(8,), batch_size=8, learning_starts=56, total_steps=168, seed=0))
    store = RunStore(tmp_path / "runs.sqlite")
    state = train_off_policy(agent, env, store=store, run="r", progress=False, tensorboard=tmp_path / "tb")
    m = store.updates("r")
    # 3 rounds of 2 episodes (56 steps each); one update per env step from the warm-up's last (2 envs)
    assert m["episode"] == [1, 3, 5] and m["step"] == [56, 112, 168] and m["updates"] == [2, 58, 114]
    assert state.updates == 114
    for k in ("q_loss", "actor_loss", "alpha", "alpha_loss", "entropy", "q"):
        assert len(m[k]) == 3 and all(np.isfinite(m[k])), k
    assert abs(m["alpha"][-1] - 0.2) > 1e-3 and m["alpha"][0] != m["alpha"][-1]   # α is tuned (Eq. 18)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    tags = ea.Tags()["scalars"]
    assert {"train/alpha", "train/q_loss", "train/entropy", "episode/return", "episode/ergotropy"} <= set(tags)
    alpha = ea.Scalars("train/alpha")
    assert [e.step for e in alpha] == [56, 112, 168]
    np.testing.assert_allclose([e.value for e in alpha], m["alpha"], rtol=1e-6)
    assert len(ea.Scalars("episode/return")) == 6


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)          # import fails
    env = make_charging_env("env1", "energies")
    agent = SAC(env.obs_dim, env.action_low, env.action_high, SACConfig(hidden=(8,), batch_size=8, total_steps=28))
    with pytest.raises(ValidationError, match="^tensorboard.*pip install tensorboard"):
        train_off_policy(agent, env, progress=False, tensorboard=tmp_path / "tb")
    assert env.n_step == 0


def test_resume_drops_the_metrics_of_replayed_rounds(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    store.start_run("r", {})
    for ep in (1, 3, 5):
        store.log_updates("r", ep, 28 * (ep + 1), ep, {"loss": float(ep)})
    store.truncate("r", 3)
    assert store.updates("r")["episode"] == [1, 3] and store.updates("r")["loss"] == [1.0, 3.0]


# -- the run store's objective column ------------------------------------------------------------
def test_an_older_store_with_an_ergotropy_best_column_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE runs (run TEXT PRIMARY KEY, config TEXT NOT NULL, status TEXT NOT NULL,
            created REAL NOT NULL, updated REAL NOT NULL, summary TEXT);
        CREATE TABLE best (run TEXT PRIMARY KEY, ergotropy REAL NOT NULL, episode INTEGER NOT NULL,
            protocol TEXT NOT NULL, trajectory TEXT NOT NULL);
        INSERT INTO runs VALUES ('r', '{}', 'done', 0, 0, NULL);
        INSERT INTO best VALUES ('r', 3.5, 7, '[0.1]', '[0.0, 3.5]');""")
    db.commit()
    db.close()
    store = RunStore(path)
    assert store.best("r") == {"objective": 3.5, "ergotropy": 3.5, "episode": 7, "protocol": [0.1],
                               "trajectory": [0.0, 3.5]}
    cols = [r[1] for r in store._db.execute("PRAGMA table_info(best)")]
    assert "objective" in cols and "ergotropy" not in cols
    store.log_episodes("r", [], {"objective": 4.0, "episode": 8, "protocol": [0.2], "trajectory": [0.0, 4.0]})
    store.log_episodes("r", [], {"ergotropy": 4.5, "episode": 9, "protocol": [0.2], "trajectory": [0.0]})
    store.close()
    assert RunStore(path).best("r")["objective"] == 4.5                     # reopened: nothing to migrate


def test_the_supply_chains_weights_are_the_envs_for_replay_and_rollout():
    """An agent built with other (α1, α2, α3) learns from the env's: the env owns them."""
    from qhil.agents.ppo import PPO, PPOConfig
    from qhil.envs import SupplyChainEnv
    env = SupplyChainEnv(n_spins=2, max_steps=5, weights=(0.0, 0.0, 1.0))
    D, n = int(np.prod(env.observation_space.shape)), env.action_space.n
    ppo = PPO(D, n, PPOConfig(rollout=10, minibatches=2, total_steps=5, seed=0), reward_weights=(1.0, 1.0, 0.5))
    adapter = GymEpisodes(env, seed=0)
    terms: list[np.ndarray] = []
    step = adapter.step
    adapter.step = lambda a: (out := step(a), terms.append(out[4]["reward_terms"][0]))[0]   # type: ignore[method-assign]
    train(ppo, adapter, progress=False)
    np.testing.assert_allclose(ppo.buf["rew"], [float(t.astype(np.float32) @ np.float32([0, 0, 1])) for t in terms])
    dqn = DQN(D, n, DQNConfig(hidden=(8,), batch_size=4, learning_starts=4, total_steps=5, seed=0))
    adapter = GymEpisodes(env, seed=0)
    assert adapter.reward_weights(0).tolist() == [0.0, 0.0, 1.0]          # what the replay buffer is given
    train(dqn, adapter, progress=False)
