"""Seed 004's quantum-inspired secure and green supply-chain environment, ``SupplyChainEnv``
(alias ``SecuredGreenSCSEnv``, the paper's name; gymnasium id ``qhil/SecuredGreenSCS-v0``).

One step of the environment = one piecewise-constant control step of the XY chain of Eq. (1)
(via :class:`~qhil.envs.xy_chain.XYChain`, ħ = 1, time in units of 1/J) played through a
qhil backend, plus one period of a small classical supply chain. The reward is Eq. (45):

    r_t = α1·F̂_t + α2·R̂_t − α3·Ĉ_t,

each term min–max normalised over a sliding window of the last ``window`` values.

Where seed 004 is specific (Table I, Eq. 1–3, 44–45) this follows it: N = 3, J = 1, fields
on/off per site at strength 5 (a discrete action over the 2^N patterns), Gaussian field noise
at 0.05 (relative) each step, 3 warehouses of capacity 100 starting at 50, 50 steps per
episode, weights (1.0, 1.0, 0.5), F = |⟨ψ_target|ψ⟩|², default transfer |100⟩ → |001⟩.

Where the paper is silent the defaults below are ours (see also ``docs/seed004.md``):

* ``dt = π / (10·√2·|J|)``: ten steps of free evolution are the N = 3 perfect-transfer time
  J·t = π/√2, so fields-off evolution reaches F = 1 at steps 10, 30 and 50.
* Field noise is *additive*, B_n ← B_n + σ·ξ_n with σ = noise_level × field_strength
  (= 0.25 by default) on every site, on or off (Eq. 2's ΔH_noise); ξ is clipped at ±4 so the
  fields stay inside the model's bounds, field_strength·(1 + 4·noise_level).
* Demand: Poisson with mean 10 units per warehouse and step; lost sales (unmet demand is not
  back-ordered); an (s, S) replenishment rule, reorder point 20, order-up-to 50, zero lead time.
* Security score in [0, 1], starting at 0.5: +0.05 × (fraction of field "on", mean |B_n|/B_on)
  each step; a disruption (probability 0.1 per step) removes 0.1.
* CO2: the emission of one step is ``co2_per_energy × Σ_n B_n² × dt`` (applied field energy);
  the reward uses this per-step emission, the observation also carries the running total.
* Normalisation: the window holds the current value and up to ``window − 1`` earlier values of
  the same episode (default window 10, reset with the episode, the initial values of reset()
  included); when max = min the normalised value is 0.5.
* The episode ends (``terminated``) after ``max_steps``: the horizon is part of the MDP
  and the elapsed fraction t/T is part of the observation.
* ``normalization="fixed"`` (an ablation, not the paper's) scales each term by its physical
  range instead of the window's; ``info["reward_terms"]`` = (F̂, R̂, −Ĉ), so that
  reward = reward_terms · weights.

Observation: the Pauli expectation values that the measurement schedule names (default
``second_order``, measured after every step — ``every`` and ``final_only`` of the schedule are
not used), then the classical variables (inventories / capacity, last demand / capacity,
security, this step's emission and the running total, both / the all-on nominal emission,
t / T; the demand is clipped at the capacity in the observation only). The raw wavefunction
(Re ψ, Im ψ) is observed only with the ``full_state`` regime, which only simulators accept.
The fidelity in the reward is exact where the backend returns
the qubit density (simulators); elsewhere it is estimated from measured Z-strings, which
needs a computational-basis target.
"""
from __future__ import annotations

import itertools
import warnings
from collections import deque
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from qhil.drivers import (Backend, Experiment, MeasurementSchedule, ValidationError,
                          create_backend)
from qhil.drivers import checks as check

from .figures import fidelity_density
from .xy_chain import XYChain

#: Clip of the standard-normal field noise, in standard deviations.
NOISE_CLIP = 4.0


