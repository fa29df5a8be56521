"""Resume after a real crash (issue 16): a training process is SIGKILLed between two
checkpoints; the same command again continues from the last (wall-time) checkpoint, the run
store drops the episodes played after it and keeps the checkpoint's own best explored
result (Table 1's metric), and the run ends where an uninterrupted one ends."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qhil.agents.runstore import RunStore
from qhil.agents.sac import SAC, SACConfig
from qhil.agents.training import train_off_policy
from qhil.drivers import ValidationError
from qhil.envs import make_charging_env

RUN = "env1/energies/seed2"
#: One episode = 28 env steps (n_envs = 1).
EPISODE = 28


def make_agent(total_steps: int):
    """A small SAC on Env1 (energies regime): the same in the child and here."""
    env = make_charging_env("env1", "energies", w_mean=300, w_width=150)      # the env owns the weight
    cfg = SACConfig(hidden=(32, 32), batch_size=32, total_steps=total_steps, learning_starts=2 * EPISODE,
                    buffer_size=4000, entropy_decay=600, seed=2, precision="fp32")
    return SAC(env.obs_dim, env.action_low, env.action_high, cfg), env


_CHILD = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_resume_crash import RUN, make_agent
from qhil.agents.runstore import RunStore
from qhil.agents.training import train_off_policy
d = Path(sys.argv[1])
agent, env = make_agent(10**7)                          # runs until killed
train_off_policy(agent, env, store=RunStore(d / "runs.sqlite"), run=RUN, checkpoint=d / "run.pt",
                 checkpoint_every=10**6, checkpoint_seconds=float(sys.argv[2]), progress=False)
"""


def _checkpoint_state(path: Path) -> dict:
    return torch.load(path, weights_only=False)["state"]


