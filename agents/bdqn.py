"""Bootstrapped DQN (Osband et al. 2016), seed 004's "Ensemble RL (Bootstrapped DQN)" baseline.

Read top to bottom: the hyperparameters, the K-headed Q-network, acting, one update.

* A shared torso and K heads Q_k(s, ·), each with its own target head (hard copy every
  ``target_update`` updates, Table I: 200).
* Exploration without ε: at the start of each episode one head is drawn uniformly and the
  agent acts greedily with it for the whole episode (deep exploration, Osband et al. Alg. 1).
* Bootstrap masks: every transition carries a mask m ∈ {0, 1}^K, m_k ~ Bernoulli(p); head k
  learns only from transitions with m_k = 1. The mask travels in the shared replay buffer as
  part of the stored action row, [a, m_1, …, m_K] (:meth:`BootstrappedDQN.to_normalised`).
* Each head's target is Double DQN's, y_k = r + γ (1 − done) Q_k^targ(s', argmax_a Q_k(s', a));
  Huber loss averaged over the masked (transition, head) pairs.
* The deterministic policy (evaluation) plays argmax of the heads' mean Q (ours; Osband et
  al. vote).

Defaults: Table I's γ = 0.95, lr 5e−4, replay 10,000, batch 64, target update 200. Ours:
K = 5 heads (Osband et al. used 10), p = 0.5, torso (64, 64) ReLU and a linear head per
output, updates from the first full batch, one per step, gradient norm clipped at 10.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from qhil.drivers import checks as check

from ._checks import AgentConfig, check_network_and_replay
from .base import SeededAgent, gradient_step
from .networks import MultiHeadQ


@dataclass
class BootstrappedDQNConfig(AgentConfig):
    """Bootstrapped DQN hyperparameters (Table I where it applies, else ours)."""

    hidden: tuple[int, ...] = (64, 64)   # ours: shared torso
    heads: int = 5                       # ours (Osband et al.: 10)
    mask_prob: float = 0.5               # ours: p of the Bernoulli bootstrap mask
    gamma: float = 0.95
    lr: float = 5e-4
    buffer_size: int = 10_000
    batch_size: int = 64
    target_update: int = 200
    learning_starts: int = 64            # ours
    updates_per_step: float = 1          # ours; < 1 with many envs
    grad_clip: float = 10.0              # ours
    total_steps: int = 50_000
    seed: int = 0

    def __post_init__(self) -> None:
        check_network_and_replay(self)
        check.integer("heads", self.heads, 1, 100)
        check.finite_float("mask_prob", self.mask_prob, 0.0, 1.0, lo_open=True)
        check.finite_float("gamma", self.gamma, 0.0, 1.0)
        check.finite_float("lr", self.lr, 0.0, 1.0, lo_open=True)
        check.finite_float("grad_clip", self.grad_clip, 0.0, 1e6, lo_open=True)
        self._check_run()


class BootstrappedDQN(SeededAgent):
    """K-headed Double DQN with bootstrap masks, over ``n_actions`` discrete actions."""

    def __init__(self, obs_dim: int, n_actions: int, config: BootstrappedDQNConfig | None = None,
                 reward_weights: Sequence[float] = (1.0, 1.0, 0.5)) -> None:
        self._setup(config or BootstrappedDQNConfig(), reward_weights)
        self.obs_dim, self.n_actions, self.K = int(obs_dim), int(n_actions), self.cfg.heads
        self.act_dim = 1 + self.K                 # stored row: [a, m_1, …, m_K]
        h = tuple(self.cfg.hidden)
        self.q = MultiHeadQ(self.obs_dim, h, self.n_actions, self.K)
        self.q_targ = MultiHeadQ(self.obs_dim, h, self.n_actions, self.K)
        self.q_targ.load_state_dict(self.q.state_dict())
        for p in self.q_targ.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.Adam(self.q.parameters(), lr=self.cfg.lr)
        self.head = 0
        self.n_updates = 0

    # -- acting ----------------------------------------------------------------------
    def begin_episode(self) -> None:
        """Draw the head that acts for this episode."""
        self.head = int(self.rng.integers(self.K))

    @torch.no_grad()
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """(n, K, n_actions)."""
        return self.q(torch.as_tensor(np.atleast_2d(obs).astype(np.float32))).numpy()

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """(n, 1): greedy with this episode's head, or (deterministic) with the heads' mean."""
        q = self.q_values(obs)
        q = q.mean(1) if deterministic else q[:, self.head]
        return q.argmax(-1)[:, None]

    def random_action(self, n: int) -> np.ndarray:
        return self.rng.integers(self.n_actions, size=(n, 1))

    def to_normalised(self, actions: np.ndarray) -> np.ndarray:
        """The stored row: the action index and a fresh bootstrap mask, (n, 1 + K)."""
        a = np.asarray(actions, np.float32).reshape(-1, 1)
        masks = (self.rng.random((len(a), self.K)) < self.cfg.mask_prob).astype(np.float32)
        return np.concatenate([a, masks], axis=1)


    # -- learning --------------------------------------------------------------------
    def td_targets(self, rewards: torch.Tensor, next_obs: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """y_k = r + γ (1 − done) Q_k^targ(s', argmax_a Q_k(s', a)), (batch, K)."""
        with torch.no_grad():
            a2 = self.q(next_obs).argmax(-1, keepdim=True)                     # (B, K, 1)
            q2 = self.q_targ(next_obs).gather(2, a2).squeeze(2)               # (B, K)
            return rewards[:, None] + self.cfg.gamma * (1.0 - dones[:, None]) * q2

    def update(self, batch: dict[str, np.ndarray], step: int) -> dict[str, float]:
        """One gradient step for all heads on their masked transitions."""
        obs = torch.as_tensor(batch["obs"])
        stored = torch.as_tensor(batch["actions"])
        act, mask = stored[:, :1].long(), stored[:, 1:]
        y = self.td_targets(torch.as_tensor(batch["rewards"]), torch.as_tensor(batch["next_obs"]),
                            torch.as_tensor(batch["dones"]))
        q = self.q(obs).gather(2, act[:, None, :].expand(-1, self.K, 1)).squeeze(2)   # (B, K)
        per = F.smooth_l1_loss(q, y, reduction="none")
        loss = (per * mask).sum() / mask.sum().clamp(min=1.0)
        gradient_step(self.opt, self.q.parameters(), loss, self.cfg.grad_clip)
        self.n_updates += 1
        if self.n_updates % self.cfg.target_update == 0:
            self.q_targ.load_state_dict(self.q.state_dict())
        return {"loss": loss.item(), "q": q.mean().item()}

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.state_dict(), "q_targ": self.q_targ.state_dict(), "opt": self.opt.state_dict(),
                "head": self.head, "n_updates": self.n_updates, **self._rng_state()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.q.load_state_dict(d["q"])
        self.q_targ.load_state_dict(d["q_targ"])
        self.opt.load_state_dict(d["opt"])
        self.head, self.n_updates = int(d["head"]), int(d["n_updates"])
        self._load_rng_state(d)
