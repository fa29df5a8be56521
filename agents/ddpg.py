"""DDPG (Lillicrap et al. 2016) for the continuous variant of seed 004's supply chain.

Read top to bottom: the hyperparameters, the networks, acting, one update.

* Actor μ_θ(s) = tanh(MLP(s)) ∈ [−1, 1]^N (the env's Box action: B_n = a_n × B_on).
* Critic Q_φ(s, a); target y = r + γ (1 − done) Q_φ'(s', μ_θ'(s')); MSE loss.
* Actor loss −Q_φ(s, μ_θ(s)); Polyak targets φ' ← (1 − τ) φ' + τ φ (same for θ').
* Exploration: a = clip(μ_θ(s) + σ ξ, −1, 1), ξ ~ N(0, 1) (Gaussian, as CleanRL's ``ddpg``,
  instead of the original Ornstein–Uhlenbeck process); uniform random actions during the
  first ``learning_starts`` steps.

Defaults: Table I's γ = 0.95, lr 5e−4 (actor and critic), replay 10,000, batch 64. Ours:
hidden (64, 64) ReLU, τ = 0.005, σ = 0.1, 250 random warm-up steps (5 episodes), one update
per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from qhil.drivers import checks as check

from ._checks import AgentConfig, check_network_and_replay
from .base import SeededAgent
from .networks import SoftQ, mlp


@dataclass
class DDPGConfig(AgentConfig):
    """DDPG hyperparameters (Table I where it applies, else ours)."""

    hidden: tuple[int, ...] = (64, 64)   # ours
    gamma: float = 0.95
    lr: float = 5e-4                     # actor and critic, Adam
    tau: float = 0.005                   # ours: Polyak factor
    noise: float = 0.1                   # ours: exploration σ (normalised action units)
    buffer_size: int = 10_000
    batch_size: int = 64
    learning_starts: int = 250           # ours
    updates_per_step: float = 1          # ours; < 1 with many envs
    total_steps: int = 50_000
    seed: int = 0

    def __post_init__(self) -> None:
        check_network_and_replay(self)
        check.finite_float("gamma", self.gamma, 0.0, 1.0)
        check.finite_float("lr", self.lr, 0.0, 1.0, lo_open=True)
        check.finite_float("tau", self.tau, 0.0, 1.0, lo_open=True)
        check.finite_float("noise", self.noise, 0.0, 10.0)
        self._check_run()


class DDPG(SeededAgent):
    """Deterministic actor, one critic, target copies of both; actions in [−1, 1]^act_dim."""

    def __init__(self, obs_dim: int, act_dim: int, config: DDPGConfig | None = None,
                 reward_weights: Sequence[float] = (1.0, 1.0, 0.5)) -> None:
        self._setup(config or DDPGConfig(), reward_weights)
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        h = tuple(self.cfg.hidden)
        self.actor, self.actor_targ = mlp(self.obs_dim, h, self.act_dim), mlp(self.obs_dim, h, self.act_dim)
        self.q, self.q_targ = SoftQ(self.obs_dim, self.act_dim, h), SoftQ(self.obs_dim, self.act_dim, h)
        self.actor_targ.load_state_dict(self.actor.state_dict())
        self.q_targ.load_state_dict(self.q.state_dict())
        for p in list(self.actor_targ.parameters()) + list(self.q_targ.parameters()):
            p.requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=self.cfg.lr)
        self.q_opt = torch.optim.Adam(self.q.parameters(), lr=self.cfg.lr)
        self.n_updates = 0

    # -- acting ----------------------------------------------------------------------
    def mu(self, obs: torch.Tensor, target: bool = False) -> torch.Tensor:
        return torch.tanh((self.actor_targ if target else self.actor)(obs))

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """(n, act_dim) in [−1, 1]: μ(s), plus Gaussian exploration noise unless deterministic."""
        a = self.mu(torch.as_tensor(np.atleast_2d(obs).astype(np.float32))).numpy()
        if not deterministic:
            a = a + self.cfg.noise * self.rng.standard_normal(a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    def random_action(self, n: int) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=(n, self.act_dim)).astype(np.float32)

    def to_normalised(self, actions: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(actions, np.float32), -1.0, 1.0)


    # -- learning --------------------------------------------------------------------
    def update(self, batch: dict[str, np.ndarray], step: int) -> dict[str, float]:
        """One critic step, one actor step, then the Polyak update of both targets."""
        obs, act = torch.as_tensor(batch["obs"]), torch.as_tensor(batch["actions"])
        nxt = torch.as_tensor(batch["next_obs"])
        with torch.no_grad():
            y = torch.as_tensor(batch["rewards"]) + self.cfg.gamma * (1.0 - torch.as_tensor(batch["dones"])) \
                * self.q_targ(nxt, self.mu(nxt, target=True))
        q = self.q(obs, act)
        q_loss = F.mse_loss(q, y)
        self.q_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.q_opt.step()
        actor_loss = -self.q(obs, self.mu(obs)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        with torch.no_grad():
            for net, targ in ((self.actor, self.actor_targ), (self.q, self.q_targ)):
                for p, pt in zip(net.parameters(), targ.parameters()):
                    pt.mul_(1.0 - self.cfg.tau).add_(p, alpha=self.cfg.tau)
        self.n_updates += 1
        return {"loss": q_loss.item(), "actor_loss": actor_loss.item(), "q": q.detach().mean().item()}

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "actor_targ": self.actor_targ.state_dict(),
                "q": self.q.state_dict(), "q_targ": self.q_targ.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "q_opt": self.q_opt.state_dict(),
                "n_updates": self.n_updates, **self._rng_state()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for name in ("actor", "actor_targ", "q", "q_targ", "actor_opt", "q_opt"):
            getattr(self, name).load_state_dict(d[name])
        self.n_updates = int(d["n_updates"])
        self._load_rng_state(d)
