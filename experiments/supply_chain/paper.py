"""Seed 004's grids and reference numbers (the paper's Tables II–IV), beside the sweeps that
compare with them (:mod:`qhil.experiments.supply_chain.sweeps`). Returns are per episode of
50 steps; Fig. 7 (noise) has no numbers."""
from __future__ import annotations

#: The learning rates of Table II.
LRS = (5e-3, 2.5e-3, 1e-3, 5e-4, 2.5e-4, 1e-4)
#: The chain lengths of Table IV.
NS = (2, 3, 4, 5, 6)
#: Table III, rows 1–8: (α1, α2, α3).
WEIGHTS = ((0.5, 1.0, 0.5), (1.0, 1.0, 0.5), (1.0, 0.5, 0.5), (1.0, 1.0, 1.0),
           (2.0, 1.0, 0.5), (1.0, 2.0, 0.5), (0.1, 0.1, 0.1), (2.0, 2.0, 2.0))
#: Table II: best (max), avg @ lr 0.005, avg @ lr 0.0001.
PAPER_LR = {"ensemble": (20.51, 14.85, 20.51), "ppo": (20.20, 13.95, 19.61), "dqn": (19.60, 13.25, 18.91),
            "ddpg": (18.70, 12.35, 18.01), "bdqn": (18.20, 11.85, 17.51)}
#: Table II's other rows (ACKTR, ACER and the human baseline are not implemented here).
PAPER_LR_REFS = {"ACKTR": (19.10, 12.75, 18.41), "ACER": (17.80, 11.25, 16.91), "GRAPE": (13.00,) * 3,
                 "MPC": (12.20,) * 3, "Human": (13.10,) * 3}
#: Table III: mean, final 10, best.
PAPER_WEIGHTS = [(18.72, 19.10, 19.61), (20.12, 20.33, 20.51), (17.85, 18.10, 18.91), (17.43, 17.61, 18.41),
                 (16.95, 17.20, 18.01), (16.10, 16.35, 17.50), (14.95, 15.20, 16.80), (14.10, 14.45, 15.90)]
#: Table IV: mean (MA), final 10 (MA), best (max MA).
PAPER_N = {2: (18.53, 19.20, 19.61), 3: (19.49, 20.48, 20.51), 4: (17.74, 18.25, 18.91),
           5: (17.51, 17.85, 18.41), 6: (16.83, 17.30, 18.01)}
