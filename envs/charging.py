"""Charging the Dicke battery as a reinforcement-learning environment (seed 000, Sec. III A).

The charging time τ is split into K steps of Δt = τ/K. At step k the agent picks
a_k ∈ [λ_min, λ_max] (Eq. 8), held for [t_k, t_{k+1}); the driver evolves the battery
(Eq. 7) and measures it through a :class:`~qhil.drivers.MeasurementSchedule` for one of
the four observation regimes of Sec. IV B. The observation is that measurement, augmented
with the previous action a_{k−1} and the time t_k (Sec. III A).

Reward, Eq. (11):  r_k = w ΔE_k + (1 − w) Δℰ_k,   ΔE_k = E(t_{k+1}) − E(t_k),
                                                   Δℰ_k = ℰ(t_{k+1}) − ℰ(t_k),
with the scheduled weight of Eq. (12), w(n) = 1 / (1 + exp((n − w_mean)/w_width)), n the
number of environment steps taken so far, or a fixed w. With w = 0 the return telescopes
to ℰ(τ) − ℰ(0) = ℰ(τ) (Eq. 10): the terminal ergotropy is the objective.

Two forms, one physics:

* :class:`ChargingVectorEnv` — B batteries stepped in lock-step with ONE ``backend.run``
  call per step (the exact driver batches them and replays nothing: prefix cache);
* :class:`ChargingEnv` — a :class:`gymnasium.Env` (B = 1), for third-party agents.

Observation layout (float32), for N two-level systems:

    energies      E_j                                      (N)
    first_order   E_j, ⟨X_j⟩, ⟨Y_j⟩                         (3N)   [⟨X_j⟩ = ⟨Y_j⟩ ≡ 0: parity]
    second_order  E_j, ⟨X_j⟩, ⟨Y_j⟩, ⟨α_i β_j⟩ (i < j)      (3N + 9 N(N−1)/2)
    full_state    Re ψ, Im ψ on the parity sector          (2 d)   simulators only
    …followed by  a_{k−1} rescaled to [−1, 1] and t_k/τ ∈ [0, 1].
    With ``every`` > 1 or ``final_only``, unmeasured steps show the last measured block held,
    and one entry, its age (k − k_last)/K, sits between the block and a_{k−1}.

E_j = ω_j (1 − ⟨Z_j⟩)/2 replaces ⟨Z_j⟩ (same information, units of ω_0).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from qhil.drivers import (Backend, Experiment, MeasurementSchedule, REGIMES, Result,
                          UnsupportedError, ValidationError, create_backend)
from qhil.drivers import checks as check
from qhil.drivers import invariant_sector

from .dicke import ENV1, DickeBattery
from .measurement import REWARD_MODES, HeldObservation, custom_observables, tomography_ergotropy


#: Largest B (batteries stepped together) and K (steps per episode) accepted.
MAX_ENVS, MAX_STEPS = 100_000, 100_000
#: Largest |w_mean| and w_width (environment steps) of Eq. (12).
W_SCHEDULE_MAX = 1e30
#: Out-of-bounds actions within this fraction of (high − low) are rounding: clipped, not reported.
CLIP_TOLERANCE = 1e-6


def scheduled_weight(n_step: float | np.ndarray, w_mean: float, w_width: float) -> float | np.ndarray:
    """Eq. (12): w(n) = 1/(1 + exp((n − w_mean)/w_width)); ≈1 early, → 0 late."""
    x = np.clip((np.asarray(n_step, dtype=float) - w_mean) / w_width, -700.0, 700.0)
    w = 1.0 / (1.0 + np.exp(x))
    return float(w) if np.ndim(w) == 0 else w


@dataclass(frozen=True)
class RewardWeight:
    """The weight w(n) of Eq. (11), owned by the env: a fixed ``w`` in [0, 1], or (``w`` None)
    the schedule of Eq. (12) with ``mean`` and ``width`` in environment steps.

    ``RewardWeight(w=0.0)`` is exactly 0 at every step (no flat sigmoid);
    ``RewardWeight(mean=40_000, width=20_000)`` is the paper's schedule. Every field is checked
    (ValidationError naming it)."""

    w: float | None = None
    mean: float = 40_000
    width: float = 20_000

    def __post_init__(self) -> None:
        if self.w is not None:
            object.__setattr__(self, "w", check.finite_float("weight", self.w, 0.0, 1.0))
        object.__setattr__(self, "mean", check.finite_float("w_mean", self.mean, -W_SCHEDULE_MAX, W_SCHEDULE_MAX))
        object.__setattr__(self, "width", check.finite_float("w_width", self.width, 0.0, W_SCHEDULE_MAX,
                                                             lo_open=True))

    @property
    def fixed(self) -> bool:
        return self.w is not None

    def __call__(self, n_step: float) -> float:
        """w at environment step ``n_step``."""
        return self.w if self.w is not None else scheduled_weight(n_step, self.mean, self.width)

    def scaled(self, factor: float) -> "RewardWeight":
        """The schedule stretched in steps by ``factor`` (a run ``factor`` × the reference
        length); a fixed w is unchanged."""
        factor = check.finite_float("factor", factor, 0.0, 1e12, lo_open=True)
        return self if self.fixed else RewardWeight(None, self.mean * factor, self.width * factor)

    def to_dict(self) -> dict[str, Any]:
        return {"w": self.w} if self.fixed else {"w_mean": self.mean, "w_width": self.width}

    @classmethod
    def from_legacy(cls, w_mean: float, w_width: float) -> "RewardWeight":
        """The schedule an older SAC config or checkpoint held (``w_mean``, ``w_width``), where
        a fixed w was a sigmoid with a width ≥ 1e15 steps: that is read as the fixed w."""
        if float(w_width) >= 1e15:
            w = scheduled_weight(0.0, float(w_mean), float(w_width))
            return cls(w=0.0 if w < 1e-12 else 1.0 if w > 1.0 - 1e-12 else w)
        return cls(None, w_mean, w_width)

    @classmethod
    def from_options(cls, weight: float | None = None, w_mean: float | None = None,
                     w_width: float | None = None) -> "RewardWeight":
        """From the command line's ``--weight`` / ``--w-mean`` / ``--w-width`` (or a recorded
        config's ``weight`` / ``sac.w_mean`` / ``sac.w_width``): a fixed ``weight`` wins;
        missing schedule values take the paper's defaults."""
        if weight is not None:
            return cls(w=weight)
        d = cls()
        return cls(None, d.mean if w_mean is None else w_mean, d.width if w_width is None else w_width)


