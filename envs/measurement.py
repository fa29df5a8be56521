"""Measurement-limited control of the Dicke battery: what the policy sees between
measurements, and the ergotropy estimated from tomography (the reward on hardware).

Held observations (``every`` > 1 or ``final_only`` in :class:`~qhil.envs.ChargingVectorEnv`)
--------------------------------------------------------------------------------------------
At a step that is not measured the policy sees the **last measured values, held**, plus
their age (k − k_last)/K ∈ [0, 1] (0 = measured at this step). Before the first measurement
the held block is all zeros and its age counts from k = 0 (``final_only``: the policy never
sees a measurement during the episode, it plays open loop on a_{k−1} and t_k).
Nothing is measured at an unmeasured step, so nothing is paid there (see
:meth:`~qhil.drivers.MeasurementSchedule.cost`).

Ergotropy from tomography
-------------------------
Measure every Pauli on the N qubits (3^N local settings × ``shots``), invert linearly, project
onto the physical states (:mod:`qhil.drivers.tomography`), then ℰ(ρ̂) = Tr(ρ̂ H_B) − Tr(ρ̂↓ H_B).
The estimator is biased: ℰ is convex in ρ (a maximum of linear functions), so noise in ρ̂
pushes E[ℰ(ρ̂)] up (Jensen), and the projection pulls a noisy near-pure ρ̂ back. Both vanish
as shots → ∞ (:func:`tomography_ergotropy_stats` measures bias and spread).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from qhil.drivers import Backend, Experiment, MeasurementSchedule, ValidationError
from qhil.drivers import checks as check
from qhil.drivers.tomography import estimate_density

from .dicke import DickeBattery

#: Reward modes of the charging env: ``exact`` (the simulator's state, Eq. 11 as in seed 000)
#: and ``tomography_terminal`` (ΔE from the measured E_j at measured steps, ℰ from terminal
#: tomography at the last step: what hardware can provide).
REWARD_MODES = ("exact", "tomography_terminal")


class HeldObservation:
    """The measurement block the policy sees, held between measurements (B envs, D values).

    measured_steps: the step indices k at which a measurement is made (state after k steps)
    n_steps:        K, to normalise the age
    """

    def __init__(self, n_envs: int, dim: int, n_steps: int, measured_steps: Sequence[int]) -> None:
        self.n_envs, self.dim, self.n_steps = int(n_envs), int(dim), int(n_steps)
        self.measured = frozenset(int(k) for k in measured_steps)
        self.reset()

    def reset(self) -> None:
        """A new episode: nothing measured yet (zeros, age from k = 0)."""
        self.values = np.zeros((self.n_envs, self.dim))
        self.last_k = 0

    def is_measured(self, k: int) -> bool:
        return int(k) in self.measured

    def observe(self, k: int, meas: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """At step k: store ``meas`` (B, D) if k is a measured step, then return the held
        values (B, D) and their age (B,) = (k − k_last)/K."""
        if self.is_measured(k):
            if meas is None:
                raise ValueError(f"step {k} is measured but no values were given")
            self.values = np.array(meas, dtype=float, copy=True)
            self.last_k = int(k)
        age = np.full(self.n_envs, (int(k) - self.last_k) / self.n_steps)
        return self.values.copy(), age


def custom_observables(labels: Sequence[str], n_qubits: int) -> tuple[str, ...]:
    """A custom regime: Z_0…Z_{N−1} (for the energies E_j) first, then ``labels`` (Pauli
    labels, sparse ``"Z0Z1"`` or dense), de-duplicated."""
    if isinstance(labels, str) or not all(isinstance(x, str) for x in labels) or not len(labels):
        raise ValidationError("regime", f"{labels!r}",
                              "a regime name or a non-empty list of Pauli labels, e.g. ['Z0Z1', 'X0X1']")
    sched = MeasurementSchedule(tuple(f"Z{j}" for j in range(n_qubits)) + tuple(labels))
    return sched.labels(n_qubits)


def tomography_ergotropy(battery: DickeBattery, backend: Backend, controls: np.ndarray, dt: float,
                         shots: int | None, seed: int | None = None,
                         physical: bool = True) -> np.ndarray:
    """(B,) ergotropy (units ω_0) estimated from local-basis tomography after each protocol.

    controls: (B, K) or (B, K, 1) protocols λ (units ω_0);  dt: step length (1/ω_0)
    shots:    per setting (3^N settings), None for exact expectation values
    physical: project ρ_LI onto the physical states first (True), or use ρ_LI itself
    One ``backend.run`` call; on hardware this is 3^N · shots prepare–play–measure runs of
    each protocol.
    """
    c = np.asarray(controls, dtype=float)
    c = c.reshape(c.shape[0], -1, 1) if c.ndim == 2 else c
    sched = MeasurementSchedule("tomography", final_only=True, shots=shots)
    res = backend.run([Experiment(battery, ci, dt, sched) for ci in c], seed=seed)
    rho = np.stack([estimate_density(r, battery.n_qubits, physical=physical)[-1] for r in res])
    return np.asarray(battery.ergotropy(rho), dtype=float).reshape(len(res))


def tomography_cost(n_qubits: int, n_steps: int, shots: int | None) -> dict[str, int]:
    """Hardware cost of one terminal tomography after K = ``n_steps`` steps: 3^N settings,
    3^N · shots runs, each replaying the K steps."""
    n_set = 3 ** n_qubits
    reps = shots or 1
    return {"settings": n_set, "circuits": n_set, "total_shots": n_set * (shots or 0),
            "played_steps": n_set * reps * n_steps}


def episode_cost(schedule: MeasurementSchedule, n_qubits: int, n_steps: int, reward: str = "exact",
                 tomography_shots: int | None = 1000) -> dict[str, int]:
    """Hardware cost of one charging episode of K = ``n_steps`` steps.

    ``obs_*``:    the observation schedule (:meth:`MeasurementSchedule.cost`): measured steps,
                  settings per measurement, circuits, total shots, played steps (every prefix
                  replay: a measurement after step k replays steps 0..k−1 for each shot);
    ``reward_*``: the terminal tomography of ``reward="tomography_terminal"`` (zeros for
                  ``"exact"``, whose reward only a simulator can give);
    ``total_*``:  their sums. Exact expectation values (shots None) count 0 shots and one
                  replay per circuit.
    """
    if reward not in REWARD_MODES:
        raise ValidationError("reward", f"unknown reward mode {reward!r}", ", ".join(REWARD_MODES))
    obs = schedule.cost(n_qubits, n_steps).to_dict()
    rew = ({k: 0 for k in ("settings", "circuits", "total_shots", "played_steps")} if reward == "exact"
           else tomography_cost(n_qubits, n_steps, tomography_shots))
    out = {f"obs_{k}": v for k, v in obs.items()} | {f"reward_{k}": v for k, v in rew.items()}
    for k in ("circuits", "total_shots", "played_steps"):
        out[f"total_{k}"] = obs[k] + rew[k]
    return out


def tomography_ergotropy_stats(battery: DickeBattery, backend: Backend, protocol: np.ndarray, dt: float,
                               shots: int | None, n_rep: int = 200, seed: int = 0,
                               physical: bool = True) -> dict[str, Any]:
    """Bias and spread of the tomography ergotropy estimator for the state after ``protocol``.

    protocol: (K,) λ (units ω_0);  shots: per setting;  n_rep: independent tomographies (≥ 2)
    Returns exact ℰ (from the simulator's state), mean, bias = mean − exact, std (one
    estimate), stderr of the mean, bias/stderr, rmse, and the hardware cost of ONE estimate.
    """
    check.integer("n_rep", n_rep, 2, 1_000_000)
    lam = np.asarray(protocol, dtype=float).reshape(-1)
    if not backend.capabilities.qubit_density:
        raise ValidationError("backend", f"{backend.name} returns no state: no exact value to compare",
                              "a simulator (statevector, aer)")
    [ref] = backend.run([Experiment(battery, lam.reshape(-1, 1), dt,
                                    MeasurementSchedule("energies", final_only=True))])
    exact = float(battery.ergotropy(ref.qubit_density[-1]))
    est = tomography_ergotropy(battery, backend, np.tile(lam, (n_rep, 1)), dt, shots, seed=seed,
                               physical=physical)
    mean, std = float(est.mean()), float(est.std(ddof=1))
    se = std / math.sqrt(n_rep)
    return {"exact": exact, "mean": mean, "bias": mean - exact, "std": std, "stderr": se,
            "bias_over_stderr": (mean - exact) / se if se > 0 else float("nan"),
            "rmse": float(np.sqrt(np.mean((est - exact) ** 2))), "n_rep": n_rep, "shots": shots,
            "physical": physical, "cost": tomography_cost(battery.n_qubits, len(lam), shots)}
