"""SAC (seed 000, Sec. III B) and the shared training machinery: replay, run store, checkpoints."""
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from qhil.agents.replay import ReplayBuffer
from qhil.agents.runstore import RunStore
from qhil.agents.sac import SAC, SACConfig
from qhil.agents.training import evaluate, train_off_policy
from qhil.envs import make_charging_env


def small_agent(obs_dim=8, seed=0, **kw):
    cfg = SACConfig(hidden=(32, 32), batch_size=16, seed=seed, **kw)
    return SAC(obs_dim, -0.3, 0.2, cfg)


def test_actions_respect_the_bounds_eq14():
    agent = small_agent()
    with torch.no_grad():                       # push the mean far out: tanh saturates at the bounds
        agent.actor.mu.bias.fill_(50.0)
    obs = np.random.default_rng(0).normal(size=(500, 8)) * 10
    for det in (True, False):
        lam = agent.act(obs, deterministic=det)
        assert lam.shape == (500, 1)
        assert (lam >= -0.3).all() and (lam <= 0.2).all()
        assert lam.max() == pytest.approx(0.2, abs=1e-6)      # tanh → 1 maps to λ_max
    r = agent.random_action(1000)
    assert r.min() >= -0.3 and r.max() <= 0.2 and r.min() < -0.25 and r.max() > 0.15
    np.testing.assert_allclose(agent.to_env(agent.to_normalised(np.array([-0.3, 0.0, 0.2]))), [-0.3, 0.0, 0.2])
    assert agent.to_env(np.array([-1.0, 0.0, 1.0])).tolist() == pytest.approx([-0.3, -0.05, 0.2])


def test_log_prob_is_the_squashed_gaussian_density():
    agent = small_agent()
    obs = torch.zeros(20000, 8)
    torch.manual_seed(1)
    with torch.no_grad():
        a, logp = agent.actor.sample(obs)
    # E[−log π] is the entropy; the density integrates to one on [−1, 1]: compare a histogram
    hist, edges = np.histogram(a[:, 0].numpy(), bins=40, range=(-1, 1), density=True)
    mid = torch.tensor(0.5 * (edges[1:] + edges[:-1]), dtype=torch.float32)
    with torch.no_grad():
        mu, log_std = agent.actor(obs[:1])
    pre = torch.atanh(mid)
    dens = torch.exp(-0.5 * ((pre - mu[0, 0]) / log_std.exp()[0, 0]) ** 2) / (
        log_std.exp()[0, 0] * np.sqrt(2 * np.pi)) / (1 - mid ** 2)
    np.testing.assert_allclose(hist, dens.numpy(), rtol=0.1, atol=0.02)
    assert torch.isfinite(logp).all()


def test_critic_target_is_the_clipped_double_q_eq16():
    agent = small_agent(gamma=0.9)
    rng = np.random.default_rng(0)
    next_obs = torch.tensor(rng.normal(size=(64, 8)), dtype=torch.float32)
    rewards = torch.tensor(rng.normal(size=64), dtype=torch.float32)
    dones = torch.tensor((rng.random(64) < 0.3).astype(np.float32))
    with torch.no_grad():                        # make the two target critics differ
        for p in agent.q2_targ.parameters():
            p.add_(0.3 * torch.randn_like(p))
    torch.manual_seed(5)
    y = agent.critic_target(rewards, next_obs, dones)
    torch.manual_seed(5)
    with torch.no_grad():
        a2, logp2 = agent.actor.sample(next_obs)
        q1, q2 = agent.q1_targ(next_obs, a2), agent.q2_targ(next_obs, a2)
        assert not torch.allclose(q1, q2)
        manual = rewards + 0.9 * (1 - dones) * (torch.minimum(q1, q2) - agent.alpha * logp2)
    torch.testing.assert_close(y, manual)
    assert torch.allclose(y[dones == 1], rewards[dones == 1])


