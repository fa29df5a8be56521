"""Checkpoint selection across disorder realisations (seed 000, Table 2 protocol).

"We train the agent on Env1 and periodically evaluate it on Env1–Env3 without retraining.
We select, for each seed, the checkpoint that maximizes the mean terminal ergotropy across
Env1–Env3" (Sec. IV C a). :class:`CrossEnvSelector` does exactly that as the ``stop``
callback of :func:`~qhil.agents.training.train_off_policy`: every ``every`` episodes it
plays the deterministic policy (mean action) once on each evaluation env, records the
terminal ergotropies, and keeps a copy of the policy whenever their mean is the best so far.
The evaluation envs are separate objects: training is not affected (the deterministic
policy draws no random numbers).

For domain-randomised training, select on *validation* realisations and report on others
(:meth:`CrossEnvSelector.evaluate_on`), so that the reported numbers are held out.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .protocols import figures_of
from .training import deterministic_episode


def select_best(history: Sequence[dict[str, Any]]) -> int:
    """Index of the evaluation with the largest ``mean`` (the first one on ties); −1 if empty."""
    if not history:
        return -1
    means = np.array([h["mean"] for h in history], dtype=float)
    return int(np.argmax(means))


def score_policy(agent: Any, envs: dict[str, Any]) -> dict[str, float]:
    """Terminal ergotropy (units ω_0) of ``agent``'s deterministic policy on each env
    (vector envs with n_envs = 1; the agent is not changed)."""
    return {name: float(deterministic_episode(agent, env)[figures_of(env)[1]]) for name, env in envs.items()}


def load_policy(checkpoint: str | Path, obs_dim: int, action_low: float, action_high: float) -> Any:
    """The SAC agent of a training checkpoint (its own config and weights), to evaluate.
    ``obs_dim`` must be the observation size it was trained on (window included)."""
    from .sac import SAC, SACConfig
    blob = torch.load(checkpoint, weights_only=False)
    agent = SAC(obs_dim, action_low, action_high, SACConfig.from_dict(blob["agent"]["config"]))
    try:
        agent.load_state_dict(blob["agent"])
    except RuntimeError as e:
        raise ValueError(f"checkpoint {checkpoint}: its networks do not fit obs_dim = {obs_dim} "
                         f"(a different regime or observation window?): {str(e).splitlines()[0]}") from None
    return agent


class CrossEnvSelector:
    """Periodic deterministic evaluation on several envs and best-mean policy selection.

    agent:   an agent with ``act(obs, deterministic=True)`` and an ``actor`` torch module (SAC)
    envs:    name → vector env with n_envs = 1 (e.g. ``make_charging_env(e, regime, weight=0.0)``)
    every:   episodes between evaluations (≥ 1); also evaluated at the first call
    path:    optional file (torch) holding the history and the policy snapshots, rewritten at
             every evaluation; a resumed run loads it and drops evaluations made after the
             checkpoint it resumes from
    then:    an optional further stop criterion, called after the evaluation
    """

    def __init__(self, agent: Any, envs: dict[str, Any], every: int = 20, path: str | Path | None = None,
                 then: Callable[[Any], bool] | None = None) -> None:
        if not envs:
            raise ValueError("envs: give at least one evaluation environment")
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every: {every!r} (allowed: an integer ≥ 1, episodes between evaluations)")
        self.agent, self.envs, self.every, self.then = agent, dict(envs), every, then
        self.path = None if path is None else Path(path)
        self.history: list[dict[str, Any]] = []
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}   # episode → actor state (improvements)
        self._last: int | None = None
        self._pruned = False
        if self.path is not None and self.path.exists():
            blob = torch.load(self.path, weights_only=False)
            self.history, self.snapshots = blob["history"], blob["snapshots"]

    # -- the callback ----------------------------------------------------------------------
    def __call__(self, state: Any) -> bool:
        if not self._pruned:        # a resumed run replays the episodes after its checkpoint
            self.prune(state.episode)
            self._pruned = True
        if self._last is None and self.history:
            self._last = self.history[-1]["episode"]
        if self._last is None or state.episode - self._last >= self.every:
            self.record(state.episode, state.step)
        return bool(self.then(state)) if self.then is not None else False

    def prune(self, episode: int) -> None:
        """Forget evaluations made after ``episode`` (and their snapshots)."""
        self.history = [h for h in self.history if h["episode"] <= episode]
        self.snapshots = {e: s for e, s in self.snapshots.items() if e <= episode}

    def record(self, episode: int, step: int) -> dict[str, Any]:
        """Evaluate now; keep a policy snapshot if the mean is the best so far."""
        erg = self.evaluate_on(self.envs)
        entry = {"episode": int(episode), "step": int(step), "ergotropy": erg,
                 "mean": float(np.mean(list(erg.values())))}
        best = self.best()
        if best is None or entry["mean"] > best["mean"]:
            self.snapshots[entry["episode"]] = copy.deepcopy(self.agent.actor.state_dict())
        self.history.append(entry)
        self._last = entry["episode"]
        self._save()
        return entry

    def evaluate_on(self, envs: dict[str, Any]) -> dict[str, float]:
        """Terminal ergotropy (units ω_0) of the current deterministic policy on each env."""
        return score_policy(self.agent, envs)

    # -- results ---------------------------------------------------------------------------
    def best(self) -> dict[str, Any] | None:
        """The selected evaluation (largest mean), or None before any."""
        i = select_best(self.history)
        return None if i < 0 else self.history[i]

    def restore_best(self) -> dict[str, Any] | None:
        """Load the selected policy into the agent's actor; returns its evaluation entry."""
        best = self.best()
        if best is not None:
            self.agent.actor.load_state_dict(self.snapshots[best["episode"]])
        return best

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            torch.save({"history": self.history, "snapshots": self.snapshots}, f)
        os.replace(tmp, self.path)
