"""The photon cutoff's warning is based on the error of the reported figures (issue 16).

At n_max = 30, constant λ = 0.3 on Env1 (dt 0.2, 28 steps) moves the ergotropy by 5.4e-6
while only 9.9e-9 sits in the top Fock level: a population threshold of 1e-8 let it pass.
"""
import warnings

import numpy as np
import pytest

from qhil.drivers import Experiment, MeasurementSchedule, ValidationError
from qhil.envs import ENV1, DickeBattery, check_cutoff
from qhil.envs.dicke import CUTOFF_TOLERANCE

CONSTANT = np.full(28, 0.3)
PUMPING = np.array([0.3] * 4 + [-0.3] * 15 + [0.3] * 9)       # resonant for ω_j = 0.5
SCHEDULE = MeasurementSchedule("energies", every=1, shots=None)


def figures(backend, model, controls):
    """E_j, E and the ergotropy at every step (29 × (N + 2)) and the top-level population."""
    res = backend.run([Experiment(model, np.reshape(controls, (-1, 1)), 0.2, SCHEDULE)])[0]
    rho = res.qubit_density
    return (np.column_stack([model.energies(rho), model.energy(rho), model.ergotropy(rho)]),
            res.metadata["aux_top_population"])


def quiet_run(backend, model, controls):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return figures(backend, model, controls)


def test_issue_case_n_max_30_warns_and_40_does_not(backend):
    # the truth, from a cutoff far beyond both
    exact, _ = quiet_run(backend, DickeBattery(omegas=ENV1, n_max=90), CONSTANT)
    low, top30 = quiet_run(backend, DickeBattery(omegas=ENV1, n_max=30), CONSTANT)
    assert abs(low[-1, -1] - exact[-1, -1]) == pytest.approx(5.4e-6, rel=0.02)   # the issue's figure
    assert 5e-9 < top30 < 1e-8                               # under the old population threshold
    model30 = DickeBattery(omegas=ENV1, n_max=30)
    msg = model30.aux_truncation_warning(top30)
    assert msg is not None and "n_max=30" in msg and "n_max=45" in msg
    with pytest.warns(RuntimeWarning, match=r"n_max=30 is not converged.*set n_max higher, e.g. n_max=45"):
        report = check_cutoff(model30, CONSTANT, 0.2, backend=backend)
    assert not report["converged"] and report["max_change"] == pytest.approx(np.max(np.abs(low - exact)), rel=1e-3)

    default = DickeBattery(omegas=ENV1)
    assert default.n_max == 40
    good, top40 = quiet_run(backend, default, CONSTANT)
    assert np.max(np.abs(good - exact)) < 1e-9
    assert default.aux_truncation_warning(top40) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)      # no warning at the default cutoff
        report = check_cutoff(default, CONSTANT, 0.2, backend=backend)
    assert report["converged"] and report["max_change"] < 1e-9 and report["n_max"]["error_estimate"] < CUTOFF_TOLERANCE


@pytest.mark.parametrize("omegas, controls, n_max", [
    (ENV1, CONSTANT, 24), (ENV1, CONSTANT, 30), (ENV1, CONSTANT, 36),
    ((0.5,) * 4, PUMPING, 40), ((0.5,) * 4, PUMPING, 50),
    (ENV1, np.random.default_rng(3).choice([-0.3, 0.3], 28), 16),
    ((0.9, 1.3, 0.7), np.random.default_rng(4).uniform(-0.3, 0.3, 28), 12),
])
def test_error_estimate_bounds_the_true_error(backend, omegas, controls, n_max):
    """E_max √p_top is an upper estimate of the largest error of any figure at any step."""
    model = DickeBattery(omegas=omegas, n_max=n_max)
    exact, _ = quiet_run(backend, DickeBattery(omegas=omegas, n_max=100), controls)
    got, top = quiet_run(backend, model, controls)
    err = np.max(np.abs(got - exact))
    assert err > 1e-12                                       # a real truncation error to bound
    assert err <= model.aux_truncation_error(top)


def test_check_cutoff_refuses_bad_input(backend):
    with pytest.raises(ValidationError, match="tol"):
        check_cutoff(DickeBattery(omegas=ENV1), CONSTANT, 0.2, backend=backend, tol=0.0)
    with pytest.raises(ValidationError, match="n_max") as err:
        check_cutoff(DickeBattery(omegas=ENV1, n_max=201), CONSTANT, 0.2, backend=backend)
    assert "200" in err.value.allowed


def test_initial_fock_state_must_sit_below_the_top_level():
    with pytest.raises(ValidationError, match="n_max") as err:
        DickeBattery(omegas=ENV1, n_max=4)                   # |N = 4⟩ would be the top level
    assert err.value.allowed.startswith("[5,")
    assert DickeBattery(omegas=ENV1, n_max=5).n_max == 5


def test_runs_warn_by_the_error_estimate(backend):
    """Every run judges its own cutoff by the estimate (once per model), naming n_max."""
    with pytest.warns(RuntimeWarning, match="n_max=30"):
        backend.run([Experiment(DickeBattery(omegas=ENV1, n_max=30), CONSTANT.reshape(-1, 1), 0.2, SCHEDULE)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        backend.run([Experiment(DickeBattery(omegas=ENV1), CONSTANT.reshape(-1, 1), 0.2, SCHEDULE)])
