"""The ``qhil`` command line. Each subcommand lives in its own module under
``qhil.lab.commands`` and registers itself with ``add_parser``.

Option values are validated when parsed (:mod:`qhil.lab.commands.args`): a bad value exits
with status 2 and a message naming the option, before any work starts. Errors raised on
purpose later (:class:`~qhil.drivers.QhilError`) also exit 2 with their message; a file the
system refuses (``OSError``) exits 1 with its message; a command whose work failed returns 1.

Negative numbers need no ``=``: ``--controls -0.1,0.2``, ``--controls -0.3*4`` and
``--target -1`` are read as values (:class:`Parser`), where plain argparse takes any token
starting with ``-`` that is not a bare number for an option.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from typing import Any, Sequence

#: Subcommand modules, in the order ``qhil --help`` lists them.
COMMANDS = ["simulate", "lab", "deploy", "grape", "optimize", "train", "reproduce", "study", "sweep", "tune"]

#: A token that is a number, or a number list / expression, starting with a minus sign:
#: ``-1``, ``-.5``, ``-1e-3``, ``-0.1,0.2``, ``-0.3*4``, ``-0.1,0.2;0.3,0`` — never an option name.
NEGATIVE_VALUE = re.compile(r"^-(?:\d|\.\d)[0-9eE.+\-*,;:/ ]*$")


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` that reads a token matching :data:`NEGATIVE_VALUE` as a value,
    not as an option. Subparsers created from it are of this class too."""

    def _parse_optional(self, arg_string: str) -> Any:
        if NEGATIVE_VALUE.match(arg_string):
            return None
        return super()._parse_optional(arg_string)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qhil", description="Hardware-in-the-loop quantum control.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"qhil.lab.commands.{name}").add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``qhil argv``; returns the exit status (a refused option: 2, after argparse's
    message; ``--help``: 0), so in-process callers get a status, never a SystemExit from parsing."""
    from qhil.drivers import QhilError
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    try:
        return int(args.func(args) or 0)
    except QhilError as exc:
        print(f"qhil: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) and str(exc.filename) not in str(exc) else ""
        print(f"qhil: error: {exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qhil: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
