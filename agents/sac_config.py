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

from qhil.drivers import ValidationError
from qhil.drivers import checks as check
from qhil.drivers.backend import check_seed
from qhil.envs.charging import RewardWeight

from ._checks import check_network_and_replay

#: Largest entropy_decay (steps).
W_MEAN_MAX = 1e27
#: Options of SAC configs written before the env owned the reward weight (Eq. 12's schedule):
#: :meth:`SACConfig.from_dict` reads them out into ``reward_options`` (the env's schedule).
LEGACY_REWARD_KEYS = ("w_mean", "w_width")


@dataclass
class SACConfig:
    """SAC hyperparameters. Steps are environment steps (one per agent action).

    Every field is checked at construction (a :class:`~qhil.drivers.ValidationError` names it):
    ``gamma`` and ``polyak`` in [0, 1], ``lr`` in (0, 1], ``alpha_init`` > 0,
    ``entropy_decay`` > 0 and finite, entropies finite, ``total_steps`` and
    ``reference_steps`` ≥ 1, ``seed`` in [0, 2^63 − 1], the network and replay sizes ≥ 1.

    The reward weight w of Eq. (11) is the env's (:class:`~qhil.envs.charging.RewardWeight`):
    the agent knows nothing of it; the env's schedule is written for ``reference_steps`` too
    and scaled by :attr:`schedule_scale`.
    """

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
    reference_steps: int = 100_000   # run length the step schedules above are written for
    total_steps: int = 100_000       # length of this run
    seed: int = 0
    precision: str = "fp32"          # "bf16": layers in bfloat16 autocast for the updates (ours); "auto": probed

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValidationError("precision", f"precision must be 'fp32', 'bf16' or 'auto', got {self.precision!r}",
                                  "'fp32', 'bf16' or 'auto'")
        try:
            self.hidden = tuple(self.hidden)
        except TypeError:
            raise ValidationError("hidden", f"{self.hidden!r}",
                                  "a non-empty tuple of layer widths in 1..65536") from None
        check_network_and_replay(self)
        check.finite_float("lr", self.lr, 0.0, 1.0, lo_open=True)
        check.finite_float("gamma", self.gamma, 0.0, 1.0)
        check.finite_float("polyak", self.polyak, 0.0, 1.0)
        check.finite_float("alpha_init", self.alpha_init, 0.0, 1e6, lo_open=True)
        check.finite_float("entropy_start", self.entropy_start, -1e6, 1e6)
        check.finite_float("entropy_end", self.entropy_end, -1e6, 1e6)
        check.finite_float("entropy_decay", self.entropy_decay, 0.0, W_MEAN_MAX, lo_open=True)
        check.integer("reference_steps", self.reference_steps, 1, 10**12)
        check.integer("total_steps", self.total_steps, 1, 10**12)
        check_seed(self.seed)

    @property
    def schedule_scale(self) -> float:
        """total_steps / reference_steps: the factor step schedules written for
        ``reference_steps`` (the entropy decay; the env's reward weight) are stretched by."""
        return self.total_steps / self.reference_steps

    def scaled(self) -> "SACConfig":
        """The step schedule (entropy_decay) scaled to ``total_steps``; scale the env's
        reward weight with ``RewardWeight.scaled(cfg.schedule_scale)`` (before this call)."""
        s = self.schedule_scale
        return dataclasses.replace(self, entropy_decay=self.entropy_decay * s, reference_steps=self.total_steps)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], reward_options: dict[str, float] | None = None) -> "SACConfig":
        """From a table of options. The reward-weight options of older configs (``w_mean``,
        ``w_width``: :data:`LEGACY_REWARD_KEYS`) are checked and moved into ``reward_options``
        (when given; else dropped): the env's schedule, ``RewardWeight.from_options(**reward_options)``."""
        if not isinstance(d, dict):
            raise ValidationError("config", f"expected a table of SAC options, got {type(d).__name__}")
        legacy = {k: d[k] for k in LEGACY_REWARD_KEYS if k in d}
        if legacy:
            RewardWeight.from_options(**legacy)                    # checks them (names the option)
            d = {k: v for k, v in d.items() if k not in LEGACY_REWARD_KEYS}
            if reward_options is not None:
                reward_options.update(legacy)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValidationError(sorted(unknown)[0], f"unknown SAC option(s) {sorted(unknown)}",
                                  ", ".join(sorted(names)))
        d = dict(d)
        if "hidden" in d:
            h = d["hidden"]
            if isinstance(h, (str, bytes)) or not hasattr(h, "__iter__") or not all(
                    isinstance(x, int) and not isinstance(x, bool) for x in h):
                raise ValidationError("hidden", f"{h!r}", "a list of layer widths in 1..65536")
            d["hidden"] = tuple(h)
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path, reward_options: dict[str, float] | None = None,
                  **overrides: Any) -> "SACConfig":
        """From a JSON or TOML file (a flat table of the fields above), then ``overrides``;
        ``reward_options`` as in :meth:`from_dict`."""
        kind = "TOML" if str(path).endswith(".toml") else "JSON"
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError("config", f"cannot read {str(path)!r} ({exc})",
                                  "a readable JSON or TOML file") from None
        try:
            if kind == "TOML":
                import tomllib
                d = tomllib.loads(text)
                d = d.get("sac", d)
            else:
                d = json.loads(text)
        except ValueError as exc:
            raise ValidationError("config", f"{str(path)!r} is not valid {kind} ({exc})",
                                  "a flat table of SAC options") from None
        if not isinstance(d, dict):
            raise ValidationError("config", f"{str(path)!r} holds a {type(d).__name__}", "a table of SAC options")
        return cls.from_dict({**d, **{k: v for k, v in overrides.items() if v is not None}}, reward_options)

    # -- the schedule ------------------------------------------------------------------
    def target_entropy(self, step: int) -> float:
        """H̄(n) = end + (start − end) exp(−n/decay), nats on the normalised action."""
        return self.entropy_end + (self.entropy_start - self.entropy_end) * math.exp(-step / self.entropy_decay)
