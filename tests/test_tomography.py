"""State estimation from local-basis tomography: exact recovery, physicality, shot scaling."""
import numpy as np
import pytest

from qhil.drivers import Experiment, MeasurementSchedule, create_backend
from qhil.drivers.pauli import tomography_labels, tomography_settings
from qhil.drivers.tomography import estimate_density, linear_inversion, project_to_physical
from qhil.envs import DickeBattery

pytestmark = pytest.mark.filterwarnings("ignore:truncation of the dicke:RuntimeWarning")


@pytest.fixture
def battery():
    return DickeBattery(omegas=(0.9, 1.3, 0.7), n_max=10, coupling_bound=0.5)


def test_counts():
    assert len(tomography_labels(3)) == 63 and len(tomography_settings(3)) == 27
    s = MeasurementSchedule("tomography", shots=10)
    assert s.cost(4, 0).settings == 81


def test_linear_inversion_of_exact_values_recovers_the_state(battery, rng):
    res = create_backend("statevector").run(
        Experiment(battery, rng.uniform(-0.5, 0.5, 6), 0.3, MeasurementSchedule("tomography", every=3)))[0]
    est = estimate_density(res, 3, physical=False)
    assert np.max(np.abs(est - res.qubit_density)) < 1e-12
    assert np.max(np.abs(estimate_density(res, 3) - res.qubit_density)) < 1e-7   # already physical


def test_projection_gives_a_physical_state():
    rho = np.diag([0.7, 0.4, -0.1]).astype(complex)            # trace 1, one negative eigenvalue
    phys = project_to_physical(rho)
    w = np.linalg.eigvalsh(phys)
    assert np.all(w >= -1e-15) and abs(np.trace(phys) - 1) < 1e-14
    # Smolin et al.: −0.1 is removed and spread over the remaining two levels
    assert np.allclose(np.sort(w)[::-1], [0.65, 0.35, 0.0], atol=1e-14)
    good = np.diag([0.5, 0.3, 0.2]).astype(complex)
    assert np.allclose(project_to_physical(good), good, atol=1e-14)


def test_shot_estimates_converge_and_ergotropy_error_shrinks(battery, rng):
    u = rng.uniform(-0.5, 0.5, 8)
    exact = create_backend("statevector").run(
        Experiment(battery, u, 0.3, MeasurementSchedule("full_state", final_only=True)))[0]
    errors, erg_err = [], []
    for shots in (200, 20_000):
        b = create_backend("statevector", seed=1)
        res = b.run(Experiment(battery, u, 0.3, MeasurementSchedule("tomography", final_only=True, shots=shots)))[0]
        rho = estimate_density(res, 3)
        assert np.all(np.linalg.eigvalsh(rho[-1]) > -1e-12)
        errors.append(np.linalg.norm(rho[-1] - exact.qubit_density[-1]))
        erg_err.append(abs(battery.ergotropy(rho[-1]) - battery.ergotropy(exact.qubit_density[-1])))
    assert errors[1] < errors[0] / 4          # ~1/√shots: a factor 10 expected
    assert erg_err[1] < 0.05


def test_missing_paulis_are_rejected(battery):
    res = create_backend("statevector").run(Experiment(battery, [0.1], 0.3, MeasurementSchedule("second_order")))[0]
    with pytest.raises(Exception, match="not measured"):
        estimate_density(res, 3)
    with pytest.raises(Exception, match="4\\^n"):
        linear_inversion(np.zeros(5), 3)