class WindowNormalizer:
    """Min–max normalisation over a sliding window of the last ``window`` values.

    ``update(x)`` appends x and returns (x − min) / (max − min) over the window, which
    includes x itself; ``degenerate`` (default 0.5) when max − min ≤ ``tol``.
    """

    def __init__(self, window: int, degenerate: float = 0.5, tol: float = 1e-12) -> None:
        self.window = check.integer("window", window, 1, 1_000_000)
        self.degenerate = float(degenerate)
        self.tol = float(tol)
        self._values: deque[float] = deque(maxlen=self.window)

    def reset(self, initial: float | None = None) -> None:
        self._values.clear()
        if initial is not None:
            self._values.append(float(initial))

    def update(self, x: float) -> float:
        self._values.append(float(x))
        lo, hi = min(self._values), max(self._values)
        if hi - lo <= self.tol:
            return self.degenerate
        return (float(x) - lo) / (hi - lo)


def field_patterns(n_spins: int) -> np.ndarray:
    """(2^N, N) on/off patterns; action a ↦ the bits of a, site 1 = most significant bit."""
    return np.array(list(itertools.product((0.0, 1.0), repeat=n_spins)))


def z_string_labels(n: int) -> tuple[str, ...]:
    """Every product of Z's over a non-empty subset of n qubits (sparse labels)."""
    return tuple("".join(f"Z{q}" for q in s) for r in range(1, n + 1)
                 for s in itertools.combinations(range(n), r))


def basis_fidelity_from_z(bits: str, z_values: dict[str, float]) -> float:
    """P(bits) = ⟨Π_j (1 + s_j Z_j)/2⟩ = 2^−N Σ_S Π_{j∈S} s_j ⟨Z_S⟩, s_j = +1 for '0', −1 for '1'."""
    n = len(bits)
    total = 1.0
    for r in range(1, n + 1):
        for s in itertools.combinations(range(n), r):
            sign = (-1) ** sum(bits[q] == "1" for q in s)
            total += sign * z_values["".join(f"Z{q}" for q in s)]
    return total / 2 ** n


