"""Input checks shared by every layer (public: envs, agents, experiments and lab use them); each
raises a ValidationError naming the parameter and the allowed range."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .errors import ValidationError


def finite_float(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf,
                 lo_open: bool = False) -> float:
    """Return ``value`` as float, checking it is finite and in [lo, hi] (or (lo, hi])."""
    rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if isinstance(value, (bool, str, bytes)):
        raise ValidationError(name, f"expected a number, got {value!r}", rng)
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValidationError(name, f"expected a number, got {value!r}", rng) from None
    if not math.isfinite(x):
        raise ValidationError(name, f"must be finite, got {x}", rng)
    if x < lo or x > hi or (lo_open and x == lo):
        raise ValidationError(name, f"{x:g} is out of range", rng)
    return x


def integer(name: str, value: Any, lo: int, hi: int) -> int:
    """Return ``value`` as int, checking it is an integer in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValidationError(name, f"expected an integer, got {value!r}", f"[{lo}, {hi}]")
    if not lo <= int(value) <= hi:
        raise ValidationError(name, f"{int(value)} is out of range", f"[{lo}, {hi}]")
    return int(value)


def float_vector(name: str, values: Sequence[float] | np.ndarray, lo: float, hi: float,
                 min_len: int = 1, max_len: int = 10_000, lo_open: bool = False) -> tuple[float, ...]:
    """Return a tuple of finite floats, each in [lo, hi] (or (lo, hi]), of allowed length."""
    try:
        arr = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValidationError(name, f"expected a list of numbers, got {values!r}") from None
    if not min_len <= arr.size <= max_len:
        raise ValidationError(name, f"has length {arr.size}", f"length {min_len}..{max_len}")
    return tuple(finite_float(f"{name}[{i}]", v, lo, hi, lo_open) for i, v in enumerate(arr))


def protocol(name: str, values: Any, n_steps: int | None = None,
             bounds: tuple[float, float] | None = None) -> np.ndarray:
    """A piecewise-constant protocol λ (K,) (units ω_0) as a float array: 1-D (a (K, 1) column is
    accepted), K ≥ 1 values (K = ``n_steps`` if given), finite and, with ``bounds`` = (lo, hi),
    within them to a relative 1e-9 (then clipped)."""
    allowed = "finite values" if bounds is None else f"finite values in [{bounds[0]:g}, {bounds[1]:g}] (ω_0)"
    try:
        arr = np.array(values, dtype=float)
    except (TypeError, ValueError):
        raise ValidationError(name, "is not a sequence of numbers", allowed) from None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.size < 1:
        raise ValidationError(name, f"has shape {arr.shape}", "a 1-D protocol of K ≥ 1 values, one per step")
    if n_steps is not None and arr.size != n_steps:
        raise ValidationError(name, f"has {arr.size} steps", f"K = {n_steps} values, one per step")
    if not np.all(np.isfinite(arr)):
        raise ValidationError(name, "holds non-finite values", allowed)
    if bounds is None:
        return arr
    lo, hi = bounds
    tol = 1e-9 * max(1.0, abs(lo), abs(hi))
    bad = np.flatnonzero((arr < lo - tol) | (arr > hi + tol))
    if bad.size:
        k = int(bad[0])
        raise ValidationError(name, f"step {k} is {arr[k]:g}, out of the bounds", allowed)
    return np.clip(arr, lo, hi)
