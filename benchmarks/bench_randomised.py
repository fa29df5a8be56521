"""Per-episode cost of domain randomisation on the exact driver (issue 7).

Plays random-action episodes (K = 28, second-order observations, n_envs = 1) on
:class:`~qhil.envs.ChargingVectorEnv` with a fixed ω and on
:class:`~qhil.envs.robust.RandomisedChargingEnv` with a new ω ~ U[0.5, 1.5]^4 every
episode, and reports ms per episode, the part spent building propagators, the number of
propagators the driver holds and the process's resident memory before/after.

Run:  python benchmarks/bench_randomised.py [--episodes 100]
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from qhil.envs import ChargingVectorEnv
from qhil.envs.robust import RandomisedChargingEnv


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def episodes(env, n: int, rng: np.random.Generator) -> float:
    t = time.perf_counter()
    for _ in range(n):
        env.reset()
        for _ in range(env.n_steps):
            env.step(rng.uniform(-0.3, 0.3, 1))
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=100)
    n = ap.parse_args().episodes
    rng = np.random.default_rng(0)
    fixed = ChargingVectorEnv(regime="second_order")
    episodes(fixed, 3, rng)                                   # compile, warm caches
    print(f"fixed ω:      {episodes(fixed, n, rng):7.1f} ms/episode")
    dr = RandomisedChargingEnv(regime="second_order", omega_range=(0.5, 1.5), omega_seed=0)
    episodes(dr, 3, rng)
    rss0 = _rss_mb()
    ms = episodes(dr, n, rng)
    build = []
    for _ in range(10):
        t = time.perf_counter()
        dr.backend.propagator(dr.battery.__class__(omegas=tuple(rng.uniform(0.5, 1.5, 4))))
        build.append(time.perf_counter() - t)
    print(f"new ω / ep.:  {ms:7.1f} ms/episode, of which ≈ {1e3 * np.median(build):.1f} ms builds the propagator")
    print(f"driver holds {len(dr.backend._props)} propagators (bound {dr.backend.MAX_PROPAGATORS}); "
          f"resident memory {rss0:.0f} → {_rss_mb():.0f} MB over {n} episodes")


if __name__ == "__main__":
    main()
