"""The ``qhil`` command line. Each subcommand lives in its own module under
``qhil.lab.commands`` and registers itself with ``add_parser``."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

#: Subcommand modules, in the order ``qhil --help`` lists them.
COMMANDS = ["simulate", "lab", "deploy", "grape", "train", "reproduce", "study", "sweep"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qhil", description="Hardware-in-the-loop quantum control.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"qhil.lab.commands.{name}").add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from qhil.drivers import QhilError
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except QhilError as exc:
        print(f"qhil: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
