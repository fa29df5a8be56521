"""One backend interface for every driver, and the factory that picks one.

    backend = create_backend("statevector")            # exact reference
    backend = create_backend("aer", noise=...)         # Qiskit Aer, noisy channels
    backend = create_backend("zmq://127.0.0.1:5555")   # lab hardware over ZeroMQ
    results = backend.run([Experiment(model, controls, dt, schedule), ...])

Every driver returns one :class:`~qhil.drivers.experiment.Result` per experiment, with the
same shapes and metadata keys; code above the drivers never asks which one it has.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import platform
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import ValidationError
from .experiment import Experiment, Result

#: Largest seed accepted anywhere in qhil (numpy's and torch's generators take [0, 2^63 − 1]).
SEED_MAX = 2**63 - 1


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """``seed`` as an int in [0, 2^63 − 1], or None (fresh entropy); a ValidationError naming
    ``name`` otherwise (negative, bool, float, too large, …)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValidationError(name, f"expected an integer or None, got {seed!r}", f"an integer in [0, {SEED_MAX}]")
    if not 0 <= int(seed) <= SEED_MAX:
        raise ValidationError(name, f"{int(seed)} is out of range", f"an integer in [0, {SEED_MAX}]")
    return int(seed)


@dataclass(frozen=True)
class Capabilities:
    """What a driver can return."""

    full_state: bool          # the ``full_state`` regime
    exact_expectations: bool  # shots=None
    qubit_density: bool       # Result.qubit_density (simulators)
    noise: bool               # channel noise


class Backend(ABC):
    """Runs batches of experiments. Subclasses implement :meth:`_run`."""

    name: str = "backend"

    def __init__(self, seed: int | None = None) -> None:
        self.seed = check_seed(seed)
        self._rng = np.random.default_rng(self.seed)

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    def run(self, experiments: Experiment | Sequence[Experiment], *, seed: int | None = None) -> list[Result]:
        """Run a batch; validated before any work starts. Returns one Result each, in order."""
        batch = [experiments] if isinstance(experiments, Experiment) else list(experiments)
        for i, e in enumerate(batch):
            if not isinstance(e, Experiment):
                raise ValidationError(f"experiments[{i}]", f"expected an Experiment, got {type(e).__name__}")
            if e.schedule.full_state and not self.capabilities.full_state:
                raise ValidationError(f"experiments[{i}].schedule.observables",
                                      f"the full state is not available on the {self.name} driver",
                                      "energies, first_order, second_order or Pauli labels")
        run_seed = int(self._rng.integers(2**63)) if seed is None else check_seed(seed)
        t0 = time.perf_counter()
        results = self._run(batch, np.random.SeedSequence(run_seed)) if batch else []
        wall = time.perf_counter() - t0
        common = {"driver": self.name, "seed": run_seed, "batch_size": len(batch),
                  "batch_wall_s": wall, "versions": versions()}
        for e, r in zip(batch, results):   # metadata dicts are shared within a batch: read-only
            r.metadata.update(common)
            r.metadata["cost"] = e.cost().to_dict()
        return results

    @abstractmethod
    def _run(self, batch: list[Experiment], seeds: np.random.SeedSequence) -> list[Result]: ...

    def describe(self) -> dict[str, Any]:
        """What this backend is and can do (hardware drivers add channels, limits, calibration)."""
        return {"driver": self.name, "capabilities": dataclasses.asdict(self.capabilities),
                "versions": versions()}

    def state_dict(self) -> dict[str, Any]:
        """What changes as the backend runs (its seed generator; a simulated device's drift),
        for a training checkpoint: restored on resume, a run continues as if never stopped."""
        return {"rng": copy.deepcopy(self._rng.bit_generator.state)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (ValidationError naming ``backend_state`` if it is not one)."""
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = dict(state["rng"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError("backend_state", f"not a {self.name} backend state ({exc!r})",
                                  "a state_dict() of the same driver") from None
        self._rng = rng

    def close(self) -> None:
        """Release resources (sockets, threads)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_VERSIONS: dict[str, str] = {}


def versions() -> dict[str, str]:
    """Versions of qhil and its numerical stack, recorded with every result (read-only)."""
    if not _VERSIONS:
        from importlib.metadata import PackageNotFoundError, version
        for pkg in ("qhil", "numpy", "scipy"):
            try:
                _VERSIONS[pkg] = version(pkg)
            except PackageNotFoundError:
                _VERSIONS[pkg] = "unknown"
        _VERSIONS["python"] = platform.python_version()
    return _VERSIONS


# name → "module:attribute" of a factory taking (spec, **options); loaded on first use so
# that, e.g., qiskit-aer is imported only when the Aer driver is asked for.
_DRIVERS: dict[str, str] = {
    "statevector": "qhil.drivers.statevector:StatevectorBackend",
    "aer": "qhil.drivers.aer:AerBackend",
    "zmq": "qhil.drivers.bridge.client:ZmqBackend",
}


def register_driver(name: str, factory: str | Callable[..., Backend]) -> None:
    """Make ``create_backend(name)`` (or ``name://…``) return ``factory(spec, **options)``."""
    _DRIVERS[name] = factory  # type: ignore[assignment]


def create_backend(spec: str = "statevector", **options: Any) -> Backend:
    """A backend from a spec: ``"statevector"``, ``"aer"`` or ``"zmq://host:port"``.

    Options are checked before the driver is built: ``seed`` must be None or an integer in
    [0, 2^63 − 1], and every option must be one the driver takes (a ValidationError names it)."""
    if not isinstance(spec, str) or not spec:
        raise ValidationError("backend", f"expected a string, got {spec!r}", _allowed())
    if "seed" in options:
        options["seed"] = check_seed(options["seed"])
    name = spec.split("://", 1)[0] if "://" in spec else spec
    if name not in _DRIVERS:
        raise ValidationError("backend", f"unknown backend {spec!r}", _allowed())
    factory = _DRIVERS[name]
    if isinstance(factory, str):
        mod, attr = factory.split(":")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise ValidationError("backend", f"the {name!r} driver is not available here ({exc})",
                                  _allowed()) from None
    args = (spec,) if "://" in spec else ()
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ValidationError(unknown[0], f"not an option of the {name!r} driver",
                                  ", ".join(p for p in params if p not in ("self", "spec")) or "none")
    return factory(*args, **options)


def _allowed() -> str:
    return ", ".join(n + ("://host:port" if n == "zmq" else "") for n in _DRIVERS)
