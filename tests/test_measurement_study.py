"""Measurement-limited control (issue 7): cost accounting, held observations, the tomography
ergotropy estimator and reward, and a tiny resumable study."""
import json
import pickle

import numpy as np
import pytest

from qhil.experiments.battery.measurement import (StudyConfig, finished_runs, parse_frequency, parse_noise,
                                                  run_study, write_report)
from qhil.experiments.stats import pareto_front
from qhil.drivers import Experiment, MeasurementSchedule, ValidationError, create_backend
from qhil.drivers.tomography import estimate_density
from qhil.envs import ENV1, ChargingVectorEnv, DickeBattery
from qhil.envs.measurement import HeldObservation, tomography_ergotropy, tomography_ergotropy_stats

GRAPE = np.array(json.load(open("docs/results/grape_env1.json"))["protocol"])


@pytest.fixture(scope="module")
def battery():
    return DickeBattery(omegas=ENV1)


# -- cost accounting against a hand count ------------------------------------------------------
def test_cost_of_study_configurations_matches_a_hand_count():
    # second_order: 9 settings; every 2nd step of K = 28: k = 0, 2, …, 28 → 15 measurements,
    # Σk = 2·(0 + … + 14) = 210 replayed steps per setting and shot
    c = StudyConfig(regime="second_order", shots=100, frequency="2").cost()
    assert (c["obs_measured_steps"], c["obs_settings"], c["obs_circuits"]) == (15, 9, 135)
    assert c["total_total_shots"] == 15 * 9 * 100
    assert c["total_played_steps"] == 210 * 9 * 100
    assert c["reward_total_shots"] == 0
    # E_j + all Z_iZ_j: one setting (Z⊗4); final only; tomography reward 81 settings × 1000 shots
    c = StudyConfig(regime="zz", shots=10, frequency="final", reward="tomography_terminal",
                    tomography_shots=1000).cost()
    assert (c["obs_measured_steps"], c["obs_settings"], c["obs_total_shots"], c["obs_played_steps"]) == (1, 1, 10, 280)
    assert (c["reward_settings"], c["reward_total_shots"], c["reward_played_steps"]) == (81, 81_000, 81 * 1000 * 28)
    assert c["total_total_shots"] == 81_010 and c["total_played_steps"] == 280 + 2_268_000
    # exact values every step: no shots, one replay per circuit: Σ_{k=0}^{28} k = 406
    c = StudyConfig(regime="energies", shots=None, frequency="1").cost()
    assert (c["obs_measured_steps"], c["total_total_shots"], c["total_played_steps"]) == (29, 0, 406)
    # first_order: Z, X, Y bases → 3 settings; every 5th: k = 0, 5, …, 25 and 28 → 7 measurements
    c = StudyConfig(regime="first_order", shots=1000, frequency="5").cost()
    assert (c["obs_measured_steps"], c["obs_settings"]) == (7, 3)
    assert c["total_played_steps"] == (0 + 5 + 10 + 15 + 20 + 25 + 28) * 3 * 1000


def test_env_reports_the_same_cost_as_the_study(battery):
    cfg = StudyConfig(regime="zz", shots=10, frequency="3", reward="tomography_terminal", tomography_shots=50)
    assert cfg.make_env().measurement_cost() == cfg.cost()


def test_bad_study_input_names_the_parameter():
    with pytest.raises(ValidationError, match="frequency"):
        parse_frequency("0")
    with pytest.raises(ValidationError, match="noise"):
        parse_noise("amplitude:0.1")
    with pytest.raises(ValidationError, match="noise"):
        parse_noise("depolarizing:2")
    with pytest.raises(ValueError, match="reward"):
        StudyConfig(reward="oracle")
    with pytest.raises(ValueError, match="regime"):
        StudyConfig(regime="third_order")
    with pytest.raises(ValueError, match="reward"):
        ChargingVectorEnv(regime="full_state", reward="tomography_terminal")


