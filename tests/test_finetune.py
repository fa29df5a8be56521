"""Fine-tuning on the device (issue 14, part 2): ``init_from`` (a simulator-trained policy continued
elsewhere), residual mode (corrections to a reference protocol), shot counting, and the
``qhil train`` options that reach them (--init-from, --residual, --backend emulator, --shots)."""
import hashlib
import json

import numpy as np
import pytest
import torch

from qhil.agents.runstore import RunStore
from qhil.drivers import Experiment, MeasurementSchedule, ValidationError, create_backend
from qhil.envs import ENV1, ChargingVectorEnv, DickeBattery
from qhil.envs.history import HistoryVectorEnv
from qhil.envs.residual import ResidualActionEnv
from qhil.experiments.battery.training import (ChargingRunSpec, checkpoint_path, init_source,
                                               initialise_from, train_run)
from qhil.agents.sac import SAC, SACConfig

K = 28
RUN = "env1/energies/seed3"
GRAPE = "docs/results/grape_env1.json"


def sac(total: int = 4 * K, learning_starts: int = K, **kw) -> dict:
    return {"seed": 3, "total_steps": total, "hidden": (16, 16), "batch_size": 16, "buffer_size": 2000,
            "learning_starts": learning_starts, **kw}


def spec(**kw) -> ChargingRunSpec:
    base = dict(env="env1", regime="energies", sac=sac(), weight=0.0, checkpoint_every=2, checkpoint_seconds=None)
    return ChargingRunSpec(**(base | kw))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny simulator-trained run (energies regime, Env1): the policy fine-tunes start from."""
    d = tmp_path_factory.mktemp("source")
    spec(sac=sac(total=3 * K)).execute(d)
    return d


# -- residual mode: the wrapper's physics ------------------------------------------------------
def test_residual_env_plays_the_reference_at_zero_and_clips_at_the_bounds():
    battery = DickeBattery(omegas=ENV1)
    ref = np.asarray(json.loads(open(GRAPE).read())["protocol"])
    s = 0.1
    for wrap in (lambda e: e, lambda e: HistoryVectorEnv(e, 3, of="actions")):
        env = ResidualActionEnv(wrap(ChargingVectorEnv(battery, regime="energies", weight=0.0)), ref, s)
        assert (env.action_low, env.action_high) == (-1.0, 1.0)
        for a in (0.0, 1.0, -1.0):
            obs, _ = env.reset()
            for k in range(K):
                obs, _, done, _, info = env.step([a])
                want = np.clip(ref[k] + s * a, -0.3, 0.3)            # the independent formula
                assert env.controls[0, -1] == pytest.approx(want, abs=1e-15)
                base = obs[0] if isinstance(env.env, ChargingVectorEnv) else obs[0, :env.env.base_dim]
                assert base[-2] == pytest.approx(want / 0.3, abs=1e-6)    # a_{k−1}: the PLAYED λ, normalised
            assert done.all()
            if a == 0.0:                                      # the reference itself, physics checked
                np.testing.assert_allclose(env.controls[0], ref, atol=1e-15)
                [r] = create_backend("statevector").run(Experiment(battery, ref.reshape(-1, 1), 5.6 / K,
                                                                   MeasurementSchedule("energies", final_only=True)))
                assert info["ergotropy"][0] == pytest.approx(float(battery.ergotropy(r.qubit_density[-1])), abs=1e-10)
                assert info["ergotropy"][0] == pytest.approx(4.2716, abs=1e-3)    # GRAPE's Env1 value
            elif a == 1.0:
                assert np.any(env.controls[0] == 0.3) and np.any(env.controls[0] < ref + s - 1e-12)   # clipped somewhere


@pytest.mark.parametrize("ref, scale, name", [
    (np.zeros(K - 1), 0.1, "residual"), (np.full(K, 0.5), 0.1, "residual"), (np.full(K, np.nan), 0.1, "residual"),
    (np.zeros(K), 0.0, "residual_scale"), (np.zeros(K), 0.61, "residual_scale"), (np.zeros(K), np.inf, "residual_scale")])
def test_residual_env_refuses_bad_references_and_scales(ref, scale, name):
    with pytest.raises(ValidationError) as exc:
        ResidualActionEnv(ChargingVectorEnv(DickeBattery(omegas=ENV1), regime="energies"), ref, scale)
    assert exc.value.parameter == name


# -- init_from -------------------------------------------------------------------------------
def _actor(path):
    return torch.load(path, weights_only=False)["agent"]["actor"]


def test_init_from_loads_the_source_networks_and_records_the_checkpoint(source, tmp_path):
    ckpt = checkpoint_path(source, RUN)
    src, record = init_source(source)
    assert record["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest() and record["source_steps"] == 3 * K
    env = ChargingVectorEnv(DickeBattery(omegas=ENV1), regime="energies")
    agent = SAC(env.obs_dim, env.action_low, env.action_high, SACConfig(**sac(seed=7)))
    initialise_from(agent, src, {"obs_dim": env.obs_dim, "regime": "energies", "history": None,
                                 "history_of": "observations", "n_steps": K, "bounds": [-0.3, 0.3],
                                 "residual": None, "every": 1, "final_only": False})
    for name in ("actor", "q1", "q2", "q1_targ", "q2_targ"):
        for k, v in getattr(agent, name).state_dict().items():
            torch.testing.assert_close(v, src[1]["agent"][name][k], rtol=0, atol=0)
    assert agent.alpha == pytest.approx(float(src[1]["agent"]["log_alpha"].exp()))
    # through the run: one episode without updates keeps the source's actor exactly
    s = spec(sac=sac(total=K, learning_starts=10**6), init_from=str(source), run="ft")
    out = s.execute(tmp_path)
    assert out["config"]["init_from"]["sha256"] == record["sha256"] and out["steps"] == K and out["updates"] == 0
    for k, v in _actor(checkpoint_path(tmp_path, "ft")).items():
        torch.testing.assert_close(v, _actor(ckpt)[k], rtol=0, atol=0)


def test_init_from_refuses_another_layout_and_bad_checkpoints(source, tmp_path):
    for kw in ({"regime": "first_order"}, {"history": 2}, {"n_steps": 14, "tau": 2.8}, {"every": 2},
               {"residual": "constant:0", "residual_scale": 0.1}):
        with pytest.raises(ValidationError) as exc:
            spec(init_from=str(source), run="x", **kw).execute(tmp_path / "a")
        assert exc.value.parameter == "init_from"
    with pytest.raises(ValidationError, match="init_from.*hidden"):                # networks of another size
        spec(sac=sac(hidden=(8, 8)), init_from=str(source), run="x").execute(tmp_path / "b")
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "runs.sqlite").write_bytes((source / "runs.sqlite").read_bytes())
    for content in (None, b"not a checkpoint"):                                      # missing, corrupt
        if content is not None:
            checkpoint_path(copy, RUN).write_bytes(content)
        with pytest.raises(ValidationError) as exc:
            spec(init_from=str(copy), run="x").execute(tmp_path / "c")
        assert exc.value.parameter == "init_from"
    with pytest.raises(ValidationError) as exc:
        spec(init_run="x").execute(tmp_path / "d")
    assert exc.value.parameter == "init_run"


# -- resume: a fine-tune and a residual run continue from their OWN checkpoint ---------------
class Crash(Exception):
    pass


def _run(monkeypatch, s, d, crash_at=None):
    """Run ``s`` in ``d``; with ``crash_at`` the process "dies" when the round of that episode is logged."""
    real = RunStore.log_episodes
    calls = {"n": 0}

    def log(self, run, rows, best=None):
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise Crash
        return real(self, run, rows, best)
    monkeypatch.setattr(RunStore, "log_episodes", log)
    try:
        return s.execute(d)
    finally:
        monkeypatch.setattr(RunStore, "log_episodes", real)


@pytest.mark.parametrize("mode", ["init_from", "residual"])
def test_fine_tune_and_residual_runs_resume_exactly(source, tmp_path, monkeypatch, mode):
    src = tmp_path / "src"
    src.mkdir()
    for f in source.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    kw = {"init_from": str(src)} if mode == "init_from" else {"residual": GRAPE, "residual_scale": 0.05}
    s = spec(sac=sac(total=6 * K, learning_starts=2 * K), run="ft", **kw)
    straight = _run(monkeypatch, s, tmp_path / "a")
    with pytest.raises(Crash):
        _run(monkeypatch, s, tmp_path / "b", crash_at=5)                # checkpoint after episode 4
    assert torch.load(checkpoint_path(tmp_path / "b", "ft"), weights_only=False)["state"]["episode"] == 4
    checkpoint_path(src, RUN).write_bytes(b"gone")          # a resume must not read the source again
    resumed = _run(monkeypatch, s, tmp_path / "b")
    a, b = (RunStore(tmp_path / x / "runs.sqlite").episodes("ft") for x in ("a", "b"))
    assert len(a["episode"]) == len(b["episode"]) == 6
    np.testing.assert_array_equal(a["ret"], b["ret"])
    np.testing.assert_array_equal(a["ergotropy"], b["ergotropy"])
    assert straight["deterministic"] == resumed["deterministic"]
    for k, v in _actor(checkpoint_path(tmp_path / "a", "ft")).items():
        torch.testing.assert_close(v, _actor(checkpoint_path(tmp_path / "b", "ft"))[k], rtol=0, atol=0)
    if mode == "residual":                  # the run records its reference; a resume must keep it
        assert straight["config"]["residual"]["scale"] == 0.05
        with pytest.raises(ValidationError, match="residual"):
            spec(sac=sac(total=6 * K, learning_starts=2 * K), run="ft", residual=GRAPE,
                 residual_scale=0.1).execute(tmp_path / "b")
    else:
        assert resumed["config"]["init_from"] == straight["config"]["init_from"]
        with pytest.raises(ValidationError) as exc:                    # resumed without the source
            spec(sac=sac(total=6 * K, learning_starts=2 * K), run="ft").execute(tmp_path / "b")
        assert exc.value.parameter == "init_from"


# -- shots --------------------------------------------------------------------------------------
def test_every_shot_is_counted(tmp_path):
    shots, episodes = 50, 2
    out = spec(sac=sac(total=episodes * K), shots=shots).execute(tmp_path)
    per_episode = (K + 1) * 1 * shots              # k = 0..K, one setting (Z…Z) for the energies
    assert out["shots_spent"] == episodes * per_episode
    env = ChargingVectorEnv(DickeBattery(omegas=ENV1), regime="energies", shots=shots)
    assert env.measurement_cost()["total_total_shots"] == per_episode
    assert out["experiments_run"] == episodes * (K + 1) and out["device_s"] == 0.0
    assert out["evaluation_cost"] == {"shots_spent": per_episode, "experiments_run": K + 1, "device_s": 0.0}
    finish = RunStore(tmp_path / "runs.sqlite").runs()[RUN]["summary"]
    assert finish["shots_spent"] == episodes * per_episode and finish["evaluation_cost"]["shots_spent"] == per_episode
    again = spec(sac=sac(total=episodes * K), shots=shots).execute(tmp_path)     # resumed, nothing new
    assert again["shots_spent"] == episodes * per_episode
    exact = spec(sac=sac(total=K)).execute(tmp_path / "exact")
    assert exact["shots_spent"] == 0 and exact["experiments_run"] == K + 1


# -- the command line ----------------------------------------------------------------------------
@pytest.mark.parametrize("extra, name", [
    (["--emulator", "amplitude_error=0.05"], "emulator"),
    (["--backend", "emulator"], "shots"),
    (["--backend", "emulator", "--shots", "10", "--emulator", "nonsense=1"], "emulator"),
    (["--residual-scale", "0.1"], "residual_scale"),
    (["--residual", "constant:0"], "residual_scale"),
    (["--residual", "constant:0.5", "--residual-scale", "0.1"], "residual"),
    (["--init-from", "/nonexistent/folder"], "init_from"),
    (["--residual-scale", "0"], "--residual-scale"),
    (["--shots", "0"], "--shots"),
    (["--randomise-mismatch", "gain=0.1"], "--randomise-mismatch"),
    (["--randomise-mismatch", "amplitude_error=0.9"], "amplitude_error"),
    (["--randomise-mismatch", "rise_time=0.1", "--omega-spread", "0.1"], "mismatch"),
    (["--backend", "nowhere"], "--backend")])
def test_train_command_refuses_bad_fine_tuning_options(tmp_path, capsys, extra, name):
    from qhil.lab.cli import main
    assert main(["train", "--regime", "energies", "--run-dir", str(tmp_path), "--no-progress", *extra]) == 2
    assert name in capsys.readouterr().err
    assert not (tmp_path / "runs.sqlite").exists()          # refused before any work


def test_fine_tune_on_the_emulator_counts_its_shots(source, tmp_path):
    from qhil.lab.cli import main
    shots = 20
    argv = ["train", "--env", "env1", "--regime", "energies", "--init-from", str(source), "--backend", "emulator",
            "--emulator", "amplitude_error=0.05", "--shots", str(shots), "--tomography-shots", str(shots),
            "--total-steps", str(2 * K), "--learning-starts", "0", "--batch-size", "16", "--seed", "3",
            "--run-dir", str(tmp_path), "--no-progress", "--json", str(tmp_path / "s.json")]
    assert main(argv) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    per_episode = (K + 1) * shots + 3 ** 4 * shots       # observations + the terminal tomography (81 settings)
    assert s["shots_spent"] == 2 * per_episode and s["evaluation_cost"]["shots_spent"] == per_episode
    assert s["device_s"] > 0 and s["config"]["backend"].startswith("device")
    assert s["config"]["reward"] == "tomography_terminal" and s["config"]["sac"]["hidden"] == [16, 16]
    assert s["config"]["init_from"]["run"] == RUN
    assert np.isfinite(s["deterministic"]["ergotropy"]) and 0.0 <= s["deterministic"]["ergotropy"] <= 5.0


def test_deploying_a_residual_run_plays_reference_plus_correction(tmp_path):
    """qhil deploy of a residual run must wrap the policy's action as in training (reference +
    s·a), not play the raw correction as λ: the deployed protocol on the exact driver equals the
    run's own deterministic protocol."""
    from qhil.experiments.battery.deployment import DeploySpec, deploy
    from qhil.experiments.battery.training import ChargingRunSpec
    spec = ChargingRunSpec(env="env1", regime="energies", sac={"seed": 0, "total_steps": 56, "hidden": (16, 16),
                                                                "learning_starts": 28},
                           residual="docs/results/grape_env1.json", residual_scale=0.05, run="res")
    summary = spec.execute(tmp_path / "run")
    trained = np.asarray(summary["deterministic"]["protocol"], float)
    grape = np.asarray(__import__("json").load(open("docs/results/grape_env1.json"))["protocol"])
    assert np.all(np.abs(trained - grape) <= 0.05 + 1e-12)           # a correction of at most s
    doc = deploy(DeploySpec(endpoint="statevector", run=tmp_path / "run", shots=0, no_tomography=True,
                            log=tmp_path / "deploy.jsonl", seed=0))
    np.testing.assert_allclose(np.ravel(doc["controls"]), trained, atol=1e-9)


