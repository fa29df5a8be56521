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
import re
from pathlib import Path
from typing import Any, Callable

__all__ = ["int_in", "float_in", "floats", "output_file", "output_dir", "input_file", "json_object", "choice_list",
           "ints", "seed", "shots", "shots_list", "checked", "SEED_MAX", "backend_spec", "regime", "device_backend_spec", "add_backend_options", "backend_from_args"]

#: Largest seed accepted (numpy, torch and the drivers all take it).
SEED_MAX = 2**63 - 1


def _describe(parse: Callable[..., Any], kind: str, low: float | None = None, high: float | None = None,
              low_open: bool = False, high_open: bool = False) -> None:
    """Attach what a parser accepts (``qhil_kind``, bounds) for help texts and the CLI fuzz
    harness (tests/test_cli_fuzz.py), which generates out-of-range values from them."""
    parse.qhil_kind = kind            # type: ignore[attr-defined]
    parse.low, parse.high = low, high  # type: ignore[attr-defined]
    parse.low_open, parse.high_open = low_open, high_open  # type: ignore[attr-defined]


def _fmt(x: float | None, default: str) -> str:
    return default if x is None else f"{x:g}"


def int_in(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (either end may be None: unbounded)."""
    allowed = f"an integer in [{'−∞' if low is None else low}, {'∞' if high is None else high}]"

    def parse(text: str) -> int:
        try:
            v = int(text.strip())
        except (ValueError, AttributeError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        if (low is not None and v < low) or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"{v} is outside the allowed range: {allowed}")
        return v

    parse.__name__ = "integer"
    _describe(parse, "int", low, high)
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
    _describe(parse, "float", low, high, low_open, high_open)
    return parse


def floats(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           length: int | None = None, min_length: int = 1, increasing: bool = False,
           joined: bool = False) -> Callable[[str], Any]:
    """Comma-separated finite numbers, each in the range of :func:`float_in`
    (``increasing``: strictly; ``joined``: return the text, normalised, instead of the list)."""
    one = float_in(low, high, low_open=low_open)

    def parse(text: str) -> Any:
        parts = [p for p in text.replace(" ", "").split(",") if p]
        if length is not None and len(parts) != length:
            raise argparse.ArgumentTypeError(f"expected {length} comma-separated numbers, got {text!r}")
        if len(parts) < min_length:
            raise argparse.ArgumentTypeError(f"expected at least {min_length} comma-separated number(s), "
                                             f"got {text!r}")
        values = [one(p) for p in parts]
        if increasing and any(b <= a for a, b in zip(values, values[1:])):
            raise argparse.ArgumentTypeError(f"expected strictly increasing numbers (e.g. lo,hi), got {text!r}")
        return ",".join(f"{v!r}" for v in values) if joined else values

    parse.__name__ = "numbers"
    _describe(parse, "floats", low, high, low_open)
    return parse


def ints(low: int | None = None, high: int | None = None, *, min_length: int = 1,
         joined: bool = False) -> Callable[[str], Any]:
    """Comma-separated integers, each in [low, high] (``joined``: return the normalised text)."""
    one = int_in(low, high)

    def parse(text: str) -> Any:
        parts = [p for p in text.replace(" ", "").split(",") if p]
        if len(parts) < min_length:
            raise argparse.ArgumentTypeError(f"expected at least {min_length} comma-separated integer(s), "
                                             f"got {text!r}")
        values = [one(p) for p in parts]
        return ",".join(map(str, values)) if joined else values

    parse.__name__ = "integers"
    _describe(parse, "ints", low, high)
    return parse


#: A seed: an integer in [0, 2^63 − 1].
seed = int_in(0, SEED_MAX)


def shots_list(low: int = 1, high: int = 10_000_000) -> Callable[[str], list[int | None]]:
    """Comma-separated shot counts per setting, each an integer in [low, high] or ``exact``
    (aliases ``none``, ``inf``: expectation values, returned as None)."""
    def parse(text: str) -> list[int | None]:
        out: list[int | None] = []
        for x in (p.strip() for p in text.split(",")):
            if x.lower() in ("exact", "none", "inf"):
                out.append(None)
            elif x.isascii() and x.isdecimal() and low <= int(x) <= high:
                out.append(int(x))
            else:
                raise argparse.ArgumentTypeError(f"{x!r} is not a shot count: integers in [{low}, {high}] "
                                                 "or 'exact', comma-separated")
        return out

    parse.__name__ = "shots"
    _describe(parse, "shots", low, high)
    return parse


def shots(low: int = 1, high: int = 10_000_000) -> Callable[[str], int | None]:
    """One shot count per setting: an integer in [low, high] or ``exact`` (None)."""
    many = shots_list(low, high)

    def parse(text: str) -> int | None:
        values = many(text)
        if len(values) != 1:
            raise argparse.ArgumentTypeError(f"expected one shot count, got {text!r}")
        return values[0]

    parse.__name__ = "shots"
    _describe(parse, "shots", low, high)
    return parse


def checked(check: Callable[[str], Any], name: str = "value", kind: str = "text") -> Callable[[str], Any]:
    """A parser from a function that validates the text (raising
    :class:`~qhil.drivers.ValidationError`, ``ValueError`` or ``SystemExit`` with a message) and
    returns the parsed value; its failures become argparse errors naming the option. ``kind``
    says what the text is (``text``, ``input_file``, …; for help and the fuzz harness)."""
    def parse(text: str) -> Any:
        try:
            return check(text)
        except argparse.ArgumentTypeError:
            raise
        except (ValueError, TypeError, SystemExit) as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    parse.__name__ = name
    _describe(parse, kind)
    return parse


def output_file(text: str) -> Path:
    """A path a command will write: its folder is created if needed and must be writable, and
    the path must not be a folder. Checked when the options are parsed, not after the work."""
    if not text or not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file path")
    p = Path(text)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file path")
    _writable_folder(p.parent if str(p.parent) else Path("."), f"the folder of {text!r}")
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
    _writable_folder(p, f"folder {text!r}")
    return p


def _writable_folder(folder: Path, what: str) -> None:
    """Create ``folder`` if needed; it must be writable (``what`` names it in the error)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot create {what} ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{what} is not writable")


_describe(output_file, "output_file")
_describe(output_dir, "output_dir")


def input_file(text: str) -> Path:
    """An existing, readable file."""
    p = Path(text)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist or is not a file")
    if not os.access(p, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text!r} is not readable")
    return p


_describe(input_file, "input_file")


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


_describe(json_object, "json_object")


def choice_list(choices: list[str] | tuple[str, ...], joined: bool = False) -> Callable[[str], Any]:
    """Comma-separated names, each one of ``choices`` (at least one; ``joined``: return the
    normalised text ``"a,b"`` instead of the list)."""
    def parse(text: str) -> Any:
        names = [x for x in text.replace(" ", "").split(",") if x]
        if not names:
            raise argparse.ArgumentTypeError(f"expected one or more of {', '.join(choices)}")
        bad = [x for x in names if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, bad))} (allowed: {', '.join(choices)})")
        return ",".join(names) if joined else names

    parse.__name__ = "names"
    _describe(parse, "names")
    return parse


