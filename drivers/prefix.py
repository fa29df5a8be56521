"""The prefix cache shared by the simulator drivers.

States (of any kind: vectors, density-matrix blocks, …) after each control prefix are kept
in an LRU store keyed by (model, Δt, controls[:k]), so that an RL episode asking for
controls[:k+1] after controls[:k] costs one step instead of k+1.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable, Iterator

import numpy as np

from .experiment import Experiment


class PrefixCache:
    """LRU store of states after control prefixes; ``size`` = entries kept (0 disables it)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._store: OrderedDict[tuple, Any] = OrderedDict()

    @staticmethod
    def key(e: Experiment, k: int) -> tuple:
        """Key of the state after the first k steps of e."""
        return (e.model.key, e.dt, e.controls[:k].tobytes())

    def get(self, e: Experiment, k: int) -> Any:
        key = self.key(e, k)
        value = self._store.get(key)
        if value is not None:
            self._store.move_to_end(key)
        return value

    def put(self, e: Experiment, k: int, value: Any) -> None:
        if self.size <= 0:
            return
        key = self.key(e, k)
        self._store[key] = value
        self._store.move_to_end(key)
        while len(self._store) > self.size:
            self._store.popitem(last=False)

    def start(self, e: Experiment, measured: Iterable[int]) -> int:
        """Longest cached prefix m such that every measured step 0 < k < m is cached too
        (0: start from the initial state)."""
        if self.size <= 0:
            return 0
        earlier = sorted(int(k) for k in measured if k > 0)
        for m in range(e.n_steps, 0, -1):
            if self.key(e, m) in self._store and all(self.key(e, k) in self._store for k in earlier if k < m):
                return m
        return 0

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)


def lockstep(experiments: list[Experiment], starts: list[int]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Step a batch of experiments together from their start steps.

    Yields (active, u, reached): the indices still running, their controls for this step
    (A, n_controls), and the step index every experiment has reached once this step is applied.
    """
    pos = np.array(starts)
    ends = np.array([e.n_steps for e in experiments])
    while True:
        active = np.nonzero(pos < ends)[0]
        if active.size == 0:
            return
        u = np.stack([experiments[i].controls[pos[i]] for i in active])
        pos[active] += 1
        yield active, u, pos
