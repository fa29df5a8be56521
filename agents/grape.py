"""GRAPE yardstick: open-loop optimisation of the K-step piecewise-constant charging protocol.

Maximise the terminal ergotropy ℰ(τ)[λ_0 … λ_{K−1}] over λ_k ∈ [λ_min, λ_max] with exact
gradients and multi-start L-BFGS (the bounds through λ = mid + half·sin x, see :func:`grape_dicke_battery`).
This is the best any policy can do on the same K-step protocol class, so it is the ceiling
for every RL agent.

Exact gradient (no finite differences, no small-Δt expansion), on the parity sector of
dimension d (the exact driver's invariant sector):

* Forward, per step k: the augmented-matrix identity (Van Loan / Goodwin–Kuprov)

      exp(−iΔt [[H_k, H_1], [0, H_k]]) [0; ψ_k] = [∂U_k/∂λ_k ψ_k ; U_k ψ_k],
      H_k = H_0 + λ_k H_1,  U_k = exp(−iH_kΔt),

  gives ψ_{k+1} and ∂U_k/∂λ_k ψ_k in one exact action of a 2d-dimensional exponential
  (``scipy.sparse.linalg.expm_multiply``).
* Terminal ergotropy ℰ = Tr(ρ H_B) − Σ_i r_i↓ ε_i↑ with ρ = Tr_cavity |ψ_K⟩⟨ψ_K|. For
  non-degenerate ρ, dℰ = 2 Re ⟨ψ_K| (O ⊗ 1) |dψ_K⟩ with O = H_B − Σ_i ε_i↑ |r_i↓⟩⟨r_i↓|.
* Backward: χ_K = (O ⊗ 1) ψ_K, χ_k = U_k† χ_{k+1};  ∂ℰ/∂λ_k = 2 Re ⟨χ_{k+1}| ∂U_k/∂λ_k ψ_k⟩.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize
from scipy.sparse.linalg import expm_multiply

from qhil.drivers import Experiment, MeasurementSchedule, create_backend
from qhil.drivers import invariant_sector
from qhil.envs.dicke import DickeBattery


class ChargingProblem:
    """ℰ(τ) and its exact gradient for a piecewise-constant protocol on a Dicke battery.

    battery: the model;  dt: step length Δt (1/ω_0);  bounds: λ interval (units ω_0).
    """

    def __init__(self, battery: DickeBattery, dt: float = 0.2,
                 bounds: tuple[float, float] | None = None) -> None:
        self.battery, self.dt = battery, float(dt)
        c = battery.controls[0]
        self.bounds = (c.lower, c.upper) if bounds is None else (float(bounds[0]), float(bounds[1]))
        self.sector = invariant_sector(battery)                 # full-space basis indices
        idx = self.sector
        self.h0 = sp.csr_matrix(battery.drift())[idx][:, idx].astype(complex)
        self.h1 = sp.csr_matrix(battery.control_operators()[0])[idx][:, idx].astype(complex)
        self.psi0 = battery.initial_state()[idx].astype(complex)
        self.n_q, self.n_aux = 2 ** battery.n_qubits, battery.aux_dim
        self.levels = battery.battery_levels                    # diagonal of H_B
        self.n_evals = 0

    def _embed(self, psi: np.ndarray) -> np.ndarray:
        """Sector vector → (2^N, n_max+1) amplitude matrix Ψ[qubits, photons]."""
        full = np.zeros(self.n_q * self.n_aux, complex)
        full[self.sector] = psi
        return full.reshape(self.n_q, self.n_aux)

    def final_state(self, lam: Sequence[float]) -> np.ndarray:
        psi = self.psi0
        for x in lam:
            psi = expm_multiply(-1j * self.dt * (self.h0 + x * self.h1), psi)
        return psi

    def ergotropy(self, lam: Sequence[float]) -> float:
        """ℰ(τ) for protocol λ (no gradient)."""
        amp = self._embed(self.final_state(lam))
        return float(self.battery.ergotropy(amp @ amp.conj().T))

    def value_and_grad(self, lam: Sequence[float]) -> tuple[float, np.ndarray]:
        """ℰ(τ) and ∂ℰ/∂λ_k (k = 0..K−1), exact."""
        lam = np.asarray(lam, dtype=float)
        d = len(self.psi0)
        psi, dpsi = self.psi0, []
        for x in lam:
            h = self.h0 + x * self.h1
            aug = sp.bmat([[h, self.h1], [None, h]], format="csr") * (-1j * self.dt)
            out = expm_multiply(aug, np.concatenate([np.zeros(d, complex), psi]))
            dpsi.append(out[:d])
            psi = out[d:]
        amp = self._embed(psi)
        rho = amp @ amp.conj().T
        r, v = np.linalg.eigh(rho)                              # ascending r
        order = np.argsort(-r)                                  # r↓ meets ε↑
        eps = np.sort(self.levels)
        passive = (v[:, order] * eps) @ v[:, order].conj().T
        o = np.diag(self.levels) - passive
        value = float(np.real(np.trace(rho @ o)))
        chi = (o @ amp).reshape(-1)[self.sector]                 # (O ⊗ 1) ψ_K on the sector
        grad = np.zeros(len(lam))
        for k in range(len(lam) - 1, -1, -1):
            grad[k] = 2.0 * np.real(np.vdot(chi, dpsi[k]))
            chi = expm_multiply(1j * self.dt * (self.h0 + lam[k] * self.h1), chi)   # U_k† χ
        self.n_evals += 1
        return value, grad


@dataclass
class GrapeResult:
    ergotropy: float                 # best ℰ(τ) found (this module's propagation)
    protocol: np.ndarray             # (K,) λ_k, units ω_0
    verified: float                  # ℰ(τ) of that protocol on the exact driver
    starts: list[float]              # final ℰ of every start
    evaluations: int
    wall_s: float


def initial_guesses(n_steps: int, n_starts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Starting points in the sine coordinates x (λ = mid + half·sin x): random, of amplitude
    up to π/4 (λ well inside the box, so every bound is still reachable)."""
    return [rng.uniform(-np.pi / 4, np.pi / 4, n_steps) for _ in range(n_starts)]