def test_pareto_front():
    cost = [1, 2, 3, 4, 5]
    value = [1.0, 0.5, 2.0, 2.0, 3.0]
    assert pareto_front(cost, value).tolist() == [0, 2, 4]


# -- held observations --------------------------------------------------------------------------
def test_held_observation_unit():
    h = HeldObservation(n_envs=2, dim=3, n_steps=10, measured_steps=[0, 4, 8, 10])
    vals, age = h.observe(0, np.ones((2, 3)))
    assert np.all(vals == 1) and np.all(age == 0)
    vals, age = h.observe(3, None)
    assert np.all(vals == 1) and np.allclose(age, 0.3)
    vals, age = h.observe(4, 2 * np.ones((2, 3)))
    assert np.all(vals == 2) and np.all(age == 0)
    with pytest.raises(ValueError):
        h.observe(8, None)
    h.reset()
    vals, age = h.observe(2, None)
    assert np.all(vals == 0) and np.allclose(age, 0.2)


def test_unmeasured_steps_show_the_last_measured_values_and_their_age(battery, rng):
    env = ChargingVectorEnv(battery=battery, regime="energies", every=3)
    ref = ChargingVectorEnv(battery=battery, regime="energies")      # measures every step
    assert env.obs_dim == ref.obs_dim + 1
    obs, _ = env.reset()
    ref.reset()
    held, last = obs[0, :4].copy(), 0
    for k, a in enumerate(rng.uniform(-0.3, 0.3, 28), start=1):
        obs, _, _, _, info = env.step([a])
        r_obs, _, _, _, r_info = ref.step([a])
        if k % 3 == 0 or k == 28:
            np.testing.assert_allclose(obs[0, :4], r_obs[0, :4], atol=1e-6)   # measured now
            held, last = obs[0, :4].copy(), k
        else:
            np.testing.assert_array_equal(obs[0, :4], held)                   # held
            assert not np.allclose(obs[0, :4], r_obs[0, :4], atol=1e-6)       # …and stale
        assert obs[0, 4] == pytest.approx((k - last) / 28)                    # age
        assert obs[0, -1] == pytest.approx(k / 28)                            # t_k/τ still last
        assert info["ergotropy"][0] == pytest.approx(r_info["ergotropy"][0], abs=1e-12)   # exact diagnostic


def test_final_only_sees_nothing_until_the_end(battery, rng):
    env = ChargingVectorEnv(battery=battery, regime="second_order", final_only=True, shots=100)
    ref = ChargingVectorEnv(battery=battery, regime="energies")      # measures every step, exactly
    obs, _ = env.reset()
    ref.reset()
    assert np.all(obs[0, :-3] == 0)
    charged = []
    for a in list(rng.uniform(-0.3, 0.3, 27)) + [0.1]:
        obs, _, done, _, info = env.step([a])
        r_info = ref.step([a])[4]
        # the exact diagnostic still runs unmeasured: the same ergotropy as the measured reference
        assert info["ergotropy"][0] == pytest.approx(r_info["ergotropy"][0], abs=1e-12)
        charged.append(info["ergotropy"][0])
        if not done[0]:
            assert np.all(obs[0, :-3] == 0)
    assert max(charged) > 0.1                       # not a run of passive states (ℰ = 0 throughout)
    assert done[0] and obs[0, -3] == 0 and np.any(obs[0, :4] > 0)


# -- tomography ergotropy estimator ------------------------------------------------------------
def test_exact_tomography_returns_the_exact_ergotropy(battery):
    be = create_backend("statevector")
    est = tomography_ergotropy(battery, be, GRAPE[None, :14], 0.2, shots=None)
    [res] = be.run([Experiment(battery, GRAPE[:14].reshape(-1, 1), 0.2, MeasurementSchedule("energies", final_only=True))])
    assert est[0] == pytest.approx(float(battery.ergotropy(res.qubit_density[-1])), abs=1e-9)