def test_polyak_and_temperature_move_the_right_way():
    agent = small_agent(polyak=0.9, entropy_start=5.0, entropy_decay=1e9)   # unreachably high target entropy
    buf = ReplayBuffer(100, 8, 1, 2)
    rng = np.random.default_rng(0)
    buf.add(rng.normal(size=(100, 8)), rng.uniform(-1, 1, (100, 1)), rng.normal(size=(100, 2)),
            rng.normal(size=(100, 8)), np.zeros(100))
    t0 = [p.clone() for p in agent.q1_targ.parameters()]
    alpha0 = agent.alpha
    agent.update(buf.sample(16, rng, np.array([1.0, 0.0], np.float32)), 0)
    for p, pt, p0 in zip(agent.q1.parameters(), agent.q1_targ.parameters(), t0):
        torch.testing.assert_close(pt, 0.9 * p0 + 0.1 * p)
    assert agent.alpha > alpha0                  # entropy below target → α grows (Eq. 18)


def test_reward_weights_are_applied_when_a_batch_is_sampled():
    """Stored [ΔE, Δℰ] are combined with the env's weights of the step at which a batch is drawn."""
    buf = ReplayBuffer(10, 3, 1, 2)
    terms = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0]])
    buf.add(np.zeros((3, 3)), np.zeros((3, 1)), terms, np.zeros((3, 3)), np.zeros(3))
    env = make_charging_env("env1", "energies", w_mean=100, w_width=10)     # the env owns the weight
    for step in (0, 100, 200, 10_000):
        w = env.reward_weights(step)
        assert w[0] == pytest.approx(1 / (1 + np.exp(min((step - 100) / 10, 700))), rel=1e-6, abs=1e-30)
        assert w.sum() == pytest.approx(1.0)
        batch = buf.sample(50, np.random.default_rng(step), w)
        drawn = np.random.default_rng(step).integers(0, 3, 50)     # the rows the buffer drew
        np.testing.assert_allclose(batch["rewards"], terms[drawn] @ w, rtol=1e-6)
    # the same stored transitions: energy early, ergotropy late
    early = buf.sample(200, np.random.default_rng(0), env.reward_weights(0))["rewards"]
    late = buf.sample(200, np.random.default_rng(0), env.reward_weights(10_000))["rewards"]
    drawn = np.random.default_rng(0).integers(0, 3, 200)
    np.testing.assert_allclose(early, terms[drawn, 0], atol=1e-4)
    np.testing.assert_allclose(late, terms[drawn, 1], atol=1e-6)


def test_replay_ring_wraps_and_round_trips():
    buf = ReplayBuffer(5, 2, 1, 1)
    for i in range(7):
        buf.add(np.full((1, 2), i), [[0.0]], [[i]], np.full((1, 2), i + 1), [0.0])
    assert len(buf) == 5 and sorted(buf.terms[:, 0].tolist()) == [2, 3, 4, 5, 6]
    other = ReplayBuffer(5, 2, 1, 1)
    other.load_state_dict(buf.state_dict())
    np.testing.assert_array_equal(other.obs, buf.obs)
    assert other.pos == buf.pos


def _short_config(total, seed=0, **kw):
    return SACConfig(hidden=(64, 64), batch_size=64, total_steps=total, learning_starts=280,
                     buffer_size=500, entropy_decay=600, seed=seed, **kw)


#: The reward weight of the short runs (Eq. 12, in env steps): the env's.
SHORT_WEIGHT = dict(w_mean=300, w_width=150)


def test_sac_learns_to_charge_better_than_random(tmp_path):
    env = make_charging_env("env1", "full_state", **SHORT_WEIGHT)
    cfg = _short_config(1680, seed=3)
    agent = SAC(env.obs_dim, env.action_low, env.action_high, cfg)
    state = train_off_policy(agent, env, store=RunStore(tmp_path / "r.sqlite"), run="learn", progress=False)
    result = evaluate(agent, make_charging_env("env1", "full_state", weight=0.0), state)
    # a random policy's terminal ergotropy, on the same batched driver
    rnd = make_charging_env("env1", "energies", n_envs=64, weight=0.0)
    rnd.reset()
    rng = np.random.default_rng(0)
    for _ in range(28):
        _, _, _, _, info = rnd.step(rng.uniform(-0.3, 0.3, 64))
    random_mean = float(info["ergotropy"].mean())
    assert result["deterministic"]["ergotropy"] > random_mean + 0.5
    assert result["best_explored"]["ergotropy"] >= max(info["ergotropy"].max() - 0.5, random_mean + 0.5)


