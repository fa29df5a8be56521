"""Residual control: the policy corrects a reference protocol instead of choosing λ outright (issue 14).

Training from random on a device wastes shots on protocols far from any good one. With a
reference protocol λ^ref (GRAPE's, say) the agent's action a_k ∈ [−1, 1] is a bounded
correction:

    λ_k = clip(λ^ref_k + s a_k, λ_min, λ_max)          (units ω_0)

so a = 0 plays the reference exactly and |λ_k − λ^ref_k| ≤ s. :class:`ResidualActionEnv`
wraps a charging vector env (:class:`~qhil.envs.charging.ChargingVectorEnv`, or a
:class:`~qhil.envs.history.HistoryVectorEnv` around one); its action bounds are [−1, 1].
Everything else (observation, reward, ``info``, ``controls``) is the wrapped env's: the
observation's a_{k−1} entry and ``controls`` hold the λ actually played, not a.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from qhil.drivers import ValidationError
from qhil.drivers import checks as check

from .wrapper import VectorEnvWrapper


def check_reference(reference: Any, n_steps: int, low: float, high: float) -> np.ndarray:
    """``reference`` as a (K,) float array: K = ``n_steps`` finite values in [low, high]
    (units ω_0); a (K, 1) array is accepted. ValidationError naming ``residual`` otherwise."""
    return check.protocol("residual", reference, n_steps, (low, high))


def check_scale(scale: Any, low: float, high: float) -> float:
    """The correction's size s: a number in (0, λ_max − λ_min] (units ω_0)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(scale)) or not 0.0 < float(scale) <= (high - low) * (1 + 1e-12):
        raise ValidationError("residual_scale", f"{scale!r}", f"a number in (0, {high - low:g}] (units ω_0)")
    return float(scale)


class ResidualActionEnv(VectorEnvWrapper):
    """A charging vector env whose actions are corrections a ∈ [−1, 1] to ``reference``.

    env:       a :class:`~qhil.envs.charging.ChargingVectorEnv` (or a wrapper with its API:
               ``n_envs``, ``n_steps``, ``k``, ``action_low``/``action_high``, ``step``)
    reference: (K,) λ^ref, finite, within the env's action bounds (units ω_0)
    scale:     s in (0, λ_max − λ_min] (units ω_0): λ_k = clip(λ^ref_k + s a_k, λ_min, λ_max)

    ``action_low``/``action_high`` are −1 and 1 (what the agent chooses); reads and writes of
    anything else go to the wrapped env (``n_step``, ``controls``, ``reward_weights`` …).
    """

    _OWN = {"env", "reference", "scale", "action_low", "action_high"}

    def __init__(self, env: Any, reference: Sequence[float] | np.ndarray, scale: float) -> None:
        missing = [a for a in ("n_envs", "n_steps", "action_low", "action_high", "step", "reset") if not hasattr(env, a)]
        if missing:
            raise ValidationError("env", f"{type(env).__name__} lacks {', '.join(missing)}",
                                  "a ChargingVectorEnv (or an env with its API)")
        low, high = float(env.action_low), float(env.action_high)
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "reference", check_reference(reference, int(env.n_steps), low, high))
        object.__setattr__(self, "scale", check_scale(scale, low, high))
        object.__setattr__(self, "action_low", -1.0)
        object.__setattr__(self, "action_high", 1.0)

    def played(self, k: int, actions: np.ndarray) -> np.ndarray:
        """λ_k = clip(λ^ref_k + s a_k, λ_min, λ_max) for corrections ``actions`` (B,) at step k."""
        a = np.clip(np.asarray(actions, dtype=float), -1.0, 1.0)
        return np.clip(self.reference[k] + self.scale * a, self.env.action_low, self.env.action_high)

    def reset(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.env.reset()

    def step(self, actions: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                   np.ndarray, dict[str, np.ndarray]]:
        """Play λ_k = clip(λ^ref_k + s a_k) for the corrections ``actions`` (B,) in [−1, 1]."""
        n = int(self.env.n_envs)
        try:
            a = np.asarray(actions, dtype=float).reshape(n)
        except (TypeError, ValueError):
            raise ValidationError("actions", f"expected {n} number(s), got {actions!r}",
                                  f"shape ({n},) in [-1, 1]") from None
        if not np.all(np.isfinite(a)):
            raise ValidationError("actions", "contain non-finite values", "finite corrections in [-1, 1]")
        k = int(self.env.k)
        if k >= int(self.env.n_steps):
            raise RuntimeError("the episodes have ended (K steps taken): call reset()")
        return self.env.step(self.played(k, a))
