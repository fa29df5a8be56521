"""A pulse device behind the backend interface, in this process (no server, no network).

    device = EmulatorDevice(battery, amplitude_error=0.03, rise_time=0.02, readout_error=0.02)
    backend = DeviceBackend(device, seed=0)
    backend.run(Experiment(battery, controls, dt, MeasurementSchedule("energies", shots=1000)))

Each experiment is what the lab server does with one run request: ``begin_episode`` (drifts
step), ``execute`` (prefix replay of every measured step and setting), back to the safe
state, and the counts turned into values and standard errors by the same estimator as the
ZeroMQ client. Results carry the device's calibration snapshot and its measured device
seconds (``metadata["device_s"]``), like results from hardware. What the emulator's state
really is stays out of the results (agents see measurements only); :meth:`true_states` is
the study-only diagnostic.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from qhil.drivers import Backend, Capabilities, Experiment, Result, ValidationError
from qhil.drivers.pauli import estimate_from_counts

from .device import EmulatorDevice, PulseDevice

#: The emulator's imperfections, as ``emulator_backend`` and ``--emulator`` take them.
IMPERFECTIONS = ("amplitude_error", "rise_time", "frequency_drift", "readout_error", "oversample")


class DeviceBackend(Backend):
    """Runs experiments on a :class:`PulseDevice` in this process. The device's model must be
    the experiments' (checked by key when the device is a model device)."""

    name = "device"

    def __init__(self, device: PulseDevice, seed: int | None = None) -> None:
        if not isinstance(device, PulseDevice):
            raise ValidationError("device", f"expected a PulseDevice, got {type(device).__name__}")
        super().__init__(seed)
        self.device = device
        self.name = f"device:{device.name}"
        self.device_seconds = 0.0          # total measured device time of every experiment run

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(full_state=False, exact_expectations=self.device.exact_expectations,
                            qubit_density=False, noise=False)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.device.describe()}

    def state_dict(self) -> dict[str, Any]:
        """The seed generator's state and the device's (an emulator's drift walk)."""
        return {**super().state_dict(), "device": self.device.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.device.load_state_dict(state.get("device") or {})

    def _check(self, e: Experiment, i: int) -> None:
        dev = self.device
        model = getattr(dev, "model", None)
        if model is not None and e.model.key != model.key:
            raise ValidationError(f"experiments[{i}].model", "is not the model this device runs",
                                  f"the device's model ({model.kind}, key {model.key})")
        if e.schedule.shots is None and not dev.exact_expectations:
            raise ValidationError(f"experiments[{i}].schedule.shots", "exact expectation values (shots=None)",
                                  f"1..{dev.max_shots} shots: a device measures")
        if e.schedule.shots is not None and e.schedule.shots > dev.max_shots:
            raise ValidationError(f"experiments[{i}].schedule.shots", f"{e.schedule.shots}", f"1..{dev.max_shots}")

    def _run(self, batch: list[Experiment], seeds: np.random.SeedSequence) -> list[Result]:
        for i, e in enumerate(batch):
            self._check(e, i)
        out = []
        for e, child in zip(batch, seeds.spawn(len(batch))):
            out.append(self._one(e, np.random.default_rng(child)))
        return out

    def _one(self, e: Experiment, rng: np.random.Generator) -> Result:
        dev = self.device
        n = dev.n_qubits
        labels, settings = e.schedule.labels(n), e.schedule.settings(n)
        steps = e.schedule.measured_steps(e.n_steps)
        t0 = time.perf_counter()
        with dev.lock:
            try:
                dev.begin_episode(rng)
                calibration = dev.calibration()
                data = np.asarray(dev.execute(np.asarray(e.controls), e.dt, steps, settings, e.schedule.shots, rng))
            finally:
                dev.safe()
        expect = (len(steps), len(settings), 2 ** n)
        if data.shape != expect:          # as the lab server: never estimate from a malformed reply
            raise RuntimeError(f"device {dev.name} returned shape {data.shape}, expected {expect}")
        device_s = time.perf_counter() - t0
        self.device_seconds += device_s
        values, stderr = estimate_from_counts(data, labels, settings, n)
        if e.schedule.shots is None:
            stderr = np.zeros_like(values)
        meta = {"model": e.model.to_dict(), "dt": e.dt, "shots": e.schedule.shots, "n_steps": e.n_steps,
                "device": dev.name, "calibration": calibration, "device_s": device_s}
        return Result(steps=steps, times=steps * e.dt, labels=labels, values=values, stderr=stderr,
                      counts=data if e.schedule.shots is not None else None, settings=settings, metadata=meta)

    def true_states(self, controls: np.ndarray, dt: float, steps: Any = None) -> np.ndarray:
        """The emulator's full states (M, dim) after ``steps`` (default: the last) of ``controls``
        with its imperfections and current drift: a study-only diagnostic, never an observation."""
        if not hasattr(self.device, "states"):
            raise ValidationError("device", f"{self.device.name} has no state to read", "an emulator")
        controls = np.asarray(controls, dtype=float).reshape(len(controls), -1)
        steps = np.array([len(controls)]) if steps is None else np.asarray(steps, dtype=int)
        return self.device.states(controls, dt, steps)


def emulator_backend(model: Any, *, seed: int | None = None, imperfections: Mapping[str, Any] | None = None,
                     **device_options: Any) -> DeviceBackend:
    """A :class:`DeviceBackend` over an :class:`EmulatorDevice` of ``model`` with the given
    imperfections (keys of :data:`IMPERFECTIONS`; each checked by the emulator, before any
    solve). ``seed`` seeds both the drift and the shot noise."""
    imp = dict(imperfections or {})
    unknown = sorted(set(imp) - set(IMPERFECTIONS))
    if unknown:
        raise ValidationError(unknown[0], "is not an emulator imperfection", ", ".join(IMPERFECTIONS))
    device = EmulatorDevice(model, seed=seed, **imp, **device_options)
    return DeviceBackend(device, seed=seed)


def parse_key_values(text: str, keys: tuple[str, ...], name: str, integers: tuple[str, ...] = ()
                     ) -> dict[str, float]:
    """``"a=0.03, b-c=2"`` → {"a": 0.03, "b_c": 2.0} for keys in ``keys`` (``integers`` parsed as
    int); a ValidationError naming ``name`` (unknown key, no value) or the key (not a finite number)."""
    out: dict[str, float] = {}
    for item in (x.strip() for x in str(text).split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in keys:
            raise ValidationError(name, f"{item!r}", "key=value with key in " + ", ".join(keys))
        try:
            out[key] = int(value) if key in integers else float(value)
        except ValueError:
            raise ValidationError(key, f"{value!r} is not a number", "a number") from None
        if not np.isfinite(out[key]):
            raise ValidationError(key, f"{value!r}", "a finite number")
    return out


def parse_imperfections(text: str) -> dict[str, float]:
    """``"amplitude_error=0.03,rise_time=0.02"`` → a dict (ValidationError naming the key or
    value; the ranges are the emulator's, checked when it is built)."""
    return parse_key_values(text, IMPERFECTIONS, "emulator", integers=("oversample",))


def study_device(model: Any, imperfections: Mapping[str, Any], seed: int) -> DeviceBackend:
    """The device factory of ``qhil study sim-to-real``: the emulator of ``model`` with
    ``imperfections``, drift and shot noise seeded by ``seed`` (module level: picklable)."""
    return emulator_backend(model, seed=seed, imperfections=imperfections)
