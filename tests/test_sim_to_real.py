"""The sim-to-real study: options, scoring with the emulator's true state, the report."""
import numpy as np
import pytest

from qhil.drivers import ValidationError
from qhil.experiments.battery import sim_to_real as S
from qhil.lab.device_backend import study_device


def test_options_and_specs_are_checked_before_any_run():
    for bad in ({"budget_shots": 0}, {"fom_shots": 1.5}, {"residual_scale": 0.0}, {"deploy_episodes": True},
                {"env": "env9"}, {"residual_every": 29}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            S.StudyOptions(**bad)
    opts = S.StudyOptions()
    with pytest.raises(ValidationError, match="severities"):
        S.study_specs(["medium"], ["grape"], [0], opts, study_device)
    with pytest.raises(ValidationError, match="method"):
        S.study_specs(["mild"], ["gradient"], [0], opts, study_device)
    policies, runs = S.study_specs(["mild", "severe"], ["grape", "sac_nominal", "sac_randomised"], [0, 1], opts,
                                   study_device)
    assert len(runs) == 2 * 3 * 2 and len({r.name for r in runs}) == len(runs)
    # one nominal policy per seed (shared by both devices), one randomised policy per severity and seed
    assert sorted(p.name for p in policies) == ["train/nominal/seed0", "train/nominal/seed1",
                                                "train/randomised-mild/seed0", "train/randomised-mild/seed1",
                                                "train/randomised-severe/seed0", "train/randomised-severe/seed1"]


def test_trace_on_grid_is_the_last_value_handed_over_by_then():
    trace = [{"shots": 1000, "true_ergotropy": 1.0}, {"shots": 3000, "true_ergotropy": 2.0}]
    got = S.trace_on_grid(trace, np.array([10, 1000, 2999, 3000, 10**6]))
    assert np.isnan(got[0]) and got[1:].tolist() == [1.0, 1.0, 2.0, 2.0]


def test_grape_on_the_mismatched_device_scored_by_its_true_state(tmp_path):
    """The GRAPE arm end to end: its score is the true state's ergotropy of the protocol on the
    device (checked against the device's own state, independently of the study), its
    measured energy carries the readout bias, and the report is written."""
    from qhil.drivers.measure import qubit_density
    opts = S.StudyOptions(fom_shots=2000)
    out = S.run_study(["severe"], ["grape"], [0], opts, study_device, tmp_path / "w")
    assert [o.status for o in out] == ["done"]
    summary = out[0].summary
    protocol = S.grape_of(opts)
    device = study_device(S.battery_of(opts), S.SEVERITIES["severe"].imperfections(), 7_000)
    device.device.begin_episode(np.random.default_rng(0))           # the drift's one step (the run's experiment)
    battery = S.battery_of(opts)
    rho = qubit_density(device.true_states(protocol, 0.2), battery.n_qubits, battery.aux_dim)
    assert summary["final_true_ergotropy"] == pytest.approx(float(battery.ergotropy(rho)[-1]), abs=1e-9)
    assert summary["shots_spent"] == 2000 and summary["experiments"] == 1
    assert 3.5 < summary["final_true_ergotropy"] < 4.2716 + 1e-3
    agg = S.write_report(tmp_path / "w", tmp_path / "o", echo=False)
    assert [(r["severity"], r["method"], r["n_seeds"]) for r in agg] == [("severe", "grape", 1)]
    assert (tmp_path / "o" / "sim_to_real.png").stat().st_size > 1000
    assert "true_ergotropy" in (tmp_path / "o" / "sim_to_real.md").read_text()


def test_energy_reward_on_a_device_without_state_has_finite_terms():
    """w = 1 on a device: nothing measures Δℰ, so its reward term is 0 (not NaN, which the
    replay buffer's recombination with the weight, 0 · NaN, would turn into NaN rewards)."""
    from qhil.envs import ChargingVectorEnv
    opts = S.StudyOptions()
    battery = S.battery_of(opts)
    env = ChargingVectorEnv(battery, regime="energies", backend=study_device(battery, {}, 0), shots=50, every=7,
                            weight=1.0)
    env.reset()
    for _ in range(8):
        _, reward, _, _, info = env.step(np.array([0.2]))
        assert np.all(np.isfinite(info["reward_terms"])) and info["reward_terms"][0, 1] == 0.0
        assert reward[0] == pytest.approx(info["reward_terms"][0, 0])
    assert np.isnan(info["delta_ergotropy"][0])                   # unknown, and said so


def test_optimiser_and_residual_arms_spend_within_the_budget(tmp_path):
    opts = S.StudyOptions(budget_shots=12_000, fom_shots=500, reevaluate=2, residual_shots=10)
    out = S.run_study(["mild"], ["nelder-mead", "sac_residual"], [0], opts, study_device, tmp_path / "w")
    assert [o.status for o in out] == ["done", "done"], [o.error for o in out]
    for o in out:
        s = o.summary
        assert 0 < s["shots_spent"] <= opts.budget_shots
        assert s["trace"] and all(a["shots"] <= b["shots"] for a, b in zip(s["trace"], s["trace"][1:]))
        assert 3.0 < s["final_true_ergotropy"] < 4.4
    nm, res = (o.summary for o in out)
    assert nm["measured_kind"].startswith("final energy") and nm["final_measured_std"] > 0
    assert res["details"]["episodes"] >= 2 and res["details"]["train_shots"] > 0
    again = S.run_study(["mild"], ["nelder-mead", "sac_residual"], [0], opts, study_device, tmp_path / "w")
    assert [o.status for o in again] == ["skipped", "skipped"]


def test_residual_policy_from_the_simulator_deployed_and_fine_tuned(tmp_path):
    """The simulator's residual policy (domain-randomised, observing as the device arms do) is
    trained once per severity and seed; deployed as is, and fine-tuned on the device from its
    own checkpoint. Both play GRAPE + a correction of at most ``residual_scale`` per step."""
    from qhil.experiments.battery.deployment import load_run
    from qhil.experiments.battery.training import checkpoint_path, file_sha256
    opts = S.StudyOptions(budget_shots=12_000, residual_shots=10, train_steps=448, deploy_episodes=2)
    policies, _ = S.study_specs(["mild"], ["sac_residual_deployed", "sac_residual_finetuned"], [0], opts,
                                study_device)
    assert [p.name for p in policies] == ["train/residual-randomised-mild/seed0"]
    out = S.run_study(["mild"], ["sac_residual_deployed", "sac_residual_finetuned"], [0], opts, study_device,
                      tmp_path / "w")
    assert [o.status for o in out] == ["done"] * 3, [o.error for o in out]
    policy = load_run(tmp_path / "w" / S.POLICIES, policies[0].name)
    assert policy.config["residual"]["scale"] == opts.residual_scale and policy.config["every"] == opts.residual_every
    deployed, tuned = out[1].summary, out[2].summary
    grape = S.grape_of(opts)
    for s in (deployed, tuned):
        assert np.max(np.abs(np.asarray(s["controls"]) - grape)) <= opts.residual_scale + 1e-12
        assert 3.0 < s["final_true_ergotropy"] < 4.4 and 0 < s["shots_spent"] <= opts.budget_shots
    assert len(deployed["details"]["episodes_true"]) == 2
    # the fine-tune started from the simulator policy's checkpoint (recorded with its SHA-256)
    run = load_run(tmp_path / "w" / "methods" / "mild_sac_residual_finetuned_seed0")
    source = run.config["init_from"]
    assert source["run"] == policies[0].name
    assert source["sha256"] == file_sha256(checkpoint_path(tmp_path / "w" / S.POLICIES, policies[0].name))
