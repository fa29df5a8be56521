"""Double DQN for seed 004's discrete on/off field control (``QuantumEnhancedAIoTAgent``).

Read top to bottom: the hyperparameters (Table I), the Q-network, acting, one update.

* ε-greedy over the 2^N field patterns; ε starts at 1.0 and is multiplied by 0.995 after
  every environment step (:meth:`DQN.end_step`) down to 0.01 (Table I; the paper does not say
  per step or per episode — per step, as in the common Keras-style DQN it follows).
* Double DQN target (van Hasselt et al. 2016): the online network picks a' = argmax Q(s', ·),
  the target network evaluates it, y = r + γ (1 − done) Q_targ(s', a'); Huber loss; the target
  network is a hard copy every ``target_update`` updates (Table I: 200).
* Replay: the shared :class:`~qhil.agents.replay.ReplayBuffer`; a transition keeps the
  environment's reward terms (F̂, R̂, −Ĉ) and a batch combines them with the weights
  (α1, α2, α3) given to the agent (:meth:`DQN.reward_weights`).

The agent follows the contract of :mod:`qhil.agents.training` (``cfg``, ``rng``, ``act``,
``random_action``, ``to_normalised``, ``reward_weights``, ``update``, ``observe`` (ε decay),
``state_dict`` / ``load_state_dict``) and is trained by :func:`qhil.agents.training.train`;
actions are pattern indices, stored as one float per transition.
Defaults not in Table I (ours): hidden layers (64, 64), ReLU; updates start once the buffer
holds one batch; one update per environment step; gradient norm clipped at 10.
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
from .networks import mlp


@dataclass
class DQNConfig(AgentConfig):
    """Double DQN hyperparameters (Table I of seed 004 unless marked ours)."""

    hidden: tuple[int, ...] = (64, 64)   # ours
    gamma: float = 0.95
    lr: float = 5e-4                     # Adam
    eps_start: float = 1.0
    eps_min: float = 0.01
    eps_decay: float = 0.995             # per environment step
    buffer_size: int = 10_000
    batch_size: int = 64
    target_update: int = 200             # updates between hard target copies
    learning_starts: int = 64            # ours: one batch
    updates_per_step: float = 1          # ours; < 1 with many envs
    grad_clip: float = 10.0              # ours
    total_steps: int = 50_000            # 1000 episodes × 50 steps (Table I)
    seed: int = 0

    def __post_init__(self) -> None:
        check_network_and_replay(self)
        check.finite_float("gamma", self.gamma, 0.0, 1.0)
        check.finite_float("lr", self.lr, 0.0, 1.0, lo_open=True)
        check.finite_float("eps_start", self.eps_start, 0.0, 1.0)
        check.finite_float("eps_min", self.eps_min, 0.0, self.eps_start)
        check.finite_float("eps_decay", self.eps_decay, 0.0, 1.0, lo_open=True)
        check.finite_float("grad_clip", self.grad_clip, 0.0, 1e6, lo_open=True)
        self._check_run()


class DQN(SeededAgent):
    """Double DQN over ``n_actions`` discrete actions.

    obs_dim:        observation length
    n_actions:      number of actions (2^N field patterns)
    reward_weights: weights of the stored reward terms, (α1, α2, α3) for seed 004
    """

    act_dim = 1

    def __init__(self, obs_dim: int, n_actions: int, config: DQNConfig | None = None,
                 reward_weights: Sequence[float] = (1.0, 1.0, 0.5)) -> None:
        self._setup(config or DQNConfig(), reward_weights)
        self.obs_dim, self.n_actions = int(obs_dim), int(n_actions)
        h = tuple(self.cfg.hidden)
        self.q = mlp(self.obs_dim, h, self.n_actions)
        self.q_targ = mlp(self.obs_dim, h, self.n_actions)
        self.q_targ.load_state_dict(self.q.state_dict())
        for p in self.q_targ.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.Adam(self.q.parameters(), lr=self.cfg.lr)
        self.eps = self.cfg.eps_start
        self.n_updates = 0

    # -- acting ----------------------------------------------------------------------
    def random_action(self, n: int) -> np.ndarray:
        """Uniform actions, (n, 1) integers."""
        return self.rng.integers(self.n_actions, size=(n, 1))

    def to_normalised(self, actions: np.ndarray) -> np.ndarray:
        """What the replay buffer stores: the action index as a float, (n, 1)."""
        return np.asarray(actions, np.float32).reshape(-1, 1)

    @torch.no_grad()
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        return self.q(torch.as_tensor(np.atleast_2d(obs).astype(np.float32))).numpy()

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Actions for a batch of observations (n, D) → (n, 1): greedy, or ε-greedy."""
        greedy = self.q_values(obs).argmax(-1)[:, None]
        if deterministic:
            return greedy
        explore = self.rng.random(len(greedy)) < self.eps
        return np.where(explore[:, None], self.random_action(len(greedy)), greedy)

    def end_step(self) -> None:
        """ε ← max(ε_min, ε × decay), once per environment step."""
        self.eps = max(self.cfg.eps_min, self.eps * self.cfg.eps_decay)

    def observe(self, obs: np.ndarray, actions: np.ndarray, terms: np.ndarray, next_obs: np.ndarray,
                dones: np.ndarray, step: int, weights: np.ndarray | None = None) -> dict[str, float]:
        """The training loop's hook after each (vector) step: decay ε once per environment."""
        for _ in range(len(obs)):
            self.end_step()
        return {"eps": self.eps}


    # -- learning --------------------------------------------------------------------
    def td_target(self, rewards: torch.Tensor, next_obs: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """y = r + γ (1 − done) Q_targ(s', argmax_a Q(s', a)) (Double DQN)."""
        with torch.no_grad():
            a2 = self.q(next_obs).argmax(-1, keepdim=True)
            return rewards + self.cfg.gamma * (1.0 - dones) * self.q_targ(next_obs).gather(1, a2).squeeze(1)

    def update(self, batch: dict[str, np.ndarray], step: int) -> dict[str, float]:
        """One gradient step on a replay batch; a hard target copy every ``target_update``."""
        obs = torch.as_tensor(batch["obs"])
        act = torch.as_tensor(batch["actions"]).long().reshape(-1, 1)
        y = self.td_target(torch.as_tensor(batch["rewards"]), torch.as_tensor(batch["next_obs"]),
                           torch.as_tensor(batch["dones"]))
        q = self.q(obs).gather(1, act).squeeze(1)
        loss = F.smooth_l1_loss(q, y)
        gradient_step(self.opt, self.q.parameters(), loss, self.cfg.grad_clip)
        self.n_updates += 1
        if self.n_updates % self.cfg.target_update == 0:
            self.q_targ.load_state_dict(self.q.state_dict())
        return {"loss": loss.item(), "q": q.mean().item(), "eps": self.eps}

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.state_dict(), "q_targ": self.q_targ.state_dict(), "opt": self.opt.state_dict(),
                "eps": self.eps, "n_updates": self.n_updates, **self._rng_state()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.q.load_state_dict(d["q"])
        self.q_targ.load_state_dict(d["q_targ"])
        self.opt.load_state_dict(d["opt"])
        self.eps, self.n_updates = float(d["eps"]), int(d["n_updates"])
        self._load_rng_state(d)
