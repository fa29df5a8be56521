"""The noisy-channel driver: Qiskit Aer as the reference, an exact block engine for speed.

    backend = create_backend("aer", noise=[depolarizing(p=0.01), bit_flip(rate=0.05)], seed=7)
    backend = create_backend("aer", noise=noise_model)          # a qiskit-aer NoiseModel
    backend = create_backend("aer", noise=..., readout=[[0.98, 0.05], [0.02, 0.95]])

Noise conventions (probabilities per step, rates per unit time) are in :mod:`qhil.drivers.channels`.

Mapping onto qubits (Qiskit numbers qubits little-endian; qhil's qubit 0 is the most
significant bit, so the map is explicit): qhil qubit q is Aer qubit q for q < n; the
auxiliary mode's levels m = 0..aux_dim−1 (the cavity's Fock states) are written in binary
on Aer qubits n..n+r−1, r = ⌈log2 aux_dim⌉, least significant first. Levels ≥ aux_dim are
never populated (the step gate is the identity there). Each control step is one
``UnitaryGate``: ``model.step_propagator(u, dt)`` embedded in that register. Noise acts
after each step on the measurable qubits only, never on the cavity register: first the
channels in the order given, then a NoiseModel's errors.

Engines (``engine=``):

* ``"aer"``:   Qiskit Aer, method ``density_matrix`` (the reference; ``statevector``
  without noise). Slow: the register holds 4 + 6 qubits for the default battery.
* ``"block"``: :class:`~qhil.drivers.density.BlockDensityEngine`, exact for channels that
  map |a⟩⟨b| only onto itself and |ā⟩⟨b̄| (bit/phase flip, depolarizing, amplitude and
  phase damping, thermal relaxation): ρ stays block-diagonal over the model's parity
  blocks. Cross-checked against Aer in the tests. With a prefix cache, like the exact driver.
* ``"auto"`` (default): ``block`` when the channels allow it, else ``aer``.

Speed (benchmarks/bench_aer.py, N = 4 battery at n_max = 40, 28 noisy steps, 2 busy cores):
Aer density matrix ≈ 380 s per episode; block engine ≈ 0.7–0.8 s, ≈ 0.64 s per episode in
batches of 8, equal to Aer within 1e-14.

A qiskit-aer ``NoiseModel`` acts through its single-qubit errors on the ``id``
instruction (one idle slot per measurable qubit after each step, as a device model's idle
errors would) and its single-qubit readout errors (turned into the assignment matrix).
Errors on other instructions cannot match anything in these circuits; they are ignored
with a warning. Errors on qubits ≥ n (the cavity register or beyond), multi-qubit errors on
``id``, correlated readout errors and custom noise passes are rejected. qiskit-aer keeps the
error tables private (:data:`NOISE_MODEL_ATTRIBUTES`): qhil reads them strictly and checks the
count against the public ``to_dict()``, so a qiskit-aer that renames them raises
:class:`~qhil.drivers.UnsupportedError` rather than running without the noise.

Readout: ``readout`` is an assignment matrix A[m, t] = P(read m | true t), one (2, 2) for
every qubit or (n, 2, 2). Shot runs sample through it; exact runs return the expectation
values the shot estimates converge to.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from . import checks as check
from .backend import Backend, Capabilities
from .errors import UnsupportedError, ValidationError
from .experiment import Experiment, Result
from .measure import measure_density, warn_if_truncated
from .model import Model
from .channels import Channel, check_assignment, check_qubits, kraus_channel, parse_channels
from .density import BlockDensityEngine, block_compatible
from .pauli import estimate_from_counts, outcome_probabilities
from .prefix import PrefixCache, lockstep

ENGINES = ("auto", "block", "aer")
AER_METHODS = ("automatic", "density_matrix", "statevector")


def register_qubits(model: Model) -> int:
    """Number of Aer qubits encoding the auxiliary mode: ⌈log2 aux_dim⌉ (0 when absent)."""
    return 0 if model.aux_dim <= 1 else int(math.ceil(math.log2(model.aux_dim)))


def aer_permutation(model: Model) -> np.ndarray:
    """perm[i] = Aer basis index of qhil basis index i = s·aux_dim + m (qubit 0 = MSB of s)."""
    n, aux = model.n_qubits, model.aux_dim
    i = np.arange(model.dim)
    s, m = i // aux, i % aux
    rev = np.zeros_like(s)
    for q in range(n):
        rev |= ((s >> (n - 1 - q)) & 1) << q
    return rev + (m << n)


def _is_noise_model(obj: Any) -> bool:
    return type(obj).__name__ == "NoiseModel" and hasattr(obj, "to_dict")


#: The NoiseModel attributes qhil reads (qiskit-aer keeps them private; tested with qiskit-aer 0.18.2).
NOISE_MODEL_ATTRIBUTES = ("_default_quantum_errors", "_local_quantum_errors", "_default_readout_error",
                          "_local_readout_errors", "_custom_noise_passes")


def _noise_model_parts(nm: Any) -> dict[str, Any]:
    """The NoiseModel's error tables, read strictly: an attribute that is missing, or tables that
    disagree with the model's public ``to_dict()``, raise :class:`UnsupportedError` instead of
    silently dropping the noise (a qiskit-aer that renamed its internals would otherwise give a
    noiseless run)."""
    try:
        from qiskit_aer import __version__ as aer_version
    except ImportError:                                  # pragma: no cover - qiskit-aer is a dependency
        aer_version = "unknown"
    hint = (f"qhil reads the NoiseModel's {', '.join(NOISE_MODEL_ATTRIBUTES)}; it is tested with qiskit-aer "
            f"0.18.2 and this is {aer_version}. Pin qiskit-aer to a tested version, or give the errors as "
            "qhil channels (kraus_channel, depolarizing, …) and readout=")
    missing = [a for a in NOISE_MODEL_ATTRIBUTES if not hasattr(nm, a)]
    if missing:
        raise UnsupportedError(f"noise.NoiseModel: cannot read {missing} from this NoiseModel. {hint}")
    parts = {a.strip("_"): getattr(nm, a) for a in NOISE_MODEL_ATTRIBUTES}
    try:
        n_quantum = len(parts["default_quantum_errors"]) + sum(
            len(per_q) for per_q in parts["local_quantum_errors"].values())
        n_readout = (parts["default_readout_error"] is not None) + len(parts["local_readout_errors"])
        n_public = len(nm.to_dict()["errors"])
    except (AttributeError, TypeError, KeyError) as exc:
        raise UnsupportedError(f"noise.NoiseModel: its error tables have an unexpected form ({exc}). {hint}") from None
    if n_quantum + n_readout != n_public:
        raise UnsupportedError(f"noise.NoiseModel: read {n_quantum} quantum and {n_readout} readout errors, but "
                               f"to_dict() lists {n_public}. {hint}")
    if parts["custom_noise_passes"]:
        raise ValidationError("noise.NoiseModel", "custom noise passes cannot be applied to qhil circuits",
                              "quantum errors on 'id' and single-qubit readout errors")
    return parts


def _from_noise_model(nm: Any) -> tuple[list[Channel], dict[int | None, np.ndarray], list[str], set[int]]:
    """Channels from a NoiseModel's 'id' errors, readout matrices per qubit (None = every
    qubit), the names of instructions whose errors cannot apply here, and every qubit the
    model names. Multi-qubit errors on 'id' and correlated readout errors are refused."""
    from qiskit.quantum_info import Kraus
    parts = _noise_model_parts(nm)
    channels: list[Channel] = []
    readout: dict[int | None, np.ndarray] = {}
    ignored: set[str] = set()
    named: set[int] = set()
    for name, err in parts["default_quantum_errors"].items():
        if name != "id":
            ignored.add(name)
            continue
        if err.num_qubits != 1:
            raise ValidationError("noise.NoiseModel", f"a {err.num_qubits}-qubit error on 'id'", "single-qubit errors")
        channels.append(kraus_channel(Kraus(err.to_quantumchannel()).data, None))
    for name, per_q in parts["local_quantum_errors"].items():
        for qubits, err in per_q.items():
            named.update(int(q) for q in qubits)
            if name != "id":
                ignored.add(name)
            elif err.num_qubits != 1 or len(qubits) != 1:
                raise ValidationError("noise.NoiseModel", f"a {err.num_qubits}-qubit error on 'id' of qubits "
                                      f"{[int(q) for q in qubits]}", "single-qubit errors")
            else:
                channels.append(kraus_channel(Kraus(err.to_quantumchannel()).data, tuple(qubits)))
    if parts["default_readout_error"] is not None:
        readout[None] = _readout_matrix(parts["default_readout_error"])
    for qubits, err in parts["local_readout_errors"].items():
        if len(qubits) != 1:
            raise ValidationError("noise.NoiseModel", f"a correlated readout error on qubits {list(qubits)}",
                                  "single-qubit readout errors")
        readout[int(qubits[0])] = _readout_matrix(err)
        named.add(int(qubits[0]))
    return channels, readout, sorted(ignored), named


def _readout_matrix(err: Any) -> np.ndarray:
    p = np.asarray(err.probabilities, dtype=float)
    if p.shape != (2, 2):
        raise ValidationError("noise.NoiseModel", f"readout error of shape {p.shape}", "single-qubit (2, 2)")
    return p.T      # Qiskit: probabilities[true][read]; qhil: A[read, true]


class AerBackend(Backend):
    """Noisy simulation: Aer (reference) or the exact block engine; see the module docstring.

    noise:      None, a channel (:func:`~qhil.drivers.channels.depolarizing`, a dict
                ``{"channel": "bit_flip", "p": 0.01, "qubits": [0, 2]}``, a pair
                ``("phase_flip", 0.02)``), a list of those, a qiskit-aer ``NoiseModel``, or a
                single-qubit ``QuantumError`` / ``qiskit.quantum_info.Kraus`` (all qubits).
    readout:    assignment matrix (2, 2) or (n, 2, 2), A[m, t] = P(read m | true t).
    engine:     "auto", "block" or "aer".
    aer_method: "automatic" (statevector without noise, else density_matrix),
                "density_matrix" or "statevector" (noiseless only).
    threads:    threads for the block engine's blocks and for Aer (default 1: shared machines).
    cache_size: block-engine prefix states kept (each ≈ 2·dim²·8 bytes, 3.4 MB for the default
                battery); keep it ≥ the number of episodes stepped together, so that each
                RL step costs one step.
    """

    name = "aer"

    def __init__(self, seed: int | None = None, noise: Any = None, readout: Any = None,
                 engine: str = "auto", aer_method: str = "automatic", threads: int = 1,
                 cache_size: int = 32) -> None:
        super().__init__(seed)
        if engine not in ENGINES:
            raise ValidationError("engine", f"unknown engine {engine!r}", ", ".join(ENGINES))
        if aer_method not in AER_METHODS:
            raise ValidationError("aer_method", f"unknown method {aer_method!r}", ", ".join(AER_METHODS))
        self.threads = check.integer("threads", threads, 1, 256)
        self.cache_size = check.integer("cache_size", cache_size, 0, 10**6)
        self.aer_method = aer_method
        items = noise if isinstance(noise, (list, tuple)) and not (
            len(noise) == 2 and isinstance(noise[0], str)) else ([] if noise is None else [noise])
        self.noise_model = None
        specs = []
        for item in items:
            if _is_noise_model(item):
                if self.noise_model is not None:
                    raise ValidationError("noise", "more than one NoiseModel", "at most one NoiseModel")
                self.noise_model = item
            elif type(item).__name__ in ("QuantumError", "Kraus"):
                specs.append(kraus_channel(item))
            else:
                specs.append(item)
        self.channels: tuple[Channel, ...] = parse_channels(specs)
        self._nm_readout: dict[int | None, np.ndarray] = {}
        self.ignored_instructions: list[str] = []
        self._nm_qubits: set[int] = set()
        self._user_channels = self.channels
        if self.noise_model is not None:   # Aer applies the model itself; the block engine its channels
            nm_channels, self._nm_readout, self.ignored_instructions, self._nm_qubits = \
                _from_noise_model(self.noise_model)
            self.channels = self.channels + tuple(nm_channels)
            if self.ignored_instructions:
                warnings.warn(f"NoiseModel errors on {self.ignored_instructions} cannot apply to qhil circuits "
                              "(one step gate, then one 'id' slot per measurable qubit) and are ignored",
                              RuntimeWarning, stacklevel=3)
        if self._nm_readout and readout is not None:
            raise ValidationError("readout", "given twice: by the NoiseModel and by readout=",
                                  "one of the two")
        self.readout = readout
        if engine == "block" and not block_compatible(self.channels, 1.0):
            raise ValidationError("engine", "'block' cannot run a channel that mixes the model's blocks",
                                  "engine='aer' or 'auto' for general channels")
        self.engine = engine
        self._engines: dict[tuple, BlockDensityEngine] = {}
        self._cache = PrefixCache(self.cache_size)
        self._warned: set[str] = set()
        self.steps_propagated = 0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(full_state=False, exact_expectations=True, qubit_density=True, noise=True)

    # -- validation ------------------------------------------------------------------------
    def _assignment(self, model: Model) -> np.ndarray | None:
        n = model.n_qubits
        if self._nm_readout:
            for q in self._nm_readout:
                if q is not None and q >= n:
                    raise ValidationError("noise.NoiseModel", f"readout error on qubit {q}, which does not exist",
                                          f"measurable qubits 0..{n - 1}")
            a = np.broadcast_to(self._nm_readout.get(None, np.eye(2)), (n, 2, 2)).copy()
            for q, m in self._nm_readout.items():
                if q is not None:
                    a[q] = m
            return check_assignment(a, n)
        return check_assignment(self.readout, n)

    def _validate(self, e: Experiment) -> None:
        n = e.model.n_qubits
        for q in sorted(self._nm_qubits):
            if q >= n:
                what = "the cavity register" if q < n + register_qubits(e.model) else "a qubit that does not exist"
                raise ValidationError("noise.NoiseModel", f"acts on qubit {q}, {what}",
                                      f"measurable qubits 0..{n - 1}")
        check_qubits(self.channels, n)
        self._assignment(e.model)
        if self.engine_for(e) == "aer" and self.aer_method == "statevector" and self.active_channels(e.dt):
            raise ValidationError("aer_method", "statevector would sample noise trajectories (not exact)",
                                  "density_matrix or automatic with noise")

    def engine_for(self, e: Experiment) -> str:
        """The engine that runs experiment ``e``: "block" or "aer"."""
        if self.engine != "auto":
            return self.engine
        return "block" if block_compatible(self.channels, e.dt) else "aer"

    def active_channels(self, dt: float) -> list[Channel]:
        """Channels with any effect at step length dt (p = 0 and rate = 0 are dropped)."""
        return [c for c in self.channels if c.name == "kraus" or c.probability(dt) > 0]

    # -- Aer circuits ----------------------------------------------------------------------
    def circuit(self, e: Experiment, method: str = "density_matrix") -> Any:
        """The Qiskit circuit of experiment ``e`` for an Aer ``method``: ψ(0), then per step
        the exact step gate, the channels, and (with a NoiseModel) one 'id' slot per
        measurable qubit for the model's errors; the qubits' density matrix (and the
        register's level populations) saved at the measured steps."""
        from qiskit import QuantumCircuit
        from qiskit.circuit.library import UnitaryGate
        from qiskit.quantum_info import Kraus
        from qiskit_aer.noise import pauli_error
        model = e.model
        n, r = model.n_qubits, register_qubits(model)
        perm = aer_permutation(model)
        qc = QuantumCircuit(n + r)
        psi0 = np.zeros(2 ** (n + r), dtype=complex)
        psi0[perm] = model.initial_state()
        nz = np.flatnonzero(psi0)
        if len(nz) == 1:                     # a basis state (up to a global phase): X gates
            for q in range(n + r):
                if (nz[0] >> q) & 1:
                    qc.x(q)
        elif method == "density_matrix":
            qc.set_density_matrix(np.outer(psi0, psi0.conj()))
        else:
            qc.set_statevector(psi0)
        ops = []
        for ch in self._user_channels:
            if ch.name != "kraus" and ch.probability(e.dt) == 0:
                continue
            if ch.name == "kraus":
                ops.append((Kraus(list(ch.kraus_operators(e.dt))), ch.targets(n)))
            else:
                p = ch.probability(e.dt)
                terms = {"bit_flip": [("X", p), ("I", 1 - p)], "phase_flip": [("Z", p), ("I", 1 - p)],
                         "depolarizing": [("X", p / 4), ("Y", p / 4), ("Z", p / 4), ("I", 1 - 0.75 * p)]}
                ops.append((pauli_error([t for t in terms[ch.name] if t[1] > 0]), ch.targets(n)))
        measured = set(e.schedule.measured_steps(e.n_steps).tolist())
        rho_qubits = list(reversed(range(n)))           # qhil qubit 0 = most significant
        reg = list(range(n, n + r))

        def save(k: int) -> None:
            qc.save_density_matrix(qubits=rho_qubits, label=f"rho_{k}")
            if model.aux_truncated and r:
                qc.save_probabilities(qubits=reg, label=f"aux_{k}")

        if 0 in measured:
            save(0)
        gate = np.eye(2 ** (n + r), dtype=complex)
        for k, u in enumerate(e.controls, start=1):
            gate[np.ix_(perm, perm)] = model.step_propagator(u, e.dt)
            qc.append(UnitaryGate(gate.copy(), check_input=False), list(range(n + r)))
            for op, targets in ops:
                for q in targets:
                    qc.append(op, [q])
            if self.noise_model is not None:
                for q in range(n):
                    qc.id(q)
            if k in measured:
                save(k)
        return qc

    def _run_aer(self, exps: list[Experiment], seeds: list[np.random.SeedSequence]
                 ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        from qiskit_aer import AerSimulator
        out = []
        for e, ss in zip(exps, seeds):
            noisy = bool(self.active_channels(e.dt))
            method = self.aer_method
            if method == "automatic":
                method = "density_matrix" if noisy else "statevector"
            sim = AerSimulator(method=method, max_parallel_threads=self.threads, noise_model=self.noise_model,
                               seed_simulator=int(ss.generate_state(1)[0] % (2**31)))
            data = sim.run(self.circuit(e, method), shots=1).result().data(0)
            steps = e.schedule.measured_steps(e.n_steps)
            rho = np.stack([np.asarray(data[f"rho_{k}"]) for k in steps])
            top = None
            if e.model.aux_truncated and register_qubits(e.model):
                top = np.array([np.asarray(data[f"aux_{k}"])[e.model.aux_dim - 1] for k in steps])
            out.append((rho, top))
            self.steps_propagated += e.n_steps
        return out

    # -- block engine ----------------------------------------------------------------------
    def block_engine(self, model: Model, dt: float) -> BlockDensityEngine:
        """The (cached) block engine of a model and step length."""
        key = (model.key, float(dt))
        if key not in self._engines:
            if len(self._engines) >= 4:            # each holds its U(u) tables (≈60 MB at N = 4)
                old = self._engines.pop(next(iter(self._engines)))
                old.close()
            self._engines[key] = BlockDensityEngine(model, self.active_channels(dt), dt, threads=self.threads)
        return self._engines[key]

    def clear_cache(self) -> None:
        self._cache.clear()

    def _run_block(self, exps: list[Experiment]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        eng = self.block_engine(exps[0].model, exps[0].dt)
        measured = [e.schedule.measured_steps(e.n_steps) for e in exps]
        got: list[dict[int, tuple]] = [dict() for _ in exps]
        states, pos = [], []
        for e, meas, g in zip(exps, measured, got):
            m0 = self._cache.start(e, meas)
            if m0:
                st = self._cache.get(e, m0)[0]
                for k in meas:
                    if 0 < k <= m0:
                        g[int(k)] = self._cache.get(e, int(k))[1]
            else:
                st = eng.initial()
            if 0 in meas:
                g[0] = eng.observe(eng.initial())
            states.append(st)
            pos.append(m0)
        for active, u, reached in lockstep(exps, pos):
            new = eng.step([states[i] for i in active], u)
            self.steps_propagated += active.size
            for i, st in zip(active, new):
                states[i] = st
                k = int(reached[i])
                obs = eng.observe(st)
                self._cache.put(exps[i], k, (st, obs))
                if k in set(measured[i].tolist()):
                    got[i][k] = obs
        out = []
        for meas, g in zip(measured, got):
            rho = np.stack([g[int(k)][0] for k in meas])
            top = np.array([g[int(k)][1] for k in meas]) if exps[0].model.aux_truncated else None
            out.append((rho, top))
        return out

    # -- the Backend contract --------------------------------------------------------------
    def _run(self, batch: list[Experiment], seeds: np.random.SeedSequence) -> list[Result]:
        for e in batch:                       # every check before any simulation
            self._validate(e)
        kids = seeds.spawn(len(batch))
        engines = [self.engine_for(e) for e in batch]
        states: list[tuple[np.ndarray, np.ndarray | None] | None] = [None] * len(batch)
        groups: dict[tuple, list[int]] = {}
        for i, (e, eng) in enumerate(zip(batch, engines)):
            groups.setdefault((eng, e.model.key, e.dt), []).append(i)
        for (eng, _, _), idx in groups.items():
            exps = [batch[i] for i in idx]
            res = self._run_block(exps) if eng == "block" else self._run_aer(exps, [kids[i] for i in idx])
            for i, r in zip(idx, res):
                states[i] = r
        results = []
        for i, e in enumerate(batch):
            rho, top = states[i]  # type: ignore[misc]
            model, n = e.model, e.model.n_qubits
            labels = e.schedule.labels(n)
            settings = e.schedule.settings(n) if labels else ()
            assignment = self._assignment(model)
            counts = None
            if e.schedule.shots is None:
                if assignment is None:
                    values, stderr, _, _ = measure_density(rho, labels, settings, None, None, n)
                else:
                    values = exact_with_readout(rho, labels, settings, n, assignment)
                    stderr = np.zeros_like(values)
            else:
                rng = np.random.default_rng(kids[i])
                values, stderr, counts, _ = measure_density(rho, labels, settings, e.schedule.shots, rng, n,
                                                            assignment)
            md: dict[str, Any] = {"model": model.to_dict(), "dt": e.dt, "shots": e.schedule.shots,
                                  "n_steps": e.n_steps, "engine": engines[i],
                                  "noise": [c.to_dict(e.dt) for c in self.channels],
                                  "readout": None if assignment is None else assignment.tolist()}
            if top is not None:
                md["aux_top_population"] = float(np.max(top))
                warn_if_truncated(model, float(np.max(top)), self._warned)
            steps = e.schedule.measured_steps(e.n_steps)
            results.append(Result(steps=steps, times=steps * e.dt, labels=labels, values=values, stderr=stderr,
                                  qubit_density=rho, state=None, counts=counts, settings=settings, metadata=md))
        return results

    def close(self) -> None:
        for eng in self._engines.values():
            eng.close()
        self._engines.clear()
        self._cache.clear()


def exact_with_readout(rho: np.ndarray, labels: tuple[str, ...], settings: tuple[str, ...], n_qubits: int,
                       assignment: np.ndarray) -> np.ndarray:
    """(M, O) expectation values that shot estimates through the readout assignment converge to:
    the outcome probabilities of each setting pushed through A, read like counts."""
    out = np.empty((rho.shape[0], len(labels)))
    for j, r in enumerate(rho):
        probs = outcome_probabilities(r, settings, assignment)
        out[j] = estimate_from_counts(probs, labels, settings, n_qubits)[0]
    return out
