"""PPO for seed 004's discrete on/off field control: the clipped surrogate, Eq. (50), with GAE.

Read top to bottom: the hyperparameters, GAE, the surrogate, the agent (acting, the rollout
that the training loop fills through :meth:`PPO.observe`, one update when it is full).

* Policy π_θ(a|s): a categorical distribution over the 2^N field patterns (logits from an
  MLP); value V_φ(s) from a second MLP (separate networks, as CleanRL's ``ppo.py``).
* Advantages by generalised advantage estimation (Schulman et al. 2016):
  δ_t = r_t + γ (1 − d_t) V(s_{t+1}) − V(s_t),  Â_t = δ_t + γ λ (1 − d_t) Â_{t+1},
  returns R_t = Â_t + V(s_t) (targets for V). ``d_t`` = 1 when the episode ended at step t.
* Eq. (50): L(θ) = E_t[min(ρ_t Â_t, clip(ρ_t, 1 − ε, 1 + ε) Â_t)], ρ_t = π_θ(a_t|s_t)/π_old(a_t|s_t);
  we minimise −L + c_v (V − R)² − c_H H[π] over ``epochs`` passes of shuffled minibatches.
* ``π_old`` is the *behaviour* probability stored with each step. Alone, PPO acts with its
  own policy (the textbook ratio). Inside the ensemble (Eq. 46) the behaviour is the mixture,
  so ρ_t = π_θ/π_mix is the importance-weighted ratio (see :mod:`qhil.agents.ensemble`).

The paper gives only Eq. (50). Defaults (ours unless marked): γ = 0.95 and lr 5e−4 shared with
Table I's DQN so the learning-rate sweep varies one number for every agent; rollout 100 steps
(two 50-step episodes), 4 epochs of 4 minibatches, ε = 0.2, λ = 0.95, c_v = 0.5,
c_H = 0.01, gradient norm 0.5, advantages normalised per minibatch, hidden (64, 64) with
tanh (CleanRL's PPO defaults except the rollout length, shortened for 50-step episodes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from qhil.drivers import checks as check

from ._checks import AgentConfig
from .base import SeededAgent, gradient_step
from .networks import tanh_mlp

@dataclass
class PPOConfig(AgentConfig):
    """PPO hyperparameters (ours unless marked; the paper gives only Eq. 50)."""

    hidden: tuple[int, ...] = (64, 64)
    gamma: float = 0.95                  # Table I (shared with DQN)
    lr: float = 5e-4                     # Table I's value, Adam
    rollout: int = 100                   # environment steps per update
    epochs: int = 4
    minibatches: int = 4
    clip: float = 0.2                    # ε of Eq. (50)
    gae_lambda: float = 0.95
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    grad_clip: float = 0.5
    norm_adv: bool = True
    total_steps: int = 50_000            # 1000 episodes × 50 steps (Table I)
    seed: int = 0

    def __post_init__(self) -> None:
        check.finite_float("gamma", self.gamma, 0.0, 1.0)
        check.finite_float("lr", self.lr, 0.0, 1.0, lo_open=True)
        check.integer("rollout", self.rollout, 2, 10_000_000)
        check.integer("epochs", self.epochs, 1, 1000)
        check.integer("minibatches", self.minibatches, 1, self.rollout)
        check.finite_float("clip", self.clip, 0.0, 1.0, lo_open=True)
        check.finite_float("gae_lambda", self.gae_lambda, 0.0, 1.0)
        hidden = tuple(self.hidden) if isinstance(self.hidden, (tuple, list)) else ()
        if not hidden or not all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 65_536 for h in hidden):
            raise check.ValidationError("hidden", f"{self.hidden!r}", "a non-empty tuple of layer widths in 1..65536")
        check.finite_float("vf_coef", self.vf_coef, 0.0, 1e6)
        check.finite_float("ent_coef", self.ent_coef, 0.0, 1e6)
        check.finite_float("grad_clip", self.grad_clip, 0.0, 1e6, lo_open=True)
        if not isinstance(self.norm_adv, (bool, np.bool_)):
            raise check.ValidationError("norm_adv", f"{self.norm_adv!r}", "True or False")
        self._check_run()


def gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_value: float,
        gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimates and value targets for one trajectory segment.

    rewards, values, dones: (T,) — r_t, V(s_t), and d_t = 1 if the episode ended at step t
    last_value:             V(s_T), the state after the segment (ignored if d_{T−1} = 1)
    Returns (Â, R = Â + V), both (T,).
    """
    T = len(rewards)
    adv = np.zeros(T)
    next_adv, next_value = 0.0, float(last_value)
    for t in reversed(range(T)):
        live = 1.0 - float(dones[t])
        delta = rewards[t] + gamma * live * next_value - values[t]
        next_adv = delta + gamma * lam * live * next_adv
        adv[t] = next_adv
        next_value = values[t]
    return adv, adv + np.asarray(values, float)