def _wait(what: str, cond, proc: subprocess.Popen, timeout: float = 180.0):
    """Poll ``cond`` (every 20 ms) until it returns a true value; fail if the child dies or
    ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"training process exited ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _episodes_logged(store_path: Path) -> int:
    if not store_path.exists():
        return 0
    s = RunStore(store_path)
    try:
        return len(s.episodes(RUN)["episode"])
    finally:
        s.close()


def _counting_updates(agent) -> list[int]:
    calls = [0]
    update = agent.update

    def counted(batch, step):
        calls[0] += 1
        return update(batch, step)
    agent.update = counted
    return calls


def test_sigkill_between_checkpoints_resumes_from_the_wall_time_checkpoint(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    ckpt, store_path = d / "run.pt", d / "runs.sqlite"
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(d), "3", str(Path(__file__).parent)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env_vars)
    try:
        # the first checkpoint can only come from the wall-time rule (checkpoint_every = 10^6)
        first = _wait("the first wall-time checkpoint", lambda: ckpt.exists() and _checkpoint_state(ckpt), proc)
        assert first["episode"] >= 1
        _wait("episodes after it", lambda: _episodes_logged(store_path) >= first["episode"] + 2, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = time.time()
    assert proc.returncode == -signal.SIGKILL
    saved = _checkpoint_state(ckpt)                       # the last checkpoint before the kill
    store = RunStore(store_path)
    logged = len(store.episodes(RUN)["episode"])
    assert store.status(RUN) == "running"
    assert saved["episode"] < logged, "the kill must fall between two checkpoints"
    assert 0 < saved["episode"] and saved["step"] == EPISODE * saved["episode"]

    # 1. the same command with nothing left to do: the store is cut back to the checkpoint
    agent, env = make_agent(saved["step"])
    state = train_off_policy(agent, env, store=store, run=RUN, checkpoint=ckpt, progress=False)
    kept = store.episodes(RUN)
    assert kept["episode"] == list(range(saved["episode"])) and state.episode == saved["episode"]
    best = store.best(RUN)
    assert best is not None and best["ergotropy"] == max(kept["ergotropy"]) == state.best == saved["best"]
    assert best["protocol"] == pytest.approx(saved["best_protocol"], abs=0) and len(best["protocol"]) == 28
    assert kept["ergotropy"][best["episode"]] == best["ergotropy"]

    # 2. resumed to a few episodes past the kill
    total = EPISODE * (logged + 4)
    agent, env = make_agent(total)
    updates = _counting_updates(agent)
    state = train_off_policy(agent, env, store=store, run=RUN, checkpoint=ckpt, progress=False)
    # (a) from the checkpoint, not from zero: only the updates after it ran here, and the
    # episodes before it keep the rows the killed process wrote
    assert state.step == total and updates[0] == state.updates - saved["updates"] > 0
    walls = [w for (w,) in store._db.execute("SELECT wall FROM episodes WHERE run=? ORDER BY episode", (RUN,))]
    assert max(walls[:saved["episode"]]) < killed_at < min(walls[saved["episode"]:])
    assert state.wall > saved["wall"]                   # wall time summed over the two processes
    # (b) the best explored is the max over the episodes the store keeps, with its protocol
    ep = store.episodes(RUN)
    assert ep["episode"] == list(range(logged + 4))
    best = store.best(RUN)
    assert best["ergotropy"] == max(ep["ergotropy"]) == state.best
    assert best["protocol"] == state.best_protocol and ep["ergotropy"][best["episode"]] == best["ergotropy"]
    assert ep["best"] == list(np.maximum.accumulate(ep["ergotropy"]))

    # (c) exactly the uninterrupted run with the same seed (as tests/test_sac.py promises)
    straight_agent, env = make_agent(total)
    straight_store = RunStore(tmp_path / "straight.sqlite")
    straight = train_off_policy(straight_agent, env, store=straight_store, run=RUN, checkpoint=tmp_path / "s.pt",
                                progress=False)
    s = straight_store.episodes(RUN)
    np.testing.assert_allclose(ep["ergotropy"], s["ergotropy"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ep["ret"], s["ret"], rtol=0, atol=1e-12)
    assert (straight.best, straight.best_protocol, straight.updates) == (state.best, state.best_protocol,
                                                                        state.updates)
    for p, q in zip(straight_agent.actor.parameters(), agent.actor.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_resume_restores_the_checkpoints_best_when_a_later_best_is_dropped(tmp_path):
    """The store's best row came from an episode after the checkpoint (a crashed process
    logged it): the resume drops it AND puts the checkpoint's best back, not nothing."""
    store = RunStore(tmp_path / "runs.sqlite")
    agent, env = make_agent(4 * EPISODE)
    state = train_off_policy(agent, env, store=store, run=RUN, checkpoint=tmp_path / "c.pt", progress=False)
    assert state.episode == 4 and store.best(RUN)["ergotropy"] == state.best
    # what the killed process left: two more episodes, the second a new best
    rows = [{"episode": e, "step": EPISODE * (e + 1), "ret": 0.0, "energy": 9.0, "ergotropy": 9.0, "best": 9.0,
             "weight": 1.0} for e in (4, 5)]
    store.log_episodes(RUN, rows, {"ergotropy": 9.0, "episode": 5, "protocol": [0.1] * 28,
                                   "trajectory": [0.0] * 29})
    agent, env = make_agent(4 * EPISODE)               # the same command: nothing left to train
    again = train_off_policy(agent, env, store=store, run=RUN, checkpoint=tmp_path / "c.pt", progress=False)
    assert again.best == state.best and again.best_episode == state.best_episode
    best = store.best(RUN)
    assert best is not None, "the resume deleted the best explored result"
    assert (best["ergotropy"], best["episode"], best["protocol"]) == (state.best, state.best_episode,
                                                                     state.best_protocol)
    assert max(store.episodes(RUN)["ergotropy"]) == best["ergotropy"]


