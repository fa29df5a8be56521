"""Statistics used by the reports, each in one place.

Confidence intervals are Student-t 95 % half-widths of the mean over seeds; the EMA is the
paper's learning-curve smoothing (seed 000, Sec. IV C); T_0.9 is Table S1's time to 90 % of the
best; Pareto fronts are over (cost, value) with lower cost and higher value better.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def t_half_width(x: Sequence[float], level: float = 0.95) -> float:
    """Half-width of the Student-t confidence interval of the mean (NaN for < 2 values)."""
    from scipy.stats import t
    a = np.asarray(x, dtype=float)
    if len(a) < 2:
        return float("nan")
    return float(t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))


def mean_ci(x: Sequence[float]) -> tuple[float, float, int]:
    """(mean, 95 % Student-t half-width, n) over the non-NaN values; NaN where undefined."""
    v = [float(a) for a in x if a == a]
    return (float(np.mean(v)) if v else float("nan")), t_half_width(v), len(v)


def ema(x: Sequence[float], g: float = 0.9) -> np.ndarray:
    """Ḡ_t = γ_G Ḡ_{t−1} + (1 − γ_G) G_t (seed 000, Sec. IV C), Ḡ_0 = G_0."""
    a = np.asarray(x, dtype=float)
    out = np.empty(len(a))
    acc = a[0] if len(a) else 0.0
    for i, v in enumerate(a):
        acc = g * acc + (1 - g) * v if i else v
        out[i] = acc
    return out


def t_reach(ergotropy: Sequence[float], fraction: float = 0.9) -> int:
    """T_0.9 of seed 000 (Table S1): training episodes until the best-so-far terminal
    ergotropy first reaches ``fraction`` of its final best value (1 = the first)."""
    x = np.asarray(ergotropy, dtype=float)
    if x.size == 0:
        raise ValueError("ergotropy: empty episode record (allowed: at least one episode)")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: {fraction!r} (allowed: (0, 1])")
    best = np.maximum.accumulate(x)
    return int(np.argmax(best >= fraction * best[-1])) + 1


def gap_closed(without: float, with_history: float, full: float) -> float:
    """Fraction of the gap (full state − without history) that the history closes."""
    gap = full - without
    return float("nan") if gap == 0 else (with_history - without) / gap


def pareto_front(cost: Sequence[float], value: Sequence[float]) -> np.ndarray:
    """Indices of the non-dominated points (lower cost and higher value are better), by cost."""
    c, v = np.asarray(cost, float), np.asarray(value, float)
    order = np.lexsort((-v, c))
    front, best = [], -np.inf
    for i in order:
        if v[i] > best:
            front.append(int(i))
            best = v[i]
    return np.array(front, dtype=int)


def moving_average(x: Sequence[float], k: int = 10) -> np.ndarray:
    """k-episode moving average, edge-padded: same length as x (seed 004's Table IV)."""
    a = np.asarray(x, float)
    if len(a) == 0:
        return a
    k = min(k, len(a))
    pad = np.concatenate([np.full(k // 2, a[0]), a, np.full(k - 1 - k // 2, a[-1])])
    return np.convolve(pad, np.ones(k) / k, mode="valid")