def test_tomography_energy_is_unbiased_and_ergotropy_converges_with_shots(battery):
    be = create_backend("statevector", seed=3)
    lam = GRAPE.reshape(-1, 1)
    # the energy is linear in ρ: its linear-inversion estimate is unbiased at any shot count
    [ref] = be.run([Experiment(battery, lam, 0.2, MeasurementSchedule("energies", final_only=True))])
    exact_e = float(battery.energy(ref.qubit_density[-1]))
    res = be.run([Experiment(battery, lam, 0.2, MeasurementSchedule("tomography", final_only=True, shots=200))] * 60,
                 seed=5)
    e = np.array([float(battery.energy(estimate_density(r, 4, physical=False)[-1])) for r in res])
    assert abs(e.mean() - exact_e) < 4 * e.std(ddof=1) / np.sqrt(len(e))
    # the ergotropy is not linear: measured bias shrinks with shots and is < 0.05% of ℰ at 10^6
    stats = [tomography_ergotropy_stats(battery, be, GRAPE, 0.2, s, n_rep=30, seed=1) for s in (1000, 100_000, 1_000_000)]
    bias = [abs(s["bias"]) for s in stats]
    assert bias[0] > bias[1] > bias[2]
    assert bias[2] < 5e-4 * stats[2]["exact"]
    assert 0.05 < stats[1]["std"] / stats[0]["std"] < 0.2             # ∝ 1/√shots (0.1)


# -- the tomography reward -------------------------------------------------------------------
def test_tomography_reward_telescopes_to_the_estimated_terminal_ergotropy(battery, rng):
    lam = rng.uniform(-0.3, 0.3, 28)
    for w in (0.0, 1.0):
        env = ChargingVectorEnv(battery=battery, regime="energies", shots=500, reward="tomography_terminal",
                                tomography_shots=300, weight=w, every=2)
        env.seed(4)
        _, info0 = env.reset()
        total, e_meas0 = 0.0, None
        for k, a in enumerate(lam, start=1):
            _, r, done, _, info = env.step([a])
            e_meas0 = info["energy_measured"][0] - info["delta_energy"][0] if k == 2 else e_meas0
            total += r[0]
            if k < 28:
                assert info["delta_ergotropy"][0] == 0 and np.isnan(info["ergotropy_estimate"][0])
            if k % 2:
                assert info["delta_energy"][0] == 0                        # unmeasured step
        est, exact = info["ergotropy_estimate"][0], info["ergotropy"][0]
        if w == 0.0:
            assert total == pytest.approx(est, abs=1e-12)
            assert est != pytest.approx(exact, abs=1e-6)                    # an estimate, not the state
            assert est == pytest.approx(exact, abs=0.2)
        else:
            assert total == pytest.approx(info["energy_measured"][0] - e_meas0, abs=1e-12)
            assert total != pytest.approx(info["energy"][0] - info0["energy"][0], abs=1e-6)   # shot noise


# -- a tiny study: writes its table, resumes without redoing --------------------------------------
def test_tiny_study_writes_csv_and_resumes(tmp_path, capsys):
    cfgs = [StudyConfig(regime="energies", shots=s, frequency="final", total_steps=56) for s in (20, None)]
    outcomes = run_study(cfgs, tmp_path / "w", n_eval=2, sac={"hidden": (16, 16)})
    assert [o.status for o in outcomes] == ["done", "done"]
    assert len(write_report(tmp_path / "w", tmp_path / "o")) == 2
    text = (tmp_path / "o" / "measurement_study.csv").read_text().splitlines()
    assert len(text) == 3 and text[0].startswith("regime,shots,frequency")
    assert (tmp_path / "o" / "pareto.png").stat().st_size > 1000
    assert "energies  20  final" in capsys.readouterr().out                      # the printed table
    runs = finished_runs(tmp_path / "w")
    assert sorted(runs) == sorted(c.name for c in cfgs)
    wall = {k: v["wall_s"] for k, v in runs.items()}
    from qhil.experiments.battery.measurement import measurement_runs
    spec = measurement_runs(cfgs, 2, {"hidden": (16, 16)})[0]
    assert pickle.loads(pickle.dumps(spec)) == spec and spec.name == cfgs[0].name    # ships to a worker
    again = run_study(cfgs, tmp_path / "w", n_eval=2, sac={"hidden": (16, 16)})
    assert [o.status for o in again] == ["skipped", "skipped"]                     # nothing redone
    assert {k: v["wall_s"] for k, v in finished_runs(tmp_path / "w").items()} == wall
    assert write_report(tmp_path / "empty", tmp_path / "o2") == []                  # nothing finished: no table
    assert not (tmp_path / "o2").exists()