def _backend_spec(text: str) -> str:
    from qhil.drivers.bridge import parse_endpoint
    if text in ("statevector", "aer"):
        return text
    if text.startswith("zmq://"):
        parse_endpoint(text)                      # ValidationError: "cannot parse lab endpoint …"
        return text
    raise ValueError("allowed: statevector, aer or zmq://host:port")


#: A driver spec: ``statevector``, ``aer`` or ``zmq://host:port`` (the port in 1..65535).
backend_spec = checked(_backend_spec, "backend", "text")


def _device_backend_spec(text: str) -> str:
    """``emulator`` (the in-process emulator, see --emulator) or a driver spec."""
    if text == "emulator":
        return text
    try:
        return _backend_spec(text)
    except ValueError:
        raise ValueError("allowed: statevector, aer, zmq://host:port or emulator") from None


#: A driver spec or ``emulator`` (commands that run on a device: train, optimize).
device_backend_spec = checked(_device_backend_spec, "backend", "text")


def _imperfections(text: str) -> str:
    from qhil.lab.device_backend import parse_imperfections
    parse_imperfections(text)             # keys and numbers now; ranges when the emulator is built
    return text


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """``--backend`` (statevector, aer, zmq://host:port or emulator) and ``--emulator`` (its imperfections)."""
    p.add_argument("--backend", type=device_backend_spec, default="statevector",
                   help="driver spec: statevector (default), aer, zmq://host:port, or emulator (in-process)")
    p.add_argument("--emulator", default=None, type=checked(_imperfections, "emulator"),
                   help="--backend emulator's imperfections, e.g. amplitude_error=0.05,rise_time=0.02 "
                        "(amplitude_error, rise_time, frequency_drift, readout_error, oversample)")


def backend_from_args(args: argparse.Namespace, model: Any, seed: int | None) -> Any:
    """``--backend`` as a run takes it: the spec string, or for ``emulator`` the in-process
    emulator of ``model`` with the ``--emulator`` imperfections (drift and shots seeded by ``seed``)."""
    from qhil.drivers import ValidationError
    if args.emulator is not None and args.backend != "emulator":
        raise ValidationError("emulator", "imperfections given without --backend emulator", "--backend emulator")
    if args.backend != "emulator":
        return args.backend
    from qhil.lab.device_backend import emulator_backend, parse_imperfections
    return emulator_backend(model, seed=seed, imperfections=parse_imperfections(args.emulator or ""))

_PAULI_SPARSE = re.compile(r"(?:[XYZ]\d{1,3})+")
_PAULI_DENSE = re.compile(r"[IXYZ]{1,64}")


def _regime(text: str) -> str:
    from qhil.drivers.schedule import OBSERVATION_SETS
    if text in OBSERVATION_SETS:
        return text
    labels = [x for x in text.replace(" ", "").split(",") if x]
    bad = [x for x in labels if not (_PAULI_SPARSE.fullmatch(x) or (_PAULI_DENSE.fullmatch(x) and set(x) != {"I"}))]
    if not labels or bad:
        raise ValueError(f"allowed: {', '.join(OBSERVATION_SETS)}, or comma-separated Pauli labels "
                         "(sparse like X0Z2 or dense like XIZI)")
    return text


#: A measurement regime name, or comma-separated Pauli labels (checked against the model later).
regime = checked(_regime, "regime", "text")
