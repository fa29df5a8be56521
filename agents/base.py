"""What the seed-004 agents (DQN, Bootstrapped DQN, PPO, DDPG) share, written once:
seeded set-up, fixed reward weights (α1, α2, α3), the random-generator part of a
checkpoint, and one clipped gradient step."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

from qhil.drivers import set_threads
from qhil.drivers.threads import default_threads


class SeededAgent:
    """Mix-in: ``_setup`` sets ``cfg``, torch's thread count and seed, ``rng`` and the
    reward weights; ``reward_weights`` returns them; ``_rng_state`` / ``_load_rng_state``
    carry the generators (and the config, for the resume check) through checkpoints."""

    cfg: Any

    def _setup(self, config: Any, reward_weights: Sequence[float]) -> None:
        self.cfg = config
        set_threads(torch=default_threads()["torch"])
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self._weights = np.asarray(reward_weights, np.float32)
        self.n_reward_terms = len(self._weights)

    def reward_weights(self, step: int) -> np.ndarray:
        """Weights of the env's reward terms (fixed: Eq. 45's α)."""
        return self._weights

    def _rng_state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                "config": self.cfg.to_dict()}

    def _load_rng_state(self, d: dict[str, Any]) -> None:
        self.rng.bit_generator.state = d["rng"]
        torch.set_rng_state(d["torch_rng"])


def gradient_step(opt: torch.optim.Optimizer, params: Iterable[torch.Tensor], loss: torch.Tensor,
                  grad_clip: float) -> None:
    """zero_grad, backward, clip the gradient norm at ``grad_clip``, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
    opt.step()
