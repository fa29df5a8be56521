"""The pulse-level emulator (qhil.lab.device.EmulatorDevice): the fast Lanczos path against
the exact driver and against the original dense path, every imperfection against an
independent calculation, measured timing figures, and option validation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qhil.drivers import Experiment, MeasurementSchedule, ValidationError, create_backend
from qhil.drivers.measure import qubit_density
from qhil.drivers.pauli import estimate_from_counts, outcome_probabilities
from qhil.envs import ENV1, DickeBattery
from qhil.lab.device import EmulatorDevice, create_device, lanczos_error_bound

# Small cutoffs: both sides truncate the same way, so their (unconverged) cutoff is no error here.
pytestmark = pytest.mark.filterwarnings("ignore:truncation of the dicke model")

MODEL = DickeBattery(omegas=ENV1, n_max=8)          # N = 4, dim 144
SMALL = DickeBattery(omegas=(0.9, 1.3), n_max=6)    # N = 2, dim 28
DT = 0.2
STEPS = np.array([0, 1, 7, 13, 21, 28])
PROTOCOL = np.random.default_rng(2026).uniform(-0.28, 0.28, 28)   # (1 + 0.07)·u stays in bounds
SETTINGS = MeasurementSchedule("second_order").settings(4)


def exact_run(model, controls, schedule):
    return create_backend("statevector").run([Experiment(model, controls, DT, schedule=schedule)])[0]


def exact_probabilities(model, controls, steps, settings, assignment=None):
    """Outcome probabilities from the exact driver's states (driver code, not the emulator's)."""
    res = exact_run(model, controls, MeasurementSchedule("full_state"))
    rho = qubit_density(res.state[steps], model.n_qubits, model.aux_dim)
    return np.stack([outcome_probabilities(r, settings, assignment) for r in rho])


@pytest.fixture(scope="module")
def ideal():
    return EmulatorDevice(MODEL, allow_exact=True)


def run(dev, controls=PROTOCOL, steps=STEPS, settings=SETTINGS, shots=None):
    return dev.execute(np.asarray(controls, float)[:, None], DT, steps, settings, shots,
                       np.random.default_rng(0))


# -- the fast path is exact --------------------------------------------------------------

def test_states_and_probabilities_match_exact_driver(ideal):
    res = exact_run(MODEL, PROTOCOL, MeasurementSchedule("full_state"))
    states = ideal.states(PROTOCOL[:, None], DT, np.arange(29))
    assert np.max(np.abs(states - res.state)) < 1e-8
    probs = run(ideal)
    assert probs.shape == (len(STEPS), len(SETTINGS), 16)
    assert np.max(np.abs(probs - exact_probabilities(MODEL, PROTOCOL, STEPS, SETTINGS))) < 1e-8
    # the second-order Pauli averages a client estimates from them are the exact driver's
    sched = MeasurementSchedule("second_order", every=1)
    ref = exact_run(MODEL, PROTOCOL, sched)
    values, _ = estimate_from_counts(probs, ref.labels, SETTINGS, 4)
    assert np.max(np.abs(values - ref.values[STEPS])) < 1e-8


def test_unsorted_and_repeated_steps(ideal):
    steps = np.array([28, 3, 0, 3, 17])
    assert np.allclose(run(ideal, steps=steps), run(ideal, steps=np.sort(steps))[[4, 1, 0, 2, 3]],
                       atol=1e-12, rtol=0)


def test_fixed_krylov_dimension_is_exact():
    """A user-fixed Krylov dimension gets enough sub-steps to keep the bound."""
    dev = EmulatorDevice(MODEL, allow_exact=True, krylov_dim=8)
    m, s = dev.krylov_plan(DT, np.array([0.3]))
    assert m == 8 and s > 1
    assert np.max(np.abs(run(dev) - exact_probabilities(MODEL, PROTOCOL, STEPS, SETTINGS))) < 1e-8


def test_krylov_plan_keeps_its_bound(ideal):
    for h in (0.2, 0.025, 1.0):
        m, s = ideal.krylov_plan(h, np.array([0.3]))
        assert m >= MODEL.dim or s * lanczos_error_bound(m, 0.25 * ideal._h0_width_bound(0.3) * h / s) \
            <= ideal.krylov_tol


def test_lanczos_error_bound_bounds_the_real_error():
    """The a priori bound used to pick the Krylov dimension really bounds qiskit-dynamics'
    Lanczos error (against a dense eigendecomposition), on a random start vector."""
    from qiskit_dynamics.solvers.lanczos import lanczos_expm
    h = (MODEL.drift() + 0.3 * MODEL.control_operators()[0]).astype(complex).tocsr()
    w, v = np.linalg.eigh(h.toarray())
    x = np.random.default_rng(1).normal(size=MODEL.dim) + 1j * np.random.default_rng(2).normal(size=MODEL.dim)
    x /= np.linalg.norm(x)
    for tau in (0.05, 0.2):
        ex = v @ (np.exp(-1j * w * tau) * (v.conj().T @ x))
        rho_tau = 0.25 * (w[-1] - w[0]) * tau
        for m in (6, 10, 14, 20):
            err = np.linalg.norm(lanczos_expm(-1j * h, x, m, tau) - ex)
            assert err <= max(lanczos_error_bound(m, rho_tau), 1e-13)
    assert lanczos_error_bound(3, 5.0) == math.inf and lanczos_error_bound(4, 0.0) == 0.0


# -- imperfections: new path == old dense path, and == independent calculations ----------

def test_lanczos_equals_dense_path_with_every_imperfection():
    opts = dict(rise_time=0.05, oversample=4, amplitude_error=0.03, frequency_drift=0.02, seed=7,
                allow_exact=True)
    new = EmulatorDevice(SMALL, **opts)
    old = EmulatorDevice(SMALL, method="scipy_expm", **opts)
    settings = ("ZZ", "XY", "YX")
    u = PROTOCOL
    out = []
    for dev in (new, old):
        dev.begin_episode(np.random.default_rng(0))
        dev.begin_episode(np.random.default_rng(0))
        out.append(run(dev, u, settings=settings))
    assert new.calibration()["frequency_offsets"] == old.calibration()["frequency_offsets"]
    assert np.all(np.abs(new.frequency_offsets) > 0)
    assert np.max(np.abs(out[0] - out[1])) < 1e-8
    assert np.max(np.abs(new.states(u[:, None], DT, STEPS) - old.states(u[:, None], DT, STEPS))) < 1e-8
    # and the imperfections matter: the ideal device disagrees
    plain = run(EmulatorDevice(SMALL, allow_exact=True), u, settings=settings)
    assert np.max(np.abs(out[0] - plain)) > 1e-3


def test_amplitude_error_is_the_exact_driver_on_scaled_controls():
    for eps in (-0.1, 0.07):
        dev = EmulatorDevice(MODEL, allow_exact=True, amplitude_error=[eps])
        ref = exact_probabilities(MODEL, (1 + eps) * PROTOCOL, STEPS, SETTINGS)
        assert np.max(np.abs(run(dev) - ref)) < 1e-8


def test_readout_error_is_the_assignment_matrix_transform(ideal):
    pairs = np.array([[0.02, 0.05], [0.1, 0.0], [0.0, 0.3], [0.5, 0.25]])   # [P(1|0), P(0|1)] per qubit
    dev = EmulatorDevice(MODEL, allow_exact=True, readout_error=pairs)
    clean, noisy = run(ideal), run(dev)
    # p'(m) = Σ_t Π_q A_q[m_q, t_q] p(t), written out bit by bit
    expect = np.zeros_like(clean)
    for m in range(16):
        for t in range(16):
            w = 1.0
            for q in range(4):
                mb, tb = (m >> (3 - q)) & 1, (t >> (3 - q)) & 1
                p01, p10 = pairs[q]
                w *= (1 - p01 if mb == 0 else p01) if tb == 0 else (p10 if mb == 0 else 1 - p10)
            expect[..., m] += w * clean[..., t]
    assert np.max(np.abs(noisy - expect)) < 1e-12
    # one value for both directions: ⟨Z_q⟩ → (1 − 2p)⟨Z_q⟩
    p = 0.05
    z = estimate_from_counts(run(EmulatorDevice(MODEL, allow_exact=True, readout_error=p)),
                             ("Z0", "Z3"), SETTINGS, 4)[0]
    z0 = estimate_from_counts(clean, ("Z0", "Z3"), SETTINGS, 4)[0]
    assert np.allclose(z, (1 - 2 * p) * z0, atol=1e-12, rtol=0) and np.max(np.abs(z0)) > 0.1


def test_rise_time_is_a_first_order_filter():
    """Played samples follow dy/dt = (u − y)/τ from 0, read at sub-step midpoints."""
    tau, m = 0.07, 5
    dev = EmulatorDevice(SMALL, rise_time=tau, oversample=m)
    u = np.array([[0.3], [-0.2], [0.1]])
    samples, h = dev.played_samples(u, DT)
    assert samples.shape == (15, 1) and h == pytest.approx(DT / m)
    t = (np.arange(15) + 0.5) * h
    y, expect = 0.0, []
    for k in range(3):                                  # closed form step by step
        local = t[k * m:(k + 1) * m] - k * DT
        expect += list(u[k, 0] + (y - u[k, 0]) * np.exp(-local / tau))
        y = u[k, 0] + (y - u[k, 0]) * np.exp(-DT / tau)
    assert np.allclose(samples[:, 0], expect, atol=1e-14, rtol=0)


def test_vectorised_outcome_probabilities_equal_the_driver(ideal):
    states = ideal.states(PROTOCOL[:, None], DT, np.array([3, 20]))
    rho = qubit_density(states, 4, MODEL.aux_dim)
    ref = np.stack([outcome_probabilities(r, SETTINGS) for r in rho])
    assert np.allclose(ideal.outcome_probabilities(states, SETTINGS), ref, atol=1e-14, rtol=0)


def test_shots_are_multinomial_counts(ideal):
    counts = run(ideal, shots=500)
    assert counts.dtype == np.int64 and counts.shape == (len(STEPS), len(SETTINGS), 16)
    assert np.all(counts.sum(axis=-1) == 500)
    probs = run(ideal)
    assert np.all(counts[probs < 1e-15] == 0)        # impossible outcomes never appear


# -- timing figures are measured ---------------------------------------------------------

def test_timing_is_measured_and_updated():
    dev = EmulatorDevice(MODEL, allow_exact=True)
    before = dev.timing()
    basis = dev.calibration()["timing_basis"]
    assert basis["source"] == "warm-up" and basis["warmup"]["steps"] >= 1
    keys = ("overhead_s", "solve_step_s", "shot_s", "circuit_s")
    for k in keys:
        assert math.isfinite(before[k]) and before[k] > 0, k
    run(dev, shots=100)
    run(dev)
    after = dev.timing()
    basis = dev.calibration()["timing_basis"]
    assert basis["source"] == "executions" and basis["executions_timed"] == 2
    assert basis["last"]["solved_steps"] == 28 and basis["last"]["circuits"] == len(STEPS) * len(SETTINGS)
    for k in keys:
        assert math.isfinite(after[k]) and after[k] > 0, k
    assert after["solve_step_s"] != before["solve_step_s"] and after["circuit_s"] != before["circuit_s"]
    assert dev.describe()["timing"] == after


# -- bad options are refused before any work ----------------------------------------------

BAD = [("rise_time", -0.1), ("rise_time", float("nan")), ("rise_time", float("inf")),
       ("oversample", 0), ("oversample", 2.5), ("amplitude_error", float("nan")),
       ("amplitude_error", -1.0), ("amplitude_error", [0.1, 0.2]), ("frequency_drift", -0.01),
       ("frequency_drift", float("nan")), ("readout_error", 0.6), ("readout_error", -0.1),
       ("readout_error", float("nan")), ("readout_error", [[0.1, 0.1]]), ("readout_error", "x"),
       ("method", "rk4"), ("krylov_dim", 1), ("krylov_dim", MODEL.dim + 1),
       ("krylov_tol", 0.0), ("krylov_tol", float("nan")), ("fault_next", -1), ("seed", -3),
       ("allow_exact", "yes")]


@pytest.mark.parametrize("name,value", BAD)
def test_bad_options_are_refused(name, value, monkeypatch):
    import qiskit_dynamics

    def no_work(*a, **k):
        raise AssertionError("a solver was built before the options were checked")

    monkeypatch.setattr(qiskit_dynamics, "Solver", no_work)
    with pytest.raises(ValidationError) as err:
        EmulatorDevice(MODEL, **{name: value})
    assert err.value.parameter == name and err.value.allowed


def test_krylov_dim_only_for_lanczos_and_create_device_checks():
    with pytest.raises(ValidationError, match="krylov_dim"):
        EmulatorDevice(MODEL, method="scipy_expm", krylov_dim=10)
    with pytest.raises(ValidationError) as err:
        create_device("emulatr", MODEL)
    assert err.value.parameter == "device" and "emulator" in err.value.allowed
    with pytest.raises(ValidationError) as err:
        create_device("emulator", MODEL, rise_tme=0.1)
    assert err.value.parameter == "options" and "rise_time" in err.value.allowed
    assert create_device("emulator", SMALL, method="scipy_expm").method == "scipy_expm"
