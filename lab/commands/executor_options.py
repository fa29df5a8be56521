"""``--jobs``, ``--executor`` and ``--address``: where a command's runs execute.

    --executor local --jobs 2                       # a process pool here (the default)
    --executor ray --address auto                   # a Ray cluster this machine belongs to
    --executor ray --address ray://head:10001       # a remote cluster (Ray Client)

Ray is an optional extra: ``pip install 'qhil[cluster]'``.
"""
from __future__ import annotations

import argparse
from typing import Any

from .args import checked, int_in

MAX_JOBS = 256


def add_executor_options(p: argparse.ArgumentParser, jobs: int = 2) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--jobs", type=int_in(1, MAX_JOBS), default=jobs,
                   help=f"runs at a time on the local executor (default {jobs})")
    g.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local process pool (default) or a Ray cluster (qhil[cluster])")
    g.add_argument("--address", type=checked(_address, "address", "custom"), default=None,
                   help="ray: auto (the cluster this machine belongs to) or ray://host:10001")


def _address(text: str) -> str:
    from qhil.experiments.ray_executor import check_address
    return check_address(text)


def executor_from_args(args: argparse.Namespace) -> Any:
    """The executor the options name (validated; Ray connects here)."""
    from qhil.drivers import ValidationError
    from qhil.experiments import LocalExecutor
    if args.executor == "local":
        if args.address is not None:
            raise ValidationError("address", "given with the local executor", "--executor ray --address …")
        return LocalExecutor(args.jobs)
    from qhil.experiments.ray_executor import RayExecutor
    return RayExecutor(address=args.address or "auto")