def test_converged_grid_shares_the_open_loop_configurations_and_keeps_windows():
    from qhil.experiments.battery.measurement import study_grid
    windows = {"energies": (28, "observations"), "second_order": (28, "actions")}
    grid = study_grid(["energies", "second_order"], [10, None], ["1", "final"], seeds=[0, 1], n_envs=8,
                      windows=windows, share_open_loop=True)
    # per seed: 2 regimes × 2 shots measured every step, plus ONE open-loop (final only) configuration
    assert len(grid) == 2 * (2 * 2 + 1)
    open_loop = [c for c in grid if c.open_loop]
    assert [(c.regime, c.shots, c.seed) for c in open_loop] == [("energies", None, 0), ("energies", None, 1)]
    assert {(c.regime, c.history, c.history_of) for c in grid} == {("energies", 28, "observations"),
                                                                   ("second_order", 28, "actions")}
    assert all(c.n_envs == 8 and "/batch8/" in c.name for c in grid)
    assert len({c.name for c in grid}) == len(grid)
    # without sharing every combination is its own configuration; the old names are unchanged
    assert len(study_grid(["energies", "second_order"], [10, None], ["1", "final"])) == 8
    assert StudyConfig().name == "env1/second_order/exact/every1/rew-exact/noise-none/steps5000/seed0"
    with pytest.raises(ValidationError, match="history_of"):
        StudyConfig(history_of="actions")                    # actions need a window
    with pytest.raises(ValidationError, match="n_envs"):
        StudyConfig(n_envs=0)
    env = StudyConfig(regime="second_order", history=28, history_of="actions", n_envs=3).make_env(n_envs=3)
    assert env.obs_dim == ChargingVectorEnv(regime="second_order").obs_dim + 28 and env.n_envs == 3


def test_aggregate_rows_over_seeds_is_the_mean_and_t_interval_of_the_seed_means():
    from scipy.stats import t as student

    from qhil.experiments.battery.measurement import aggregate_rows
    base = {"regime": "zz", "shots": 100, "frequency": "1", "noise": "none", "reward": "exact", "train_steps": 56,
            "window": "observations:28", "n_envs": 8, "settings": 1, "measured_steps": 29,
            "shots_per_episode": 2900, "played_steps_per_episode": 40600, "train_total_shots": 5800.0,
            "wall_s": 1.0, "open_loop": False}
    means = [3.9, 4.0, 4.2]
    rows = [base | {"seed": i, "eval_mean": m, "best_explored": m + 0.1} for i, m in enumerate(means)]
    rows.append(base | {"seed": 0, "eval_mean": 1.0, "best_explored": 1.0, "frequency": "final", "shots": "exact",
                        "open_loop": True})
    agg = aggregate_rows(rows)
    assert [r["regime"] for r in agg] == ["zz", "open loop"] and agg[1]["shots"] == "any"
    half = student.ppf(0.975, 2) * np.std(means, ddof=1) / np.sqrt(3)
    assert agg[0]["n_seeds"] == 3 and agg[0]["eval_mean"] == pytest.approx(np.mean(means))
    assert agg[0]["seed_ci95"] == pytest.approx(half) and agg[0]["eval_min"] == 3.9 and agg[0]["eval_max"] == 4.2
    assert agg[0]["best_explored"] == pytest.approx(np.mean(means) + 0.1)
    assert np.isnan(agg[1]["seed_ci95"])                     # one seed: no interval