def test_truncate_semantics(tmp_path):
    store = RunStore(tmp_path / "t.sqlite")
    store.start_run("r", {})
    rows = [{"episode": e, "step": e, "ret": 0.0, "energy": 0.0, "ergotropy": float(e % 4), "best": 0.0,
             "weight": None} for e in range(8)]
    store.log_episodes("r", rows, {"ergotropy": 3.0, "episode": 7, "protocol": [0.2], "trajectory": [0.0, 3.0]})
    store.truncate("r", 5, {"ergotropy": 3.0, "episode": 3, "protocol": [0.1], "trajectory": [0.0, 3.0]})
    assert store.episodes("r")["episode"] == list(range(6))
    assert store.best("r") == {"objective": 3.0, "ergotropy": 3.0, "episode": 3, "protocol": [0.1],
                               "trajectory": [0.0, 3.0]}
    # a checkpoint from before ``best_episode`` was kept: the first kept episode with its value
    store.truncate("r", 4, {"ergotropy": 2.0, "episode": None, "protocol": [0.3], "trajectory": [0.0, 2.0]})
    assert store.best("r")["episode"] == 2 and store.best("r")["protocol"] == [0.3]
    store.truncate("r", -1)                             # a fresh start: no best survives
    assert store.episodes("r")["episode"] == [] and store.best("r") is None


def test_checkpoint_intervals_are_validated_before_any_work(tmp_path):
    agent, env = make_agent(EPISODE)
    for kw, name in (({"checkpoint_seconds": 0}, "checkpoint_seconds"),
                     ({"checkpoint_seconds": -1.0}, "checkpoint_seconds"),
                     ({"checkpoint_seconds": math.nan}, "checkpoint_seconds"),
                     ({"checkpoint_seconds": math.inf}, "checkpoint_seconds"),
                     ({"checkpoint_seconds": "60"}, "checkpoint_seconds"),
                     ({"checkpoint_every": 0}, "checkpoint_every"),
                     ({"checkpoint_every": 2.5}, "checkpoint_every")):
        with pytest.raises(ValidationError, match=name) as err:
            train_off_policy(agent, env, store=RunStore(tmp_path / "v.sqlite"), run="v",
                             checkpoint=tmp_path / "v.pt", progress=False, **kw)
        assert err.value.parameter == name and err.value.allowed
    assert not (tmp_path / "v.pt").exists() and agent.n_updates == 0
    assert RunStore(tmp_path / "v.sqlite").runs() == {}


def _fake_clock_run(monkeypatch, tmp_path, episodes, save_cost, **kw):
    """Train ``episodes`` episodes on a fake clock: each round of episodes takes 1 s, each
    checkpoint ``save_cost`` s; return the episode counts at which checkpoints were saved."""
    import qhil.agents.training as training
    now = [0.0]
    monkeypatch.setattr(training, "_now", lambda: now[0])
    saved: list[int] = []
    real = training.save_checkpoint

    def save(path, agent, buffer, state, env):
        saved.append(state.episode)
        now[0] += save_cost
        real(path, agent, buffer, state, env)
    monkeypatch.setattr(training, "save_checkpoint", save)

    def tick(state):
        now[0] += 1.0
        return False
    agent, env = make_agent(episodes * EPISODE)
    train_off_policy(agent, env, checkpoint=tmp_path / f"w{len(list(tmp_path.iterdir()))}.pt", stop=tick,
                     progress=False, **kw)
    return saved


def test_wall_time_checkpoints_between_episode_checkpoints(tmp_path, monkeypatch):
    """With checkpoint_every far away the clock alone triggers checkpoints; a slow save
    stretches the interval to 20× its duration; None turns the clock off."""
    every = dict(checkpoint_every=10**6)
    assert _fake_clock_run(monkeypatch, tmp_path, 5, 0.0, checkpoint_seconds=2.0, **every) == [3, 5, 5]
    assert _fake_clock_run(monkeypatch, tmp_path, 4, 0.0, checkpoint_seconds=1.0, **every) == [2, 3, 4, 4]
    # a save of 0.5 s: the next one 10 s later, not 1 s
    assert _fake_clock_run(monkeypatch, tmp_path, 14, 0.5, checkpoint_seconds=1.0, **every) == [2, 12, 14]
    assert _fake_clock_run(monkeypatch, tmp_path, 4, 0.0, checkpoint_seconds=None, **every) == [4]
    # both rules: every 3 episodes, and by the clock every 5 s
    assert _fake_clock_run(monkeypatch, tmp_path, 7, 0.0, checkpoint_seconds=5.0, checkpoint_every=3) == [3, 6, 7]
