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