def test_study_setup_preset_fills_only_what_the_command_left_unset(tmp_path, monkeypatch):
    import argparse

    from qhil.experiments.battery import measurement as M
    from qhil.lab.commands import study
    seen = {}
    monkeypatch.setattr(study, "run_specs", lambda specs, work, ex: seen.update(specs=specs, work=work) or [])
    monkeypatch.setattr(M, "write_report", lambda work, out: seen.update(out=out) or [])
    root = argparse.ArgumentParser()
    study.add_parser(root.add_subparsers(dest="cmd"))
    args = root.parse_args(["study", "measurement", "--setup", "converged", "--regimes", "energies",
                            "--shots", "10", "--frequencies", "1,final", "--seeds", "2",
                            "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")])
    assert args.func(args) == 1                              # nothing finished (write_report stubbed): exit 1
    cfgs = [s.config for s in seen["specs"]]
    assert {c.seed for c in cfgs} == {0, 1}                   # --seeds given: kept
    assert all(c.total_steps == 56_000 and c.n_envs == 8 and c.history == 28 for c in cfgs)   # preset
    assert sum(c.open_loop for c in cfgs) == 2                # shared: once per seed
    # priority order: the open-loop points first, then every step; seeds of a point together
    assert [c.open_loop for c in cfgs[:2]] == [True, True] and [c.seed for c in cfgs[:4]] == [0, 1, 0, 1]
    assert dict(seen["specs"][0].sac) == {"learning_starts": 4000, "precision": "auto", "updates_per_step": 0.125}
    assert seen["work"] == tmp_path / "w" and seen["out"] == tmp_path / "o"
    zero = root.parse_args(["study", "measurement", "--setup", "converged", "--learning-starts", "0", "--regimes",
                            "energies", "--shots", "10", "--frequencies", "1", "--seeds", "1",
                            "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")])
    zero.func(zero)
    assert dict(seen["specs"][0].sac)["learning_starts"] == 0          # an explicit 0 is kept, not "unset"
    plain = root.parse_args(["study", "measurement", "--report-only", "--work-dir", str(tmp_path / "w")])
    plain.func(plain)
    assert plain.total_steps == 5000 and plain.seeds == 1 and plain.out_dir == study.OUT    # the old defaults


# -- open vs closed loop ------------------------------------------------------------------------
class _ReplayAgent:
    """A 'closed-loop' policy that ignores its measurements and replays a protocol by t_k."""

    def __init__(self, protocol):
        self.protocol = np.asarray(protocol)

    def act(self, obs, deterministic=True):
        k = np.rint(np.asarray(obs)[:, -1] * len(self.protocol)).astype(int)
        return self.protocol[k][:, None]


def independent_terminal_ergotropy(omegas, protocol, dt=0.2, n_max=40):
    """ℰ(τ) of a protocol without qhil: H = Σ ω_j |e⟩⟨e|_j + a†a + λ Σ σ_x^(j) (a + a†) built here
    with numpy/scipy.sparse, |g…g⟩⊗|N⟩ propagated by expm_multiply, the passive energy from
    the sorted spectrum of the reduced state against the sorted battery levels."""
    import scipy.sparse as sps
    from scipy.sparse.linalg import expm_multiply
    n, nf = len(omegas), n_max + 1
    e_proj, sx = sps.diags([0.0, 1.0]), sps.csr_matrix(np.array([[0.0, 1.0], [1.0, 0.0]]))
    a = sps.diags(np.sqrt(np.arange(1, nf)), 1)

    def site(op, j):
        out = sps.identity(1)
        for k in range(n):
            out = sps.kron(out, op if k == j else sps.identity(2))
        return out
    h_b = sum(w * site(e_proj, j) for j, w in enumerate(omegas))
    h0 = sps.kron(h_b, sps.identity(nf)) + sps.kron(sps.identity(2 ** n), a.T @ a)
    v = sps.kron(sum(site(sx, j) for j in range(n)), a + a.T)
    psi = np.zeros(2 ** n * nf, complex)
    psi[n] = 1.0                                           # |g…g⟩ ⊗ |N = n photons⟩
    for lam in protocol:
        psi = expm_multiply(-1j * dt * sps.csr_matrix(h0 + lam * v), psi)
    m = psi.reshape(2 ** n, nf)
    rho = m @ m.conj().T                                   # Tr_cavity
    levels = np.real(h_b.diagonal())
    return float(np.real(np.trace(rho @ np.diag(levels))) - np.sort(np.linalg.eigvalsh(rho))[::-1] @ np.sort(levels))


