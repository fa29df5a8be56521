"""Option checks shared by the agent configs; free of torch, so configs load without it."""
from __future__ import annotations

import dataclasses
from typing import Any

from qhil.drivers import checks as check
from qhil.drivers.backend import check_seed


def check_network_and_replay(cfg: Any) -> None:
    """Validate the options every replay agent config has: ``hidden`` (non-empty layer
    widths), ``batch_size``, ``buffer_size``, ``learning_starts``, ``updates_per_step`` and,
    where present, ``target_update``. Raises ValidationError naming the option."""
    hidden = tuple(cfg.hidden)
    if not hidden or not all(isinstance(h, int) and 1 <= h <= 65_536 for h in hidden):
        raise check.ValidationError("hidden", f"{hidden!r}", "a non-empty tuple of layer widths in 1..65536")
    check.integer("buffer_size", cfg.buffer_size, 1, 10**9)
    check.integer("batch_size", cfg.batch_size, 1, cfg.buffer_size)
    check.integer("learning_starts", cfg.learning_starts, 0, 10**9)
    check.finite_float("updates_per_step", cfg.updates_per_step, 0.0, 1000.0, lo_open=True)
    if hasattr(cfg, "target_update"):
        check.integer("target_update", cfg.target_update, 1, 10**9)


class AgentConfig:
    """Mix-in of the agent configs (dataclasses with ``hidden``, ``total_steps`` and ``seed``)."""

    def _check_run(self) -> None:
        """``total_steps`` in [1, 10^12], ``seed`` in [0, 2^63 − 1] (ValidationError naming it)."""
        check.integer("total_steps", self.total_steps, 1, 10**12)     # type: ignore[attr-defined]
        check_seed(self.seed)                                          # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON values (``hidden`` a list)."""
        d = dataclasses.asdict(self)                                   # type: ignore[call-overload]
        d["hidden"] = list(self.hidden)                                # type: ignore[attr-defined]
        return d
