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


# -- issue 16: seeds, options and the command line ---------------------------------------------
@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, "1", True])
def test_bad_backend_seed(seed):
    with raises("seed", "[0, "):
        create_backend("statevector", seed=seed)
    with raises("seed"):
        create_backend("statevector").run(Experiment(DickeBattery(n_max=6), [0.1], 0.2), seed=seed)


def test_unknown_backend_option_is_named():
    with raises("bogus", "seed"):
        create_backend("statevector", bogus=1)


def test_sac_config_file_errors_name_the_config(tmp_path):
    from qhil.agents.sac_config import SACConfig
    (tmp_path / "bad.json").write_text("{bad")
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "gamma.json").write_text('{"gamma": 2}')
    for name, param in (("missing.json", "config"), ("bad.json", "config"), ("list.json", "config"),
                        ("gamma.json", "gamma")):
        with raises(param):
            SACConfig.from_file(tmp_path / name)
    with raises("hiden"):
        SACConfig.from_dict({"hiden": [1]})
    with raises("hidden"):
        SACConfig.from_dict({"hidden": ["a"]})


def _cli(argv, capsys):
    from qhil.lab.cli import main
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_plain_negative_values_are_values_not_options():
    from qhil.lab.cli import build_parser
    p = build_parser()
    for text, want in (("-0.1,0.2", [-0.1, 0.2]), ("-0.3*4", [-0.3] * 4), ("-.1", [-0.1]), ("-1e-2,0", [-0.01, 0.0])):
        ns = p.parse_args(["simulate", "--dt", "0.2", "--controls", text])
        assert np.allclose(np.ravel(ns.controls), want), (text, ns.controls)
    assert p.parse_args(["sweep", "noise", "--probs", "0.1,0.2"]).probs == [0.1, 0.2]


def test_a_plain_negative_value_is_refused_by_its_own_range(capsys):
    rc, err = _cli(["sweep", "lr", "--lr", "-1"], capsys)
    assert rc == 2 and "argument --lr" in err and "expected one argument" not in err
    rc, err = _cli(["sweep", "lr", "--lrs", "-0.1,0.2"], capsys)
    assert rc == 2 and "argument --lrs" in err and "-0.1" in err


@pytest.mark.parametrize("argv, flag", [
    (["reproduce", "table1", "--jobs", "0"], "--jobs"),
    (["reproduce", "table1", "--seeds", "-5"], "--seeds"),
    (["reproduce", "table1", "--train-args", "--gamma 2"], "--train-args"),
    (["reproduce", "table1", "--train-args", "--run x"], "--train-args"),
    (["reproduce", "figS2", "--weights", "scheduled,2"], "--weights"),
    (["reproduce", "robust", "--omega-range", "1.5,0.5"], "--omega-range"),
    (["study", "measurement", "--frequencies", "0"], "--frequencies"),
    (["study", "measurement", "--shots", "0"], "--shots"),
    (["study", "open-closed", "--levels", "drift:nan"], "--levels"),
    (["sweep", "n", "--ns", "1"], "--ns"),
    (["sweep", "noise", "--probs", "nan"], "--probs"),
])
def test_owned_commands_refuse_before_work(argv, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(argv, capsys)
    assert rc == 2 and f"argument {flag}" in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


def test_unusable_output_folder_is_refused_before_work(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    rc, err = _cli(["sweep", "lr", "--out", str(tmp_path / "afile" / "o"), "--work-dir", str(tmp_path / "w")],
                   capsys)
    assert rc == 2 and "argument --out" in err
    assert not (tmp_path / "w").exists()


def test_reproduce_refuses_zero_jobs(tmp_path, capsys):
    rc, err = _cli(["reproduce", "table1", "--jobs", "0", "--work-dir", str(tmp_path / "w"),
                    "--out-dir", str(tmp_path / "o")], capsys)
    assert rc == 2 and "--jobs" in err
    assert not (tmp_path / "w").exists()


def test_reproduce_exits_1_without_a_nan_table_when_every_run_failed(tmp_path, capsys, monkeypatch):
    from qhil.agents.runstore import RunStore
    from qhil.experiments.battery import reproduce
    from qhil.experiments.battery.training import ChargingRunSpec

    def boom(self, work_dir):
        raise RuntimeError("training diverged")
    monkeypatch.setattr(ChargingRunSpec, "execute", boom)
    monkeypatch.setattr(reproduce, "ensure_grape", lambda env, grape_dir: None)
    argv = ["reproduce", "table1", "--envs", "env1", "--regimes", "energies", "--seeds", "2", "--jobs", "1",
            "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")]
    rc, err = _cli(argv, capsys)
    assert rc == 1 and "all 2 run(s) failed" in err
    assert not (tmp_path / "o" / "table1.csv").exists()
    # one run finished before, one fails now: the table of the finished one, still exit 1
    store = RunStore(tmp_path / "w" / "runs.sqlite")
    store.start_run("env1/energies/seed0", {"env": "env1", "regime": "energies"})
    store.finish_run("env1/energies/seed0", {"best_explored": 3.9, "deterministic": 3.8})
    store.close()
    rc, err = _cli(argv, capsys)
    assert rc == 1 and "1 of 2 run(s) failed" in err
    assert "3.9" in (tmp_path / "o" / "table1.csv").read_text()


def test_sweep_exits_1_when_runs_fail(tmp_path, capsys, monkeypatch):
    import qhil.experiments.supply_chain.specs as ss

    def boom(spec, work):
        raise RuntimeError("training diverged")
    monkeypatch.setattr(ss, "run_one", boom)
    rc, err = _cli(["sweep", "n", "--ns", "2", "--seeds", "1", "--agents", "dqn", "--work-dir", str(tmp_path / "w"),
                    "--out", str(tmp_path / "o")], capsys)
    assert rc == 1 and "FAILED" in err and "RuntimeError: training diverged" in err and "all 1 run(s) failed" in err
    assert not (tmp_path / "o" / "n.md").exists()


def test_study_measurement_exits_1_when_a_configuration_fails(tmp_path, capsys, monkeypatch):
    import qhil.experiments.battery.measurement as ms

    def boom(*a, **k):
        raise RuntimeError("NaN reward")
    monkeypatch.setattr(ms, "run_config", boom)
    rc, err = _cli(["study", "measurement", "--regimes", "energies", "--shots", "exact", "--frequencies", "1",
                    "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")], capsys)
    assert rc == 1 and "1 of 1 run(s) failed" in err and "NaN reward" in err
    assert not (tmp_path / "o" / "measurement_study.csv").exists()


def test_study_open_closed_exits_1_when_its_policy_fails_to_train(tmp_path, capsys, monkeypatch):
    import qhil.experiments.battery.measurement as ms
    import qhil.experiments.battery.open_closed as oc

    def boom(*a, **k):
        raise RuntimeError("NaN loss")
    monkeypatch.setattr(ms, "run_config", boom)
    monkeypatch.setattr(oc, "compare", lambda *a, **k: pytest.fail("compared without a trained policy"))
    rc, err = _cli(["study", "open-closed", "--policy-regime", "energies", "--total-steps", "56", "--levels", "none:0",
                    "--work-dir", str(tmp_path / "w"), "--out-dir", str(tmp_path / "o")], capsys)
    assert rc == 1 and "did not train" in err and "NaN loss" in err
    assert not (tmp_path / "o" / "open_closed.csv").exists()
