"""Model-based baselines for the XY-chain fidelity objective of seed 004: GRAPE, MPC, random.

Conventions: fields u are (K, N) arrays in units of J (ħ = 1), piecewise constant over steps
of length ``dt`` (time in 1/J); states are full-space vectors of length 2^N in the qhil basis
(qubit 0 = most significant bit). The fidelity is F = |⟨target|ψ⟩|².

* :func:`grape_xy_chain` — gradient ascent on the field schedule (L-BFGS-B within the field bounds),
  with the exact gradient of the exact step propagators exp(−i H(u_k) dt) (eigendecomposition
  and the Daleckii–Krein formula, no small-dt approximation). Objective ``"final"`` is F(K·dt);
  ``"mean"`` is the mean of F over steps 1..K, the fidelity term that the environment rewards.
* :class:`MPCPolicy` — receding horizon: each step it estimates the state from the
  measured observables in the observation (:func:`estimate_state`), searches the nominal
  (noise-free) model over a short horizon and plays the first action.
* :class:`RandomPolicy` — uniform over the action space.

GRAPE and MPC see only the nominal model: the field noise of the environment, the supply chain
and the security / CO2 terms are not part of their objective.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
from scipy.optimize import minimize

from qhil.drivers import Model, ValidationError
from qhil.drivers import checks as check
from qhil.drivers.backend import check_seed
from qhil.drivers.pauli import pauli_matrix
from qhil.drivers import invariant_sector


# -- exact propagators and their derivatives ------------------------------------------------

def _dense_ops(model: Model) -> tuple[np.ndarray, list[np.ndarray]]:
    return model.drift().toarray().astype(complex), [h.toarray().astype(complex) for h in model.control_operators()]


def step_unitaries(model: Model, fields: np.ndarray, dt: float, derivatives: bool = False
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """U_k = exp(−i H(u_k) dt) for each row of ``fields`` (K, N): (K, d, d); with
    ``derivatives`` also ∂U_k/∂u_{k,n}: (K, N, d, d), exact (Daleckii–Krein)."""
    h0, hs = _dense_ops(model)
    fields = np.atleast_2d(np.asarray(fields, dtype=float))
    K, d = fields.shape[0], h0.shape[0]
    U = np.empty((K, d, d), dtype=complex)
    dU = np.empty((K, len(hs), d, d), dtype=complex) if derivatives else None
    for k, u in enumerate(fields):
        w, v = np.linalg.eigh(h0 + sum(uk * hk for uk, hk in zip(u, hs)))
        e = np.exp(-1j * w * dt)
        U[k] = (v * e) @ v.conj().T
        if derivatives:
            # d exp(A)[E] = V (Φ ∘ V†EV) V†, A = −i dt H, Φ_ij = (e^a_i − e^a_j)/(a_i − a_j)
            a = -1j * w * dt
            diff = a[:, None] - a[None, :]
            same = np.abs(diff) < 1e-10
            phi = np.where(same, e[:, None], (e[:, None] - e[None, :]) / np.where(same, 1.0, diff))
            for n, hn in enumerate(hs):
                dU[k, n] = v @ (phi * (v.conj().T @ (-1j * dt * hn) @ v)) @ v.conj().T
    return U, dU


def fidelity_trajectory(model: Model, fields: np.ndarray, dt: float, psi0: np.ndarray | None = None,
                        target: np.ndarray | None = None) -> np.ndarray:
    """F after 0, 1, …, K steps: (K+1,)."""
    psi = model.initial_state() if psi0 is None else np.asarray(psi0, dtype=complex)
    target = _default_target(model, target)
    U, _ = step_unitaries(model, fields, dt)
    out = [abs(np.vdot(target, psi)) ** 2]
    for Uk in U:
        psi = Uk @ psi
        out.append(abs(np.vdot(target, psi)) ** 2)
    return np.array(out)


@runtime_checkable
class HasTarget(Protocol):
    """A model with a default target state (the XY chain's transfer target)."""

    def target_state(self) -> np.ndarray: ...


@runtime_checkable
class ResettablePolicy(Protocol):
    """A policy with per-episode state (MPC's plan, GRAPE's open-loop schedule)."""

    def reset(self) -> None: ...


def _default_target(model: Model, target: np.ndarray | None) -> np.ndarray:
    if target is not None:
        return np.asarray(target, dtype=complex)
    if not isinstance(model, HasTarget):
        raise ValidationError("target", f"the {model.kind} model has no default target")
    return model.target_state()


def _step_weights(objective: str, K: int) -> np.ndarray:
    if objective == "final":
        w = np.zeros(K)
        w[-1] = 1.0
        return w
    if objective == "mean":
        return np.full(K, 1.0 / K)
    raise ValidationError("objective", f"unknown objective {objective!r}", "final, mean")


def fidelity_objective(model: Model, fields: np.ndarray, dt: float, psi0: np.ndarray | None = None,
                       target: np.ndarray | None = None, objective: str = "final"
                       ) -> tuple[float, np.ndarray]:
    """J = Σ_k w_k F_k (``final``: F_K; ``mean``: mean over k = 1..K) and its exact gradient
    dJ/du, shape (K, N). Backward pass: b_K = w_K c_K* ⟨t|, b_j = b_{j+1} U_{j+1} + w_j c_j* ⟨t|,
    dJ/du_{j,n} = 2 Re(b_j ∂_n U_j ψ_{j−1}) with c_k = ⟨t|ψ_k⟩."""
    fields = np.atleast_2d(np.asarray(fields, dtype=float))
    K = fields.shape[0]
    psi = model.initial_state() if psi0 is None else np.asarray(psi0, dtype=complex)
    t = _default_target(model, target)
    w = _step_weights(objective, K)
    U, dU = step_unitaries(model, fields, dt, derivatives=True)
    psis = [psi]
    for Uk in U:
        psis.append(Uk @ psis[-1])
    c = np.array([np.vdot(t, p) for p in psis[1:]])
    value = float(np.sum(w * np.abs(c) ** 2))
    grad = np.zeros_like(fields)
    b = np.zeros_like(t)
    for j in range(K - 1, -1, -1):
        b = (b @ U[j + 1] if j + 1 < K else b) + w[j] * np.conj(c[j]) * t.conj()
        grad[j] = 2.0 * np.real(np.einsum("i,nij,j->n", b, dU[j], psis[j]))
    return value, grad


# -- GRAPE ---------------------------------------------------------------------------------

@dataclass
class GrapeResult:
    """An optimised schedule: fields (K, N) in units of J, the objective reached, F after each
    step (K+1,), the optimiser's iterations and its convergence message."""

    fields: np.ndarray
    objective: float
    fidelities: np.ndarray
    n_iter: int
    message: str
    history: list[float] = field(default_factory=list)


def grape_xy_chain(model: Model, n_steps: int, dt: float, *, psi0: np.ndarray | None = None,
          target: np.ndarray | None = None, objective: str = "final",
          bounds: tuple[float, float] | None = None, init: np.ndarray | None = None,
          seed: int | None = 0, maxiter: int = 200, restarts: int = 1) -> GrapeResult:
    """Maximise the fidelity objective over a (n_steps, N) field schedule with L-BFGS-B.

    bounds: field range per site (default the model's control bounds); init: a starting
    schedule (default uniform random within the bounds, from ``seed``); ``restarts`` random
    starts, the best is kept (the first uses ``init`` when given).
    """
    if not isinstance(model, Model):
        raise ValidationError("model", f"expected a qhil Model, got {type(model).__name__}")
    n_steps = check.integer("n_steps", n_steps, 1, 100_000)
    dt = check.finite_float("dt", dt, 0.0, 1e6, lo_open=True)
    maxiter = check.integer("maxiter", maxiter, 1, 10**7)
    restarts = check.integer("restarts", restarts, 1, 10_000)
    _step_weights(objective, 1)                                   # the objective's name
    lo_m, hi_m, _ = model.control_bounds
    if bounds is None:
        lo, hi = float(lo_m.min()), float(hi_m.max())
    else:
        try:
            lo, hi = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise ValidationError("bounds", f"{bounds!r}", "(lo, hi), finite, lo < hi") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValidationError("bounds", f"({lo}, {hi})", "(lo, hi), finite, lo < hi")
    n = len(model.controls)
    rng = np.random.default_rng(check_seed(seed))
    best: GrapeResult | None = None
    for r in range(max(1, restarts)):
        x0 = np.asarray(init, dtype=float).reshape(n_steps, n) if (init is not None and r == 0) \
            else rng.uniform(lo, hi, (n_steps, n))
        history: list[float] = []

        def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
            v, g = fidelity_objective(model, x.reshape(n_steps, n), dt, psi0, target, objective)
            history.append(v)
            return -v, -g.ravel()

        res = minimize(fun, np.clip(x0, lo, hi).ravel(), jac=True, method="L-BFGS-B",
                       bounds=[(lo, hi)] * (n_steps * n), options={"maxiter": maxiter})
        u = res.x.reshape(n_steps, n)
        out = GrapeResult(u, -float(res.fun), fidelity_trajectory(model, u, dt, psi0, target),
                          int(res.nit), str(res.message), history)
        if best is None or out.objective > best.objective:
            best = out
    assert best is not None
    return best


class GrapePolicy:
    """Plays a GRAPE schedule open loop in a :class:`~qhil.envs.supply_chain.SupplyChainEnv`.

    Continuous variant: a_k = u_k / B_on. Discrete variant: the GRAPE fields are optimised
    within [0, B_on], each site is rounded to on (u > B_on/2) or off, and the rounded
    schedule is polished by single-site flips that raise the objective (exact, nominal model)
    until none does; ``self.actions`` holds the resulting action indices and
    ``self.rounded_objective`` their objective.
    """

    def __init__(self, env: Any, objective: str = "mean", n_steps: int | None = None,
                 seed: int | None = 0, maxiter: int = 200, restarts: int = 1) -> None:
        self.env = env.unwrapped
        B = self.env.field_strength
        bounds = (-B, B) if self.env.continuous else (0.0, B)
        K = n_steps or self.env.max_steps
        self.result = grape_xy_chain(self.env.model, K, self.env.dt, target=self.env.target, objective=objective,
                            bounds=bounds, seed=seed, maxiter=maxiter, restarts=restarts)
        self.actions: np.ndarray | None = None
        self.rounded_objective: float | None = None
        if not self.env.continuous:
            bits = (self.result.fields > B / 2).astype(int)
            self.actions, self.rounded_objective = polish_on_off(self.env, bits, objective)
        self._k = 0

    def reset(self) -> None:
        self._k = 0

    def __call__(self, obs: np.ndarray) -> Any:
        k = min(self._k, len(self.result.fields) - 1)
        self._k += 1
        if self.actions is not None:
            return int(self.actions[k])
        return (self.result.fields[k] / self.env.field_strength).astype(np.float32)


def polish_on_off(env: Any, bits: np.ndarray, objective: str = "mean", max_sweeps: int = 20
                  ) -> tuple[np.ndarray, float]:
    """Greedy single-site flips of an on/off schedule ``bits`` (K, N) that raise the fidelity
    objective on the nominal model; returns (action indices (K,), objective)."""
    n = env.n_spins
    U, _ = step_unitaries(env.model, env.patterns * env.field_strength, env.dt)
    psi0, t = env.model.initial_state(), env.target
    w = _step_weights(objective, len(bits))
    weights_of_bits = 2 ** np.arange(n - 1, -1, -1)

    def value(acts: np.ndarray) -> float:
        psi, total = psi0, 0.0
        for wk, a in zip(w, acts):
            psi = U[a] @ psi
            total += wk * abs(np.vdot(t, psi)) ** 2
        return total

    acts = bits @ weights_of_bits
    best = value(acts)
    for _ in range(max_sweeps):
        improved = False
        for k in range(len(acts)):
            for site in range(n):
                trial = acts.copy()
                trial[k] ^= 1 << (n - 1 - site)
                v = value(trial)
                if v > best + 1e-12:
                    acts, best, improved = trial, v, True
        if not improved:
            break
    return acts.astype(int), float(best)


# -- state estimation and MPC ----------------------------------------------------------------

_DESIGNS: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _estimation_design(model: Model, labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sector, Hermitian basis E (m, d, d), design A (o, m) with ⟨P_o⟩ = A x), cached."""
    key = (model.key, labels)
    if key not in _DESIGNS:
        sector = invariant_sector(model)
        d = len(sector)
        mats = np.array([pauli_matrix(lab, model.n_qubits)[np.ix_(sector, sector)] for lab in labels])
        # real parameters x: ρ = Σ x_m E_m over a Hermitian basis E_m of d×d matrices
        basis = []
        for a in range(d):
            e = np.zeros((d, d), complex); e[a, a] = 1; basis.append(e)
        for a, b in itertools.combinations(range(d), 2):
            e = np.zeros((d, d), complex); e[a, b] = e[b, a] = 1; basis.append(e)
            e = np.zeros((d, d), complex); e[a, b], e[b, a] = -1j, 1j; basis.append(e)
        E = np.array(basis)
        _DESIGNS[key] = (sector, E, np.real(np.einsum("oij,mji->om", mats, E)))
    return _DESIGNS[key]


def estimate_state(model: Model, labels: tuple[str, ...], values: np.ndarray,
                   prior: np.ndarray | None = None, prior_weight: float = 1e-3) -> np.ndarray:
    """A pure-state estimate (2^N,) from measured Pauli expectation values.

    Least squares for a Hermitian ρ on the model's invariant sector (the subspace its
    dynamics cannot leave): min Σ_o (Tr ρ P_o − v_o)² + μ‖ρ − ρ_prior‖² with μ = ``prior_weight``
    (the prior, e.g. the model's prediction, fills directions the labels do not fix), then the
    leading eigenvector. Exact for the XY chain's one-excitation sector measured with
    ``second_order`` labels.
    """
    sector, E, A = _estimation_design(model, tuple(labels))
    d = len(sector)
    if prior is None:
        x_prior = np.zeros(len(E))
        x_prior[:d] = 1.0 / d
    else:
        p = np.asarray(prior, dtype=complex)[sector]
        rho_p = np.outer(p, p.conj())
        x_prior = np.real(np.einsum("ij,mji->m", rho_p, E)) / np.real(np.einsum("mij,mji->m", E, E))
    mu = np.sqrt(prior_weight)
    lhs = np.vstack([A, mu * np.eye(len(E))])
    rhs = np.concatenate([np.asarray(values, float), mu * x_prior])
    x = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    rho = np.einsum("m,mij->ij", x, E)
    w, v = np.linalg.eigh(rho)
    psi = np.zeros(model.dim, dtype=complex)
    psi[sector] = v[:, -1]
    return psi


class MPCPolicy:
    """Receding-horizon control of the chain's fidelity on the nominal model.

    Each step: estimate ψ from the observation's measured part (or read it, with the
    ``full_state`` regime), with the model's one-step prediction as prior; then plan
    ``horizon`` steps (never past the episode's end) maximising Σ_h F or the final F
    (``objective`` "sum" / "final") and play the first action. Discrete variant: exhaustive
    search over the 2^N patterns per step (2^(N·horizon) sequences). Continuous variant:
    GRAPE over the horizon, warm-started from the previous plan.
    """

    def __init__(self, env: Any, horizon: int = 3, objective: str = "sum", maxiter: int = 50) -> None:
        self.env = env.unwrapped
        if objective not in ("sum", "final"):
            raise ValidationError("objective", f"unknown objective {objective!r}", "sum, final")
        self.horizon = check.integer("horizon", horizon, 1, 6)
        self.objective, self.maxiter = objective, check.integer("maxiter", maxiter, 1, 10**6)
        model = self.env.model
        self.target = self.env.target
        if not self.env.continuous:
            fields = self.env.patterns * self.env.field_strength
            self._U, _ = step_unitaries(model, fields, self.env.dt)
        self.reset()

    def reset(self) -> None:
        self._k = 0
        self._pred = self.env.model.initial_state()
        self._plan: np.ndarray | None = None

    def estimate(self, obs: np.ndarray) -> np.ndarray:
        env = self.env
        if env.schedule.full_state:
            d = env.model.dim
            return obs[:d].astype(float) + 1j * obs[d:2 * d].astype(float)
        values = obs[: len(env.observation_labels)]
        return estimate_state(env.model, env.observation_labels, values, prior=self._pred)

    def __call__(self, obs: np.ndarray) -> Any:
        psi = self.estimate(obs)
        H = max(1, min(self.horizon, self.env.max_steps - self._k))
        if self.env.continuous:
            action, fields = self._plan_continuous(psi, H)
        else:
            action = self._plan_discrete(psi, H)
            fields = self.env.patterns[action] * self.env.field_strength
        U, _ = step_unitaries(self.env.model, fields[None, :], self.env.dt)
        self._pred = U[0] @ psi
        self._k += 1
        return action

    def _plan_discrete(self, psi: np.ndarray, H: int) -> int:
        nA = len(self._U)
        states = psi[None, :]                      # (nA^h, d), sequences in lexicographic order
        score = np.zeros(1)
        for h in range(H):
            states = np.einsum("aij,sj->sai", self._U, states).reshape(-1, psi.size)
            score = np.repeat(score, nA)
            f = np.abs(states @ self.target.conj()) ** 2
            score = score + f if (self.objective == "sum" or h == H - 1) else score
        best = int(np.argmax(score))
        return best // nA ** (H - 1)

    def _plan_continuous(self, psi: np.ndarray, H: int) -> tuple[np.ndarray, np.ndarray]:
        B = self.env.field_strength
        init = None
        if self._plan is not None and len(self._plan) > 1:
            init = np.vstack([self._plan[1:], self._plan[-1:]])[:H]
            if len(init) < H:
                init = np.vstack([init, np.zeros((H - len(init), init.shape[1]))])
        res = grape_xy_chain(self.env.model, H, self.env.dt, psi0=psi, target=self.target,
                    objective="mean" if self.objective == "sum" else "final",
                    bounds=(-B, B), init=init, seed=self._k, maxiter=self.maxiter)
        self._plan = res.fields
        return (res.fields[0] / B).astype(np.float32), res.fields[0]


class RandomPolicy:
    """Uniform random actions from the environment's action space, seeded."""

    def __init__(self, env: Any, seed: int | None = 0) -> None:
        self.space = env.action_space
        self.space.seed(check_seed(seed))

    def reset(self) -> None:
        pass

    def __call__(self, obs: np.ndarray) -> Any:
        return self.space.sample()


# -- evaluation ------------------------------------------------------------------------------

@dataclass
class EpisodeStats:
    """One episode: return (Σ r), fidelity after each step (T,), and the raw components."""

    ret: float
    fidelities: np.ndarray
    security: np.ndarray
    emission: np.ndarray

    @property
    def mean_fidelity(self) -> float:
        return float(np.mean(self.fidelities))

    @property
    def max_fidelity(self) -> float:
        return float(np.max(self.fidelities))


def rollout(env: Any, policy: Callable[[np.ndarray], Any], seed: int | None = None) -> EpisodeStats:
    """Run one episode of ``policy`` (a callable obs → action, with an optional ``reset()``)."""
    obs, _ = env.reset(seed=seed)
    if isinstance(policy, ResettablePolicy):
        policy.reset()
    ret, fids, sec, em = 0.0, [], [], []
    done = False
    while not done:
        obs, r, terminated, truncated, info = env.step(policy(obs))
        ret += r
        fids.append(info["fidelity"]); sec.append(info["security"]); em.append(info["emission"])
        done = terminated or truncated
    return EpisodeStats(ret, np.array(fids), np.array(sec), np.array(em))
