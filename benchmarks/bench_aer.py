"""Seconds per noisy 28-step episode for each route of the Aer driver, against plain Qiskit
Aer density-matrix simulation measured in the same run.

Model: N = 4 Dicke battery, Env1, converged cutoff (n_max = 40: dim 656; on Aer 4 + 6 qubits).
Protocol: 28 random couplings λ ∈ [−0.3, 0.3], Δt = 0.2. After every step, on each TLS:
depolarizing p = 0.01, bit flip p = 0.005, phase flip p = 0.005. Measured after every step:
the 66 second-order observables, exact (from ρ).

Routes (every exact route is also compared with Aer: max |ρ_route − ρ_aer| over the steps):
  aer_dm           Qiskit Aer, method density_matrix — the reference (the 28 step gates are
                   built from model.step_propagator; that part is reported separately)
  dense_numpy      full-space ρ (656 × 656): U = model.step_propagator(λ, Δt), dense U ρ U†,
                   channels applied on the reshaped ρ — a straightforward in-house peer
  block            create_backend("aer", engine="block"): one experiment per run call
  block_rl         the same episode the way an RL env asks for it: 28 run calls, each one
                   step longer (the prefix cache makes each call one step)
  block_batch      B different episodes in one run call (seconds per episode)
  block_batch_2t   the same with threads=2 (blocks and episodes on two threads)
  aer_traj         Aer statevector with noise = quantum trajectories (shots): not exact;
                   its error against the reference is printed

Run:  python benchmarks/bench_aer.py [--quick] [--aer-steps K] [--batch B] [--trajectories S] [--n-max M]
(--quick: Aer runs only the first 4 steps and its episode time is scaled to 28 steps.)
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

from qhil.drivers import Experiment, MeasurementSchedule, create_backend, default_threads
from qhil.drivers.aer import register_qubits
from qhil.drivers.channels import bit_flip, depolarizing, phase_flip
from qhil.envs import ENV1, DickeBattery

K, DT = 28, 0.2
SCHEDULE = MeasurementSchedule("second_order")
NOISE = [depolarizing(0.01), bit_flip(0.005), phase_flip(0.005)]
_P = {"I": np.eye(2), "X": np.array([[0, 1], [1, 0]]), "Y": np.array([[0, -1j], [1j, 0]]),
      "Z": np.diag([1.0, -1.0])}


def dense_numpy(model: DickeBattery, controls: np.ndarray) -> np.ndarray:
    """Full-space density matrix, dense products; returns qubit densities (K+1, 16, 16)."""
    n, aux = model.n_qubits, model.aux_dim
    psi = model.initial_state()
    rho = np.outer(psi, psi.conj())
    kraus = [ch.kraus_operators(DT) for ch in NOISE]

    def reduce(r):
        return np.einsum("iaja->ij", r.reshape(2 ** n, aux, 2 ** n, aux))

    out = [reduce(rho)]
    for u in controls:
        U = model.step_propagator([u], DT)
        rho = U @ rho @ U.conj().T
        for ops in kraus:
            for q in range(n):
                shape = (2 ** q, 2, 2 ** (n - 1 - q) * aux)
                t = rho.reshape(shape + shape)
                rho = sum(np.einsum("ij,ajbckd,lk->aibcld", k, t, k.conj(), optimize=True)
                          for k in ops).reshape(rho.shape)
        out.append(reduce(rho))
    return np.array(out)


def timed(fn, repeats: int = 1):
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Aer on the first 4 steps only, scaled to 28")
    ap.add_argument("--aer-steps", type=int, default=None, help="steps Aer runs (default 28; --quick 4)")
    ap.add_argument("--batch", type=int, default=8, help="episodes per batched run")
    ap.add_argument("--trajectories", type=int, default=100, help="shots of the Aer trajectory route")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the fast routes (best is kept)")
    ap.add_argument("--n-max", type=int, default=None,
                    help="photon cutoff (default: the converged 40; 31 fits Aer's register in 4 + 5 qubits)")
    args = ap.parse_args()
    aer_steps = args.aer_steps or (4 if args.quick else K)

    battery = DickeBattery(omegas=ENV1, n_max=args.n_max)
    rng = np.random.default_rng(2024)
    episodes = rng.uniform(-0.3, 0.3, (max(args.batch, 1), K))
    u0 = episodes[0]
    exp = Experiment(battery, u0, DT, SCHEDULE)
    print(f"N = 4 Dicke battery, Env1, n_max = {battery.n_max}{'' if args.n_max is None else ' (NOT converged)'} (dim {battery.dim}; Aer qubits "
          f"{battery.n_qubits} + {register_qubits(battery)}), {K} steps of Δt = {DT}, noise on each TLS: "
          + ", ".join(f"{c.name} p={c.p}" for c in NOISE))
    print(f"threads: {default_threads()}, cores: {os.cpu_count()}, load average: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows: list[tuple[str, float, str]] = []

    # -- the reference: Aer density matrix ---------------------------------------------------
    aer = create_backend("aer", noise=NOISE, engine="aer")
    aer_exp = Experiment(battery, u0[:aer_steps], DT, SCHEDULE)
    t_build, _ = timed(lambda: aer.circuit(aer_exp))
    t_aer, ref = timed(lambda: aer.run(aer_exp)[0])
    scale = K / aer_steps
    aer_episode = t_aer * scale
    note = "" if aer_steps == K else f" (ran {aer_steps} steps, scaled ×{scale:g})"
    rows.append(("aer_dm", aer_episode, f"of which building the step gates {t_build * scale:.2f} s{note}"))
    rho_ref = ref.qubit_density

    def err(rho: np.ndarray) -> str:
        return f"max |ρ − ρ_aer| = {np.max(np.abs(rho[:aer_steps + 1] - rho_ref)):.1e}"

    # -- dense numpy, full space -------------------------------------------------------------
    t_dense, rho_dense = timed(lambda: dense_numpy(battery, u0))
    rows.append(("dense_numpy", t_dense, err(rho_dense)))

    # -- the block engine ----------------------------------------------------------------------
    block = create_backend("aer", noise=NOISE, engine="block")
    t_engine, _ = timed(lambda: block.block_engine(battery, DT))
    block.run(Experiment(battery, u0[:1], DT, SCHEDULE))          # numba compile, warm caches

    def one() -> np.ndarray:
        block.clear_cache()
        return block.run(exp)[0].qubit_density

    t_block, rho_block = timed(one, args.repeats)
    rows.append(("block", t_block, err(rho_block) + f"; engine set-up once per (model, Δt): {t_engine:.2f} s"))

    def rl() -> np.ndarray:
        block.clear_cache()
        e = Experiment(battery, u0[:1], DT, SCHEDULE)
        block.run(e)
        for k in range(1, K):
            e = e.extend(u0[k:k + 1])
            res = block.run(e)[0]
        return res.qubit_density

    t_rl, rho_rl = timed(rl, args.repeats)
    rows.append(("block_rl", t_rl, err(rho_rl) + " (28 run calls)"))

    batch = [Experiment(battery, episodes[i], DT, SCHEDULE) for i in range(args.batch)]
    for name, threads in (("block_batch", 1), ("block_batch_2t", 2)):
        be = create_backend("aer", noise=NOISE, engine="block", threads=threads, cache_size=0)
        be.block_engine(battery, DT)
        be.run(Experiment(battery, u0[:1], DT, SCHEDULE))
        t_b, res = timed(lambda: be.run(batch), max(1, args.repeats - 1))
        rows.append((name, t_b / args.batch, err(res[0].qubit_density) + f" (B = {args.batch}, threads={threads})"))
        be.close()

    # -- Aer trajectories (approximate) --------------------------------------------------------
    if args.trajectories > 0:
        from qiskit_aer import AerSimulator
        qc = aer.circuit(aer_exp, "statevector")
        sim = AerSimulator(method="statevector", max_parallel_threads=1, seed_simulator=7)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            t_traj, data = timed(lambda: sim.run(qc, shots=args.trajectories).result().data(0))
        rho_traj = np.stack([np.asarray(data[f"rho_{k}"]) for k in range(aer_steps + 1)])
        rows.append(("aer_traj", t_traj * scale, f"{args.trajectories} trajectories: NOT exact, "
                     + err(rho_traj) + note))

    # the machine's pace in this run: the block engine's floor is ~5.25 real d×d products per
    # block and step (Gauss 3M, Hermitian half), d = block dimension
    dims = block.block_engine(battery, DT).block_dims
    a, b2 = np.random.default_rng(0).random((2, dims[0], dims[0]))
    t_mm, _ = timed(lambda: [a @ b2 for _ in range(20)], 3)
    floor = 5.25 * len(dims) * K * t_mm / 20
    print(f"blocks {dims}; one {dims[0]}×{dims[0]} real product: {t_mm / 20 * 1e3:.2f} ms → the block "
          f"engine's product floor {floor:.3f} s/episode; load average now {os.getloadavg()[0]:.2f}")
    print(f"\n{'route':<16}{'s/episode':>11}{'vs aer_dm':>12}   notes")
    for name, sec, extra in rows:
        print(f"{name:<16}{sec:>11.3f}{aer_episode / sec:>11.1f}×   {extra}")


if __name__ == "__main__":
    main()
