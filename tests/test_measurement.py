"""Measurement schedules: regimes, grouping into settings, cost, shots, parity."""
import itertools

import numpy as np
import pytest

from qhil.drivers import Experiment, MeasurementSchedule, create_backend, regime_observables
from qhil.drivers.pauli import all_two_local, group_settings, parse_pauli
from qhil.envs import ENV1, DickeBattery

# Small cutoffs are deliberate here: exactness is checked within the truncated space.
pytestmark = pytest.mark.filterwarnings("ignore:truncation of the dicke:RuntimeWarning")


def covered(labels, settings, n):
    return all(any(all(s[q] == c for q, c in parse_pauli(lab, n)) for s in settings) for lab in labels)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_every_two_local_pauli_is_read_by_the_settings(n):
    labels = tuple(all_two_local(n))
    settings = group_settings(labels, n)
    assert covered(labels, settings, n)
    # the sizes documented in MeasurementSchedule (n = 7..10: tests/test_grouping.py),
    # far below the 3^2·C(n,2) + 3n labels
    assert len(settings) == {1: 3, 2: 9, 3: 9, 4: 9, 5: 13, 6: 15}[n]


def test_regime_sizes_and_settings():
    n = 4
    assert len(regime_observables("energies", n)) == 4
    assert len(regime_observables("first_order", n)) == 12
    assert len(regime_observables("second_order", n)) == 12 + 9 * 6
    assert MeasurementSchedule("energies").settings(n) == ("ZZZZ",)
    assert len(MeasurementSchedule("first_order").settings(n)) == 3
    assert len(MeasurementSchedule("second_order").settings(n)) == 9


def test_heavy_custom_observables_are_covered():
    labels = ("X0X1X2", "Z0Z1Z2Z3", "Y1Y3", "X0Y1Z2X3")
    s = MeasurementSchedule(labels).settings(4)
    assert covered(MeasurementSchedule(labels).labels(4), s, 4)


def test_measured_steps_and_cost():
    s = MeasurementSchedule("second_order", every=5, shots=100)
    assert s.measured_steps(12).tolist() == [0, 5, 10, 12]
    assert MeasurementSchedule(final_only=True).measured_steps(28).tolist() == [28]
    c = s.cost(4, 12)
    assert c.settings == 9 and c.circuits == 4 * 9 and c.total_shots == 4 * 9 * 100
    assert c.played_steps == (0 + 5 + 10 + 12) * 9 * 100   # every readout replays its prefix
    exact = MeasurementSchedule("energies").cost(4, 3)
    assert exact.total_shots == 0 and exact.played_steps == (0 + 1 + 2 + 3)


def test_parity_makes_first_order_x_y_vanish_but_not_correlators(backend, rng):
    """Seed 000, Sec. IV D: ⟨σx⟩, ⟨σy⟩ are parity-odd and stay exactly zero."""
    model = DickeBattery(omegas=ENV1, n_max=20)
    res = backend.run(Experiment(model, rng.uniform(-0.3, 0.3, 28), 0.2,
                                 MeasurementSchedule("second_order")))[0]
    odd = [i for i, lab in enumerate(res.labels) if len(lab) == 2 and lab[0] in "XY"]
    assert len(odd) == 8
    assert np.max(np.abs(res.values[:, odd])) < 1e-12
    pairs = [i for i, lab in enumerate(res.labels) if lab[0] in "XY" and len(lab) == 4 and lab[2] in "XY"]
    assert np.max(np.abs(res.values[:, pairs])) > 1e-2


def test_exact_values_match_the_density_matrix(backend, small_dicke, rng):
    from qhil.drivers.pauli import pauli_matrix
    labels = ("X0X1", "Y1Z2", "Z0", "X0Y1Z2")
    res = backend.run(Experiment(small_dicke, rng.uniform(-0.5, 0.5, 6), 0.3, MeasurementSchedule(labels)))[0]
    for k, rho in enumerate(res.qubit_density):
        for o, lab in enumerate(res.labels):
            assert abs(res.values[k, o] - np.real(np.trace(rho @ pauli_matrix(lab, 3)))) < 1e-13


def test_shot_estimates_within_four_standard_errors(small_dicke, rng):
    u = rng.uniform(-0.5, 0.5, 8)
    exact = create_backend("statevector").run(
        Experiment(small_dicke, u, 0.3, MeasurementSchedule("second_order", every=4)))[0]
    shots = create_backend("statevector", seed=5).run(
        Experiment(small_dicke, u, 0.3, MeasurementSchedule("second_order", every=4, shots=4000)))[0]
    z = np.abs(shots.values - exact.values) / np.maximum(shots.stderr, 1e-12)
    assert np.all(z[shots.stderr > 0] < 4.0)
    assert shots.counts.shape == (3, 9, 8) and np.all(shots.counts.sum(-1) == 4000)


def test_standard_errors_shrink_as_one_over_root_shots(small_dicke):
    u = [0.4, -0.2, 0.5]
    sched = lambda s: MeasurementSchedule(("X0X1", "Z2", "Y0Y2"), final_only=True, shots=s)  # noqa: E731
    b = create_backend("statevector", seed=3)
    se = [b.run(Experiment(small_dicke, u, 0.3, sched(s)))[0].stderr for s in (1_000, 100_000)]
    ratio = se[0] / se[1]
    assert np.all(np.abs(ratio - 10.0) < 1.0)


def test_seeded_shot_runs_are_reproducible(small_dicke):
    e = Experiment(small_dicke, [0.3, 0.1], 0.3, MeasurementSchedule("first_order", shots=50))
    a = create_backend("statevector", seed=11).run(e)[0]
    b = create_backend("statevector", seed=11).run(e)[0]
    c = create_backend("statevector", seed=12).run(e)[0]
    assert np.array_equal(a.counts, b.counts) and not np.array_equal(a.counts, c.counts)
    assert a.metadata["seed"] == b.metadata["seed"]


def test_readout_assignment_matrix_biases_as_expected():
    from qhil.drivers.pauli import outcome_probabilities
    rho = np.zeros((4, 4)); rho[0, 0] = 1.0               # |00⟩
    flip = np.array([[0.9, 0.2], [0.1, 0.8]])             # P(m | t)
    p = outcome_probabilities(rho, ("ZZ",), np.array([flip, flip]))[0]
    assert np.allclose(p, [0.81, 0.09, 0.09, 0.01])


def test_result_metadata_shape(backend, small_dicke):
    r = backend.run(Experiment(small_dicke, [0.1, 0.2], 0.3, MeasurementSchedule("energies", shots=10)))[0]
    for key in ("driver", "seed", "cost", "versions", "model", "dt", "n_steps"):
        assert key in r.metadata
    assert r.metadata["driver"] == "statevector"
    assert r.values.shape == r.stderr.shape == (3, 3)
    assert r.qubit_density.shape == (3, 8, 8)
    assert list(itertools.chain(r.steps)) == [0, 1, 2]


def test_result_value_by_label(backend, small_dicke):
    r = backend.run(Experiment(small_dicke, [0.1, 0.2], 0.3, MeasurementSchedule("second_order")))[0]
    assert np.array_equal(r.value("X0X1"), r.values[:, r.labels.index("X0X1")])
    with pytest.raises(Exception, match="label"):
        r.value("Z9")