def grape_dicke_battery(battery: DickeBattery, n_steps: int = 28, dt: float = 0.2, n_starts: int = 8,
          seed: int = 0, maxiter: int = 500, bounds: tuple[float, float] | None = None,
          verbose: bool = False) -> GrapeResult:
    """Multi-start L-BFGS within the λ bounds; the best protocol is re-checked on the exact
    driver (``create_backend("statevector")``).

    The bounds are imposed by the map λ = mid + half·sin(x) with x unconstrained (chain rule:
    ∂ℰ/∂x_k = half·cos(x_k) ∂ℰ/∂λ_k). Box-constrained L-BFGS-B on λ directly was measured to
    stall at bang-bang corners (Env1: 3.34 from 8 of 10 starts, against 4.27 with the map).
    """
    prob = ChargingProblem(battery, dt, bounds)
    lo, hi = prob.bounds
    mid, half = 0.5 * (hi + lo), 0.5 * (hi - lo)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    best_val, best_x, finals = -np.inf, None, []

    def neg(x: np.ndarray) -> tuple[float, np.ndarray]:
        v, g = prob.value_and_grad(mid + half * np.sin(x))
        return -v, -g * half * np.cos(x)

    for i, x0 in enumerate(initial_guesses(n_steps, n_starts, rng)):
        res = minimize(neg, x0, jac=True, method="L-BFGS-B",
                       options={"maxiter": maxiter, "ftol": 1e-14, "gtol": 1e-10})
        val = -float(res.fun)
        finals.append(val)
        if verbose:
            print(f"  start {i}: ergotropy {val:.6f} ({res.nit} iterations, {time.perf_counter() - t0:.0f} s)",
                  flush=True)
        if val > best_val:
            best_val, best_x = val, np.clip(mid + half * np.sin(res.x), lo, hi)
    verified = verify(battery, best_x, dt)
    return GrapeResult(best_val, best_x, verified, finals, prob.n_evals, time.perf_counter() - t0)


def verify(battery: DickeBattery, protocol: np.ndarray, dt: float) -> float:
    """ℰ(τ) of ``protocol`` on the exact statevector driver."""
    backend = create_backend("statevector")
    [res] = backend.run([Experiment(battery, np.asarray(protocol).reshape(-1, 1), dt,
                                    MeasurementSchedule("energies", final_only=True))])
    return float(battery.ergotropy(res.qubit_density[-1]))