def test_randomised_mismatch_run_records_its_ranges_and_refuses_other_ones_on_resume(tmp_path):
    from qhil.drivers import ValidationError
    from qhil.experiments.battery.training import ChargingRunSpec
    base = dict(env="env1", regime="energies", sac={"seed": 0, "total_steps": 56, "hidden": (16, 16),
                                                     "learning_starts": 28}, n_envs=2, run="dr")
    ranges = {"amplitude_error": 0.08, "rise_time": 0.05, "readout_error": 0.02}
    summary = ChargingRunSpec(**base, mismatch=ranges).execute(tmp_path)
    recorded = summary["config"]["mismatch"]
    assert {k: recorded[k] for k in ranges} == ranges and recorded["frequency_spread"] == 0.0
    assert isinstance(recorded["mismatch_seed"], int)            # resolved from the SAC seed and recorded
    with pytest.raises(ValidationError, match="mismatch"):
        ChargingRunSpec(**base | {"sac": base["sac"] | {"total_steps": 112}},
                        mismatch=ranges | {"amplitude_error": 0.03}).execute(tmp_path)


def test_training_on_a_drifting_emulator_resumes_exactly(tmp_path, monkeypatch):
    """The emulator's frequency drift walks one step per experiment; a checkpoint carries the
    walk (and the backend's generator), so a run resumed by a new process on a new emulator
    of the same seed continues as if never stopped: same episodes, same final policy."""
    from qhil.envs import ENVIRONMENTS, DickeBattery
    from qhil.lab.device_backend import emulator_backend
    battery = DickeBattery(omegas=ENVIRONMENTS["env1"])

    def device():                       # a new process's emulator: the walk starts again at 0
        return emulator_backend(battery, seed=11, imperfections={"frequency_drift": 0.02, "amplitude_error": 0.03})

    def run_spec():
        return spec(sac=sac(total=6 * K, learning_starts=2 * K), run="drift", backend=device(), shots=40, every=7,
                    weight=1.0, residual=GRAPE, residual_scale=0.05)

    straight = _run(monkeypatch, run_spec(), tmp_path / "a")
    with pytest.raises(Crash):
        _run(monkeypatch, run_spec(), tmp_path / "b", crash_at=5)          # checkpoint after episode 4
    blob = torch.load(checkpoint_path(tmp_path / "b", "drift"), weights_only=False)
    walk = blob["backend_state"]["device"]
    assert walk["episodes"] > 0 and np.any(np.asarray(walk["frequency_offsets"]) != 0)
    resumed = _run(monkeypatch, run_spec(), tmp_path / "b")
    a, b = (RunStore(tmp_path / x / "runs.sqlite").episodes("drift") for x in ("a", "b"))
    assert len(a["episode"]) == len(b["episode"]) == 6
    np.testing.assert_array_equal(a["ret"], b["ret"])
    assert json.dumps(straight["deterministic"]) == json.dumps(resumed["deterministic"])   # (NaN: unmeasured steps)


def test_emulator_state_is_checked_when_restored():
    from qhil.envs import ENVIRONMENTS, DickeBattery
    from qhil.lab.device_backend import emulator_backend
    be = emulator_backend(DickeBattery(omegas=ENVIRONMENTS["env1"]), seed=1, imperfections={"frequency_drift": 0.01})
    good = be.state_dict()
    for bad, name in (({}, "backend_state"), ({"rng": good["rng"], "device": {"episodes": 1}}, "device_state"),
                      ({"rng": good["rng"], "device": {**good["device"], "frequency_offsets": [0.0]}},
                       "device_state.frequency_offsets"),
                      ({"rng": {"bit_generator": "nonsense"}}, "backend_state")):
        with pytest.raises(ValidationError) as exc:
            be.load_state_dict(bad)
        assert exc.value.parameter == name
    be.load_state_dict(good)
    assert be.state_dict() == good
