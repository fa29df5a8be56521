"""Ergotropy from measurements alone: local tomography with a bootstrap uncertainty.

On hardware the battery's state is never returned; its ergotropy must be estimated from
the counts of the ``tomography`` schedule (3^N local product settings). The plug-in
estimate ``raw`` is the ergotropy of the projected linear-inversion state
(:mod:`qhil.drivers.tomography`). Shot noise mixes the estimated state and projection
clips it, so ``raw`` is biased low for a highly charged (near-pure) battery: by
about −0.12 with 100 shots and −0.013 with 10⁴ shots per setting on Env1's GRAPE protocol (ℰ = 4.2716).

A parametric bootstrap measures both the spread and that bias: every setting's counts are
redrawn from the multinomial of its observed frequencies, the state re-estimated and the
ergotropy recomputed ``n_boot`` times. Reported:

    value = raw − bias,  bias = mean(bootstrap) − raw        (bias-corrected estimate)
    std   = √(std(bootstrap)² + bias²)                       (1σ, the bias counted as error)
    interval = value ± 1.96 std

    est = estimate_ergotropy(battery, result)     # result measured with "tomography"
    est.value, est.std, est.interval              # units ω_0

Measured coverage (20 seeded tomographies each, statevector, Env1): |value − exact| < 2 std in
80–95 % of them for constant λ = 0.3 and for the GRAPE protocol at 100, 1,000 and 10⁴ shots
(the raw estimate ± the bootstrap spread alone covered the GRAPE value in 0–5 %).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np

from qhil.drivers import Result, ValidationError
from qhil.drivers.pauli import estimate_from_counts, tomography_labels
from qhil.drivers.tomography import estimate_density, linear_inversion, project_to_physical

from .dicke import DickeBattery


@dataclasses.dataclass(frozen=True)
class ErgotropyEstimate:
    """Tomography estimate of the ergotropy at one measured step (units ω_0).

    value:     bias-corrected ℰ (= raw for exact expectation values)
    std:       1σ uncertainty: bootstrap spread and bias in quadrature (0 when exact)
    interval:  value ± 1.96 std
    raw:       ℰ of the estimated (projected) state, uncorrected
    bias:      bootstrap estimate of raw's bias
    shots:     shots per setting (None: exact expectation values)
    settings:  local settings measured (3^N)
    n_boot:    bootstrap resamples (0 when exact)
    """

    value: float
    std: float
    interval: tuple[float, float]
    raw: float
    bias: float
    shots: int | None
    settings: int
    n_boot: int

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "interval": list(self.interval)}

    def __str__(self) -> str:
        if self.shots is None:
            return f"{self.value:.6f} (exact expectation values)"
        return (f"{self.value:.4f} ± {self.std:.4f} (1σ; bias-corrected by {-self.bias:+.4f}; "
                f"{self.settings} settings × {self.shots} shots, {self.n_boot} bootstrap resamples)")


def estimate_ergotropy(battery: DickeBattery, result: Result, step: int = -1, n_boot: int = 200,
                       seed: int | None = 0) -> ErgotropyEstimate:
    """ℰ ± its bootstrap spread from a ``tomography``-schedule ``result`` at measured index ``step``.

    battery: the model whose H_B defines the ergotropy;  n_boot: resamples (≥ 10) for shot data
    """
    n = battery.n_qubits
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or not 10 <= n_boot <= 100_000:
        raise ValidationError("n_boot", f"{n_boot!r}", "an integer in [10, 100000]")
    m = len(result.steps)
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or not -m <= step < m:
        raise ValidationError("step", f"{step!r}", f"an index into the {m} measured steps")
    rho = estimate_density(result, n)[step]                 # checks every Pauli was measured
    raw = float(battery.ergotropy(rho))
    settings = len(result.settings) if result.settings is not None else 3 ** n
    if result.counts is None:                                # exact expectation values
        return ErgotropyEstimate(raw, 0.0, (raw, raw), raw, 0.0, None, settings, 0)
    counts = np.asarray(result.counts[step], dtype=np.int64)  # (S, 2^n)
    shots = counts.sum(axis=1)
    if not np.all(shots == shots[0]) or shots[0] < 1:
        raise ValidationError("result.counts", "settings hold different or no shots", "equal shots per setting")
    rng = np.random.default_rng(seed)
    freq = counts / shots[:, None]
    boot = np.stack([rng.multinomial(int(shots[0]), p, size=n_boot) for p in freq], axis=1)  # (B, S, 2^n)
    values, _ = estimate_from_counts(boot, tomography_labels(n), tuple(result.settings), n)
    rhos = project_to_physical(linear_inversion(values, n))
    samples = np.asarray(battery.ergotropy(rhos), dtype=float).reshape(n_boot)
    bias = float(samples.mean()) - raw
    std = math.hypot(float(samples.std(ddof=1)), bias)
    value = raw - bias
    return ErgotropyEstimate(value, std, (value - 1.96 * std, value + 1.96 * std), raw, bias,
                             int(shots[0]), settings, n_boot)