def clipped_surrogate(logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor,
                      clip: float) -> torch.Tensor:
    """Eq. (50): mean over t of min(ρ_t Â_t, clip(ρ_t, 1 − ε, 1 + ε) Â_t), ρ_t = exp(logp_new − logp_old)."""
    ratio = torch.exp(logp_new - logp_old)
    return torch.min(ratio * adv, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv).mean()


class PPO(SeededAgent):
    """PPO over ``n_actions`` discrete actions, trained on-policy by
    :func:`qhil.agents.training.train` (an :class:`~qhil.agents.protocols.OnPolicyAgent`: no
    replay buffer; it learns in :meth:`observe`).

    obs_dim:        observation length
    n_actions:      number of actions (2^N field patterns)
    reward_weights: weights of the env's reward terms, (α1, α2, α3) for seed 004
    """

    act_dim = 1

    def __init__(self, obs_dim: int, n_actions: int, config: PPOConfig | None = None,
                 reward_weights: Sequence[float] = (1.0, 1.0, 0.5)) -> None:
        self._setup(config or PPOConfig(), reward_weights)
        self.obs_dim, self.n_actions = int(obs_dim), int(n_actions)
        h = tuple(self.cfg.hidden)
        self.pi = tanh_mlp(self.obs_dim, h, self.n_actions, 0.01)      # logits
        self.v = tanh_mlp(self.obs_dim, h, 1, 1.0)
        self.opt = torch.optim.Adam(list(self.pi.parameters()) + list(self.v.parameters()),
                                    lr=self.cfg.lr, eps=1e-5)
        self.n_updates = 0
        self._clear()

    def _clear(self) -> None:
        self.buf: dict[str, list] = {"obs": [], "act": [], "logp": [], "rew": [], "done": [], "value": []}

    # -- acting ----------------------------------------------------------------------
    @torch.no_grad()
    def probs(self, obs: np.ndarray) -> np.ndarray:
        """π_θ(·|s) for a batch (n, D) → (n, n_actions)."""
        return torch.softmax(self.pi(torch.as_tensor(np.atleast_2d(obs).astype(np.float32))), -1).numpy()

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Actions (n, 1): sampled from π_θ, or its most probable one."""
        p = self.probs(obs)
        if deterministic:
            return p.argmax(-1)[:, None]
        u = self.rng.random((len(p), 1))
        return np.minimum((np.cumsum(p, -1) < u).sum(-1, keepdims=True), self.n_actions - 1)


    @torch.no_grad()
    def value(self, obs: np.ndarray) -> np.ndarray:
        return self.v(torch.as_tensor(np.atleast_2d(obs).astype(np.float32))).squeeze(-1).numpy()

    # -- the rollout -----------------------------------------------------------------
    def observe(self, obs: np.ndarray, actions: np.ndarray, terms: np.ndarray, next_obs: np.ndarray,
                dones: np.ndarray, step: int, behaviour_logp: np.ndarray | None = None,
                weights: np.ndarray | None = None) -> dict[str, float] | None:
        """Store one step (n_envs = 1); update when the rollout is full. The reward is
        ``terms · weights``: the env's weights as the training loop gives them (default: those
        the agent was built with).

        ``behaviour_logp``: log-probability of the actions under the policy that chose them
        (default: π_θ itself, i.e. plain PPO)."""
        if len(obs) != 1:
            raise ValueError(f"n_envs: PPO learns from one environment at a time, got a batch of {len(obs)}")
        a = np.asarray(actions).reshape(-1).astype(int)
        if behaviour_logp is None:
            behaviour_logp = np.log(self.probs(obs)[np.arange(len(a)), a] + 1e-12)
        self.buf["obs"].append(np.asarray(obs, np.float32)[0])
        self.buf["act"].append(int(a[0]))
        self.buf["logp"].append(float(np.reshape(behaviour_logp, -1)[0]))
        w = self.reward_weights(step) if weights is None else weights
        self.buf["rew"].append(float(np.asarray(terms, np.float32)[0] @ w))
        self.buf["done"].append(float(np.reshape(dones, -1)[0]))
        self.buf["value"].append(float(self.value(obs)[0]))
        if len(self.buf["obs"]) >= self.cfg.rollout:
            stats = self.update_rollout(last_value=float(self.value(next_obs)[0]))
            self._clear()
            return stats
        return None

    def update_rollout(self, last_value: float) -> dict[str, float]:
        """GAE over the stored rollout, then ``epochs`` passes of minibatch steps on Eq. (50)."""
        c = self.cfg
        adv, ret = gae(np.array(self.buf["rew"]), np.array(self.buf["value"]), np.array(self.buf["done"]),
                       last_value, c.gamma, c.gae_lambda)
        obs = torch.as_tensor(np.stack(self.buf["obs"]))
        act = torch.as_tensor(np.array(self.buf["act"]))
        logp_old = torch.as_tensor(np.array(self.buf["logp"], np.float32))
        adv_t, ret_t = torch.as_tensor(adv, dtype=torch.float32), torch.as_tensor(ret, dtype=torch.float32)
        T = len(adv)
        stats: dict[str, float] = {}
        for _ in range(c.epochs):
            for part in np.array_split(self.rng.permutation(T), min(c.minibatches, T)):
                idx = torch.as_tensor(part)
                logits = self.pi(obs[idx])
                logp_all = torch.log_softmax(logits, -1)
                logp = logp_all.gather(1, act[idx, None]).squeeze(1)
                entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
                a = adv_t[idx]
                if c.norm_adv and len(a) > 1:
                    a = (a - a.mean()) / (a.std() + 1e-8)
                surrogate = clipped_surrogate(logp, logp_old[idx], a, c.clip)
                v_loss = ((self.v(obs[idx]).squeeze(-1) - ret_t[idx]) ** 2).mean()
                loss = -surrogate + c.vf_coef * v_loss - c.ent_coef * entropy
                gradient_step(self.opt, list(self.pi.parameters()) + list(self.v.parameters()), loss, c.grad_clip)
                self.n_updates += 1
                stats = {"loss": loss.item(), "surrogate": surrogate.item(), "v_loss": v_loss.item(),
                         "entropy": entropy.item()}
        return stats

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"pi": self.pi.state_dict(), "v": self.v.state_dict(), "opt": self.opt.state_dict(),
                "n_updates": self.n_updates, "buf": {k: list(v) for k, v in self.buf.items()},
                **self._rng_state()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.pi.load_state_dict(d["pi"])
        self.v.load_state_dict(d["v"])
        self.opt.load_state_dict(d["opt"])
        self.n_updates = int(d["n_updates"])
        self.buf = {k: list(v) for k, v in d["buf"].items()}
        self._load_rng_state(d)
