"""The in-process device backend: a pulse device behind the backend interface."""
import numpy as np
import pytest

from qhil.drivers import Experiment, MeasurementSchedule, ValidationError, create_backend
from qhil.drivers.measure import qubit_density
from qhil.envs import DickeBattery
from qhil.lab.device import EmulatorDevice
from qhil.lab.device_backend import DeviceBackend, emulator_backend, parse_imperfections

BATTERY = DickeBattery(omegas=(0.9, 1.1), n_max=18)
CONTROLS = np.array([0.3, -0.2, 0.1, 0.25, 0.3])


def test_ideal_emulator_matches_the_exact_driver():
    be = emulator_backend(BATTERY, seed=1, allow_exact=True)
    sched = MeasurementSchedule("second_order", shots=None, every=2)
    got = be.run(Experiment(BATTERY, CONTROLS, 0.2, sched))[0]
    ref = create_backend("statevector").run(Experiment(BATTERY, CONTROLS, 0.2, sched))[0]
    assert got.labels == ref.labels and np.array_equal(got.steps, ref.steps)
    np.testing.assert_allclose(got.values, ref.values, atol=1e-9)
    assert got.qubit_density is None and got.state is None       # measurements only
    assert got.metadata["device_s"] > 0 and got.metadata["calibration"]["rise_time"] == 0.0
    psi = be.true_states(CONTROLS, 0.2)                          # (1, dim): the study-only diagnostic
    rho = qubit_density(psi, BATTERY.n_qubits, BATTERY.aux_dim)
    ref_final = create_backend("statevector").run(
        Experiment(BATTERY, CONTROLS, 0.2, MeasurementSchedule("energies", final_only=True)))[0]
    np.testing.assert_allclose(rho[0], ref_final.qubit_density[-1], atol=1e-9)
    assert be.device.is_safe                                   # outputs back to 0 after the run


def test_shot_estimates_agree_with_exact_values_within_their_errors():
    be = emulator_backend(BATTERY, seed=3)
    r = be.run(Experiment(BATTERY, CONTROLS, 0.2, MeasurementSchedule("energies", shots=4000, final_only=True)))[0]
    exact = create_backend("statevector").run(
        Experiment(BATTERY, CONTROLS, 0.2, MeasurementSchedule("energies", final_only=True)))[0]
    z = (r.values - exact.values) / np.maximum(r.stderr, 1e-12)
    assert np.all(np.abs(z) < 5) and r.counts.sum(axis=-1).ravel().tolist() == [4000]
    assert r.metadata["cost"]["total_shots"] == 4000


def test_readout_error_contracts_z_by_one_minus_two_p():
    p = 0.1
    be = emulator_backend(BATTERY, seed=0, allow_exact=True, imperfections={"readout_error": p})
    sched = MeasurementSchedule("energies", shots=None, final_only=True)
    got = be.run(Experiment(BATTERY, CONTROLS, 0.2, sched))[0].values
    ref = create_backend("statevector").run(Experiment(BATTERY, CONTROLS, 0.2, sched))[0].values
    np.testing.assert_allclose(got, (1 - 2 * p) * ref, atol=1e-9)


def test_bad_input_is_refused_before_any_work():
    be = emulator_backend(BATTERY, seed=0)
    with pytest.raises(ValidationError, match="shots"):          # a device measures: no exact values
        be.run(Experiment(BATTERY, CONTROLS, 0.2, MeasurementSchedule("energies", shots=None)))
    other = DickeBattery(omegas=(1.0, 1.0), n_max=18)
    with pytest.raises(ValidationError, match="model"):
        be.run(Experiment(other, CONTROLS, 0.2, MeasurementSchedule("energies", shots=10)))
    with pytest.raises(ValidationError, match="full state"):
        be.run(Experiment(BATTERY, CONTROLS, 0.2, MeasurementSchedule("full_state", shots=10)))
    with pytest.raises(ValidationError, match="device"):
        DeviceBackend("emulator")
    with pytest.raises(ValidationError, match="amplitude_error"):
        emulator_backend(BATTERY, imperfections={"amplitude_error": 2.0})
    with pytest.raises(ValidationError, match="emulator"):
        emulator_backend(BATTERY, imperfections={"gain": 0.1})
    assert parse_imperfections("amplitude_error=0.03, rise-time=0.02,oversample=4") == {
        "amplitude_error": 0.03, "rise_time": 0.02, "oversample": 4}
    for bad in ("amplitude_error", "gain=1", "rise_time=fast"):
        with pytest.raises(ValidationError):
            parse_imperfections(bad)
    assert isinstance(be.device, EmulatorDevice) and be.device.executions == 0


def test_a_device_returning_the_wrong_shape_is_an_error_not_an_estimate():
    class Truncating(EmulatorDevice):
        def execute(self, controls, dt, steps, settings, shots, rng):
            return super().execute(controls, dt, steps, settings, shots, rng)[:, :1]
    be = DeviceBackend(Truncating(BATTERY, seed=0))
    with pytest.raises(RuntimeError, match="shape"):
        be.run(Experiment(BATTERY, CONTROLS, 0.2, MeasurementSchedule("second_order", shots=10)))
    assert be.device.is_safe
