"""Seconds per experiment of the lab emulator (qhil.lab.device.EmulatorDevice): the fast path
(qiskit-dynamics ``lanczos_diag`` on sparse operators) against the original dense path
(``scipy_expm``), measured in the same run on the same protocol.

Model: N = 4 Dicke battery, Env1, default cutoff (n_max = 40, dim 656); protocol: K = 28
random couplings λ ∈ [−0.3, 0.3], Δt = 0.2; schedule: the correlation regime measured after
every step (steps 0..K, every second-order setting), as ChargingVectorEnv asks, exact outcome
probabilities (shots=None) so the two paths can be compared to the last digit. One
``execute`` = one experiment. Also printed: agreement with the exact statevector driver, and
the device's own (measured) timing estimate against the measured time.

Run:  python benchmarks/bench_emulator.py [--quick] [--threads 1] [--imperfections]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from qhil.drivers import Experiment, MeasurementSchedule, create_backend
from qhil.drivers.measure import qubit_density
from qhil.drivers.pauli import outcome_probabilities
from qhil.envs import ENV1, DickeBattery
from qhil.lab.device import EmulatorDevice

DT = 0.2


def time_execute(dev: EmulatorDevice, u: np.ndarray, steps: np.ndarray, settings: tuple[str, ...],
                 repeats: int) -> tuple[float, np.ndarray]:
    """Best wall seconds of ``repeats`` executions (of one episode, so that both paths see the
    same frequency offsets) and the probabilities."""
    best, probs = np.inf, None
    dev.begin_episode(np.random.default_rng(0))
    for _ in range(repeats):
        t0 = time.perf_counter()
        probs = dev.execute(u[:, None], DT, steps, settings, None, np.random.default_rng(0))
        best = min(best, time.perf_counter() - t0)
    return best, probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 steps, fewer repeats (smoke run)")
    ap.add_argument("--steps", type=int, default=None, help="control steps K (default 28; 8 with --quick)")
    ap.add_argument("--n-max", type=int, default=None, help="photon cutoff (default: the model's, 40)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads for both paths (default 1)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of the fast path (best of; default 5)")
    ap.add_argument("--imperfections", action="store_true",
                    help="rise time 0.05 (oversample 8), amplitude error 0.03, drift 0.02 on both paths")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    K = args.steps or (8 if args.quick else 28)
    repeats = args.repeats or (2 if args.quick else 5)

    threadpool_limits(limits=args.threads, user_api="blas")
    threadpool_limits(limits=args.threads, user_api="openmp")
    libs = sorted({f"{i['internal_api']}={i['num_threads']}" for i in threadpool_info()})
    print(f"threads: BLAS/OpenMP limited to {args.threads} ({', '.join(libs)})")

    model = DickeBattery(omegas=ENV1, **({"n_max": args.n_max} if args.n_max else {}))
    u = np.random.default_rng(args.seed).uniform(-0.3, 0.3, K)
    sched = MeasurementSchedule("second_order", every=1)
    steps = sched.measured_steps(K)
    settings = sched.settings(model.n_qubits)
    opts = dict(allow_exact=True)
    if args.imperfections:
        opts.update(rise_time=0.05, oversample=8, amplitude_error=0.03, frequency_drift=0.02, seed=1)
    print(f"model: Dicke Env1, N={model.n_qubits}, n_max={model.n_max}, dim={model.dim}; K={K} steps of "
          f"dt={DT}; second order every step: {len(steps)} steps x {len(settings)} settings; "
          f"imperfections {'on' if args.imperfections else 'off'}")

    t0 = time.perf_counter()
    new = EmulatorDevice(model, **opts)
    build_new = time.perf_counter() - t0
    t0 = time.perf_counter()
    old = EmulatorDevice(model, method="scipy_expm", **opts)
    build_old = time.perf_counter() - t0

    t_new, p_new = time_execute(new, u, steps, settings, repeats)
    t_old, p_old = time_execute(old, u, steps, settings, 1)
    m, s = new.krylov_plan(DT / new.oversample, np.array([0.3]))
    print(f"construction (incl. warm-up solve): new {build_new:.3f} s, old {build_old:.3f} s")
    print(f"new  lanczos_diag (sparse, k_dim={m}, {s} sub-step(s)/sample): {t_new:.4f} s per experiment "
          f"(best of {repeats})")
    print(f"old  scipy_expm (dense):                               {t_old:.4f} s per experiment (1 run)")
    print(f"speed-up old/new: {t_old / t_new:.1f}x")
    if args.imperfections:
        assert new.calibration()["frequency_offsets"] == old.calibration()["frequency_offsets"]
    print(f"max |p_new - p_old| over {p_new.size} outcome probabilities: {np.max(np.abs(p_new - p_old)):.2e}")
    if not args.imperfections:
        res = create_backend("statevector").run([Experiment(model, u, DT, MeasurementSchedule("full_state"))])[0]
        rho = qubit_density(res.state[steps], model.n_qubits, model.aux_dim)
        p_ex = np.stack([outcome_probabilities(r, settings) for r in rho])
        print(f"max |p - p_exact driver|: new {np.max(np.abs(p_new - p_ex)):.2e}, "
              f"old {np.max(np.abs(p_old - p_ex)):.2e}")
    for name, dev, t in (("new", new, t_new), ("old", old, t_old)):
        f = dev.timing()
        est = f["overhead_s"] + f["solve_step_s"] * K
        print(f"device timing() after the runs, {name}: overhead {f['overhead_s']:.2e} s, solve_step "
              f"{f['solve_step_s']:.2e} s, circuit {f['circuit_s']:.2e} s -> estimate {est:.4f} s "
              f"(+ shots) vs measured {t:.4f} s")


if __name__ == "__main__":
    main()
