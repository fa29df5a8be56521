"""Which precision the SAC updates run in when the config says ``precision="auto"``.

bfloat16 autocast is ~1.4–2× faster than float32 on CPUs with native bf16 arithmetic
(AVX-512 BF16, AMX) and ~10× *slower* where it is emulated (AVX2 only: 2.2 against 21.4
updates/s measured, issue 16). ``"auto"`` therefore decides per process, once:

1. CPU capability: the bf16 flags of ``/proc/cpuinfo`` (x86 ``avx512_bf16`` / ``amx_bf16``,
   Arm ``bf16``) and torch's own queries where it has them. No native bf16 → float32, no
   timing.
2. Otherwise a short timed probe (< 0.5 s): forward + backward of an MLP of the run's
   shape (hidden layers, batch) in float32 and under bf16 autocast, alternated, best of a
   few. bf16 only if it is at least :data:`BF16_MIN_SPEEDUP` × faster.

The decision logic (:func:`choose_precision`) is a pure function of the flags and the two
timings; :func:`probe_precision` measures and caches per network shape.
"""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

#: bf16 is chosen only when the probe measures it at least this much faster than fp32.
BF16_MIN_SPEEDUP = 1.2
#: CPU flags that mean native bf16 arithmetic (x86: AVX-512 BF16, AMX; Arm: FEAT_BF16).
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_bf16_flags(cpuinfo: str | None = None, use_torch: bool = True) -> list[str] | None:
    """The native-bf16 flags this CPU reports (sorted; [] = none), or None if unknown
    (no ``/proc/cpuinfo`` and no torch query). ``cpuinfo``: the file's text instead of
    reading it; ``use_torch``: also ask torch (``torch.cpu._is_avx512_bf16_supported``, …)."""
    found: set[str] = set()
    known = False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = None
    if cpuinfo is not None:
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                known = True
                found |= set(value.split()) & set(BF16_FLAGS)
    try:                                     # torch's own view (private API: optional)
        if not use_torch:
            raise ImportError
        import torch
        cpu = torch.cpu
        for name, flag in (("_is_avx512_bf16_supported", "avx512_bf16"), ("_is_amx_tile_supported", "amx_bf16")):
            query = getattr(cpu, name, None)
            if query is not None:
                known = True
                if query():
                    found.add(flag)
    except Exception:                        # torch without these queries, or not asked
        pass
    return sorted(found) if known else None


def choose_precision(flags: list[str] | None, fp32_s: float | None, bf16_s: float | None,
                     min_speedup: float = BF16_MIN_SPEEDUP) -> tuple[str, str]:
    """("fp32" | "bf16", reason) from the CPU's bf16 flags (None: unknown) and the probe's
    seconds per step in each precision (None: not timed)."""
    if flags is not None and not flags:
        return "fp32", "no native bf16 on this CPU (no avx512_bf16/amx_bf16/bf16 flag)"
    if fp32_s is None or bf16_s is None or not (fp32_s > 0 and bf16_s > 0):
        return "fp32", "bf16 not timed"
    speedup = fp32_s / bf16_s
    if speedup >= min_speedup:
        return "bf16", f"bf16 {speedup:.2f}x as fast as fp32 (>= {min_speedup:g}x)"
    return "fp32", f"bf16 only {speedup:.2f}x as fast as fp32 (< {min_speedup:g}x)"


def time_step(precision: str, n_in: int, hidden: tuple[int, ...], batch: int, reps: int = 3) -> float:
    """Best of ``reps`` timed forward + backward passes (seconds) of an MLP n_in → hidden → 1
    on a batch, in float32 or under bf16 autocast; torch's RNG state is left as it was."""
    import torch

    from .networks import mlp
    rng_state = torch.get_rng_state()
    try:
        net = mlp(n_in, tuple(hidden), 1)
        x = torch.randn(batch, n_in)
        best = float("inf")
        for i in range(reps + 1):                               # the first pass warms up
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = net(x).float().pow(2).mean()
            loss.backward()
            dt = time.perf_counter() - t0
            if i:
                best = min(best, dt)
        return best
    finally:
        torch.set_rng_state(rng_state)


@functools.lru_cache(maxsize=None)
def probe_precision(n_in: int, hidden: tuple[int, ...], batch: int, verbose: bool = True) -> dict[str, Any]:
    """Decide fp32 or bf16 for an SAC of this shape on this CPU (once per process and shape).

    Returns {"chosen", "reason", "cpu_bf16_flags", "fp32_ms", "bf16_ms", "speedup",
    "min_speedup", "threads"}: the evidence recorded with the run. Prints the choice to
    stderr when ``verbose``.
    """
    import torch
    flags = cpu_bf16_flags()
    fp32_s = bf16_s = None
    if flags is None or flags:
        t32, t16 = [], []
        for _ in range(3):                                      # alternate: load drifts hit both
            t32.append(time_step("fp32", n_in, hidden, batch))
            t16.append(time_step("bf16", n_in, hidden, batch))
        fp32_s, bf16_s = min(t32), min(t16)
    chosen, reason = choose_precision(flags, fp32_s, bf16_s)
    info = {"chosen": chosen, "reason": reason, "cpu_bf16_flags": flags,
            "fp32_ms": None if fp32_s is None else 1e3 * fp32_s,
            "bf16_ms": None if bf16_s is None else 1e3 * bf16_s,
            "speedup": None if not (fp32_s and bf16_s) else fp32_s / bf16_s,
            "min_speedup": BF16_MIN_SPEEDUP, "threads": torch.get_num_threads()}
    if verbose:
        print(f"qhil: SAC precision auto -> {chosen}: {reason}", file=sys.stderr)
    return info
