"""What an agent (and an environment) offers the training loop, as :class:`typing.Protocol`s.

:func:`qhil.agents.training.train` asks ``isinstance(agent, OffPolicyAgent)`` and the like
instead of probing attributes; :func:`check_agent` refuses an object that is no
:class:`Agent`, or one that can learn neither from replay nor from its own rollout, with a
:class:`~qhil.drivers.ValidationError` naming what it lacks.

* :class:`Agent` — every agent: ``cfg`` (with ``total_steps``), ``rng``, ``act``,
  ``state_dict`` / ``load_state_dict``.
* :class:`OffPolicyAgent` — learns from the shared replay buffer: ``act_dim``,
  ``random_action`` (warm-up), ``to_normalised`` (the stored action row), ``update(batch, step)``;
  its ``cfg`` holds ``batch_size``, ``buffer_size``, ``learning_starts``, ``updates_per_step``.
* :class:`Observer` — ``observe(...)`` after every environment step (ε decay; on-policy
  agents such as PPO learn here). :class:`OnPolicyAgent` = Agent + Observer.
* :class:`EpisodeAware` — ``begin_episode()`` (Bootstrapped DQN draws its head).
* :class:`RewardWeighted` — ``reward_weights(step)``: the weights of ``info["reward_terms"]``.
  The env owns them (the charging env's w of Eq. 11, the supply chain's α of Eq. 45); the loop
  gives them to the replay buffer and to ``observe``. (Seed 004's agents keep the weights they
  are built with only as a default for use outside the loop.)
* :class:`ReportsPrecision`, :class:`MixtureAgent` — what a run records when the agent has it
  (the precision chosen; the ensemble's ω_dqn).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from qhil.drivers import ValidationError

__all__ = ["Agent", "OffPolicyAgent", "OnPolicyAgent", "Observer", "EpisodeAware", "RewardWeighted",
           "ReportsPrecision", "MixtureAgent", "Configured", "DeclaresFigures", "check_agent", "figures_of"]


@runtime_checkable
class Agent(Protocol):
    """Acts on a batch of observations and checkpoints itself."""

    cfg: Any
    rng: np.random.Generator

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """(n, D) observations → (n, act_dim) actions, env units."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, d: dict[str, Any]) -> None: ...


@runtime_checkable
class OffPolicyAgent(Agent, Protocol):
    """An agent trained from replay batches."""

    act_dim: int

    def random_action(self, n: int) -> np.ndarray: ...

    def to_normalised(self, actions: np.ndarray) -> np.ndarray: ...

    def update(self, batch: dict[str, np.ndarray], step: int) -> dict[str, float]: ...


@runtime_checkable
class Observer(Protocol):
    """Told of every environment step; may return statistics (e.g. of an on-policy update)."""

    def observe(self, obs: np.ndarray, actions: np.ndarray, terms: np.ndarray, next_obs: np.ndarray,
                dones: np.ndarray, step: int, weights: np.ndarray | None = None) -> dict[str, float] | None:
        """``weights``: the env's weights of ``terms`` at ``step`` (the reward is terms · weights)."""
        ...


@runtime_checkable
class OnPolicyAgent(Agent, Observer, Protocol):
    """An agent that learns from its own rollout in :meth:`observe` (no replay buffer)."""


@runtime_checkable
class EpisodeAware(Protocol):
    def begin_episode(self) -> None: ...


@runtime_checkable
class RewardWeighted(Protocol):
    """Gives the weights of the reward terms at an environment step."""

    def reward_weights(self, step: int) -> np.ndarray: ...


@runtime_checkable
class ReportsPrecision(Protocol):
    precision_info: dict[str, Any]


@runtime_checkable
class MixtureAgent(Protocol):
    """A mixture of agents (the ensemble): ``omega`` is the first one's weight."""

    omega: float


@runtime_checkable
class DeclaresFigures(Protocol):
    """A vector env naming its figures of merit in ``info`` (per env) and the one an episode is
    judged by (its terminal value): the charging env's ``("energy", "ergotropy")``, ``"ergotropy"``."""

    figures: tuple[str, ...]
    objective: str


@runtime_checkable
class Configured(Protocol):
    """A config that serialises itself (checkpoints compare it on resume)."""

    def to_dict(self) -> dict[str, Any]: ...


#: What a vector env that declares nothing is read as: the charging env's figures.
DEFAULT_FIGURES, DEFAULT_OBJECTIVE = ("energy", "ergotropy"), "ergotropy"


def figures_of(env: Any) -> tuple[tuple[str, ...], str]:
    """(figures, objective) a vector env declares (:class:`DeclaresFigures`), else the defaults."""
    if isinstance(env, DeclaresFigures):
        return tuple(env.figures), str(env.objective)
    return DEFAULT_FIGURES, DEFAULT_OBJECTIVE


_AGENT = ("cfg", "rng", "act", "state_dict", "load_state_dict")
_OFF_POLICY = ("act_dim", "random_action", "to_normalised", "update")


def check_agent(agent: Any) -> Any:
    """Return ``agent`` if it is an :class:`Agent` that learns from replay (:class:`OffPolicyAgent`)
    or in :meth:`Observer.observe`; else a ValidationError naming what it lacks."""
    missing = [m for m in _AGENT if not hasattr(agent, m)]
    if missing or not isinstance(agent, Agent):
        raise ValidationError("agent", f"{type(agent).__name__} lacks {', '.join(missing) or 'callable members'}",
                              "an Agent: cfg, rng, act(obs, deterministic), state_dict(), load_state_dict(d) "
                              "(qhil.agents.protocols)")
    if not isinstance(agent, (OffPolicyAgent, Observer)):
        lacks = [m for m in _OFF_POLICY if not hasattr(agent, m)]
        raise ValidationError("agent", f"{type(agent).__name__} learns neither from replay (lacks "
                              f"{', '.join(lacks)}) nor on-policy (lacks observe)",
                              "an OffPolicyAgent (act_dim, random_action, to_normalised, update) "
                              "or an OnPolicyAgent (observe)")
    return agent
