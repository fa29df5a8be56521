"""Bad input gets a clear error naming the parameter and the allowed range, before any work."""
import numpy as np
import pytest

from qhil.drivers import (Experiment, MeasurementSchedule, ValidationError, create_backend,
                          model_from_dict)
from qhil.envs import DickeBattery, XYChain


def raises(param, allowed_fragment=None):
    class _Ctx:
        def __enter__(self):
            self.ctx = pytest.raises(ValidationError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            ok = self.ctx.__exit__(*exc)
            err = self.info.value
            assert err.parameter.startswith(param), (err.parameter, str(err))
            assert param in str(err)
            if allowed_fragment is not None:
                assert err.allowed and allowed_fragment in err.allowed, str(err)
            return ok
    return _Ctx()


@pytest.mark.parametrize("omegas", [(-1.0, 1.0), (0.0,), (np.nan, 1.0), (1.0, np.inf), (), (1.0,) * 11, (200.0,)])
def test_bad_frequencies(omegas):
    with raises("omegas"):
        DickeBattery(omegas=omegas)


@pytest.mark.parametrize("n_max", [0, -3, 401, 2.5, "ten"])
def test_bad_cutoff(n_max):
    with raises("n_max"):
        DickeBattery(n_max=n_max)


@pytest.mark.parametrize("n_max", [3, 4])
def test_cutoff_at_or_below_initial_photons(n_max):
    """|g…g⟩⊗|N⟩ (N = 4) must sit strictly below the cutoff: n_max = 4 puts it in the top level."""
    with raises("n_max", "[5, 400]"):
        DickeBattery(n_max=n_max)
    assert DickeBattery(n_max=5).initial_state()[4] == 1.0


@pytest.mark.parametrize("dt", [0.0, -0.2, np.nan, np.inf, 1e4, "x"])
def test_bad_dt(dt):
    with raises("dt", "(0, 1000]"):
        Experiment(DickeBattery(n_max=6), [0.1], dt)


@pytest.mark.parametrize("controls,param", [
    ([0.31], "controls[0, coupling]"), ([0.1, -0.5], "controls[1, coupling]"),
    ([np.nan], "controls[0, coupling]"), ([[0.1, 0.2]], "controls"), ("abc", "controls")])
def test_bad_controls(controls, param):
    with raises(param):
        Experiment(DickeBattery(n_max=6), controls, 0.2)


def test_controls_error_gives_bounds_and_units():
    with pytest.raises(ValidationError, match=r"\[-0.3, 0.3\] ω_0"):
        Experiment(DickeBattery(n_max=6), [0.4], 0.2)


def test_wrong_number_of_channels_for_chain():
    with raises("controls", "(n_steps, 3)"):
        Experiment(XYChain(), [[1.0, 2.0]], 0.2)


@pytest.mark.parametrize("obs", [("Q0",), ("Z7",), ("X0X0",), ("",), ("IIII",)])
def test_unknown_observables(obs):
    with raises("observable"):
        Experiment(DickeBattery(n_max=6), [0.1], 0.2, MeasurementSchedule(obs))


@pytest.mark.parametrize("kw,param", [({"observables": "third_order"}, "observables"),
                                      ({"shots": 0}, "shots"), ({"every": 0}, "every"),
                                      ({"observables": "full_state", "shots": 10}, "shots")])
def test_bad_schedules(kw, param):
    with raises(param):
        MeasurementSchedule(**kw)


def test_unknown_backend_and_model():
    with raises("backend", "statevector"):
        create_backend("qpu")
    with raises("model.kind", "dicke"):
        model_from_dict({"kind": "ising", "params": {}})
    with raises("model.params", "omegas"):
        model_from_dict({"kind": "dicke", "params": {"omega": [1.0]}})


def test_bad_items_in_a_batch_are_rejected_before_running():
    backend = create_backend("statevector")
    good = Experiment(DickeBattery(n_max=6), [0.1], 0.2)
    with raises("experiments[1]"):
        backend.run([good, "not an experiment"])
    assert backend.steps_propagated == 0


def test_chain_parameters():
    with raises("n_spins", "[1, 12]"):
        XYChain(n_spins=0)
    with raises("initial_bits"):
        XYChain(n_spins=3, initial_bits="10")