def test_resume_from_checkpoint_reproduces_the_run(tmp_path):
    def run(total, store, ckpt):
        env = make_charging_env("env1", "energies", **SHORT_WEIGHT)
        agent = SAC(env.obs_dim, env.action_low, env.action_high, _short_config(total, seed=1))
        train_off_policy(agent, env, store=store, run="r", checkpoint=ckpt, checkpoint_every=2, progress=False)
        return agent
    straight = run(560, RunStore(tmp_path / "a.sqlite"), tmp_path / "a.pt")
    store_b = RunStore(tmp_path / "b.sqlite")
    run(336, store_b, tmp_path / "b.pt")                    # "interrupted" after 12 episodes
    resumed = run(560, store_b, tmp_path / "b.pt")          # same command again
    a = RunStore(tmp_path / "a.sqlite").episodes("r")
    b = store_b.episodes("r")
    assert len(a["episode"]) == len(b["episode"]) == 20
    np.testing.assert_allclose(a["ergotropy"], b["ergotropy"], atol=1e-12)
    np.testing.assert_allclose(a["ret"], b["ret"], atol=1e-12)
    for p, q in zip(straight.actor.parameters(), resumed.actor.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    env = make_charging_env("env1", "energies", **SHORT_WEIGHT)  # other settings: refused, not mixed
    agent = SAC(env.obs_dim, env.action_low, env.action_high, _short_config(560, seed=1, gamma=0.9))
    with pytest.raises(ValueError, match="other settings"):
        train_off_policy(agent, env, checkpoint=tmp_path / "b.pt", progress=False)
    env = make_charging_env("env1", "energies", weight=0.0)      # another reward weight: refused too
    agent = SAC(env.obs_dim, env.action_low, env.action_high, _short_config(560, seed=1))
    with pytest.raises(ValueError, match="reward weight"):
        train_off_policy(agent, env, checkpoint=tmp_path / "b.pt", progress=False)


_KILLER = r"""
import os, signal, sys
from qhil.agents.runstore import RunStore
s = RunStore(sys.argv[1])
s._db.execute("BEGIN IMMEDIATE")
s._db.execute("INSERT INTO episodes VALUES ('r', 99, 9, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0)")
s._db.execute("UPDATE episodes SET ergotropy = -1 WHERE run = 'r'")
os.kill(os.getpid(), signal.SIGKILL)     # dies mid-transaction
"""


def test_run_store_survives_an_interrupted_write(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    store.start_run("r", {"a": 1})
    rows = [{"episode": i, "step": 28 * (i + 1), "ret": 0.1 * i, "energy": 1.0, "ergotropy": 0.5 + i,
             "best": 0.5 + i, "weight": 1.0} for i in range(3)]
    store.log_episodes("r", rows, {"ergotropy": 2.5, "episode": 2, "protocol": [0.3] * 28, "trajectory": [0.0] * 29})
    store.close()
    p = subprocess.run([sys.executable, "-c", _KILLER, str(path)])
    assert p.returncode == -signal.SIGKILL
    again = RunStore(path)
    assert again._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ep = again.episodes("r")
    assert ep["episode"] == [0, 1, 2] and ep["ergotropy"] == [0.5, 1.5, 2.5]
    assert again.best("r")["ergotropy"] == 2.5
    again.log_episodes("r", [{**rows[0], "episode": 3}])     # and it is writable again
    assert len(again.episodes("r")["episode"]) == 4


def test_config_from_file_and_scaling(tmp_path):
    f = tmp_path / "sac.json"
    f.write_text('{"hidden": [128, 64], "gamma": 0.99, "total_steps": 50000}')
    cfg = SACConfig.from_file(f, lr=3e-4)
    assert cfg.hidden == (128, 64) and cfg.gamma == 0.99 and cfg.lr == 3e-4 and cfg.batch_size == 256
    s = cfg.scaled()
    assert cfg.schedule_scale == pytest.approx(0.5) and s.entropy_decay == pytest.approx(15_000)
    assert s.scaled().entropy_decay == pytest.approx(15_000) and s.schedule_scale == 1.0   # idempotent
    assert cfg.target_entropy(0) == pytest.approx(0.72) and cfg.target_entropy(10**9) == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="unknown"):
        SACConfig.from_dict({"hiden": [1]})


@pytest.mark.parametrize("n_envs, warm, per_step, steps, expected", [
    (1, 28, 1, 112, 112 - 28 + 1),           # one update per env step from the warm-up's last step
    (4, 56, 0.25, 560, (560 - 56 + 4) // 4),  # 4 batteries, one update per round of 4 env steps
    (4, 56, 2, 224, 2 * (224 - 56 + 4)),
    (1, 0, 1, 56, 56),                        # no warm-up: one update after each step
    (4, 0, 1, 112, 112),
    (4, 30, 1, 112, 112 - 32 + 4),            # warm-up of 30 steps: updates from step 32 on
])
def test_updates_per_step_counts_updates_per_environment_step(n_envs, warm, per_step, steps, expected):
    env = make_charging_env("env1", "energies", n_envs=n_envs)
    cfg = SACConfig(hidden=(8, 8), batch_size=8, total_steps=steps, learning_starts=warm, updates_per_step=per_step)
    agent = SAC(env.obs_dim, env.action_low, env.action_high, cfg)
    state = train_off_policy(agent, env, progress=False)
    assert state.step == steps and state.updates == expected
    for bad in (0, -1, "1", float("nan")):
        with pytest.raises(ValueError, match="updates_per_step"):
            SACConfig(updates_per_step=bad)


def test_train_command_writes_a_labelled_summary_and_resumes(tmp_path):
    import json

    from qhil.lab.cli import main
    argv = ["train", "--env", "env2", "--regime", "energies", "--total-steps", "84", "--learning-starts", "28",
            "--hidden", "8,8", "--batch-size", "8", "--seed", "4", "--run-dir", str(tmp_path),
            "--no-progress", "--json", str(tmp_path / "s.json")]
    assert main(argv) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert (s["run"], s["steps"], s["episodes"], s["seed"]) == ("env2/energies/seed4", 84, 3, 4)
    assert s["config"]["sac"]["hidden"] == [8, 8] and "w_mean" not in s["config"]["sac"]
    assert s["config"]["reward_weight"]["w_mean"] == pytest.approx(40_000 * 84 / 1e5)
    store = RunStore(tmp_path / "runs.sqlite")
    assert store.status("env2/energies/seed4") == "done"
    assert max(store.episodes("env2/energies/seed4")["ergotropy"]) == pytest.approx(s["best_explored"]["ergotropy"])
    assert main(argv) == 0                                  # resumes from the final checkpoint: no new steps
    assert json.loads((tmp_path / "s.json").read_text())["steps"] == 84
    assert len(store.episodes("env2/energies/seed4")["episode"]) == 3


@pytest.mark.slow
def test_train_and_reproduce_commands(tmp_path):
    """`qhil train` writes a labelled summary; `qhil reproduce table1` runs seeds as processes,
    resumes (skips finished runs) and writes the CSV and both figures."""
    import csv
    import json

    from qhil.lab.cli import main
    out = tmp_path / "results"
    out.mkdir()
    (out / "grape_env1.json").write_text(json.dumps({"ergotropy": 4.0, "protocol": [0.3] * 28, "tau": 5.6,
                                                       "n_steps": 28}))       # a stand-in ceiling file
    train_args = "--learning-starts 28 --hidden 8,8 --batch-size 8"
    argv = ["reproduce", "table1", "--envs", "env1", "--regimes", "energies,second_order", "--seeds", "2",
            "--total-steps", "84", "--jobs", "2", "--train-args", train_args,
            "--work-dir", str(tmp_path / "work"), "--out-dir", str(out)]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(out / "table1.csv")))
    assert [r["regime"] for r in rows] == ["energies", "second_order"]
    assert list(rows[0]) == ["env", "regime", "mean", "ci_half_width", "n_seeds", "grape_ceiling",
                             "deterministic_mean"]
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "work" / "summaries").glob("*.json"))]
    assert len(summaries) == 4
    for s in summaries:
        assert s["steps"] == 84 and s["episodes"] == 3
        for key in ("best_explored", "deterministic"):     # each figure is what its protocol gives, replayed
            from qhil.drivers import Experiment, MeasurementSchedule, create_backend
            from qhil.envs import ENV1, DickeBattery
            [res] = create_backend("statevector").run(Experiment(DickeBattery(omegas=ENV1), s[key]["protocol"], 0.2,
                                                                 MeasurementSchedule(final_only=True)))
            assert s[key]["ergotropy"] == pytest.approx(float(DickeBattery(omegas=ENV1).ergotropy(res.qubit_density[-1])), abs=1e-9)
        assert len(s["deterministic"]["protocol"]) == 28
    energies = [s["best_explored"]["ergotropy"] for s in summaries if s["regime"] == "energies"]
    assert float(rows[0]["mean"]) == pytest.approx(np.mean(energies), abs=1e-6)
    assert int(rows[0]["n_seeds"]) == 2 and float(rows[0]["grape_ceiling"]) == 4.0
    assert (out / "fig1_learning_curves.png").stat().st_size > 1000
    assert (out / "fig2_best_protocols.png").stat().st_size > 1000
    mtime = (tmp_path / "work" / "summaries" / "env1_energies_seed0.json").stat().st_mtime
    assert main(argv) == 0                                       # resumed: nothing re-run
    assert (tmp_path / "work" / "summaries" / "env1_energies_seed0.json").stat().st_mtime == mtime


