"""A window of past observations for the partially observed charging regimes (seed 000, Sec. V (i)).

A memoryless policy π(a_k | o_k) cannot tell apart quantum states that give the same
readout o_k (aliasing, Sec. III A). :class:`HistoryVectorEnv` hands the policy the last
``window`` observations instead, newest last:

    õ_k = [o_{k−window+1}, …, o_{k−1}, o_k]          (window × D floats)

where each o includes the previous action a_{k−1} and the time t_k/τ, so the window also
carries the last ``window`` actions. Slots before the start of the episode are zeros
(zero-padding at reset). The physics, the reward and ``info`` are the wrapped env's.

With ``of="actions"`` the memory is the protocol played so far instead, beside the current
observation only:

    õ_k = [o_k, â_{k−window}, …, â_{k−1}]            (D + window floats)

with â = λ normalised to [−1, 1] (Eq. 14 inverted) and zeros before the start of the episode.
From the fixed initial state the noiseless dynamics are deterministic, so the actions fix
the state as well as the observation window does, at a fraction of the inputs
(second order, window 28: 96 inputs instead of 1,904).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from qhil.drivers import ValidationError

from .wrapper import VectorEnvWrapper

#: Largest window accepted (the episode has K = 28 steps by default).
MAX_WINDOW = 64
#: What the window can hold: past observations, or past actions beside the current observation.
WINDOW_KINDS = ("observations", "actions")


class HistoryVectorEnv(VectorEnvWrapper):
    """Stack the last ``window`` observations (or actions) of a charging vector env.

    env:     a :class:`~qhil.envs.charging.ChargingVectorEnv` (or anything with its API)
    window:  observations (or actions) kept, 1 ≤ window ≤ 64 (observations: 1 = the plain observation)
    of:      "observations" (default) or "actions" (the current observation + the last
             ``window`` actions, normalised to [−1, 1])

    Everything the training loop reads or sets (``n_envs``, ``n_steps``, ``n_step``,
    ``w_mean``, ``w_width``, ``weight``, ``controls``, ``battery`` …) is the wrapped env's.
    """

    _OWN = {"env", "window", "of", "obs_dim", "obs_low", "obs_high", "_stack", "base_dim"}

    def __init__(self, env: Any, window: int, of: str = "observations") -> None:
        if isinstance(window, bool) or not (isinstance(window, (int, np.integer)) and 1 <= window <= MAX_WINDOW):
            raise ValidationError("window", f"{window!r}", f"an integer in [1, {MAX_WINDOW}]")
        if of not in WINDOW_KINDS:
            raise ValidationError("of", f"{of!r}", ", ".join(WINDOW_KINDS))
        missing = [a for a in ("obs_dim", "obs_low", "obs_high", "n_envs", "reset", "step", "normalise", "controls")
                   if not hasattr(env, a)]
        if missing:
            raise ValidationError("env", f"{type(env).__name__} lacks {', '.join(missing)}",
                                  "a ChargingVectorEnv (or an env with its API)")
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "window", int(window))
        object.__setattr__(self, "of", of)
        object.__setattr__(self, "base_dim", int(env.obs_dim))
        if of == "actions":
            object.__setattr__(self, "obs_dim", int(env.obs_dim) + int(window))
            lo = np.concatenate([env.obs_low, np.full(window, -1.0)]).astype(np.float32)
            hi = np.concatenate([env.obs_high, np.full(window, 1.0)]).astype(np.float32)
        else:
            object.__setattr__(self, "obs_dim", int(window) * int(env.obs_dim))
            # padding slots are zeros: the bounds must admit 0
            lo = np.minimum(np.tile(env.obs_low, window), 0.0).astype(np.float32)
            hi = np.maximum(np.tile(env.obs_high, window), 0.0).astype(np.float32)
        object.__setattr__(self, "obs_low", lo)
        object.__setattr__(self, "obs_high", hi)
        object.__setattr__(self, "_stack", np.zeros((env.n_envs, self.obs_dim), np.float32))

    def _push(self, obs: np.ndarray) -> np.ndarray:
        if self.of == "actions":
            played = self.env.normalise(self.env.controls[:, -self.window:])   # (B, ≤ window)
            self._stack[:, :self.base_dim] = obs
            self._stack[:, self.base_dim:] = 0.0
            if played.shape[1]:
                self._stack[:, -played.shape[1]:] = played
            return self._stack.copy()
        d = self.base_dim
        self._stack[:, :-d] = self._stack[:, d:]
        self._stack[:, -d:] = obs
        return self._stack.copy()

    def reset(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Reset the wrapped env; the window is zeros but for the k = 0 observation (last slot)."""
        obs, info = self.env.reset()
        self._stack[:] = 0.0
        return self._push(obs), info

    def step(self, actions: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                   np.ndarray, dict[str, np.ndarray]]:
        obs, reward, done, trunc, info = self.env.step(actions)
        return self._push(obs), reward, done, trunc, info
