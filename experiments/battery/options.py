"""What ``qhil reproduce`` is asked for: :class:`ReproduceOptions` (typed, frozen), and the
set-up presets that fill the options left unset."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from .records import ENVS, REGIMES

#: The paper's tables and figures, and our extensions.
TARGETS = ["table1", "table2", "tableS1", "figS1", "figS2", "history", "robust", "transfer"]
#: Targets that train (the others report on the Table 1 runs).
TRAINING = ["table1", "table2", "figS2", "history", "robust"]
#: Targets that read the Table 1 runs, so may name a set-up.
TABLE1_READERS = ["table1", "tableS1", "figS1", "transfer"]

#: ``--setup`` presets: values for the options left unset. ``train_args`` are ``qhil train`` flags
#: (the command line's; :attr:`ReproduceOptions.train_fields` holds what they set).
SETUPS: dict[str, dict[str, Any]] = {
    "paper": {"total_steps": 30_000, "windows": "", "train_args": "", "work_dir": None,
              "out_dir": Path("docs/results"), "grape_dir": None},
    "batched": {"total_steps": 56_000, "windows": "energies=28,first_order=28,second_order=actions:28",
                "train_args": "--n-envs 8 --updates-per-step 0.125 --learning-starts 4000 --precision auto",
                "work_dir": Path("runs/table1_batched"), "out_dir": Path("docs/results/table1_batched"),
                "grape_dir": Path("docs/results")},
}


def check_weights(text: str) -> str:
    """Fig. S2's weights: comma-separated ``scheduled`` or fixed w in [0, 1] (ValueError
    otherwise); the normalised text."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    for x in items if items else [""]:
        try:
            ok = x == "scheduled" or 0.0 <= float(x) <= 1.0          # NaN compares false
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{x!r} is neither 'scheduled' nor a number w in [0, 1]")
    return ",".join(items)


@dataclasses.dataclass(frozen=True)
class ReproduceOptions:
    """One ``qhil reproduce`` target and its options (after the set-up preset).

    train_fields: :class:`~.training.ChargingRunSpec` fields set for every run (``sac``: a dict
                  of SAC options over the defaults, or the ``config`` file's); ``train_args``
                  is the same as the command line's text (reported beside the tables)
    work_dir:     None = the target's default (runs/table1, or runs/extended for training targets
                  other than table1)
    """

    what: str = "table1"
    seeds: int = 5
    envs: tuple[str, ...] = tuple(ENVS)
    regimes: tuple[str, ...] = tuple(REGIMES)
    setup: str = "paper"
    total_steps: int = 30_000
    config: Path | None = None
    windows: str = ""
    train_fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train_args: str = ""
    work_dir: Path | None = None
    out_dir: Path = Path("docs/results")
    grape_dir: Path | None = None
    report_only: bool = False
    eval_every: int = 20
    test_random: int = 32
    weights: tuple[str, ...] = ("scheduled", "0.5", "0")
    history_window: int = 28
    history_regime: str = "energies"
    omega_range: tuple[float, float] = (0.5, 1.5)
    eval_random: int = 8
    robust_history: int = 0

    @property
    def work(self) -> Path:
        """The work folder (run store + checkpoints)."""
        if self.work_dir is not None:
            return Path(self.work_dir)
        return Path("runs/extended" if self.what in TRAINING and self.what != "table1" else "runs/table1")

    @property
    def grape(self) -> Path:
        """Where the GRAPE ceilings are."""
        return Path(self.grape_dir or self.out_dir)

    def scale_text(self) -> str:
        """The run scale, printed beside every table."""
        return (f"scale: {self.total_steps} environment steps per run, seeds 0..{self.seeds - 1} "
                f"(paper: 5 seeds at its full length){'; ' + self.train_args if self.train_args else ''}")
