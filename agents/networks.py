"""Every neural network the agents use, in one place.

* :func:`mlp` — Linear/ReLU layers, a linear output (SAC, DQN, DDPG, the precision probe).
* :func:`tanh_mlp` — Linear/tanh layers with orthogonal initialisation (PPO, CleanRL style).
* :class:`SoftQ` — Q(s, a) on the state and the (normalised) action: SAC's twin critics, DDPG's critic.
* :class:`Actor` — SAC's squashed Gaussian policy, a = tanh(ã) ∈ [−1, 1].
* :class:`MultiHeadQ` — a shared torso and K linear heads (Bootstrapped DQN).

Initialisation and parameter order are those of the per-agent copies they replace, so a
seeded run draws the same weights (``tests/test_networks.py`` pins the outputs).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["mlp", "tanh_mlp", "SoftQ", "Actor", "MultiHeadQ", "LOG_STD_MIN", "LOG_STD_MAX"]

#: Range of SAC's log σ (the actor squashes its raw output into it).
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def mlp(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    """n_in → hidden… (ReLU) → n_out (linear); PyTorch's default initialisation."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.ReLU()]
        n_in = h
    return nn.Sequential(*layers, nn.Linear(n_in, n_out))


def tanh_mlp(n_in: int, hidden: tuple[int, ...], n_out: int, out_gain: float) -> nn.Sequential:
    """n_in → hidden… (tanh) → n_out: orthogonal weights (gain √2, output ``out_gain``), zero biases."""
    layers: list[nn.Module] = []
    for h in hidden:
        lin = nn.Linear(n_in, h)
        nn.init.orthogonal_(lin.weight, 2 ** 0.5)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.Tanh()]
        n_in = h
    out = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(out.weight, out_gain)
    nn.init.zeros_(out.bias)
    return nn.Sequential(*layers, out)


class SoftQ(nn.Module):
    """Q_φ(s, a): state and normalised action in, one value out (float32, shape (batch,))."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.net = mlp(obs_dim + act_dim, hidden, 1)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1).float()


class Actor(nn.Module):
    """Squashed Gaussian policy: returns the normalised action a = tanh(ã) ∈ [−1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.body = mlp(obs_dim, hidden[:-1], hidden[-1])
        self.mu = nn.Linear(hidden[-1], act_dim)
        self.log_std = nn.Linear(hidden[-1], act_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.body(obs))
        log_std = torch.tanh(self.log_std(h).float())
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)
        return self.mu(h).float(), log_std.float()

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a ~ π(·|s) (reparametrised) and log π(a|s), including the tanh Jacobian."""
        mu, log_std = self(obs)
        std = log_std.exp()
        pre = mu + std * torch.randn_like(mu)                               # ã
        a = torch.tanh(pre)
        log_prob = (-0.5 * ((pre - mu) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
                    - torch.log(1 - a.pow(2) + 1e-6)).sum(-1)
        return a, log_prob

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self(obs)[0])


class MultiHeadQ(nn.Module):
    """Torso + K linear heads: Q(s) of shape (batch, K, n_actions)."""

    def __init__(self, obs_dim: int, hidden: tuple[int, ...], n_actions: int, heads: int) -> None:
        super().__init__()
        self.torso = nn.Sequential(mlp(obs_dim, hidden[:-1], hidden[-1]), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(hidden[-1], n_actions) for _ in range(heads))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h = self.torso(obs)
        return torch.stack([head(h) for head in self.heads], dim=1)