def test_bf16_updates_track_fp32_and_bad_precision_is_refused():
    """precision="bf16": same update in bfloat16 layers; losses agree with fp32 to a few % (or 0.01 absolute, the bf16 rounding of α log π ≈ 0.2)."""
    with pytest.raises(ValueError, match="precision"):
        SACConfig(precision="fp16")
    rng = np.random.default_rng(1)
    B = 256
    batch = {"obs": rng.normal(size=(B, 6)).astype(np.float32),
             "actions": rng.uniform(-1, 1, (B, 1)).astype(np.float32),
             "rewards": rng.normal(size=B).astype(np.float32),
             "next_obs": rng.normal(size=(B, 6)).astype(np.float32), "dones": np.zeros(B, np.float32)}
    stats = {}
    for precision in ("fp32", "bf16"):
        agent = SAC(6, -0.3, 0.3, SACConfig(seed=3, precision=precision))
        stats[precision] = agent.update(batch, 0)
        assert all(p.dtype == torch.float32 for p in agent.actor.parameters())
    for key in ("q_loss", "actor_loss", "entropy"):
        assert stats["bf16"][key] == pytest.approx(stats["fp32"][key], rel=3e-2, abs=1e-2)
    assert stats["bf16"]["q_loss"] != stats["fp32"]["q_loss"]      # bf16 really ran


def test_checkpoint_from_before_a_new_option_resumes_with_its_default(tmp_path):
    """A checkpoint whose saved config lacks an option added later (here ``precision``)
    resumes when the option is at its default, and is refused when it is not."""
    from qhil.agents.training import load_checkpoint, save_checkpoint, TrainState
    env = make_charging_env("env1", "energies")
    agent = SAC(env.obs_dim, env.action_low, env.action_high, SACConfig(seed=0))
    buf = ReplayBuffer(10, env.obs_dim, 1, 2)
    path = tmp_path / "old.pt"
    save_checkpoint(path, agent, buf, TrainState(step=7), env)
    blob = torch.load(path, weights_only=False)
    del blob["agent"]["config"]["precision"]                 # as written before the option existed
    torch.save(blob, path)
    assert load_checkpoint(path, agent, buf, env).step == 7
    other = SAC(env.obs_dim, env.action_low, env.action_high, SACConfig(seed=0, precision="bf16"))
    with pytest.raises(ValueError, match="precision"):
        load_checkpoint(path, other, buf, env)
