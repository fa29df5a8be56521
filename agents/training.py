"""Shared training machinery for the off-policy agents (SAC now; DDPG and DQN later).

* :func:`train_off_policy` — the loop: warm-up with random actions, one batch of updates
  per vector step, episodes recorded in a :class:`~qhil.agents.runstore.RunStore`,
  checkpoints for resume, a tqdm bar with live figures.
* :func:`save_checkpoint` / :func:`load_checkpoint` — atomic (write, fsync, rename).
* :func:`evaluate` — the one evaluation path, reporting two different numbers:
    - ``deterministic``: the trained policy's deterministic episode (mean action), its
      terminal ergotropy and protocol;
    - ``best_explored``: the best terminal ergotropy among ALL episodes played during
      training (the paper's Table 1 metric, "best value attained"), and its protocol.

An agent plugs in by providing: ``act(obs, deterministic)`` and ``random_action(n)`` in
env units, ``to_normalised(λ)`` (the stored action), ``reward_weights(step)`` (weights of
the env's ``reward_terms``), ``update(batch, step) -> dict``, ``state_dict()`` /
``load_state_dict()``, ``rng`` (numpy Generator) and ``cfg`` with ``batch_size``,
``buffer_size``, ``learning_starts``, ``updates_per_step``, ``total_steps``.

The environment is a vector env with the API of
:class:`~qhil.envs.charging.ChargingVectorEnv` (lock-step episodes of fixed length, info
with ``reward_terms``, ``energy``, ``ergotropy``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .replay import ReplayBuffer
from .runstore import RunStore


@dataclass
class TrainState:
    """Progress that a checkpoint must restore besides the agent and the buffer."""

    step: int = 0                # environment steps taken (all envs)
    episode: int = 0             # episodes finished (all envs)
    best: float = -np.inf        # best terminal ergotropy explored so far
    best_protocol: list[float] = field(default_factory=list)
    best_trajectory: list[float] = field(default_factory=list)
    wall: float = 0.0            # seconds spent training (summed over resumes)
    updates: int = 0


def save_checkpoint(path: str | Path, agent: Any, buffer: ReplayBuffer, state: TrainState,
                    env: Any) -> None:
    """Atomic checkpoint: a crash leaves the previous one intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    blob = {"agent": agent.state_dict(), "buffer": buffer.state_dict(), "state": state.__dict__,
            "env_n_step": env.n_step}
    with open(tmp, "wb") as f:
        torch.save(blob, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, agent: Any, buffer: ReplayBuffer, env: Any) -> TrainState:
    blob = torch.load(path, weights_only=False)
    saved, now = blob["agent"].get("config"), getattr(agent.cfg, "to_dict", lambda: None)()
    diff = {} if saved is None or now is None else {
        k: (saved.get(k), now.get(k)) for k in set(saved) | set(now)
        if saved.get(k) != now.get(k) and k != "total_steps"}          # a run may be extended
    if diff:
        raise ValueError(f"checkpoint {path} was written with other settings (saved, now): {diff}; "
                         "resume with the same options or use another run directory")
    agent.load_state_dict(blob["agent"])
    buffer.load_state_dict(blob["buffer"])
    env.n_step = blob["env_n_step"]
    return TrainState(**blob["state"])


