"""Validated argparse types shared by the ``qhil`` commands.

Each factory returns a callable for ``add_argument(type=…)``. A bad value raises
``argparse.ArgumentTypeError``, so argparse exits with status 2 and a message that names the
option and the allowed range, before any work starts::

    p.add_argument("--steps", type=int_in(1, 100_000))
    p.add_argument("--dt", type=float_in(0, 1e3, low_open=True))
    p.add_argument("--json", type=output_file)
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

__all__ = ["int_in", "float_in", "floats", "output_file", "output_dir", "input_file", "json_object", "choice_list"]


def _fmt(x: float | None, default: str) -> str:
    return default if x is None else f"{x:g}"


def int_in(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (either end may be None: unbounded)."""
    allowed = f"an integer in [{_fmt(low, '−∞')}, {_fmt(high, '∞')}]"

    def parse(text: str) -> int:
        try:
            v = int(text.strip())
        except (ValueError, AttributeError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        if (low is not None and v < low) or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"{v} is outside the allowed range: {allowed}")
        return v

    parse.__name__ = "integer"
    return parse


def float_in(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] ((low, …] with ``low_open``, […, high) with ``high_open``)."""
    allowed = (f"a finite number in {'(' if low_open else '['}{_fmt(low, '−∞')}, "
               f"{_fmt(high, '∞')}{')' if high_open else ']'}")

    def parse(text: str) -> float:
        try:
            v = float(text)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        bad = not math.isfinite(v)
        if low is not None:
            bad |= v <= low if low_open else v < low
        if high is not None:
            bad |= v >= high if high_open else v > high
        if bad:
            raise argparse.ArgumentTypeError(f"{v!r} is outside the allowed range: {allowed}")
        return v

    parse.__name__ = "number"
    return parse


def floats(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           length: int | None = None, min_length: int = 1) -> Callable[[str], list[float]]:
    """Comma-separated finite numbers, each in the range of :func:`float_in`."""
    one = float_in(low, high, low_open=low_open)

    def parse(text: str) -> list[float]:
        parts = [p for p in text.replace(" ", "").split(",") if p]
        if length is not None and len(parts) != length:
            raise argparse.ArgumentTypeError(f"expected {length} comma-separated numbers, got {text!r}")
        if len(parts) < min_length:
            raise argparse.ArgumentTypeError(f"expected at least {min_length} comma-separated number(s), "
                                             f"got {text!r}")
        return [one(p) for p in parts]

    parse.__name__ = "numbers"
    return parse


def output_file(text: str) -> Path:
    """A path a command will write: its folder is created if needed and must be writable, and
    the path must not be a folder. Checked when the options are parsed, not after the work."""
    if not text or not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file path")
    p = Path(text)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file path")
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot create the folder of {text!r} ({exc.strerror or exc})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"the folder of {text!r} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not writable")
    return p


def output_dir(text: str) -> Path:
    """A folder a command will write into (created if needed; must be writable)."""
    if not text or not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a folder")
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot create folder {text!r} ({exc.strerror or exc})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"folder {text!r} is not writable")
    return p


def input_file(text: str) -> Path:
    """An existing, readable file."""
    p = Path(text)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist or is not a file")
    if not os.access(p, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text!r} is not readable")
    return p


def json_object(text: str) -> dict[str, Any]:
    """A JSON object given inline (``'{"kind": …}'``) or as the path of a ``.json`` file."""
    src = text
    if not text.lstrip().startswith("{"):
        p = Path(text)
        if not p.is_file():
            raise argparse.ArgumentTypeError(f"{text!r} is neither a JSON object nor an existing file")
        try:
            src = p.read_text()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text!r} ({exc.strerror or exc})") from None
    try:
        doc = json.loads(src)
    except (ValueError, RecursionError) as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON in {text[:60]!r} ({exc})") from None
    if not isinstance(doc, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(doc).__name__}")
    return doc


def choice_list(choices: list[str] | tuple[str, ...]) -> Callable[[str], list[str]]:
    """Comma-separated names, each one of ``choices`` (at least one)."""
    def parse(text: str) -> list[str]:
        names = [x for x in text.replace(" ", "").split(",") if x]
        if not names:
            raise argparse.ArgumentTypeError(f"expected one or more of {', '.join(choices)}")
        bad = [x for x in names if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, bad))} (allowed: {', '.join(choices)})")
        return names

    parse.__name__ = "names"
    return parse