def test_open_and_closed_loop_agree_for_a_policy_that_replays_the_protocol():
    from qhil.experiments.battery.open_closed import check_perturbation, compare
    cfg = StudyConfig(regime="energies", shots=None, frequency="1")
    rows = compare(_ReplayAgent(GRAPE), cfg, GRAPE, [("none", 0), ("shots", 10), ("drift", 0.05)], n_rep=3)
    for r in rows:       # the same protocol on the same (drifted) batteries: paired difference 0
        assert r["closed_minus_open"] == pytest.approx(0.0, abs=1e-9), r
    # the unperturbed open loop is GRAPE's ℰ(τ), computed here without qhil
    assert rows[0]["open_mean"] == pytest.approx(independent_terminal_ergotropy(ENV1, GRAPE), abs=1e-8)
    assert rows[2]["open_ci95"] > 0                                  # the drift draws differ
    with pytest.raises(ValidationError, match="level"):
        check_perturbation("drift", 0.9)
    with pytest.raises(ValidationError, match="kind"):
        check_perturbation("heat", 0.1)


# -- the tomography study ------------------------------------------------------------------------
def test_tomography_study_rows_and_report(tmp_path, battery):
    from qhil.experiments.battery.tomography import parse_steps, tomography_rows, write_report
    rows = tomography_rows("env1", [None, 50], reps=3, steps="14", seed=2, log=False)
    # states (GRAPE k=14, constant λ) × shots (exact, 50) × estimators (projected, linear inversion)
    assert [(r["state"], r["shots_per_setting"], r["estimator"]) for r in rows][:4] == [
        ("GRAPE k=14", "exact", "projected"), ("GRAPE k=14", "exact", "linear_inversion"),
        ("GRAPE k=14", 50, "projected"), ("GRAPE k=14", 50, "linear_inversion")]
    be = create_backend("statevector")
    [res] = be.run([Experiment(battery, GRAPE[:14].reshape(-1, 1), 0.2, MeasurementSchedule("energies", final_only=True))])
    exact = float(battery.ergotropy(res.qubit_density[-1]))
    assert rows[0]["exact"] == pytest.approx(exact, abs=1e-9)
    assert abs(rows[0]["bias"]) < 1e-9 and rows[0]["total_shots"] == 0        # exact tomography
    assert rows[2]["std"] > 0 and rows[2]["total_shots"] == 81 * 50            # shot noise, 81 settings
    write_report(rows, tmp_path, "env1", 3, 2)
    md = (tmp_path / "tomography_ergotropy.md").read_text().splitlines()
    assert md[0].startswith("# Ergotropy from local-basis tomography") and len(md) == 4 + 2 + len(rows)
    assert len((tmp_path / "tomography_ergotropy.csv").read_text().splitlines()) == 1 + len(rows)
    with pytest.raises(ValidationError, match="steps"):
        parse_steps("0,5", 28)
    with pytest.raises(ValidationError, match="reps"):
        tomography_rows("env1", [None], reps=1, steps="14")
