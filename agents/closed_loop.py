"""Closed-loop optimal control on measured figures of merit (QuOCS / C3 style), no I/O.

A *parametrisation* maps a search vector x to a piecewise-constant protocol λ (K,):

    PiecewiseConstant(start, lower, upper)       x = λ_k directly (clipped to the bounds)
    DCRAB(start, n_components, lower, upper, seed)
        λ(t_k) = clip(start_k + Σ_i [a_i sin(ω_i t_k) + b_i cos(ω_i t_k)]),  x = (a, b)
        ω_i = 2π (i + r_i) / τ,  r_i ~ U[−0.5, 0.5] (seeded),  t_k = (k + ½) τ / K

(one dCRAB super-iteration: the randomised frequencies are drawn once.)

:func:`optimise` then minimises −FOM with CMA-ES (``cma``), Nelder-Mead or Powell
(``scipy.optimize.minimize``) or SPSA (below), through a ``measure(controls (B, K), kind, index)``
callable that returns one :class:`Measurement` per row (the experiments layer measures on a
backend and records every evaluation; see :mod:`qhil.experiments.battery.optimize`).

Re-evaluation of the incumbent: the best candidate of each batch whose single draw beats the
incumbent is re-measured ``reevaluate`` times; it becomes the incumbent only if the mean of
those re-measurements beats the incumbent's mean, so a lucky shot-noise draw is never kept.
At the end the incumbent is re-measured ``reevaluate`` more times. Its reported value is the
mean of all its re-measurements, its std the standard error of those values combined in
quadrature with the measurements' own stds: √(s²/n + Σσ_i²/n²) (conservative: the scatter
already holds the shot noise). With ``reevaluate=0`` (exact figures) a candidate's own value
is used.

Drift compensation (``drift_every=m``): a reference protocol (default: the start) is measured
first and after every m candidate evaluations; every later figure is corrected by the
reference's shift from its first measurement, FOM − (ref_now − ref_first). The raw values and
the reference measurements (kind ``"reference"``) are recorded separately.

Budget: ``max_evals`` counts every measurement (candidates, re-evaluations, references) and
``max_shots`` their shots; a batch is measured only if it, the possible re-evaluation of a
contender, a reference and the final re-evaluation all still fit, so the run stops cleanly
without exceeding either. Every optimiser is deterministic given ``seed`` and the measured
values, which is what makes a recorded run resume exactly (replaying its measurements).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

from qhil.drivers import ValidationError
from qhil.drivers import checks as check

METHODS = ("cmaes", "nelder-mead", "powell", "spsa")
BASES = ("piecewise", "dcrab")
KINDS = ("candidate", "reeval", "reference")
#: SPSA measures its iterate every this many iterations (2 evaluations each)
SPSA_MEASURE_EVERY = 5
#: SPSA's default perturbation c (units of x)
SPSA_C = 0.005


# -- parametrisations ------------------------------------------------------------------------
def _check_start(start: Any, lower: float, upper: float) -> np.ndarray:
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise ValidationError("bounds", f"[{lower}, {upper}]", "finite lower < upper")
    arr = check.protocol("start", start, bounds=(lower, upper))
    arr.setflags(write=False)
    return arr


class PiecewiseConstant:
    """x = λ_k, one value per step (dim K), clipped to [lower, upper]; x0 = the start."""

    def __init__(self, start: Sequence[float], lower: float, upper: float) -> None:
        self.lower, self.upper = float(lower), float(upper)
        self.start = _check_start(start, self.lower, self.upper)
        self.dim = self.start.size
        self.x0 = self.start.copy()
        self.bounds: tuple[float, float] | None = (self.lower, self.upper)

    def controls(self, x: np.ndarray) -> np.ndarray:
        """λ (K,) in ω_0 for the search vector x (K,)."""
        return np.clip(np.asarray(x, dtype=float).reshape(self.dim), self.lower, self.upper)

    def to_dict(self) -> dict[str, Any]:
        return {"basis": "piecewise", "start": self.start.tolist(), "lower": self.lower, "upper": self.upper}


class DCRAB:
    """A dCRAB-style reduced basis: ``n_components`` randomised Fourier components on top of the
    start protocol (dim 2·n_components; x = (a_1..a_n, b_1..b_n), x0 = 0).

    max_frequency: the highest harmonic i + r_i allowed (cycles per protocol; default none)
    """

    def __init__(self, start: Sequence[float], n_components: int, lower: float, upper: float,
                 seed: int = 0, max_frequency: float | None = None) -> None:
        self.lower, self.upper = float(lower), float(upper)
        self.start = _check_start(start, self.lower, self.upper)
        k = self.start.size
        if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) \
                or not 1 <= n_components <= k:
            raise ValidationError("components", f"{n_components!r}", f"an integer in [1, {k}] (K = {k} steps)")
        self.n_components = int(n_components)
        if max_frequency is not None and not (math.isfinite(max_frequency) and max_frequency >= self.n_components - 0.5):
            raise ValidationError("max_frequency", f"{max_frequency!r}",
                                  f"a harmonic ≥ n_components − ½ = {self.n_components - 0.5:g}")
        self.seed, self.max_frequency = int(seed), max_frequency
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0xDC2AB]))
        harmonics = np.arange(1, self.n_components + 1) + rng.uniform(-0.5, 0.5, self.n_components)
        if max_frequency is not None:
            harmonics = np.minimum(harmonics, max_frequency)
        self.harmonics = harmonics                        # i + r_i, cycles per protocol duration
        phase = 2 * np.pi * np.outer((np.arange(k) + 0.5) / k, harmonics)   # ω_i t_k, (K, n)
        self._basis = np.concatenate([np.sin(phase), np.cos(phase)], axis=1)  # (K, 2n)
        self.dim = 2 * self.n_components
        self.x0 = np.zeros(self.dim)
        self.bounds = None

    def controls(self, x: np.ndarray) -> np.ndarray:
        """λ (K,) in ω_0 for the coefficients x = (a, b) (2n,)."""
        return np.clip(self.start + self._basis @ np.asarray(x, dtype=float).reshape(self.dim),
                       self.lower, self.upper)

    def to_dict(self) -> dict[str, Any]:
        return {"basis": "dcrab", "start": self.start.tolist(), "lower": self.lower, "upper": self.upper,
                "n_components": self.n_components, "seed": self.seed, "harmonics": self.harmonics.tolist()}


def make_parametrisation(basis: str, start: Sequence[float], lower: float, upper: float,
                         components: int | None = None, seed: int = 0) -> PiecewiseConstant | DCRAB:
    """``basis`` ("piecewise" | "dcrab") over ``start``; ``components`` for dCRAB (default 4)."""
    if basis == "piecewise":
        if components is not None:
            raise ValidationError("components", "applies to the dcrab basis only", "omit it with basis piecewise")
        return PiecewiseConstant(start, lower, upper)
    if basis == "dcrab":
        return DCRAB(start, 4 if components is None else components, lower, upper, seed)
    raise ValidationError("basis", f"{basis!r}", ", ".join(BASES))


# -- measurements and the record of one run ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Measurement:
    """One measured figure of merit: value ± std (1σ, units ω_0), shots spent, device seconds."""

    value: float
    std: float
    shots: int
    device_s: float


#: measure(controls (B, K), kind, index of the first row among all evaluations) → B measurements
Measure = Callable[[np.ndarray, str, int], Sequence[Measurement]]


class BudgetExhausted(Exception):
    """The next batch would exceed the budget (caught by :func:`optimise`)."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """max_evals: measurements in all; max_shots: their shots; shots_per_eval: what one costs."""

    max_evals: int | None
    max_shots: int | None
    shots_per_eval: int

    def allows(self, evals: int, shots: int, more: int) -> bool:
        if self.max_evals is not None and evals + more > self.max_evals:
            return False
        return self.max_shots is None or shots + more * self.shots_per_eval <= self.max_shots


class _Incumbent:
    def __init__(self, x: np.ndarray, controls: np.ndarray, values: list[float], stds: list[float]) -> None:
        self.x, self.controls, self.values, self.stds = x, controls, values, stds

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        n = len(self.values)
        scatter = float(np.var(self.values, ddof=1)) / n if n > 1 else 0.0
        own = float(np.sum(np.square(self.stds))) / n ** 2
        return math.sqrt(scatter + own)


class _Loop:
    """Budget, incumbent, re-evaluation, drift correction and the trace, around ``measure``."""

    def __init__(self, param: Any, measure: Measure, budget: Budget, reevaluate: int,
                 drift_every: int | None, reference: np.ndarray | None,
                 on_evaluation: Callable[[dict[str, Any]], None] | None) -> None:
        self.param, self.measure, self.budget = param, measure, budget
        self.reevaluate, self.drift_every = reevaluate, drift_every
        self.reference = None if drift_every is None else (param.start if reference is None else reference)
        self.on_evaluation = on_evaluation
        self.evals = self.shots = 0
        self.device_s = 0.0
        self.ref_first: float | None = None
        self.correction = 0.0
        self.since_reference = 0
        self.incumbent: _Incumbent | None = None
        self.trace: list[dict[str, Any]] = []
        self.references: list[dict[str, Any]] = []

    # what one batch may need on top of itself: a contender's re-evaluation, a reference, the end
    def _reserve(self) -> int:
        return 2 * self.reevaluate + (1 if self.drift_every else 0)

    def _measure(self, controls: np.ndarray, kind: str) -> list[Measurement]:
        out = list(self.measure(controls, kind, self.evals))
        if len(out) != len(controls):
            raise ValueError(f"measure returned {len(out)} measurements for {len(controls)} controls")
        for c, m in zip(controls, out):
            self.evals += 1
            self.shots += int(m.shots)
            self.device_s += float(m.device_s)
            value = m.value - (self.correction if kind != "reference" else 0.0)
            if kind == "reference":
                if self.ref_first is None:
                    self.ref_first = m.value
                self.correction = m.value - self.ref_first
                self.references.append({"evaluation": self.evals, "fom": m.value, "correction": self.correction})
            inc = self.incumbent
            if inc is not None:
                self.trace.append(self._trace_entry(inc))
            if self.on_evaluation is not None:
                self.on_evaluation({"evaluation": self.evals, "kind": kind, "controls": c.tolist(),
                                    "fom": m.value, "value": value, "correction": self.correction,
                                    "std": m.std, "shots": m.shots, "device_s": m.device_s,
                                    "shots_spent": self.shots,
                                    "incumbent_fom": None if inc is None else inc.mean,
                                    "incumbent_std": None if inc is None else inc.std,
                                    "incumbent_controls": None if inc is None else inc.controls.tolist()})
        return out

    def _maybe_reference(self) -> None:
        if self.drift_every and (self.ref_first is None or self.since_reference >= self.drift_every):
            self._measure(np.asarray(self.reference, dtype=float)[None], "reference")
            self.since_reference = 0

    def evaluate(self, xs: np.ndarray) -> np.ndarray:
        """−(corrected FOM) of each search vector in ``xs`` (B, dim); the optimisers' objective.
        Raises :class:`BudgetExhausted` when the batch does not fit."""
        xs = np.atleast_2d(np.asarray(xs, dtype=float))
        if not self.budget.allows(self.evals, self.shots, len(xs) + self._reserve()):
            raise BudgetExhausted
        self._maybe_reference()
        controls = np.stack([self.param.controls(x) for x in xs])
        ms = self._measure(controls, "candidate")
        self.since_reference += len(ms)
        values = np.array([m.value for m in ms]) - self.correction
        best = int(np.argmax(values))
        inc = self.incumbent
        if inc is None or values[best] > inc.mean:
            if self.reevaluate > 0:
                again = self._measure(np.repeat(controls[best][None], self.reevaluate, axis=0), "reeval")
                vals = [m.value - self.correction for m in again]
                values[best] = float(np.mean(vals))
                if inc is None or values[best] > inc.mean:
                    self.incumbent = _Incumbent(xs[best].copy(), controls[best], vals, [m.std for m in again])
            else:
                self.incumbent = _Incumbent(xs[best].copy(), controls[best], [float(values[best])], [ms[best].std])
            self._trace_incumbent()
        return -values

    def _trace_entry(self, inc: _Incumbent) -> dict[str, Any]:
        return {"evaluation": self.evals, "shots_spent": self.shots, "incumbent_fom": inc.mean, "incumbent_std": inc.std}

    def _trace_incumbent(self) -> None:
        """The trace's entry for the latest evaluation holds the incumbent after its batch's decision."""
        if self.incumbent is None:
            return
        entry = self._trace_entry(self.incumbent)
        if self.trace and self.trace[-1]["evaluation"] == self.evals:
            self.trace[-1] = entry
        else:
            self.trace.append(entry)

    def finish(self) -> None:
        """The final re-evaluation of the incumbent (its budget was reserved)."""
        if self.incumbent is not None and self.reevaluate > 0:
            again = self._measure(np.repeat(self.incumbent.controls[None], self.reevaluate, axis=0), "reeval")
            self.incumbent.values += [m.value - self.correction for m in again]
            self.incumbent.stds += [m.std for m in again]
            self._trace_incumbent()


# -- the optimisers ---------------------------------------------------------------------------
def _cmaes(loop: _Loop, x0: np.ndarray, bounds: Any, seed: int, sigma0: float, popsize: int | None) -> None:
    import cma
    opts: dict[str, Any] = {"seed": seed % (2**31 - 2) + 1, "verbose": -9, "verb_log": 0, "verb_disp": 0,
                            "maxfevals": np.inf, "tolfun": 0.0, "tolx": 1e-12, "tolflatfitness": 10**6}
    if bounds is not None:
        opts["bounds"] = list(bounds)
    if popsize is not None:
        opts["popsize"] = popsize
    # cma draws from numpy's global generator unless given its own: a private seeded one keeps
    # the sequence (and so an exact resume by replay) independent of anything else in the process
    rng = np.random.default_rng(seed)
    opts["randn"] = lambda *shape: rng.standard_normal(shape)
    es = cma.CMAEvolutionStrategy(np.asarray(x0, dtype=float), sigma0, opts)
    while not es.stop():
        xs = es.ask()
        es.tell(xs, loop.evaluate(np.array(xs)).tolist())


def _scipy(loop: _Loop, method: str, x0: np.ndarray, bounds: Any, step: float) -> None:
    from scipy.optimize import minimize
    dim = len(x0)
    box = None if bounds is None else [bounds] * dim
    if method == "nelder-mead":
        simplex = np.vstack([x0, x0 + step * np.eye(dim)])
        if bounds is not None:           # step inwards where x0 sits on the upper bound
            lo, hi = bounds
            simplex[1:] = np.where(simplex[1:] > hi, x0 - step * np.eye(dim), simplex[1:])
            simplex = np.clip(simplex, lo, hi)
        name, options = "Nelder-Mead", {"initial_simplex": simplex, "xatol": 1e-10, "fatol": 1e-12, "adaptive": dim > 10}
    else:
        name, options = "Powell", {"direc": step * np.eye(dim), "xtol": 1e-8, "ftol": 1e-12}
    minimize(lambda x: float(loop.evaluate(x[None])[0]), x0, method=name, bounds=box,
             options={"maxfev": 10**9, **options})


def _spsa(loop: _Loop, x0: np.ndarray, bounds: Any, seed: int, step: float, c: float, big_a: float,
          measure_every: int = SPSA_MEASURE_EVERY) -> None:
    """SPSA (Spall 1998): g_k = [f(x + c_k Δ) − f(x − c_k Δ)] / (2 c_k) Δ, Δ_i = ±1,
    x ← x − a_k g_k with a_k = a / (k + 1 + A)^0.602, c_k = c / (k + 1)^0.101. The gain a is set
    from the first gradient so that the first update moves the largest component by ``step``.
    The iterate x itself is measured (a candidate for the incumbent) every ``measure_every``
    iterations: the perturbed points x ± c_k Δ that SPSA measures are never at the optimum."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B5A]))
    x = np.asarray(x0, dtype=float).copy()
    a = None
    k = 0
    while True:
        ck = c / (k + 1) ** 0.101
        delta = rng.choice([-1.0, 1.0], size=x.size)
        f_plus, f_minus = loop.evaluate(np.stack([x + ck * delta, x - ck * delta]))
        g = (f_plus - f_minus) / (2 * ck) * delta
        if a is None:
            a = step * (big_a + 1) ** 0.602 / max(float(np.abs(g).max()), 1e-12)
        x = x - a / (k + 1 + big_a) ** 0.602 * g
        if bounds is not None:
            x = np.clip(x, *bounds)
        k += 1
        if k % measure_every == 0:
            loop.evaluate(x[None])


