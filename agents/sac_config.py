"""Hyperparameters of the SAC charging agent (:mod:`qhil.agents.sac`), without importing torch.

Defaults follow the public Dicke-battery SAC work (Erdman et al., PRL 2024) as listed in
issue 4; see :mod:`qhil.agents.sac` for what each one does.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qhil.envs.charging import scheduled_weight

from ._checks import check_network_and_replay


@dataclass
class SACConfig:
    """SAC hyperparameters. Steps are environment steps (one per agent action)."""

    hidden: tuple[int, ...] = (512, 256)
    batch_size: int = 256
    lr: float = 1e-3                 # Adam, actor, critics and temperature
    gamma: float = 0.993             # discount of the backup (Eq. 16)
    polyak: float = 0.995            # ρ of the target networks
    buffer_size: int = 180_000
    learning_starts: int = 5_000     # uniform-random warm-up steps before any update
    updates_per_step: float = 1.0    # gradient updates per environment step; < 1 with many envs (ours)
    alpha_init: float = 0.2          # initial temperature α (ours; tuned online, Eq. 18)
    entropy_start: float = 0.72      # target entropy H̄ at step 0 (nats, normalised action)
    entropy_end: float = -3.0        # …its limit
    entropy_decay: float = 30_000    # e-folding steps of H̄: end + (start − end) e^{−n/decay}
    w_mean: float = 40_000           # Eq. (12)
    w_width: float = 20_000          # Eq. (12)
    reference_steps: int = 100_000   # run length the step schedules above are written for
    total_steps: int = 100_000       # length of this run
    seed: int = 0
    precision: str = "fp32"          # "bf16": layers in bfloat16 autocast for the updates (ours)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        check_network_and_replay(self)

    def scaled(self) -> "SACConfig":
        """The step schedules (w_mean, w_width, entropy_decay) scaled to ``total_steps``."""
        s = self.total_steps / self.reference_steps
        return dataclasses.replace(self, w_mean=self.w_mean * s, w_width=self.w_width * s,
                                   entropy_decay=self.entropy_decay * s, reference_steps=self.total_steps)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SACConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SAC option(s) {sorted(unknown)}; allowed: {sorted(names)}")
        d = dict(d)
        if "hidden" in d:
            d["hidden"] = tuple(int(h) for h in d["hidden"])
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "SACConfig":
        """From a JSON or TOML file (a flat table of the fields above), then ``overrides``."""
        text = Path(path).read_text()
        if str(path).endswith(".toml"):
            import tomllib
            d = tomllib.loads(text)
            d = d.get("sac", d)
        else:
            d = json.loads(text)
        return cls.from_dict({**d, **{k: v for k, v in overrides.items() if v is not None}})

    # -- the two schedules --------------------------------------------------------------
    def reward_weight(self, step: int) -> float:
        """w(n) of Eq. (12)."""
        return scheduled_weight(step, self.w_mean, self.w_width)

    def target_entropy(self, step: int) -> float:
        """H̄(n) = end + (start − end) exp(−n/decay), nats on the normalised action."""
        return self.entropy_end + (self.entropy_start - self.entropy_end) * math.exp(-step / self.entropy_decay)
