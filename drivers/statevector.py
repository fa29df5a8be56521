"""The exact statevector driver: the reference every other driver is checked against.

Batched Chebyshev propagation on the invariant sector (see :mod:`.propagate`) with a
prefix cache: the state after every control prefix is kept (LRU), so an RL episode that
asks for controls[:k+1] after controls[:k] costs one step, not k+1.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import checks as check
from .backend import Backend, Capabilities
from .experiment import Experiment, Result
from .model import Model
from .measure import measure_density, warn_if_truncated
from .prefix import PrefixCache, lockstep
from .schedule import measured_step_set
from .propagate import ChebyshevPropagator


class StatevectorBackend(Backend):
    """Exact pure-state simulation. ``cache_size`` = number of prefix states kept.

    Propagators are kept per model (LRU, at most ``MAX_PROPAGATORS``): a run that draws new
    parameters every episode (domain randomisation) rebuilds one per new model (~0.1 s and
    ~0.3 MB for the N = 4 Dicke battery) instead of keeping every one ever built.
    """

    name = "statevector"
    MAX_PROPAGATORS = 64

    def __init__(self, seed: int | None = None, cache_size: int = 16384) -> None:
        super().__init__(seed)
        self.cache_size = check.integer("cache_size", cache_size, 0, 10**8)
        self._props: OrderedDict[str, ChebyshevPropagator] = OrderedDict()
        self._cache = PrefixCache(self.cache_size)
        self.steps_propagated = 0  # counts column-steps, for tests and benchmarks
        self._warned: set[str] = set()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(full_state=True, exact_expectations=True, qubit_density=True, noise=False)

    def propagator(self, model: Model) -> ChebyshevPropagator:
        key = model.key
        if key in self._props:
            self._props.move_to_end(key)
        else:
            self._props[key] = ChebyshevPropagator(model)
            while len(self._props) > self.MAX_PROPAGATORS:
                self._props.popitem(last=False)
        return self._props[key]

    def clear_cache(self) -> None:
        self._cache.clear()

    # -- propagation ---------------------------------------------------------------
    def states(self, batch: list[Experiment]) -> list[dict[int, np.ndarray]]:
        """Sector states at every measured step of each experiment: [{k: ψ_k (d,)}]."""
        out: list[dict[int, np.ndarray]] = [dict() for _ in batch]
        groups: dict[tuple, list[int]] = {}
        for i, e in enumerate(batch):
            groups.setdefault((e.model.key, e.dt), []).append(i)
        for idx in groups.values():
            self._propagate_group([batch[i] for i in idx], [out[i] for i in idx])
        return out

    def _propagate_group(self, exps: list[Experiment], outs: list[dict[int, np.ndarray]]) -> None:
        prop = self.propagator(exps[0].model)
        dt = exps[0].dt
        measured = [measured_step_set(e.schedule, e.n_steps) for e in exps]
        starts = [self._cache.start(e, m) for e, m in zip(exps, measured)]
        psi0 = prop.restrict(exps[0].model.initial_state())
        cols = []
        for e, m0, meas, out in zip(exps, starts, measured, outs):
            for k in meas:
                if k <= m0:
                    out[k] = self._cache.get(e, k) if k > 0 else psi0
            cols.append(self._cache.get(e, m0) if m0 > 0 else psi0)
        psi = np.stack(cols, axis=1).astype(complex, copy=False)
        for active, u, reached in lockstep(exps, starts):
            if active.size == psi.shape[1]:
                psi = prop.step(psi, u, dt)
            else:
                psi[:, active] = prop.step(psi[:, active], u, dt)
            self.steps_propagated += active.size
            snapshot = np.ascontiguousarray(psi.T)    # rows are never written again: safe to share
            for i in active:
                k = int(reached[i])
                col = snapshot[i]
                self._cache.put(exps[i], k, col)
                if k in measured[i]:
                    outs[i][k] = col

    # -- measurement ---------------------------------------------------------------
    def _run(self, batch: list[Experiment], seeds: np.random.SeedSequence) -> list[Result]:
        states = self.states(batch)
        need_rng = any(e.schedule.shots is not None for e in batch)
        rngs = [np.random.default_rng(s) for s in seeds.spawn(len(batch))] if need_rng else [None] * len(batch)
        results: list[Result | None] = [None] * len(batch)
        groups: dict[tuple, list[int]] = {}
        for i, e in enumerate(batch):
            groups.setdefault((e.model.key, e.schedule.observables, e.schedule.shots), []).append(i)
        for idx in groups.values():   # one embedding, one batched ρ and one product per group
            e0 = batch[idx[0]]
            model, n = e0.model, e0.model.n_qubits
            steps = [batch[i].schedule.measured_steps(batch[i].n_steps) for i in idx]
            cols = np.stack([states[i][int(k)] for i, st in zip(idx, steps) for k in st]).T   # (d, M) view
            prop = self.propagator(model)
            rho = prop.qubit_density(cols)
            full = prop.embed(cols) if e0.schedule.full_state else None
            top = prop.aux_top_population(cols) if model.aux_truncated else None
            labels = e0.schedule.labels(n)
            settings = e0.schedule.settings(n) if labels else ()
            exact = None
            if e0.schedule.shots is None:
                exact = measure_density(rho, labels, settings, None, None, n)
            offsets = np.cumsum([0] + [len(st) for st in steps])
            meta = {"model": model.to_dict(), "dt": e0.dt, "shots": e0.schedule.shots}
            if top is not None:
                warn_if_truncated(model, float(top.max()), self._warned)
                top = np.maximum.reduceat(top, offsets[:-1]).tolist()      # per experiment
            for j, i in enumerate(idx):
                e, sl = batch[i], slice(offsets[j], offsets[j + 1])
                if exact is not None:
                    values, stderr, counts = exact[0][sl], exact[1][sl], None
                else:
                    values, stderr, counts, _ = measure_density(rho[sl], labels, settings,
                                                                e.schedule.shots, rngs[i], n)
                md = {**meta, "dt": e.dt, "n_steps": e.n_steps}
                if top is not None:
                    md["aux_top_population"] = top[j]
                results[i] = Result(steps=steps[j], times=steps[j] * e.dt, labels=labels, values=values,
                                    stderr=stderr, qubit_density=rho[sl],
                                    state=None if full is None else full[sl],
                                    counts=counts, settings=settings, metadata=md)
        return results  # type: ignore[return-value]
