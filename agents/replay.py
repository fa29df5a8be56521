"""One replay buffer for every off-policy agent (SAC, DDPG, DQN).

Transitions (s, a, [reward terms], s', done) live in preallocated numpy rings. Rewards are
NOT stored as one number: each transition keeps its reward *terms* (for the Dicke battery
[ΔE, Δℰ]) and the agent combines them with the weights in force when a batch is sampled,
so a transition stored at w ≈ 1 is re-weighted later (Eq. 11 with Eq. 12's schedule).
"""
from __future__ import annotations

from typing import Any

import numpy as np


class ReplayBuffer:
    """A ring of ``capacity`` transitions.

    obs_dim:    observation length D
    act_dim:    action length (continuous) — actions stored as float32
    n_terms:    reward terms per transition (1 for a plain scalar reward)
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int = 1, n_terms: int = 1) -> None:
        if capacity < 1:
            raise ValueError("capacity must be ≥ 1")
        self.capacity, self.obs_dim, self.act_dim, self.n_terms = int(capacity), obs_dim, act_dim, n_terms
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, act_dim), np.float32)
        self.terms = np.zeros((capacity, n_terms), np.float32)
        self.dones = np.zeros(capacity, np.float32)
        self.pos = 0       # next slot to write
        self.size = 0      # slots filled

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, actions: np.ndarray, terms: np.ndarray, next_obs: np.ndarray,
            dones: np.ndarray) -> None:
        """Add a batch of B transitions (leading axis B)."""
        b = len(obs)
        idx = (self.pos + np.arange(b)) % self.capacity
        self.obs[idx] = obs
        self.next_obs[idx] = next_obs
        self.actions[idx] = np.asarray(actions, np.float32).reshape(b, self.act_dim)
        self.terms[idx] = np.asarray(terms, np.float32).reshape(b, self.n_terms)
        self.dones[idx] = dones
        self.pos = int((self.pos + b) % self.capacity)
        self.size = int(min(self.size + b, self.capacity))

    def sample(self, batch_size: int, rng: np.random.Generator,
               weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """A uniform batch. ``weights`` (n_terms,) combine the reward terms now:
        reward = terms @ weights (default: their sum)."""
        idx = rng.integers(0, self.size, size=batch_size)
        w = np.ones(self.n_terms, np.float32) if weights is None else np.asarray(weights, np.float32)
        return {"obs": self.obs[idx], "actions": self.actions[idx], "rewards": self.terms[idx] @ w,
                "next_obs": self.next_obs[idx], "dones": self.dones[idx]}

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {"capacity": self.capacity, "pos": self.pos, "size": n, "obs": self.obs[:n].copy(),
                "next_obs": self.next_obs[:n].copy(), "actions": self.actions[:n].copy(),
                "terms": self.terms[:n].copy(), "dones": self.dones[:n].copy()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d["capacity"] != self.capacity:
            raise ValueError(f"checkpoint buffer capacity {d['capacity']} ≠ {self.capacity}")
        n = d["size"]
        for name in ("obs", "next_obs", "actions", "terms", "dones"):
            getattr(self, name)[:n] = d[name]
        self.pos, self.size = int(d["pos"]), int(n)