def train_off_policy(agent: Any, env: Any, *, store: RunStore | None = None, run: str = "run",
                     config: dict[str, Any] | None = None, checkpoint: str | Path | None = None,
                     checkpoint_every: int = 200, progress: bool = True,
                     stop: Callable[[TrainState], bool] | None = None) -> TrainState:
    """Train ``agent`` on vector env ``env`` for ``agent.cfg.total_steps`` environment steps.

    store/run:        where episodes go (return, terminal energy and ergotropy, best-so-far)
    checkpoint:       file to resume from (if present) and to write every
                      ``checkpoint_every`` episodes and at the end
    stop:             optional early stop, called after each round of episodes
    Returns the final :class:`TrainState`.

    The env's own reward weight is set to follow the agent's schedule (``cfg.w_mean``,
    ``cfg.w_width``, counted in the same steps), so the logged return is the Eq. (11)
    return in force when each episode was played; the agent itself re-weights the stored
    terms when it samples (see :class:`~qhil.agents.replay.ReplayBuffer`).
    """
    cfg = agent.cfg
    n_envs = env.n_envs
    # np.zeros is lazily committed: a 180k ring costs memory only as it fills
    buffer = ReplayBuffer(cfg.buffer_size, env.obs_dim, agent.act_dim, agent.n_reward_terms)
    state = TrainState()
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, agent, buffer, env)
    if store is not None:
        store.start_run(run, config or {})
        store.truncate(run, state.episode - 1)      # episodes after the checkpoint are replayed
    env.w_mean, env.w_width = getattr(cfg, "w_mean", env.w_mean), getattr(cfg, "w_width", env.w_width)
    env.weight = None if hasattr(cfg, "w_mean") else env.weight
    env.n_step = state.step

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.total_steps, initial=state.step, desc=run, unit="step",
                   mininterval=2.0, dynamic_ncols=True)
    t0, last_ckpt = time.perf_counter(), state.episode
    wall0 = state.wall
    stats: dict[str, float] = {}
    while state.step < cfg.total_steps:
        obs, _ = env.reset()
        ret = np.zeros(n_envs)
        traj = [np.zeros(n_envs)]
        while True:
            warm = state.step < cfg.learning_starts
            lam = agent.random_action(n_envs) if warm else agent.act(obs)
            next_obs, reward, done, trunc, info = env.step(lam[:, 0])
            buffer.add(obs, agent.to_normalised(lam), info["reward_terms"], next_obs,
                       done.astype(np.float32))
            ret += reward
            traj.append(info["ergotropy"])
            obs = next_obs
            state.step += n_envs
            if state.step >= cfg.learning_starts:
                for _ in range(n_envs * cfg.updates_per_step):
                    batch = buffer.sample(cfg.batch_size, agent.rng, agent.reward_weights(state.step))
                    stats = agent.update(batch, state.step)
                    state.updates += 1
            if done.all() or trunc.all():
                break
        # -- the round of episodes is over: record them ---------------------------------
        protocols = env.controls
        traj_arr = np.stack(traj, axis=1)
        rows, new_best = [], None
        for i in range(n_envs):
            erg = float(info["ergotropy"][i])
            if erg > state.best:
                state.best = erg
                state.best_protocol = protocols[i].tolist()
                state.best_trajectory = traj_arr[i].tolist()
                new_best = {"ergotropy": erg, "episode": state.episode, "protocol": state.best_protocol,
                            "trajectory": state.best_trajectory}
            rows.append({"episode": state.episode, "step": state.step, "ret": float(ret[i]),
                         "energy": float(info["energy"][i]), "ergotropy": erg, "best": state.best,
                         "weight": float(info["weight"][i])})
            state.episode += 1
        state.wall = wall0 + time.perf_counter() - t0
        if store is not None:
            store.log_episodes(run, rows, new_best)
        if bar is not None:
            bar.update(n_envs * env.n_steps)
            bar.set_postfix(ep=state.episode, ret=f"{rows[-1]['ret']:.3f}", erg=f"{rows[-1]['ergotropy']:.3f}",
                            best=f"{state.best:.4f}", w=f"{rows[-1]['weight']:.2f}",
                            alpha=f"{stats.get('alpha', float('nan')):.2e}", refresh=False)
        if checkpoint is not None and state.episode - last_ckpt >= checkpoint_every:
            save_checkpoint(checkpoint, agent, buffer, state, env)
            last_ckpt = state.episode
        if stop is not None and stop(state):
            break
    if bar is not None:
        bar.close()
    if checkpoint is not None:
        save_checkpoint(checkpoint, agent, buffer, state, env)
    return state


def deterministic_episode(agent: Any, env: Any) -> dict[str, Any]:
    """Play the policy's mean action for one episode on a (fresh) vector env with n_envs = 1."""
    obs, info = env.reset()
    traj = [float(info["ergotropy"][0])]
    energy = [float(info["energy"][0])]
    while True:
        lam = agent.act(obs, deterministic=True)
        obs, _, done, trunc, info = env.step(lam[:, 0])
        traj.append(float(info["ergotropy"][0]))
        energy.append(float(info["energy"][0]))
        if done.all() or trunc.all():
            break
    return {"ergotropy": traj[-1], "energy": energy[-1], "protocol": env.controls[0].tolist(),
            "trajectory": traj}


def evaluate(agent: Any, env: Any, state: TrainState) -> dict[str, Any]:
    """Both figures of a trained agent, labelled:

    ``deterministic``  — the policy's deterministic episode (what the agent would play now);
    ``best_explored``  — the best terminal ergotropy of any episode played in training
                         (Table 1's metric; stochastic and warm-up episodes included).
    """
    return {"deterministic": deterministic_episode(agent, env),
            "best_explored": {"ergotropy": state.best, "protocol": state.best_protocol,
                              "trajectory": state.best_trajectory}}
