"""Seed 000's reference numbers (Erdman et al.), beside the helpers that put ours next to them.

Tables map a cell to (mean, 95 % CI half-width) over the paper's 5 seeds; ergotropies in ω_0,
T_0.9 in training episodes.
"""
from __future__ import annotations

#: Table 1 (env, regime): best terminal ergotropy explored in training.
TABLE1 = {
    ("env1", "full_state"): (4.0445, 0.0323), ("env2", "full_state"): (2.8357, 0.0235),
    ("env3", "full_state"): (3.3777, 0.0235),
    ("env1", "energies"): (3.8496, 0.0459), ("env2", "energies"): (2.6757, 0.0902),
    ("env3", "energies"): (3.0938, 0.1648),
    ("env1", "first_order"): (3.8984, 0.0326), ("env2", "first_order"): (2.6548, 0.0516),
    ("env3", "first_order"): (3.0585, 0.0519),
    ("env1", "second_order"): (3.9683, 0.0139), ("env2", "second_order"): (2.7260, 0.0575),
    ("env3", "second_order"): (3.1966, 0.0397),
}
#: Table 2 (regime, env): trained on Env1, checkpoint selected by the mean over Env1–3.
TABLE2 = {
    ("full_state", "env1"): (4.0024, 0.0246), ("full_state", "env2"): (2.6178, 0.1222),
    ("full_state", "env3"): (3.1248, 0.0905),
    ("energies", "env1"): (3.4844, 0.3115), ("energies", "env2"): (0.9452, 0.6414),
    ("energies", "env3"): (1.9187, 0.7559),
    ("first_order", "env1"): (3.6658, 0.1750), ("first_order", "env2"): (0.9623, 0.6043),
    ("first_order", "env3"): (2.2375, 0.7476),
    ("second_order", "env1"): (3.8776, 0.0537), ("second_order", "env2"): (1.7048, 0.8825),
    ("second_order", "env3"): (2.7069, 0.2357),
}
#: Table S1 (env, regime): T_0.9 in episodes.
TABLE_S1 = {
    ("env1", "full_state"): (948.8, 166.6), ("env2", "full_state"): (1474.8, 374.0),
    ("env3", "full_state"): (3209.2, 190.8),
    ("env1", "energies"): (1744.0, 390.8), ("env2", "energies"): (1631.8, 418.5),
    ("env3", "energies"): (3436.2, 689.0),
    ("env1", "first_order"): (2039.8, 499.0), ("env2", "first_order"): (1700.6, 276.1),
    ("env3", "first_order"): (3653.4, 1185.5),
    ("env1", "second_order"): (1921.4, 326.0), ("env2", "second_order"): (2097.0, 610.6),
    ("env3", "second_order"): (4350.4, 2530.3),
}
NAN2 = (float("nan"), float("nan"))
#: The observation regimes as the paper writes them (text and matplotlib math).
LABELS = {"full_state": "|ψ(t)⟩", "energies": "E_j", "first_order": "E_j+⟨σ⟩",
          "second_order": "E_j+⟨σ⟩+⟨σσ⟩"}
TEX_LABELS = {"full_state": r"$|\psi(t)\rangle$", "energies": r"$E_j$", "first_order": r"$E_j+\langle\sigma\rangle$",
              "second_order": r"$E_j+\langle\sigma\rangle+\langle\sigma\sigma\rangle$"}


def mean_ci_text(m: float, h: float) -> str:
    """``mean ± half-width`` (4 decimals), or the mean alone where the CI is undefined."""
    return f"{m:.4f} ± {h:.4f}" if h == h else f"{m:.4f}"
