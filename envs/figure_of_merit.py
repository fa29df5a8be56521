"""A charging protocol's figure of merit, from measurements only (any backend, hardware included).

    value, std, shots, device_s = measured_figure(battery, backend, controls, dt, fom="energy", shots=200)

``energy``:    the final battery energy E = Σ_j ω_j (1 − ⟨Z_j⟩)/2 from one final-only
               ``energies`` measurement (one Z setting). With counts, the std is the standard
               error of the per-shot energy Σ_j ω_j b_j (b_j = 1 for an excited qubit), which
               keeps the correlations between qubits; without, the E_j stderrs in quadrature.
               Shots spent: ``shots``.
``ergotropy``: local tomography of the final state (3^N settings) and
               :func:`~qhil.envs.state_estimate.estimate_ergotropy` (bias-corrected value,
               bootstrap std; exact linear inversion when ``shots`` is None). Shots spent:
               3^N · shots.

Units: ω_0. ``shots=None`` asks for exact expectation values (simulators): std 0, 0 shots.
Device seconds: ``metadata["device_s"]`` (a DeviceBackend), else the lab's ``device_s`` (ZeroMQ
bridge), else the batch's wall time shared equally among its experiments.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from qhil.drivers import Backend, Experiment, MeasurementSchedule, Result, ValidationError

from .dicke import DickeBattery
from .state_estimate import estimate_ergotropy

FIGURES = ("energy", "ergotropy")


def _check(fom: str, shots: int | None) -> None:
    if fom not in FIGURES:
        raise ValidationError("fom", f"{fom!r}", ", ".join(FIGURES))
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1):
        raise ValidationError("shots", f"{shots!r}", "an integer ≥ 1, or None (exact)")


def schedule_for(fom: str, shots: int | None) -> MeasurementSchedule:
    """The final-only measurement ``fom`` needs."""
    _check(fom, shots)
    return MeasurementSchedule("energies" if fom == "energy" else "tomography", final_only=True, shots=shots)


def shots_per_evaluation(battery: DickeBattery, fom: str, shots: int | None) -> int:
    """Shots one measured figure costs (0 when exact)."""
    _check(fom, shots)
    if shots is None:
        return 0
    return int(shots) * (1 if fom == "energy" else 3 ** battery.n_qubits)


def measured_device_s(result: Any) -> float | None:
    """The device seconds a result reports: ``metadata["device_s"]`` (a DeviceBackend), else the
    lab's (ZeroMQ bridge), else None (a simulator)."""
    meta = getattr(result, "metadata", None) or {}
    dev = meta.get("device_s", (meta.get("bridge") or {}).get("device_s"))
    return None if dev is None else float(dev)


def _device_s(result: Result) -> float:
    dev = measured_device_s(result)
    if dev is not None:
        return dev
    meta = result.metadata
    return float(meta.get("batch_wall_s", 0.0)) / max(int(meta.get("batch_size", 1)), 1)


def _energy(battery: DickeBattery, result: Result) -> tuple[float, float]:
    z = [f"Z{j}" for j in range(battery.n_qubits)]
    idx = [result.labels.index(lab) for lab in z]
    e_j = battery.tls_energies_from_z(result.values[-1, idx])
    if result.counts is not None:                      # one Z setting: per-shot energies
        counts = np.asarray(result.counts[-1], dtype=float).sum(axis=0)       # (2^N,)
        n = counts.sum()
        levels = battery.battery_levels
        mean = float(counts @ levels) / n
        var = float(counts @ (levels - mean) ** 2) / max(n - 1, 1)
        return float(e_j.sum()), math.sqrt(var / n)
    half = np.asarray(battery.omegas) / 2.0
    return float(e_j.sum()), float(np.sqrt(np.sum((half * result.stderr[-1, idx]) ** 2)))


def measured_figures(battery: DickeBattery, backend: Backend, controls: Any, dt: float, fom: str = "energy",
                     shots: int | None = None, seed: int | None = None
                     ) -> list[tuple[float, float, int, float]]:
    """[(value, std, shots spent, device seconds)] for each protocol of ``controls`` (B, K),
    all measured in ONE ``backend.run`` call (seeded with ``seed``)."""
    schedule = schedule_for(fom, shots)
    rows = np.asarray(controls, dtype=float)
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise ValidationError("controls", f"has shape {rows.shape}", "(B, K): B ≥ 1 protocols of K steps")
    experiments = [Experiment(battery, row, dt, schedule) for row in rows]
    results = backend.run(experiments, seed=seed)
    spent = shots_per_evaluation(battery, fom, shots)
    out = []
    for i, res in enumerate(results):
        if fom == "energy":
            value, std = _energy(battery, res)
        else:
            boot_seed = None if seed is None else (int(seed) + 7919 * (i + 1)) % 2**63
            est = estimate_ergotropy(battery, res, seed=boot_seed)
            value, std = float(est.value), float(est.std)
        out.append((value, std, spent, _device_s(res)))
    return out


def measured_figure(battery: DickeBattery, backend: Backend, controls: Sequence[float], dt: float,
                    fom: str = "energy", shots: int | None = None, seed: int | None = None
                    ) -> tuple[float, float, int, float]:
    """(value, std, shots spent, device seconds) of one protocol ``controls`` (K,) of step ``dt``."""
    return measured_figures(battery, backend, np.asarray(controls, dtype=float)[None], dt, fom, shots, seed)[0]