@dataclasses.dataclass
class OptimisationResult:
    """The incumbent (controls in ω_0, fom ± std, its re-measured values), what was spent, the trace."""

    best_x: np.ndarray | None
    best_controls: np.ndarray | None
    best_fom: float | None
    best_std: float | None
    best_reevaluations: list[float]
    evaluations: int
    shots_spent: int
    device_s: float
    trace: list[dict[str, Any]]
    references: list[dict[str, Any]]


def optimise(param: PiecewiseConstant | DCRAB, measure: Measure, *, method: str, budget: Budget,
             reevaluate: int = 0, drift_every: int | None = None, reference: np.ndarray | None = None,
             seed: int = 0, sigma0: float = 0.05, popsize: int | None = None, spsa_c: float | None = None,
             spsa_a0: float = 10.0, on_evaluation: Callable[[dict[str, Any]], None] | None = None
             ) -> OptimisationResult:
    """Maximise the measured figure of merit over ``param`` with ``method`` within ``budget``.

    sigma0: CMA-ES initial step, Nelder-Mead simplex size, Powell direction length, SPSA first
    step (units of x: ω_0 for piecewise, Fourier amplitude for dCRAB); spsa_c: SPSA perturbation
    (default :data:`SPSA_C`); spsa_a0: SPSA's stability constant A. The start x0 is evaluated first
    (the initial incumbent)."""
    if method not in METHODS:
        raise ValidationError("method", f"{method!r}", ", ".join(METHODS))
    loop = _Loop(param, measure, budget, reevaluate, drift_every, reference, on_evaluation)
    try:
        loop.evaluate(param.x0[None])
        if method == "cmaes":
            _cmaes(loop, param.x0, param.bounds, seed, sigma0, popsize)
        elif method in ("nelder-mead", "powell"):
            _scipy(loop, method, param.x0, param.bounds, sigma0)
        else:
            _spsa(loop, param.x0, param.bounds, seed, sigma0, SPSA_C if spsa_c is None else spsa_c, spsa_a0)
    except BudgetExhausted:
        pass
    loop.finish()
    inc = loop.incumbent
    return OptimisationResult(
        None if inc is None else inc.x, None if inc is None else inc.controls,
        None if inc is None else inc.mean, None if inc is None else inc.std,
        [] if inc is None else list(inc.values), loop.evals, loop.shots, loop.device_s, loop.trace, loop.references)
