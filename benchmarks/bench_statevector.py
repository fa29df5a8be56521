"""Env-steps per second of the exact statevector driver, against peers in the same run.

Model: N = 4 Dicke battery, Env1, converged cutoff (n_max = 40); protocol: 28 random
couplings λ ∈ [−0.3, 0.3], Δt = 0.2; after every step the 66 observables of the
correlation regime (E_j, first- and second-order Paulis) are computed from the state.

qhil is driven the way an RL environment drives it: at each step one backend.run call with
B experiments, each one step longer than before (the prefix cache makes that one step).
Peers step the same protocol one Δt at a time and compute the same observables:
  expm          dense scipy.linalg.expm of H(λ) per step (full space), as naive scripts do
  dynamics      qiskit-dynamics Solver, method "scipy_expm" (exact for piecewise-constant)
  qutip         QuTiP 5 sesolve per step (the route earlier RL battery code used)
  expm_multiply scipy.sparse.linalg.expm_multiply per step (sparse, full space)

Run:  python benchmarks/bench_statevector.py [--quick]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg as sla
import scipy.sparse.linalg as spla

from qhil.drivers import Experiment, MeasurementSchedule, create_backend, default_threads
from qhil.drivers.measure import measure_density, qubit_density
from qhil.envs import ENV1, DickeBattery

K, DT = 28, 0.2
SCHEDULE = MeasurementSchedule("second_order", final_only=True)


def observe(model: DickeBattery, psi: np.ndarray) -> np.ndarray:
    rho = qubit_density(psi[None, :], model.n_qubits, model.aux_dim)
    labels = SCHEDULE.labels(model.n_qubits)
    return measure_density(rho, labels, (), None, None, model.n_qubits)[0][0]


def qhil_steps_per_s(model: DickeBattery, controls: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    """controls (B, K). Returns env-steps/s and the final observables of env 0."""
    backend = create_backend("statevector")
    B = controls.shape[0]
    backend.run([Experiment(model, controls[i, :1], DT, SCHEDULE) for i in range(B)])  # warm-up (JIT)
    best = np.inf
    for _ in range(repeats):
        backend.clear_cache()
        t0 = time.perf_counter()
        exps = [Experiment(model, controls[i, :1], DT, SCHEDULE) for i in range(B)]
        results = backend.run(exps)
        for k in range(2, K + 1):
            exps = [e.extend(controls[i, k - 1:k]) for i, e in enumerate(exps)]   # one more step each
            results = backend.run(exps)
        best = min(best, time.perf_counter() - t0)
    return B * K / best, results[0].values[-1]


def peer_expm(model, u, n_steps):
    h0, h1 = model.drift().toarray(), model.control_operators()[0].toarray()
    psi = model.initial_state()
    for k in range(n_steps):
        psi = sla.expm(-1j * DT * (h0 + u[k] * h1)) @ psi
        obs = observe(model, psi)
    return psi, obs


def peer_expm_multiply(model, u, n_steps):
    h0, h1 = model.drift().tocsr(), model.control_operators()[0].tocsr()
    psi = model.initial_state()
    for k in range(n_steps):
        psi = spla.expm_multiply(-1j * DT * (h0 + u[k] * h1), psi)
        obs = observe(model, psi)
    return psi, obs


def peer_dynamics(model, u, n_steps):
    from qiskit_dynamics import Solver
    solver = Solver(static_hamiltonian=model.drift().toarray(),
                    hamiltonian_operators=[model.control_operators()[0].toarray()])
    psi = model.initial_state()
    for k in range(n_steps):
        sol = solver.solve(t_span=[k * DT, (k + 1) * DT], y0=psi, signals=[float(u[k])],
                           method="scipy_expm", max_dt=DT)
        psi = np.asarray(sol.y[-1])
        obs = observe(model, psi)
    return psi, obs


def peer_qutip(model, u, n_steps):
    import qutip
    dims = [[2] * model.n_qubits + [model.aux_dim]] * 2
    h0 = qutip.Qobj(model.drift(), dims=dims)
    h1 = qutip.Qobj(model.control_operators()[0], dims=dims)
    psi = qutip.Qobj(model.initial_state(), dims=[dims[0], [1] * len(dims[0])])
    opts = {"atol": 1e-10, "rtol": 1e-8, "nsteps": 100000}
    for k in range(n_steps):
        psi = qutip.sesolve(h0 + float(u[k]) * h1, psi, [0.0, DT], options=opts).states[-1]
        obs = observe(model, psi.full().ravel())
    return psi.full().ravel(), obs


def time_peer(fn, model, u, n_steps):
    t0 = time.perf_counter()
    psi, obs = fn(model, u, n_steps)
    return (time.perf_counter() - t0) / n_steps, psi, obs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats and peer steps")
    args = ap.parse_args()
    model = DickeBattery(omegas=ENV1)
    rng = np.random.default_rng(0)
    controls = rng.uniform(-0.3, 0.3, (256, K))
    print(f"model: N=4 Dicke battery Env1, n_max={model.n_max}, dim={model.dim}; "
          f"{K} steps of dt={DT}; 66 observables every step; threads {default_threads()}")

    reference = create_backend("statevector").run(
        Experiment(model, controls[0], DT, MeasurementSchedule("full_state", final_only=True)))[0].state[-1]

    rows = []
    repeats = 1 if args.quick else 3
    for B in (1, 64, 256):
        rate, obs = qhil_steps_per_s(model, controls[:B], repeats)
        rows.append((f"qhil statevector, batch {B}", 1.0 / rate, None))
        assert np.allclose(obs, observe(model, reference), atol=1e-10)

    peer_steps = {"expm": 4 if args.quick else 8, "dynamics": 4 if args.quick else 8,
                  "qutip": K, "expm_multiply": K}
    peers = {"expm": peer_expm, "dynamics": peer_dynamics, "qutip": peer_qutip,
             "expm_multiply": peer_expm_multiply}
    for name, fn in peers.items():
        n = peer_steps[name]
        try:
            per_step, psi, _ = time_peer(fn, model, controls[0], n)
        except ImportError as exc:
            print(f"  {name}: skipped ({exc})")
            continue
        err = None
        if n == K:
            err = float(np.max(np.abs(np.abs(psi) - np.abs(reference))))
        rows.append((f"peer {name} ({n} steps)", per_step, err))

    best_batched = min(r[1] for r in rows if r[0].startswith("qhil"))
    single = rows[0][1]
    print(f"\n{'method':36s} {'µs/env-step':>12s} {'env-steps/s':>12s} {'vs qhil best':>13s} {'vs qhil B=1':>12s}  max|Δψ| at K")
    for name, t, err in rows:
        print(f"{name:36s} {t * 1e6:12.1f} {1 / t:12.0f} {t / best_batched:12.1f}x {t / single:11.1f}x  "
              f"{'' if err is None else f'{err:.1e}'}")
    named = [r for r in rows if r[0].split()[1] in ("expm", "dynamics", "qutip")]
    best_peer = min(named, key=lambda r: r[1])
    print(f"\nbatched qhil: {1 / best_batched:.0f} env-steps/s (target ≥ 10,000)")
    print(f"best of expm / qiskit-dynamics / QuTiP: {best_peer[0]} at {best_peer[1] * 1e6:.0f} µs/step; "
          f"qhil batched is {best_peer[1] / best_batched:.0f}x faster per env-step (target ≥ 50x)")
    em = [r for r in rows if "expm_multiply" in r[0]]
    if em:
        print(f"sparse expm_multiply (stronger peer, not in the target set): {em[0][1] * 1e6:.0f} µs/step; "
              f"qhil batched is {em[0][1] / best_batched:.0f}x faster")


if __name__ == "__main__":
    main()