class ChargingVectorEnv:
    """B charging episodes stepped together, one ``backend.run`` call per step.

    battery:    the :class:`DickeBattery` (default Env1, converged cutoff)
    regime:     ``full_state`` | ``energies`` | ``first_order`` | ``second_order``
    n_envs:     B, batteries stepped in lock-step (every episode has K steps)
    tau:        total charging time τ (1/ω_0); K = ``n_steps``; Δt = τ/K
    action_low, action_high: λ bounds (default ± the battery's coupling bound), units ω_0
    weight:     fixed w of Eq. (11), or None for the schedule of Eq. (12)
    w_mean, w_width: Eq. (12), in environment steps (counted over all B envs)
    reward_weight: a :class:`RewardWeight` instead of the three above (the env owns the weight;
                :meth:`reward_weights` gives the weights of ``info["reward_terms"]`` at a step)
    backend:    a backend or a spec string (default ``"statevector"``)
    shots:      None for exact expectation values, else shots per setting (not full_state)
    every, final_only: measure the observation only at k = 0, m, 2m, …, K (``every`` = m) or
                only at k = K; at the other steps the policy sees the last measured values
                held plus their age (one more observation entry, before a_{k−1}); see
                :class:`~qhil.envs.measurement.HeldObservation`. Default: every step.
    reward:     ``"exact"`` (Eq. 11 on the simulator's state, default) or
                ``"tomography_terminal"``: ΔE from the measured E_j at measured steps (0 in
                between), Δℰ = 0 until the last step, where it is ℰ estimated by tomography
                (ℰ(0) = 0 for |g…g⟩); the return telescopes to w-weighted measured ΔE's and
                the estimated terminal ergotropy. ``info["ergotropy"]`` stays exact (simulators).
    tomography_shots: shots per setting of that terminal tomography (3^N settings), None = exact

    A ``regime`` may also be a list of Pauli labels (a custom regime): Z_j are measured first
    (the observation starts with E_j as for the named regimes), then the labels.

    ``step(actions)`` returns ``(obs (B, D), rewards (B,), terminated (B,), truncated (B,),
    info)`` with ``info`` a dict of arrays: ``energy``, ``ergotropy`` (at t_{k+1}),
    ``tls_energies`` (B, N), ``delta_energy``, ``delta_ergotropy``, ``reward_terms`` (B, 2)
    = [ΔE, Δℰ], ``weight``, ``k``, ``clipped`` (B,) and ``clipped_total`` (B,). After the K-th
    step every episode terminates; call :meth:`reset` to start the next ones.

    Actions outside [action_low, action_high] are CLIPPED to the bound and reported:
    ``info["clipped"]`` is True for the batteries whose action was clipped at this step,
    ``info["clipped_total"]`` counts them over the episode (per battery), :attr:`n_clipped`
    over the env's life, and the first clip of an env warns once (``RuntimeWarning`` naming the
    bounds). Excursions within ``CLIP_TOLERANCE`` × (high − low) are float rounding: clipped
    silently. Non-finite actions are refused (ValidationError). Every constructor argument is
    validated (ValidationError naming it), e.g. ``w_width`` must be finite and > 0.
    """

    def __init__(self, battery: DickeBattery | None = None, regime: str = "second_order",
                 n_envs: int = 1, tau: float = 5.6, n_steps: int = 28,
                 action_low: float | None = None, action_high: float | None = None,
                 weight: float | None = None, w_mean: float = 40_000, w_width: float = 20_000,
                 backend: Backend | str = "statevector", shots: int | None = None,
                 every: int = 1, final_only: bool = False, reward: str = "exact",
                 tomography_shots: int | None = 1000, reward_weight: RewardWeight | None = None) -> None:
        if reward_weight is not None:
            if not isinstance(reward_weight, RewardWeight):
                raise ValidationError("reward_weight", f"expected a RewardWeight, got {type(reward_weight).__name__}",
                                      "RewardWeight(w=…) or RewardWeight(mean=…, width=…)")
            weight, w_mean, w_width = reward_weight.w, reward_weight.mean, reward_weight.width
        if battery is not None and not isinstance(battery, DickeBattery):
            raise ValidationError("battery", f"expected a DickeBattery, got {type(battery).__name__}")
        self.battery = battery if battery is not None else DickeBattery(omegas=ENV1)
        observables = regime
        if not isinstance(regime, str):             # a custom list of Pauli labels
            observables = regime = custom_observables(regime, self.battery.n_qubits)
        elif regime not in REGIMES:
            raise ValidationError("regime", f"unknown regime {regime!r}",
                                  ", ".join(REGIMES) + " or a list of Pauli labels")
        if reward not in REWARD_MODES:
            raise ValidationError("reward", f"unknown reward mode {reward!r}", ", ".join(REWARD_MODES))
        if reward != "exact" and regime == "full_state":
            raise ValidationError("reward", f"{reward!r} needs the measured E_j", "a measured regime, not full_state")
        self.reward_mode, self.tomography_shots = reward, tomography_shots
        if tomography_shots is not None:
            MeasurementSchedule("tomography", shots=tomography_shots)       # validates the number
        n_envs = check.integer("n_envs", n_envs, 1, MAX_ENVS)
        n_steps = check.integer("n_steps", n_steps, 1, MAX_STEPS)
        tau = check.finite_float("tau", tau, 0.0, 1e6, lo_open=True)
        self.regime, self.n_envs, self.tau, self.n_steps = regime, n_envs, float(tau), n_steps
        self.dt = self.tau / n_steps
        chan = self.battery.controls[0]
        bounds = f"[{chan.lower:g}, {chan.upper:g}]"
        self.action_low = chan.lower if action_low is None else check.finite_float(
            "action_low", action_low, chan.lower, chan.upper)
        self.action_high = chan.upper if action_high is None else check.finite_float(
            "action_high", action_high, chan.lower, chan.upper)
        if not self.action_low < self.action_high:
            raise ValidationError("action bounds", f"[{self.action_low}, {self.action_high}]",
                                  f"a sub-interval of {bounds} with action_low < action_high")
        if weight is not None:
            weight = check.finite_float("weight", weight, 0.0, 1.0)
        self.weight = weight
        self.w_mean = check.finite_float("w_mean", w_mean, -W_SCHEDULE_MAX, W_SCHEDULE_MAX)
        self.w_width = check.finite_float("w_width", w_width, 0.0, W_SCHEDULE_MAX, lo_open=True)
        if not isinstance(final_only, (bool, np.bool_)):
            raise ValidationError("final_only", f"{final_only!r}", "True or False")
        check.integer("every", every, 1, 1_000_000)
        if isinstance(backend, str):
            self.backend = create_backend(backend)
        elif isinstance(backend, Backend):
            self.backend = backend
        else:
            raise ValidationError("backend", f"expected a Backend or a spec string, got {type(backend).__name__}",
                                  "statevector, aer, zmq://host:port or a Backend")
        caps = self.backend.capabilities
        if regime == "full_state" and not caps.full_state:
            raise UnsupportedError(f"the full_state regime needs a simulator; the {self.backend.name} "
                                   "driver returns no state vector")
        self.has_density = caps.qubit_density
        if not self.has_density and weight != 1.0 and reward == "exact":
            raise UnsupportedError(f"the ergotropy reward needs the battery's state, which the "
                                   f"{self.backend.name} driver does not return (no qubit_density); "
                                   "use weight=1.0 (energy reward only) or reward='tomography_terminal'")
        self.schedule = MeasurementSchedule(observables, final_only=True, shots=shots)
        #: the episode's measurements as a whole (which steps are measured; its cost)
        self.obs_schedule = MeasurementSchedule(observables, every=every, final_only=final_only, shots=shots)
        self._diagnostic = MeasurementSchedule("energies", final_only=True)   # unmeasured steps: state only
        n = self.battery.n_qubits
        self.labels = self.schedule.labels(n)
        self._z_cols = [self.labels.index(f"Z{j}") for j in range(n)] if regime != "full_state" else []
        self.sector = invariant_sector(self.battery) if regime == "full_state" else None
        d_meas = 2 * len(self.sector) if regime == "full_state" else len(self.labels)
        self.hold = (HeldObservation(n_envs, d_meas, n_steps, self.obs_schedule.measured_steps(n_steps))
                     if (final_only or every > 1) else None)
        self.obs_dim = d_meas + 2 + (self.hold is not None)        # + the age of held values
        lo = np.full(self.obs_dim, -1.0, dtype=np.float32)
        hi = np.full(self.obs_dim, 1.0, dtype=np.float32)
        if regime != "full_state":                   # E_j ∈ [0, ω_j]
            lo[:n] = 0.0
            hi[:n] = np.asarray(self.battery.omegas, dtype=np.float32)
        lo[-1] = 0.0                                 # t_k/τ ∈ [0, 1]
        if self.hold is not None:
            lo[-3] = 0.0                             # age of the held values ∈ [0, 1]
        self.obs_low, self.obs_high = lo, hi
        self.n_step = 0                              # environment steps so far (Eq. 12's n)
        self.n_clipped = 0                           # actions clipped to the bounds, over the env's life
        self._clipped_episode = np.zeros(n_envs, dtype=np.int64)
        self._clip_warned = False
        self._rng = np.random.default_rng()
        self._controls = np.zeros((n_envs, 0))
        self._energy = np.zeros(n_envs)
        self._ergotropy = np.zeros(n_envs)
        self._energy_measured = np.zeros(n_envs)     # last measured E (tomography_terminal)

    # -- physics → observation -------------------------------------------------------
    #: Figures of merit in ``info`` (per battery): the training loop records them by these names.
    figures: tuple[str, ...] = ("energy", "ergotropy")
    #: The figure whose terminal value an episode is judged by (best explored, Table 1).
    objective: str = "ergotropy"

    @property
    def reward_weight(self) -> RewardWeight:
        """The env's weight of Eq. (11): fixed, or Eq. (12)'s schedule."""
        return RewardWeight(self.weight, self.w_mean, self.w_width)

    @reward_weight.setter
    def reward_weight(self, value: RewardWeight) -> None:
        if not isinstance(value, RewardWeight):
            raise ValidationError("reward_weight", f"expected a RewardWeight, got {type(value).__name__}")
        self.weight, self.w_mean, self.w_width = value.w, value.mean, value.width

    def current_weight(self) -> float:
        """The w of Eq. (11) in force now."""
        return self.weight if self.weight is not None else scheduled_weight(self.n_step, self.w_mean, self.w_width)

    def reward_weights(self, step: int | None = None) -> np.ndarray:
        """Weights [w, 1 − w] of ``info["reward_terms"]`` = [ΔE, Δℰ] at environment step ``step``
        (default: now), float32: a replay buffer re-weights stored terms with them."""
        n = self.n_step if step is None else step
        w = self.weight if self.weight is not None else scheduled_weight(n, self.w_mean, self.w_width)
        return np.array([w, 1.0 - w], np.float32)

    def normalise(self, action: np.ndarray) -> np.ndarray:
        """λ (units ω_0) → [−1, 1] (the inverse of Eq. 14's rescaling)."""
        half, mid = 0.5 * (self.action_high - self.action_low), 0.5 * (self.action_high + self.action_low)
        return (np.asarray(action, dtype=float) - mid) / half

    def seed(self, seed: int | None) -> None:
        """Seed the shot noise of the measurements (exact values need none)."""
        from qhil.drivers.backend import check_seed
        self._rng = np.random.default_rng(check_seed(seed))

    def measurement_cost(self) -> dict[str, int]:
        """Hardware cost of one episode's measurements (:func:`~qhil.envs.measurement.episode_cost`):
        the observation schedule, plus the terminal tomography with ``reward="tomography_terminal"``."""
        from .measurement import episode_cost
        return episode_cost(self.obs_schedule, self.battery.n_qubits, self.n_steps,
                            self.reward_mode, self.tomography_shots)

    def _measure(self, controls: np.ndarray, schedule: MeasurementSchedule | None = None) -> list[Result]:
        schedule = schedule or self.schedule
        exps = [Experiment(self.battery, c.reshape(-1, 1), self.dt, schedule) for c in controls]
        seed = int(self._rng.integers(2**63)) if schedule.shots is not None else None
        return self.backend.run(exps, seed=seed)

    def _figures(self, results: list[Result]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(E_j (B, N), E (B,), ℰ (B,)) at the measured step of each result."""
        b = self.battery
        if self.has_density:
            rho = np.stack([r.qubit_density[-1] for r in results])
            e_j = b.energies(rho)
            return e_j, e_j.sum(-1), np.asarray(b.ergotropy(rho), dtype=float)
        z = np.stack([r.values[-1, self._z_cols] for r in results])
        e_j = b.tls_energies_from_z(z)
        return e_j, e_j.sum(-1), np.full(len(results), np.nan)

    def _observe(self, results: list[Result], k: int) -> np.ndarray:
        if self.hold is not None and not self.hold.is_measured(k):
            meas = None                                 # unmeasured: the held values
        elif self.regime == "full_state":
            psi = np.stack([r.state[-1][self.sector] for r in results])
            meas = np.concatenate([psi.real, psi.imag], axis=1)
        else:
            meas = np.stack([r.values[-1] for r in results]).astype(float)
            meas[:, :len(self._z_cols)] = self.battery.tls_energies_from_z(meas[:, self._z_cols])
        if self.hold is not None:
            meas, age = self.hold.observe(k, meas)
            meas = np.concatenate([meas, age[:, None]], axis=1)
        prev = self._controls[:, -1] if k > 0 else np.zeros(self.n_envs)   # a_{−1} := 0
        extra = np.stack([self.normalise(prev), np.full(self.n_envs, k / self.n_steps)], axis=1)
        obs = np.concatenate([meas, extra], axis=1).astype(np.float32)
        return np.clip(obs, self.obs_low, self.obs_high)

    # -- the episode -------------------------------------------------------------------
    @property
    def k(self) -> int:
        """Steps taken in the current episodes."""
        return int(self._controls.shape[1])

    @property
    def controls(self) -> np.ndarray:
        """(B, k) the protocols played so far, units ω_0."""
        return self._controls.copy()

    def reset(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Start B episodes from |g…g⟩⊗|N⟩: the k = 0 measurement."""
        self._controls = np.zeros((self.n_envs, 0))
        self._clipped_episode = np.zeros(self.n_envs, dtype=np.int64)
        if self.hold is not None:
            self.hold.reset()
        measured = self.hold is None or self.hold.is_measured(0)
        if measured or self.has_density:
            results = self._measure(self._controls, None if measured else self._diagnostic)
            e_j, e, erg = self._figures(results)
        else:                                       # hardware, unmeasured: |g…g⟩, E_j = ℰ = 0
            results, e_j = None, np.zeros((self.n_envs, self.battery.n_qubits))
            e, erg = e_j.sum(-1), np.zeros(self.n_envs)
        self._energy, self._ergotropy = e, erg
        self._energy_measured = self._measured_energy(results) if measured else np.zeros(self.n_envs)
        return self._observe(results, 0), {"energy": e, "ergotropy": erg, "tls_energies": e_j}

    def step(self, actions: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                   np.ndarray, dict[str, np.ndarray]]:
        """Apply λ = ``actions`` (B,) for Δt to every battery; one backend call."""
        if self.k >= self.n_steps:
            raise RuntimeError("the episodes have ended (K steps taken): call reset()")
        try:
            a = np.asarray(actions, dtype=float).reshape(self.n_envs)
        except (TypeError, ValueError):
            raise ValidationError("actions", f"expected {self.n_envs} number(s), got {actions!r}",
                                  f"shape ({self.n_envs},) in [{self.action_low:g}, {self.action_high:g}]") from None
        if not np.all(np.isfinite(a)):
            raise ValidationError("actions", "contain non-finite values",
                                  f"finite numbers in [{self.action_low:g}, {self.action_high:g}]")
        a, clipped = self._clip(a)
        self._controls = np.concatenate([self._controls, a[:, None]], axis=1)
        measured = self.hold is None or self.hold.is_measured(self.k)
        if measured or self.has_density:
            results = self._measure(self._controls, None if measured else self._diagnostic)
            e_j, e, erg = self._figures(results)
        else:                                       # hardware, unmeasured: nothing to run
            results, e_j, e, erg = None, np.full((self.n_envs, self.battery.n_qubits), np.nan), \
                self._energy, np.full(self.n_envs, np.nan)
        d_e, d_erg = e - self._energy, erg - self._ergotropy
        extra: dict[str, np.ndarray] = {}
        if self.reward_mode == "tomography_terminal":
            d_e, d_erg, extra = self._measured_terms(results if measured else None)
        w = self.current_weight()
        # no state and no tomography (w = 1 on hardware): nothing measures Δℰ; its term is 0, not NaN
        # (the replay buffer recombines the terms with the weight of the update: 0 · NaN would poison it)
        erg_term = d_erg if (self.has_density or self.reward_mode != "exact") else np.zeros(self.n_envs)
        reward = w * d_e + (1.0 - w) * erg_term
        self._energy, self._ergotropy = e, erg
        self.n_step += self.n_envs
        done = np.full(self.n_envs, self.k == self.n_steps)
        info = {"energy": e, "ergotropy": erg, "tls_energies": e_j, "delta_energy": d_e,
                "delta_ergotropy": d_erg, "reward_terms": np.stack([d_e, erg_term], axis=1),
                "weight": np.full(self.n_envs, w), "k": np.full(self.n_envs, self.k),
                "clipped": clipped, "clipped_total": self._clipped_episode.copy(), **extra}
        return self._observe(results, self.k), reward, done, np.zeros(self.n_envs, bool), info

    def _clip(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clip ``a`` to [action_low, action_high]; count (and warn once about) the batteries
        whose action lay beyond a bound by more than the rounding tolerance."""
        tol = CLIP_TOLERANCE * (self.action_high - self.action_low)
        clipped = (a < self.action_low - tol) | (a > self.action_high + tol)
        if clipped.any():
            self.n_clipped += int(clipped.sum())
            self._clipped_episode += clipped
            if not self._clip_warned:
                self._clip_warned = True
                worst = a[clipped][np.argmax(np.abs(a[clipped]))]
                warnings.warn(f"action {worst:g} outside the bounds [action_low, action_high] = "
                              f"[{self.action_low:g}, {self.action_high:g}] was clipped to the bound "
                              "(reported once per env; info['clipped'] and n_clipped count them)",
                              RuntimeWarning, stacklevel=3)
        return np.clip(a, self.action_low, self.action_high), clipped

    def _measured_energy(self, results: list[Result]) -> np.ndarray:
        """(B,) E = Σ_j E_j from the measured ⟨Z_j⟩ (shot estimates when shots are set)."""
        if not self._z_cols:
            return np.full(len(results), np.nan)
        z = np.stack([r.values[-1, self._z_cols] for r in results])
        return self.battery.tls_energies_from_z(z).sum(-1)

    def _measured_terms(self, results: list[Result] | None) -> tuple[np.ndarray, np.ndarray, dict]:
        """reward="tomography_terminal": (ΔE from measured E_j, Δℰ from terminal tomography,
        info extras). ``results`` is None at an unmeasured step (ΔE = 0 there)."""
        d_e = np.zeros(self.n_envs)
        if results is not None:
            e_m = self._measured_energy(results)
            d_e, self._energy_measured = e_m - self._energy_measured, e_m
        d_erg = np.zeros(self.n_envs)
        est = np.full(self.n_envs, np.nan)
        if self.k == self.n_steps:                   # ℰ(0) = 0: |g…g⟩ is passive
            seed = int(self._rng.integers(2**63)) if self.tomography_shots is not None else None
            est = tomography_ergotropy(self.battery, self.backend, self._controls, self.dt,
                                       self.tomography_shots, seed=seed)
            d_erg = est
        return d_e, d_erg, {"energy_measured": self._energy_measured.copy(), "ergotropy_estimate": est}


class ChargingEnv(gym.Env):
    """The charging task as a :class:`gymnasium.Env` (one battery); see :class:`ChargingVectorEnv`
    for the parameters. The action is λ itself, a (1,) array in [λ_min, λ_max] (units ω_0).

    ``reset(seed=s)`` restarts the environment: it reseeds the shot noise and sets Eq. (12)'s
    step counter back to 0, so that a seeded episode is reproducible (``check_env``).
    An action outside ``action_space`` is clipped to it and reported as in
    :class:`ChargingVectorEnv` (``info["clipped"]``, one warning per env).
    """

    metadata = {"render_modes": []}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("n_envs", None)
        self.core = ChargingVectorEnv(n_envs=1, **kwargs)
        c = self.core
        self.observation_space = gym.spaces.Box(c.obs_low, c.obs_high, dtype=np.float32)
        self.action_space = gym.spaces.Box(np.float32(c.action_low), np.float32(c.action_high),
                                           shape=(1,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        from qhil.drivers.backend import check_seed
        check_seed(seed)
        super().reset(seed=seed)
        if seed is not None:      # a seeded reset restarts the environment, Eq. (12)'s counter too
            self.core.n_step = 0
            self.core.seed(seed)
        obs, info = self.core.reset()
        return obs[0], {k: v[0] for k, v in info.items()}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, r, term, trunc, info = self.core.step(np.asarray(action, dtype=float).reshape(1))
        return obs[0], float(r[0]), bool(term[0]), bool(trunc[0]), {k: v[0] for k, v in info.items()}


def make_charging_env(env: str = "env1", regime: str = "second_order", **kwargs: Any) -> ChargingVectorEnv:
    """A :class:`ChargingVectorEnv` for a named disorder realisation (env1, env2, env3)."""
    from .dicke import ENVIRONMENTS
    if env not in ENVIRONMENTS:
        raise ValidationError("env", f"unknown environment {env!r}", ", ".join(ENVIRONMENTS))
    return ChargingVectorEnv(battery=DickeBattery(omegas=ENVIRONMENTS[env]), regime=regime, **kwargs)
