"""Deliberate thread counts for BLAS, numba and torch.

On small machines oversubscription is ruinous: a 320×320 ``eigh`` was measured at 1.7 s
with two BLAS threads under load and 8 ms with one. qhil therefore sets, when
:mod:`qhil.drivers` is imported:

* BLAS/OpenMP (numpy, scipy): ``QHIL_BLAS_THREADS`` (default 1) — qhil's matrices are small;
* numba (the propagator kernel): ``QHIL_NUMBA_THREADS`` (default min(2, cores)), used
  only for batches of more than one cache block;
* torch: ``QHIL_TORCH_THREADS`` (default 1), applied by the agents when they import torch.
"""
from __future__ import annotations

import os

from .errors import ValidationError


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(name, f"{raw!r} is not an integer", "1..256") from None
    if not 1 <= value <= 256:
        raise ValidationError(name, f"{value} is out of range", "1..256")
    return value


def default_threads() -> dict[str, int]:
    cores = os.cpu_count() or 1
    return {"blas": _env_int("QHIL_BLAS_THREADS", 1),
            "numba": _env_int("QHIL_NUMBA_THREADS", min(2, cores)),
            "torch": _env_int("QHIL_TORCH_THREADS", 1)}


def set_threads(blas: int | None = None, numba: int | None = None, torch: int | None = None) -> dict[str, int]:
    """Set thread counts (None = leave as is); torch only if it is already imported.
    Returns the counts now in force."""
    import sys

    from threadpoolctl import threadpool_limits
    out: dict[str, int] = {}
    if blas is not None:
        threadpool_limits(limits=int(blas), user_api="blas")
        threadpool_limits(limits=int(blas), user_api="openmp")
        out["blas"] = int(blas)
    if numba is not None:
        import numba as nb
        n = max(1, min(int(numba), nb.config.NUMBA_NUM_THREADS))
        nb.set_num_threads(n)
        out["numba"] = n
    if torch is not None and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(torch))
        out["torch"] = int(torch)
    return out


def apply_defaults() -> dict[str, int]:
    d = default_threads()
    return set_threads(blas=d["blas"], numba=d["numba"])