class SupplyChainEnv(gym.Env):
    """XY-chain control coupled to a 3-warehouse supply chain (seed 004), on any qhil backend.

    Parameters (units: ħ = 1, energies and fields in units of J = ``coupling``, time in 1/J):
        n_spins, coupling:        N and J of Eq. (1)
        field_strength:           B_on, the field when a site is "on" (Table I: 5)
        noise_level:              σ/B_on of the additive Gaussian field noise (Table I: 0.05)
        continuous:               False: Discrete(2^N) on/off patterns; True: Box([−1, 1]^N),
                                  B_n = a_n × B_on
        initial_bits, target:     initial basis state; target bit string or state vector (2^N,)
        dt:                       step length (default π/(10·√2·|J|))
        n_warehouses, capacity, initial_inventory, demand_mean, reorder_point, order_up_to:
                                  the supply chain (units of goods)
        security_init, security_gain, disruption_prob, disruption_drop: the security score
        co2_per_energy:           emission per unit field energy Σ B² dt
        weights:                  (α1, α2, α3) of Eq. (45)
        window:                   W of the min–max normalisation, in steps
        normalization:            "window" (Eq. 45, default) or "fixed": each term scaled by its
                                  physical range (F, security ∈ [0, 1]; emission ∈ [0, max]) —
                                  an ablation giving a stationary reward
        max_steps:                steps per episode (Table I: 50)
        schedule:                 what is measured after each step (``every`` is ignored)
        backend:                  a qhil Backend (default: a fresh exact statevector backend)
        fidelity_from:            "auto" (density when the backend gives it, else Z-strings),
                                  "density" or "measurement"

    Actions: see :meth:`nominal_fields` (a bad discrete index or a non-finite action is refused;
    a continuous action beyond [−1, 1] is clipped and reported in ``info["clipped"]``).
    """

    metadata = {"render_modes": []}
    #: The episode's figures of merit, as the training loop records them: name → (``info`` key,
    #: reduction over the episode's steps: mean, final, max, min or sum).
    episode_figures: dict[str, tuple[str, str]] = {
        "mean_fidelity": ("fidelity", "mean"), "final_fidelity": ("fidelity", "final"),
        "max_fidelity": ("fidelity", "max"), "security": ("security", "final"),
        "co2_total": ("co2_total", "final"), "unmet": ("unmet", "sum")}
    #: The two figures in the run store's headline columns, and the per-step figure kept with the best episode.
    headline_figures: tuple[str, str] = ("mean_fidelity", "final_fidelity")
    trajectory_figure: str = "fidelity"

    def __init__(self, n_spins: int = 3, coupling: float = 1.0, field_strength: float = 5.0,
                 noise_level: float = 0.05, continuous: bool = False,
                 initial_bits: str | None = None, target: str | Sequence[complex] | None = None,
                 dt: float | None = None, n_warehouses: int = 3, capacity: float = 100.0,
                 initial_inventory: float = 50.0, demand_mean: float = 10.0,
                 reorder_point: float = 20.0, order_up_to: float = 50.0,
                 security_init: float = 0.5, security_gain: float = 0.05,
                 disruption_prob: float = 0.1, disruption_drop: float = 0.1,
                 co2_per_energy: float = 0.01, weights: Sequence[float] = (1.0, 1.0, 0.5),
                 window: int = 10, normalization: str = "window", max_steps: int = 50,
                 schedule: MeasurementSchedule | str | None = None,
                 backend: Backend | None = None, fidelity_from: str = "auto") -> None:
        super().__init__()
        self.n_clipped, self._clipped_now, self._clip_warned = 0, 0, False
        n = check.integer("n_spins", n_spins, 1, 12)
        self.field_strength = check.finite_float("field_strength", field_strength, 0.0, 1000.0, lo_open=True)
        self.noise_level = check.finite_float("noise_level", noise_level, 0.0, 10.0)
        self.continuous = bool(continuous)
        bound = self.field_strength * (1.0 + NOISE_CLIP * self.noise_level)
        target_bits = target if isinstance(target, str) else None
        self.model = XYChain(n_spins=n, coupling=coupling, field_bound=bound,
                             initial_bits=initial_bits, target_bits=target_bits)
        if target is None or isinstance(target, str):
            self.target_bits: str | None = self.model.target_bits
            self.target = self.model.target_state()
        else:
            t = np.asarray(target, dtype=complex).reshape(-1)
            if t.shape != (self.model.dim,) or not np.isfinite(t).all() or np.linalg.norm(t) == 0:
                raise ValidationError("target", f"expected a bit string or a state of length {self.model.dim}")
            self.target_bits, self.target = None, t / np.linalg.norm(t)
        J = self.model.coupling
        default_dt = np.pi / (10 * np.sqrt(2) * abs(J)) if J != 0 else 0.1
        self.dt = check.finite_float("dt", default_dt if dt is None else dt, 0.0, 1000.0, lo_open=True)
        self.n_warehouses = check.integer("n_warehouses", n_warehouses, 1, 1000)
        self.capacity = check.finite_float("capacity", capacity, 0.0, 1e9, lo_open=True)
        self.initial_inventory = check.finite_float("initial_inventory", initial_inventory, 0.0, self.capacity)
        self.demand_mean = check.finite_float("demand_mean", demand_mean, 0.0, 1e9)
        self.order_up_to = check.finite_float("order_up_to", order_up_to, 0.0, self.capacity)
        self.reorder_point = check.finite_float("reorder_point", reorder_point, 0.0, self.order_up_to)
        self.security_init = check.finite_float("security_init", security_init, 0.0, 1.0)
        self.security_gain = check.finite_float("security_gain", security_gain, 0.0, 1.0)
        self.disruption_prob = check.finite_float("disruption_prob", disruption_prob, 0.0, 1.0)
        self.disruption_drop = check.finite_float("disruption_drop", disruption_drop, 0.0, 1.0)
        self.co2_per_energy = check.finite_float("co2_per_energy", co2_per_energy, 0.0, 1e9)
        self.weights = check.float_vector("weights", weights, 0.0, 1e6, 3, 3)
        self.window = check.integer("window", window, 1, 1_000_000)
        if normalization not in ("window", "fixed"):
            raise ValidationError("normalization", f"unknown value {normalization!r}", "window, fixed")
        self.normalization = normalization
        self.max_steps = check.integer("max_steps", max_steps, 1, 100_000)
        if schedule is None:
            schedule = MeasurementSchedule("second_order")
        elif isinstance(schedule, str):
            schedule = MeasurementSchedule(schedule)
        if not isinstance(schedule, MeasurementSchedule):
            raise ValidationError("schedule", f"expected a MeasurementSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        if backend is not None and not isinstance(backend, Backend):
            raise ValidationError("backend", f"expected a qhil Backend or None, got {type(backend).__name__}")
        self._own_backend = backend is None
        self.backend = backend if backend is not None else create_backend("statevector")
        if fidelity_from not in ("auto", "density", "measurement"):
            raise ValidationError("fidelity_from", f"unknown value {fidelity_from!r}", "auto, density, measurement")
        caps = self.backend.capabilities
        if schedule.full_state and not caps.full_state:
            raise ValidationError("schedule.observables", f"the full state is not available on the "
                                  f"{self.backend.name} driver", "Pauli labels or a measured regime")
        if fidelity_from == "auto":
            fidelity_from = "density" if caps.qubit_density else "measurement"
        if fidelity_from == "density" and not caps.qubit_density:
            raise ValidationError("fidelity_from", f"the {self.backend.name} driver returns no density",
                                  "measurement")
        if fidelity_from == "measurement" and self.target_bits is None:
            raise ValidationError("target", "a fidelity from measurements needs a basis-state target",
                                  "a bit string, or a simulator backend")
        self.fidelity_from = fidelity_from

        # What is sent to the backend: the observed labels, plus Z-strings when F is measured.
        self.observation_labels = schedule.labels(n)
        labels = list(self.observation_labels)
        if fidelity_from == "measurement":
            labels += [z for z in z_string_labels(n) if z not in labels]
        self._labels = tuple(labels)
        self._run_schedule = MeasurementSchedule("full_state", final_only=True) if schedule.full_state \
            else MeasurementSchedule(self._labels, final_only=True, shots=schedule.shots)

        self.patterns = field_patterns(n)
        if self.continuous:
            self.action_space = spaces.Box(-1.0, 1.0, shape=(n,), dtype=np.float32)
        else:
            self.action_space = spaces.Discrete(2 ** n)
        n_quantum = 2 * self.model.dim if schedule.full_state else len(self.observation_labels)
        e_max = (bound / self.field_strength) ** 2
        lo = np.concatenate([-np.ones(n_quantum), np.zeros(2 * self.n_warehouses + 4)])
        hi = np.concatenate([np.ones(n_quantum), np.ones(2 * self.n_warehouses),
                             [1.0, e_max, e_max * self.max_steps, 1.0]])
        self.observation_space = spaces.Box(lo.astype(np.float32), hi.astype(np.float32), dtype=np.float32)
        self._nominal_emission = self.co2_per_energy * n * self.field_strength ** 2 * self.dt
        self._norm = [WindowNormalizer(self.window) for _ in range(3)]
        # "fixed": the physical ranges instead of the window's (an ablation, not the paper's)
        self._fixed_range = ((0.0, 1.0), (0.0, 1.0), (0.0, self._nominal_emission * e_max))
        self._exp: Experiment | None = None      # the episode so far: ψ(0), the fields played
        self._t = 0

    # -- the action → field map ---------------------------------------------------------
    @property
    def n_spins(self) -> int:
        return self.model.n_spins

    def nominal_fields(self, action: Any) -> np.ndarray:
        """Noise-free fields (N,) in units of J for an action (pattern index or Box vector).

        Discrete: an integer pattern index in 0..2^N − 1, else a ValidationError. Continuous:
        finite numbers (else a ValidationError); components outside [−1, 1] are CLIPPED and
        reported — ``info["clipped"]`` (components clipped this step), :attr:`n_clipped` (over
        the env's life) and one ``RuntimeWarning`` per env naming the bounds; excursions
        within 1e-6 are rounding and clipped silently."""
        n_pat = len(self.patterns)
        if self.continuous:
            try:
                a = np.asarray(action, dtype=float).reshape(self.n_spins)
            except (TypeError, ValueError):
                raise ValidationError("action", f"expected {self.n_spins} numbers, got {action!r}",
                                      f"shape ({self.n_spins},) in [-1, 1]") from None
            if not np.all(np.isfinite(a)):
                raise ValidationError("action", f"{a.tolist()} is not finite", "numbers in [-1, 1]")
            over = np.abs(a) > 1.0 + 1e-6
            self._clipped_now = int(over.sum())
            if self._clipped_now:
                self.n_clipped += self._clipped_now
                if not self._clip_warned:
                    self._clip_warned = True
                    warnings.warn(f"action {a.tolist()} outside the bounds [-1, 1] was clipped to them "
                                  "(reported once per env; info['clipped'] and n_clipped count them)",
                                  RuntimeWarning, stacklevel=3)
            return np.clip(a, -1.0, 1.0) * self.field_strength
        try:
            x = np.asarray(action).reshape(())
            a = int(x)
            exact = float(x) == a
        except (TypeError, ValueError, OverflowError):
            raise ValidationError("action", f"expected a pattern index, got {action!r}", f"0..{n_pat - 1}") from None
        if not exact or isinstance(action, (bool, np.bool_)):
            raise ValidationError("action", f"{action!r} is not an integer pattern index", f"0..{n_pat - 1}")
        if not 0 <= a < n_pat:
            raise ValidationError("action", f"{a} is out of range", f"0..{n_pat - 1}")
        self._clipped_now = 0
        return self.patterns[a] * self.field_strength

    def _noisy(self, fields: np.ndarray) -> np.ndarray:
        if self.noise_level == 0:
            return fields
        xi = np.clip(self._rng_q.standard_normal(fields.shape), -NOISE_CLIP, NOISE_CLIP)
        return fields + self.noise_level * self.field_strength * xi

    # -- quantum part --------------------------------------------------------------------
    @property
    def played_fields(self) -> np.ndarray:
        """(t, N) the (noisy) fields played so far this episode, units of J."""
        return np.array(self._exp.controls) if self._exp is not None else np.zeros((0, self.n_spins))

    def _measure(self) -> tuple[np.ndarray, float]:
        """Run the prefix played so far; return (quantum observation, fidelity)."""
        res = self.backend.run(self._exp, seed=int(self._rng_q.integers(2 ** 62)))[0]
        if self.schedule.full_state:
            psi = res.state[-1]
            obs = np.concatenate([psi.real, psi.imag])
        else:
            obs = res.values[-1][: len(self.observation_labels)]
        if self.fidelity_from == "density":
            fid = float(fidelity_density(res.qubit_density[-1], self.target))
        else:
            z = dict(zip(res.labels, res.values[-1]))
            fid = float(np.clip(basis_fidelity_from_z(self.target_bits, z), 0.0, 1.0))
        return obs, fid

    # -- gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        from qhil.drivers.backend import check_seed
        super().reset(seed=check_seed(seed))
        sq, ss = self.np_random.integers(2 ** 62, size=2)
        self._rng_q = np.random.default_rng(int(sq))     # field noise, backend seeds
        self._rng_sc = np.random.default_rng(int(ss))    # demand, disruptions
        self._t, self._clipped_now = 0, 0
        self._exp = Experiment(self.model, np.zeros((0, self.n_spins)), self.dt, self._run_schedule)
        self.inventory = np.full(self.n_warehouses, self.initial_inventory)
        self.last_demand = np.zeros(self.n_warehouses)
        self.security = self.security_init
        self.emission = 0.0
        self.co2_total = 0.0
        self._qobs, self.fidelity = self._measure()
        for norm, x in zip(self._norm, (self.fidelity, self.security, self.emission)):
            norm.reset(x)
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._t >= self.max_steps:
            raise RuntimeError("step() after the episode ended; call reset()")
        nominal = self.nominal_fields(action)
        fields = self._noisy(nominal)
        self._exp = self._exp.extend(fields[None, :])
        self._t += 1
        self._qobs, self.fidelity = self._measure()

        # supply chain: demand (lost sales), then (s, S) replenishment with zero lead time
        demand = self._rng_sc.poisson(self.demand_mean, self.n_warehouses).astype(float)
        served = np.minimum(demand, self.inventory)
        self.inventory = self.inventory - served
        received = np.where(self.inventory < self.reorder_point, self.order_up_to - self.inventory, 0.0)
        self.inventory = np.minimum(self.inventory + received, self.capacity)
        self.last_demand, self.last_served, self.last_received = demand, served, received

        on_fraction = float(np.mean(np.abs(nominal))) / self.field_strength
        disruption = bool(self._rng_sc.random() < self.disruption_prob)
        self.security = float(np.clip(self.security + self.security_gain * on_fraction
                                      - self.disruption_drop * disruption, 0.0, 1.0))
        self.emission = self.co2_per_energy * float(np.sum(fields ** 2)) * self.dt
        self.co2_total += self.emission

        raw = (self.fidelity, self.security, self.emission)
        if self.normalization == "window":
            f_hat, s_hat, c_hat = (norm.update(x) for norm, x in zip(self._norm, raw))
        else:
            f_hat, s_hat, c_hat = ((x - lo) / (hi - lo) if hi > lo else 0.5
                                   for x, (lo, hi) in zip(raw, self._fixed_range))
        a1, a2, a3 = self.weights
        reward = a1 * f_hat + a2 * s_hat - a3 * c_hat
        info = self._info()
        # reward = reward_terms @ weights, for replay buffers that re-weight stored terms
        info.update(normalized=(f_hat, s_hat, c_hat), reward_terms=np.array([f_hat, s_hat, -c_hat]),
                    disruption=disruption, fields=fields,
                    served=served, unmet=demand - served, received=received)
        terminated = self._t >= self.max_steps
        return self._observation(), float(reward), terminated, False, info

    def _observation(self) -> np.ndarray:
        nom = self._nominal_emission if self._nominal_emission > 0 else 1.0
        classical = np.concatenate([self.inventory / self.capacity,
                                    np.minimum(self.last_demand, self.capacity) / self.capacity,
                                    [self.security, self.emission / nom, self.co2_total / nom,
                                     self._t / self.max_steps]])
        obs = np.concatenate([self._qobs, classical]).astype(np.float32)
        # rounding can put an exact ⟨P⟩ a few ulp outside [−1, 1]
        return np.clip(obs, self.observation_space.low, self.observation_space.high)

    def close(self) -> None:
        """Close the backend if this environment created it."""
        if self._own_backend:
            self.backend.close()

    def reward_weights(self, step: int | None = None) -> np.ndarray:
        """(α1, α2, α3) of Eq. (45), float32: the weights of ``info["reward_terms"]`` (fixed: any
        step); the env owns them, replay buffers and on-policy agents are given them."""
        return np.asarray(self.weights, np.float32)

    def _info(self) -> dict[str, Any]:
        return {"fidelity": self.fidelity, "security": self.security, "emission": self.emission,
                "co2_total": self.co2_total, "inventory": self.inventory.copy(), "t": self._t,
                "time": self._t * self.dt, "clipped": self._clipped_now}


#: The seed's name for this environment (Sec. III-C1, Table I); the same class.
SecuredGreenSCSEnv = SupplyChainEnv

if "qhil/SecuredGreenSCS-v0" not in gym.registry:
    gym.register("qhil/SecuredGreenSCS-v0", entry_point="qhil.envs.supply_chain:SupplyChainEnv")
