"""The DQN + PPO ensemble of seed 004, Eq. (46): π_ens(a|s) = ω_dqn π_dqn(a|s) + (1 − ω_dqn) π_ppo(a|s).

Read top to bottom: the hyperparameters, the weight ω_dqn from the two agents' recent returns,
then the agent.

* π_dqn is the Double DQN's ε-greedy distribution, (1 − ε)·1[a = argmax Q] + ε/|A|; π_ppo is
  PPO's categorical policy. Acting samples a ~ π_ens, which is the same as first choosing the
  DQN with probability ω_dqn (else PPO) and then sampling that agent's action; we remember
  which agent chose each step.
* ω_dqn "depends on each agent's cumulative rewards" (Sec. III-C3; the rule is not given).
  Ours: each agent's recent return R_k is an exponential moving average, over episodes, of the
  mean reward of the steps that agent chose, times the episode length (a return-equivalent);
  ω_dqn = exp(R_dqn/τ) / (exp(R_dqn/τ) + exp(R_ppo/τ)) (a softmax with temperature τ, in
  return units), kept inside [ω_min, 1 − ω_min] so both agents keep acting and being measured.
  It starts at 1/2.
* Both agents learn from every step the ensemble plays. The DQN is off-policy: its transitions
  go to the shared replay buffer as usual. PPO's rollout stores the *behaviour* probability
  π_ens(a|s), so its ratio in Eq. (50) is π_θ/π_ens (an importance-weighted clipped surrogate);
  GAE uses PPO's own value function (ours).
* The deterministic policy (evaluation) plays argmax_a π_ens(a|s) with ε = 0.

Defaults (ours): the sub-agents' defaults (Table I for the DQN), τ = 5 return units,
EMA factor 0.1 per episode, ω_min = 0.05. ``lr`` sets both sub-agents' learning rates.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from qhil.drivers import checks as check
from qhil.drivers.backend import check_seed

from .dqn import DQN, DQNConfig
from .ppo import PPO, PPOConfig


@dataclass
class EnsembleConfig:
    """The ensemble's own settings (ours) and its two sub-agents' configs."""

    dqn: DQNConfig = field(default_factory=DQNConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    temperature: float = 5.0      # τ of the softmax over recent returns (return units)
    ema: float = 0.1              # weight of the newest episode in each recent return
    omega_min: float = 0.05       # ω_dqn ∈ [ω_min, 1 − ω_min]
    episode_steps: int = 50       # T, to turn a mean step reward into a return (Table I)
    seed: int = 0

    def __post_init__(self) -> None:
        check.finite_float("temperature", self.temperature, 0.0, 1e9, lo_open=True)
        check.finite_float("ema", self.ema, 0.0, 1.0, lo_open=True)
        check.finite_float("omega_min", self.omega_min, 0.0, 0.5)
        check.integer("episode_steps", self.episode_steps, 1, 1_000_000)
        if not isinstance(self.dqn, DQNConfig):
            raise check.ValidationError("dqn", f"expected a DQNConfig, got {type(self.dqn).__name__}")
        if not isinstance(self.ppo, PPOConfig):
            raise check.ValidationError("ppo", f"expected a PPOConfig, got {type(self.ppo).__name__}")
        check_seed(self.seed)

    # the training loop reads the replay settings from here (the DQN's)
    @property
    def batch_size(self) -> int:
        return self.dqn.batch_size

    @property
    def buffer_size(self) -> int:
        return self.dqn.buffer_size

    @property
    def learning_starts(self) -> int:
        return self.dqn.learning_starts

    @property
    def updates_per_step(self) -> float:
        return self.dqn.updates_per_step

    @property
    def total_steps(self) -> int:
        return self.dqn.total_steps

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("dqn", "ppo")}
        sub = {k: {n: v for n, v in c.to_dict().items() if n != "total_steps"}   # a run may be extended
               for k, c in (("dqn", self.dqn), ("ppo", self.ppo))}
        return d | sub | {"total_steps": self.total_steps}

    @classmethod
    def with_lr(cls, lr: float, seed: int = 0, total_steps: int = 50_000, **kw: Any) -> "EnsembleConfig":
        """Both sub-agents at learning rate ``lr`` (and seed, total steps)."""
        return cls(dqn=DQNConfig(lr=lr, seed=seed, total_steps=total_steps),
                   ppo=PPOConfig(lr=lr, seed=seed + 1, total_steps=total_steps), seed=seed, **kw)


def ensemble_weight(ret_dqn: float, ret_ppo: float, temperature: float = 5.0, omega_min: float = 0.05) -> float:
    """ω_dqn = softmax(R_dqn/τ, R_ppo/τ)_dqn, clipped to [ω_min, 1 − ω_min]."""
    z = (ret_dqn - ret_ppo) / temperature
    w = 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
    return float(min(max(w, omega_min), 1.0 - omega_min))


class Ensemble:
    """Eq. (46) over a :class:`~qhil.agents.dqn.DQN` and a :class:`~qhil.agents.ppo.PPO`
    sharing one observation and action space (discrete)."""

    act_dim = 1

    def __init__(self, obs_dim: int, n_actions: int, config: EnsembleConfig | None = None,
                 reward_weights: Sequence[float] = (1.0, 1.0, 0.5)) -> None:
        self.cfg = config or EnsembleConfig()
        self.dqn = DQN(obs_dim, n_actions, self.cfg.dqn, reward_weights)
        self.ppo = PPO(obs_dim, n_actions, self.cfg.ppo, reward_weights)
        self.rng = np.random.default_rng(self.cfg.seed + 7)
        self.n_actions, self.n_reward_terms = int(n_actions), self.dqn.n_reward_terms
        self.recent = {"dqn": None, "ppo": None}     # recent returns R_k (None until measured)
        self.omega = 0.5
        self._chosen: np.ndarray | None = None        # True where the DQN chose; None: uniform warm-up
        self._sums = {"dqn": [0.0, 0], "ppo": [0.0, 0]}   # reward sum and steps, this episode

    # -- the mixture -----------------------------------------------------------------
    def dqn_probs(self, obs: np.ndarray, eps: float | None = None) -> np.ndarray:
        """π_dqn(·|s): ε-greedy over Q, (n, n_actions)."""
        eps = self.dqn.eps if eps is None else eps
        greedy = self.dqn.q_values(obs).argmax(-1)
        p = np.full((len(greedy), self.n_actions), eps / self.n_actions)
        p[np.arange(len(greedy)), greedy] += 1.0 - eps
        return p

    def probs(self, obs: np.ndarray, eps: float | None = None) -> np.ndarray:
        """π_ens(·|s) = ω π_dqn + (1 − ω) π_ppo, (n, n_actions)."""
        return self.omega * self.dqn_probs(obs, eps) + (1.0 - self.omega) * self.ppo.probs(obs)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """(n, 1): argmax π_ens with ε = 0, or a ~ π_ens (remembering which agent chose)."""
        obs = np.atleast_2d(obs)
        if deterministic:
            return self.probs(obs, eps=0.0).argmax(-1)[:, None]
        self._chosen = self.rng.random(len(obs)) < self.omega
        return np.where(self._chosen[:, None], self.dqn.act(obs), self.ppo.act(obs))

    def random_action(self, n: int) -> np.ndarray:
        """Uniform actions (the replay warm-up): credited to neither agent."""
        self._chosen = None
        return self.dqn.random_action(n)

    def to_normalised(self, actions: np.ndarray) -> np.ndarray:
        return self.dqn.to_normalised(actions)

    def reward_weights(self, step: int) -> np.ndarray:
        return self.dqn.reward_weights(step)

    # -- learning --------------------------------------------------------------------
    def update(self, batch: dict[str, np.ndarray], step: int) -> dict[str, float]:
        """A replay batch goes to the DQN (PPO learns from its rollout in :meth:`observe`)."""
        return self.dqn.update(batch, step) | {"omega": self.omega}

    def observe(self, obs: np.ndarray, actions: np.ndarray, terms: np.ndarray, next_obs: np.ndarray,
                dones: np.ndarray, step: int, weights: np.ndarray | None = None) -> dict[str, float]:
        """After each step: ε decay, PPO's rollout (behaviour = π_ens), the credit of this step's
        reward (``terms · weights``: the env's, as the loop gives them; default the agent's) to
        the agent that chose it, and at an episode's end the new ω_dqn."""
        a = np.asarray(actions).reshape(-1).astype(int)
        if self._chosen is None:                      # warm-up: the behaviour was uniform
            behaviour = np.full(len(a), -math.log(self.n_actions))
        else:
            behaviour = np.log(self.probs(obs)[np.arange(len(a)), a] + 1e-12)
        self.dqn.observe(obs, actions, terms, next_obs, dones, step)
        stats = self.ppo.observe(obs, actions, terms, next_obs, dones, step, behaviour_logp=behaviour,
                                 weights=weights) or {}
        r = np.asarray(terms, float) @ (self.reward_weights(step) if weights is None else weights)
        for i in range(len(a) if self._chosen is not None else 0):
            k = "dqn" if self._chosen[i] else "ppo"
            self._sums[k][0] += float(r[i])
            self._sums[k][1] += 1
        if np.all(dones):
            self.end_episode()
        return stats | {"omega": self.omega}

    def end_episode(self) -> None:
        """Fold this episode's per-agent mean step reward into the recent returns; new ω_dqn."""
        for k, (total, n) in self._sums.items():
            if n > 0:
                r = total / n * self.cfg.episode_steps
                old = self.recent[k]
                self.recent[k] = r if old is None else (1 - self.cfg.ema) * old + self.cfg.ema * r
        if self.recent["dqn"] is not None and self.recent["ppo"] is not None:
            self.omega = ensemble_weight(self.recent["dqn"], self.recent["ppo"], self.cfg.temperature,
                                         self.cfg.omega_min)
        self._sums = {"dqn": [0.0, 0], "ppo": [0.0, 0]}

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"dqn": self.dqn.state_dict(), "ppo": self.ppo.state_dict(), "recent": dict(self.recent),
                "omega": self.omega, "sums": {k: list(v) for k, v in self._sums.items()},
                "rng": self.rng.bit_generator.state, "config": self.cfg.to_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.dqn.load_state_dict(d["dqn"])
        self.ppo.load_state_dict(d["ppo"])
        self.recent, self.omega = dict(d["recent"]), float(d["omega"])
        self._sums = {k: list(v) for k, v in d["sums"].items()}
        self.rng.bit_generator.state = d["rng"]
