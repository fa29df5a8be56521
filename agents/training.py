"""Shared training machinery for every agent: SAC on the charging battery (seed 000); DQN,
Bootstrapped DQN, DDPG, PPO and the DQN+PPO ensemble on the supply chain (seed 004).

* :func:`train` — the one loop skeleton: episodes of an environment *adapter*, actions from
  the agent (uniformly random during an off-policy warm-up), transitions into the one
  :class:`~qhil.agents.replay.ReplayBuffer` and replay updates for off-policy agents, an
  ``observe`` hook after every step (ε decay, PPO's rollout and its update when full, the
  ensemble's bookkeeping), episodes recorded in a :class:`~qhil.agents.runstore.RunStore`,
  atomic checkpoints for resume (every ``checkpoint_every`` episodes and every
  ``checkpoint_seconds`` of wall time), a tqdm bar with live figures.
* :func:`train_off_policy` — the charging vector env's case of :func:`train` (unchanged API).
* :class:`ChargingEpisodes` / :class:`GymEpisodes` — the two adapters: a
  :class:`~qhil.envs.charging.ChargingVectorEnv` (lock-step episodes, ergotropy figures) and
  any single gymnasium env with ``info["reward_terms"]`` (the supply chain: fidelity figures).
* :func:`save_checkpoint` / :func:`load_checkpoint` — atomic (write, fsync, rename).
* :func:`evaluate` — the one evaluation path. On the charging env it reports two numbers:
    - ``deterministic``: the trained policy's deterministic episode (mean action), its
      terminal ergotropy and protocol;
    - ``best_explored``: the best terminal ergotropy among ALL episodes played during
      training (the paper's Table 1 metric, "best value attained"), and its protocol.
  On a gymnasium env (the supply chain) it plays the deterministic policy on given seeds
  and returns the mean return and the env's figures per episode.

An agent plugs in through the protocols of :mod:`qhil.agents.protocols` (checked with
``isinstance``, a clear ValidationError where one is missing): every :class:`Agent` has
``act``, ``state_dict`` / ``load_state_dict``, ``rng`` and ``cfg`` (``total_steps``); an
:class:`OffPolicyAgent` adds ``act_dim``, ``random_action``, ``to_normalised``, ``update`` and
``cfg.batch_size``, ``buffer_size``, ``learning_starts``, ``updates_per_step``; an
:class:`Observer` is told of every step (on-policy agents learn there); an
:class:`EpisodeAware` agent hears ``begin_episode()``. The weights of ``info["reward_terms"]``
are the env's (the charging env's w of Eq. 11, the supply chain's α of Eq. 45;
:class:`RewardWeighted`), else the agent's; the loop gives them to ``observe`` too. The figures recorded are those the env declares (charging:
``figures``/``objective``; gymnasium envs: ``episode_figures``, or ``info["figures"]``).

Per round of episodes the loop also records the updates' statistics (losses, α, entropy, Q
values, … as the agent reports them; their mean over the round) in the run store
(:meth:`RunStore.log_updates`) and, with ``tensorboard=DIR``, as TensorBoard scalars.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch

from qhil.drivers import ValidationError

from .protocols import (Configured, EpisodeAware, MixtureAgent, Observer, OffPolicyAgent,
                        ReportsPrecision, RewardWeighted, check_agent, figures_of)
from .replay import ReplayBuffer
from .runstore import RunStore

#: Default wall-time interval between checkpoints (seconds), besides every ``checkpoint_every`` episodes.
CHECKPOINT_SECONDS = 60.0


@dataclass
class TrainState:
    """Progress that a checkpoint must restore besides the agent and the buffer."""

    step: int = 0                # environment steps taken (all envs)
    episode: int = 0             # episodes finished (all envs)
    best: float = -np.inf        # best objective so far: terminal ergotropy (charging) / return (gym)
    best_protocol: list[float] = field(default_factory=list)
    best_trajectory: list[float] = field(default_factory=list)
    best_episode: int = -1       # the episode that set ``best`` (-1: none, or a checkpoint older than this field)
    wall: float = 0.0            # seconds spent training (summed over resumes)
    updates: int = 0


def save_checkpoint(path: str | Path, agent: Any, buffer: ReplayBuffer | None, state: TrainState,
                    env: Any) -> None:
    """Atomic checkpoint: a crash leaves the previous one intact. ``buffer`` is None for
    on-policy agents (their rollout is part of the agent's state)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    blob = {"agent": agent.state_dict(), "buffer": None if buffer is None else buffer.state_dict(),
            "state": state.__dict__, "env_n_step": env.n_step}
    backend = getattr(env, "backend", None)
    if callable(getattr(backend, "state_dict", None)):      # e.g. an emulator's drift walk
        blob["backend_state"] = backend.state_dict()
    schedule = _reward_schedule(env)
    if schedule is not None:                  # the env's reward weight: a resume must keep it
        blob["env_reward_weight"] = schedule
    with open(tmp, "wb") as f:
        torch.save(blob, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _reward_schedule(env: Any) -> dict[str, Any] | None:
    """The env's reward weight as a dict (charging: fixed w or Eq. 12's schedule), else None."""
    from qhil.envs.charging import RewardWeight
    rw = env.reward_weight if isinstance(env, ChargingEpisodes) else None
    return rw.to_dict() if isinstance(rw, RewardWeight) else None


def load_checkpoint(path: str | Path, agent: Any, buffer: ReplayBuffer | None, env: Any) -> TrainState:
    """Restore ``agent``, ``buffer`` and the env's step count from ``path``; refuse (ValueError)
    a checkpoint written with other agent settings or another reward weight of the env. An
    older SAC checkpoint's ``w_mean``/``w_width`` (the weight was the agent's then) are read as
    the env's schedule and compared with it."""
    from qhil.envs.charging import RewardWeight
    blob = torch.load(path, weights_only=False)
    saved, now = blob["agent"].get("config"), agent.cfg.to_dict() if isinstance(agent.cfg, Configured) else None
    saved_weight = blob.get("env_reward_weight")
    if isinstance(saved, dict) and {"w_mean", "w_width"} <= set(saved) and now is not None \
            and "w_mean" not in now:                                  # before the env owned the weight
        saved = dict(saved)
        saved_weight = RewardWeight.from_legacy(saved.pop("w_mean"), saved.pop("w_width")).to_dict()
    env_weight = _reward_schedule(env)
    if saved_weight is not None and env_weight is not None and not _same_weight(saved_weight, env_weight):
        raise ValueError(f"checkpoint {path} was written with another reward weight of the env "
                         f"(saved, now): {(saved_weight, env_weight)}; resume with the same options "
                         "or use another run directory")
    if saved is not None and now is not None:                         # options added since: their defaults
        try:
            saved = _with_defaults(saved, type(agent.cfg)().to_dict())
        except TypeError:                                             # a config without defaults
            pass
    diff = {} if saved is None or now is None else {
        k: (saved.get(k), now.get(k)) for k in set(saved) | set(now)
        if saved.get(k) != now.get(k) and k != "total_steps"           # a run may be extended
        and not (k == "precision" and "auto" in (saved.get(k), now.get(k)))}   # auto: any machine's choice
    if diff:
        raise ValueError(f"checkpoint {path} was written with other settings (saved, now): {diff}; "
                         "resume with the same options or use another run directory")
    agent.load_state_dict(blob["agent"])
    if buffer is not None:
        buffer.load_state_dict(blob["buffer"])
    env.n_step = blob["env_n_step"]
    if blob.get("backend_state") is not None:
        env.backend.load_state_dict(blob["backend_state"])
    return TrainState(**blob["state"])


def _with_defaults(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with the keys it lacks taken from ``defaults``, recursively (nested configs)."""
    out = dict(saved)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _with_defaults(out[k], v)
    return out


def _same_weight(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two recorded reward weights agree (to float rounding: a schedule scaled twice)."""
    return a.keys() == b.keys() and all(
        (a[k] is None and b[k] is None) or (a[k] is not None and b[k] is not None
                                            and math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12))
        for k in a)


class ChargingEpisodes:
    """The charging vector env (:class:`~qhil.envs.charging.ChargingVectorEnv`) as :func:`train`
    sees it: rounds of ``n_envs`` lock-step episodes; rows of return and the env's two
    declared figures (``env.figures``: terminal energy and ergotropy), the best terminal
    ``env.objective`` explored and its protocol. The reward weight is the env's own
    (:meth:`reward_weights`); the agent knows nothing of it."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.n_envs, self.obs_dim, self.episode_steps = env.n_envs, env.obs_dim, env.n_steps
        figures, self.objective = figures_of(env)
        self.headline: tuple[str, ...] = figures[:2]

    @property
    def best_key(self) -> str:
        return self.objective

    @property
    def reward_weight(self) -> Any:
        """The env's :class:`~qhil.envs.charging.RewardWeight`."""
        return self.env.reward_weight

    def reward_weights(self, step: int) -> np.ndarray:
        """The env's weights of ``info["reward_terms"]`` at environment step ``step``."""
        return self.env.reward_weights(step)

    @property
    def backend(self) -> Any:
        """The env's backend (its state goes into checkpoints: an emulator's drift walk)."""
        return getattr(self.env, "backend", None)

    @property
    def n_step(self) -> int:
        return self.env.n_step

    @n_step.setter
    def n_step(self, value: int) -> None:
        self.env.n_step = value

    def prepare(self, agent: Any) -> None:
        pass

    def reset(self, episode: int) -> np.ndarray:
        obs, _ = self.env.reset()
        self._traj = [np.zeros(self.n_envs)]
        return obs

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        next_obs, reward, done, trunc, info = self.env.step(actions[:, 0])
        self._traj.append(info[self.objective])
        self._info = info
        return next_obs, reward, done, trunc, info

    def finish(self, state: TrainState, ret: np.ndarray, agent: Any) -> tuple[list[dict], dict | None]:
        """Rows for the run store (advancing ``state.episode``) and the new best, if any."""
        info, protocols = self._info, self.env.controls
        traj_arr = np.stack(self._traj, axis=1)
        rows, new_best = [], None
        first, second = self.headline
        for i in range(self.n_envs):
            value = float(info[self.objective][i])
            if value > state.best:
                state.best = value
                state.best_protocol = protocols[i].tolist()
                state.best_trajectory = traj_arr[i].tolist()
                state.best_episode = state.episode
                new_best = {"objective": value, "episode": state.episode, "protocol": state.best_protocol,
                            "trajectory": state.best_trajectory}
            rows.append({"episode": state.episode, "step": state.step, "ret": float(ret[i]),
                         "energy": float(info[first][i]), "ergotropy": float(info[second][i]),
                         "best": state.best, "weight": float(info["weight"][i])})
            state.episode += 1
        return rows, new_best

    def postfix(self, row: dict, state: TrainState, stats: dict) -> dict:
        return dict(ep=state.episode, ret=f"{row['ret']:.3f}", obj=f"{row['ergotropy']:.3f}",
                    best=f"{state.best:.4f}", w=f"{row['weight']:.2f}",
                    alpha=f"{stats.get('alpha', float('nan')):.2e}")


#: Reductions of a per-step ``info`` figure over an episode (``episode_figures`` of an env).
_REDUCE: dict[str, Callable[[list[Any]], float]] = {
    "mean": lambda v: float(np.array(v).mean()), "final": lambda v: float(v[-1]),
    "max": lambda v: float(np.array(v).max()), "min": lambda v: float(np.array(v).min()),
    "sum": lambda v: float(sum(np.sum(x) for x in v))}


class GymEpisodes:
    """A single gymnasium env whose ``info`` carries ``reward_terms`` (reward = terms · weights),
    e.g. :class:`~qhil.envs.supply_chain.SupplyChainEnv`, as :func:`train` sees it.

    Episode e is played from ``reset(seed=seed + e)``, so a resumed run replays the same
    episodes. Each episode's row in the run store holds the return, ``best`` = the best
    return so far and ``weight`` = a mixture agent's ``omega`` (the ensemble's ω_dqn).
    The figures are the env's own: ``env.episode_figures`` (name → (info key, reduction:
    mean, final, max, min, sum)) or, without it, the last step's ``info["figures"]`` (a dict
    of named numbers). All are kept by name (:meth:`RunStore.figures`); the store's two
    headline columns take ``env.headline_figures`` (the supply chain: ``energy`` ← mean
    fidelity, ``ergotropy`` ← final fidelity; else the first two figures, 0 without).
    """

    best_key = "return"

    def __init__(self, env: Any, seed: int = 0) -> None:
        self.env, self.seed = env, int(seed)
        base = env.unwrapped if isinstance(env, gym.Env) else env
        if isinstance(base, RewardWeighted):         # the env owns the weights of its reward terms
            self.reward_weights = base.reward_weights
        self.n_envs, self.obs_dim = 1, int(np.prod(env.observation_space.shape))
        self.episode_steps = int(self._declared("max_steps") or 0) or None
        self.n_step = 0

    def prepare(self, agent: Any) -> None:
        pass

    def reset(self, episode: int) -> np.ndarray:
        obs, info = self.env.reset(seed=self.seed + episode)
        self._steps: list[dict] = []
        self._actions: list[Any] = []
        return obs[None]

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        a = actions[0]
        a = int(np.asarray(a).reshape(-1)[0]) if isinstance(self.env.action_space, gym.spaces.Discrete) \
            else np.asarray(a, np.float32)
        obs, reward, term, trunc, info = self.env.step(a)
        self.n_step += 1
        self._steps.append(info)
        self._actions.append(a.tolist() if isinstance(a, np.ndarray) else a)
        info = dict(info, reward_terms=np.asarray(info["reward_terms"], np.float32)[None])
        return obs[None], np.array([reward]), np.array([term]), np.array([trunc]), info

    def _declared(self, name: str) -> Any:
        """A figure declaration of the (unwrapped) env's class or instance, else None."""
        base = self.env.unwrapped if isinstance(self.env, gym.Env) else self.env
        return vars(base).get(name, vars(type(base)).get(name))

    def figures(self) -> dict[str, float]:
        """The episode's figures as the env declares them (``episode_figures``, reduced over
        the steps that report their info key), else the last step's ``info["figures"]``."""
        st = self._steps
        if not st:
            return {}
        spec = self._declared("episode_figures")
        if spec is None:
            return {k: float(v) for k, v in dict(st[-1].get("figures") or {}).items()}
        out: dict[str, float] = {}
        for name, (key, how) in spec.items():
            vals = [s[key] for s in st if key in s]
            if vals:
                out[name] = _REDUCE[how](vals)
        return out

    def headline(self, figs: dict[str, float]) -> tuple[float, float]:
        """The two figures of the store's headline columns (0.0 where missing)."""
        names = self._declared("headline_figures") or tuple(figs)[:2]
        vals = [figs.get(n, 0.0) for n in names] + [0.0, 0.0]
        return float(vals[0]), float(vals[1])

    def finish(self, state: TrainState, ret: np.ndarray, agent: Any) -> tuple[list[dict], dict | None]:
        figs = self.figures()
        r = float(ret[0])
        new_best = None
        if r > state.best:
            state.best = r
            state.best_protocol = np.ravel(np.asarray(self._actions, float)).tolist()   # (T,) or (T·N,)
            key = self._declared("trajectory_figure")
            state.best_trajectory = [float(s.get(key, 0.0)) if key else 0.0 for s in self._steps]
            state.best_episode = state.episode
            new_best = {"objective": r, "episode": state.episode, "protocol": state.best_protocol,
                        "trajectory": state.best_trajectory}
        first, second = self.headline(figs)
        row = {"episode": state.episode, "step": state.step, "ret": r, "energy": first, "ergotropy": second,
               "best": state.best, "weight": float(agent.omega) if isinstance(agent, MixtureAgent) else None,
               "figures": figs}
        state.episode += 1
        return [row], new_best

    def postfix(self, row: dict, state: TrainState, stats: dict) -> dict:
        out = dict(ep=state.episode, ret=f"{row['ret']:.2f}", F=f"{row['energy']:.3f}", best=f"{state.best:.2f}")
        for k in ("eps", "omega", "loss"):
            if k in stats:
                out[k] = f"{stats[k]:.3g}"
        return out


def check_checkpoint_interval(checkpoint_every: Any, checkpoint_seconds: Any) -> tuple[int, float | None]:
    """Validate the two checkpoint intervals: ``checkpoint_every`` an integer ≥ 1 (episodes),
    ``checkpoint_seconds`` a finite number > 0 (seconds of wall time) or None (episodes only)."""
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) \
            or checkpoint_every < 1:
        raise ValidationError("checkpoint_every", f"{checkpoint_every!r}", "an integer ≥ 1 (episodes)")
    if checkpoint_seconds is not None:
        ok = isinstance(checkpoint_seconds, (int, float, np.integer, np.floating)) \
            and not isinstance(checkpoint_seconds, bool)
        if not ok or not math.isfinite(checkpoint_seconds) or not 0 < checkpoint_seconds <= 1e7:
            raise ValidationError("checkpoint_seconds", f"{checkpoint_seconds!r}",
                                  "a number of seconds in (0, 1e7], or None for episodes only")
        checkpoint_seconds = float(checkpoint_seconds)
    return int(checkpoint_every), checkpoint_seconds


def _now() -> float:
    """The clock of the wall-time checkpoints (seconds, monotonic)."""
    return time.monotonic()


def _restored_best(state: TrainState) -> dict[str, Any] | None:
    """The checkpoint's own best as a run-store row (None before any episode)."""
    if not math.isfinite(state.best):
        return None
    # None: a checkpoint older than ``best_episode`` (the store finds the episode)
    episode = state.best_episode if state.best_episode >= 0 else None
    return {"objective": state.best, "episode": episode, "protocol": state.best_protocol,
            "trajectory": state.best_trajectory}


def train(agent: Any, env: Any, *, store: RunStore | None = None, run: str = "run",
          config: dict[str, Any] | None = None, checkpoint: str | Path | None = None,
          checkpoint_every: int = 200, checkpoint_seconds: float | None = CHECKPOINT_SECONDS,
          progress: bool = True, stop: Callable[[TrainState], bool] | None = None,
          tensorboard: str | Path | None = None) -> TrainState:
    """Train ``agent`` on the adapted env ``env`` (:class:`ChargingEpisodes`, :class:`GymEpisodes`)
    for ``agent.cfg.total_steps`` environment steps; the one loop for every agent.

    store/run:          where episodes go (return, the env's figures, best-so-far) and, per
                        round of episodes, the mean of the update statistics over the round
                        (losses, α, entropy, Q values …; :meth:`RunStore.updates`)
    checkpoint:         file to resume from (if present) and to write every
                        ``checkpoint_every`` episodes, every ``checkpoint_seconds`` of wall
                        time (checked after each round of episodes; stretched to 20× the
                        last save's duration if that is longer; None: episodes only) and
                        at the end. Resuming replays the episodes after the checkpoint: the
                        store drops them and takes the checkpoint's own best back.
    stop:               optional early stop, called after each round of episodes
    tensorboard:        a folder: the same statistics and each episode's return and figures
                        as TensorBoard scalars (x = environment steps; needs ``tensorboard``)
    Returns the final :class:`TrainState`.
    """
    checkpoint_every, checkpoint_seconds = check_checkpoint_interval(checkpoint_every, checkpoint_seconds)
    check_agent(agent)
    writer = open_tensorboard(tensorboard) if tensorboard is not None else None
    cfg = agent.cfg
    n_envs = env.n_envs
    replay = isinstance(agent, OffPolicyAgent)
    observe = agent.observe if isinstance(agent, Observer) else None
    weigher: Any = env if isinstance(env, RewardWeighted) else agent       # the env owns the weights
    if replay and not isinstance(weigher, RewardWeighted):
        raise ValidationError("env", f"neither {type(env).__name__} nor {type(agent).__name__} gives "
                              "reward_weights(step)", "an env (or agent) with the weights of info['reward_terms']")
    # np.zeros is lazily committed: a 180k ring costs memory only as it fills
    buffer = ReplayBuffer(cfg.buffer_size, env.obs_dim, agent.act_dim, len(weigher.reward_weights(0))) \
        if replay else None
    learning_starts = cfg.learning_starts if replay else 0
    # the step count after the first round that updates (steps advance by n_envs)
    first_update_step = max(n_envs, -(-learning_starts // n_envs) * n_envs)
    state = TrainState()
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, agent, buffer, env)
    if store is not None:
        store.start_run(run, config or {})
        # episodes after the checkpoint are replayed; the best is the checkpoint's own
        store.truncate(run, state.episode - 1, _restored_best(state))
        if isinstance(agent, ReportsPrecision):      # what this process runs (auto: its probe)
            store.annotate(run, precision=agent.precision_info)
    env.prepare(agent)
    env.n_step = state.step

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.total_steps, initial=state.step, desc=run, unit="step",
                   mininterval=2.0, dynamic_ncols=True)
    t0, last_ckpt = time.perf_counter(), state.episode
    last_ckpt_time = _now()
    # a wall-time checkpoint costs at most ~5 % of the time: a slow save (a large replay
    # buffer) stretches the interval to 20× its duration
    ckpt_interval = checkpoint_seconds
    wall0 = state.wall
    stats: dict[str, float] = {}
    while state.step < cfg.total_steps:
        obs = env.reset(state.episode)
        if isinstance(agent, EpisodeAware):
            agent.begin_episode()
        ret = np.zeros(n_envs)
        steps0 = state.step
        metrics = UpdateMetrics()
        while True:
            warm = replay and state.step < learning_starts
            act = agent.random_action(n_envs) if warm else agent.act(obs)
            next_obs, reward, done, trunc, info = env.step(act)
            if buffer is not None:
                buffer.add(obs, agent.to_normalised(act), info["reward_terms"], next_obs,
                           done.astype(np.float32))
            ret += reward
            state.step += n_envs
            if observe is not None:                  # ε decay; on-policy rollouts and updates
                seen = observe(obs, act, info["reward_terms"], next_obs, done | trunc, state.step,
                               weights=weigher.reward_weights(state.step) if isinstance(weigher, RewardWeighted)
                               else None)
                if seen:
                    stats.update(seen)
                    metrics.add(seen)
            obs = next_obs
            if buffer is not None and state.step >= learning_starts:
                # updates_per_step per env step (may be < 1 with many envs), from the warm-up's end
                due = int((state.step - first_update_step + n_envs) * cfg.updates_per_step + 1e-9)
                for _ in range(due - state.updates):
                    batch = buffer.sample(cfg.batch_size, agent.rng, weigher.reward_weights(state.step))
                    stats = agent.update(batch, state.step)
                    metrics.add(stats)
                    state.updates += 1
            if done.all() or trunc.all():
                break
        # -- the round of episodes is over: record them ---------------------------------
        rows, new_best = env.finish(state, ret, agent)
        state.wall = wall0 + time.perf_counter() - t0
        round_metrics = metrics.means()
        if store is not None:
            store.log_episodes(run, rows, new_best)
            if round_metrics:
                store.log_updates(run, state.episode - 1, state.step, state.updates, round_metrics)
        if writer is not None:
            _write_tensorboard(writer, rows, round_metrics, state)
        if bar is not None:
            bar.update(state.step - steps0)
            bar.set_postfix(**env.postfix(rows[-1], state, stats), refresh=False)
        if checkpoint is not None and (
                state.episode - last_ckpt >= checkpoint_every
                or (ckpt_interval is not None and _now() - last_ckpt_time >= ckpt_interval)):
            saving = _now()
            save_checkpoint(checkpoint, agent, buffer, state, env)
            if checkpoint_seconds is not None:
                ckpt_interval = max(checkpoint_seconds, 20.0 * (_now() - saving))
            last_ckpt, last_ckpt_time = state.episode, _now()
        if stop is not None and stop(state):
            break
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    if checkpoint is not None:
        save_checkpoint(checkpoint, agent, buffer, state, env)
    return state


class UpdateMetrics:
    """The statistics of one round's updates (each a dict of numbers): their means by name."""

    def __init__(self) -> None:
        self._sum: dict[str, float] = {}
        self._n: dict[str, int] = {}

    def add(self, stats: dict[str, Any]) -> None:
        for k, v in stats.items():
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                self._sum[k] = self._sum.get(k, 0.0) + float(v)
                self._n[k] = self._n.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self._sum[k] / self._n[k] for k in self._sum}


def open_tensorboard(log_dir: str | Path) -> Any:
    """A :class:`torch.utils.tensorboard.SummaryWriter` on ``log_dir`` (created); a clear
    ValidationError if the ``tensorboard`` package is missing or the folder cannot be made."""
    if not isinstance(log_dir, (str, Path)) or not str(log_dir):
        raise ValidationError("tensorboard", f"{log_dir!r}", "a folder for the event files")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValidationError("tensorboard", "TensorBoard logging needs the tensorboard package, which is not "
                              "installed", "pip install tensorboard (or qhil[cluster]), or leave it off") from None
    try:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValidationError("tensorboard", f"cannot create {str(log_dir)!r} ({exc})", "a writable folder") from None
    return SummaryWriter(log_dir=str(log_dir))


def _write_tensorboard(writer: Any, rows: list[dict[str, Any]], metrics: dict[str, float], state: TrainState) -> None:
    """One round: ``train/<statistic>`` (mean over the round's updates) at the round's last
    step; per episode ``episode/return``, ``episode/best`` and ``episode/<figure>``."""
    for k, v in metrics.items():
        writer.add_scalar(f"train/{k}", v, state.step)
    for r in rows:
        writer.add_scalar("episode/return", r["ret"], r["step"])
        writer.add_scalar("episode/best", r["best"], r["step"])
        figs = r.get("figures") or {"energy": r["energy"], "ergotropy": r["ergotropy"]}
        for k, v in figs.items():
            writer.add_scalar(f"episode/{k}", v, r["step"])


def train_off_policy(agent: Any, env: Any, *, store: RunStore | None = None, run: str = "run",
                     config: dict[str, Any] | None = None, checkpoint: str | Path | None = None,
                     checkpoint_every: int = 200, checkpoint_seconds: float | None = CHECKPOINT_SECONDS,
                     progress: bool = True, stop: Callable[[TrainState], bool] | None = None,
                     tensorboard: str | Path | None = None) -> TrainState:
    """Train ``agent`` on the charging vector env ``env`` for ``agent.cfg.total_steps`` steps:
    :func:`train` with :class:`ChargingEpisodes`.

    store/run:        where episodes go (return, terminal energy and ergotropy, best-so-far)
    checkpoint:       file to resume from (if present) and to write every
                      ``checkpoint_every`` episodes, every ``checkpoint_seconds`` of wall
                      time (default 60 s; None: episodes only) and at the end
    stop:             optional early stop, called after each round of episodes
    tensorboard:      folder for TensorBoard scalars (see :func:`train`)
    Returns the final :class:`TrainState`.

    The reward weight of Eq. (11) is the env's (a fixed w or Eq. 12's schedule, counted in
    environment steps): the logged return is the one in force when each episode was played,
    and replay batches re-weight the stored terms with the env's weight at the current step
    (see :class:`~qhil.agents.replay.ReplayBuffer`).
    """
    adapter = env if isinstance(env, (ChargingEpisodes, GymEpisodes)) else ChargingEpisodes(env)
    return train(agent, adapter, store=store, run=run, config=config, checkpoint=checkpoint,
                 checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                 progress=progress, stop=stop, tensorboard=tensorboard)


def deterministic_episode(agent: Any, env: Any) -> dict[str, Any]:
    """Play the policy's mean action for one episode on a (fresh) vector env with n_envs = 1:
    the terminal value of each figure the env declares (``env.figures``, by name), the
    protocol and the objective's trajectory."""
    names, objective = figures_of(env)
    obs, info = env.reset()
    traj = [float(info[objective][0])]
    while True:
        lam = agent.act(obs, deterministic=True)
        obs, _, done, trunc, info = env.step(lam[:, 0])
        traj.append(float(info[objective][0]))
        if done.all() or trunc.all():
            break
    return {**{k: float(info[k][0]) for k in names}, "protocol": env.controls[0].tolist(),
            "trajectory": traj}


def evaluate(agent: Any, env: Any, state: TrainState | None = None,
             seeds: Sequence[int] = range(10_000, 10_010)) -> dict[str, Any]:
    """The one evaluation path.

    Charging vector env — both figures of a trained agent, labelled:
    ``deterministic``  — the policy's deterministic episode (what the agent would play now);
    ``best_explored``  — the best terminal ergotropy of any episode played in training
                         (Table 1's metric; stochastic and warm-up episodes included).

    Gymnasium env (the supply chain; ``seeds``: the evaluation episodes, unseen in training
    by default) — ``deterministic``: the policy's deterministic episodes, their mean return
    and figures (``returns`` and, per figure, the mean); ``best_explored``: the best training
    return (if ``state`` is given).
    """
    if isinstance(env, GymEpisodes):
        env = env.env
    if isinstance(env, gym.Env):                     # a gymnasium env (the supply chain)
        if len(seeds) == 0:
            raise ValueError("seeds: at least one evaluation episode seed is needed")
        adapter = GymEpisodes(env)
        returns, figs = [], []
        for s in seeds:
            obs = env.reset(seed=int(s))[0][None]
            adapter._steps, adapter._actions = [], []
            ret, done = 0.0, False
            while not done:
                a = agent.act(obs, deterministic=True)
                obs, r, term, trunc, _ = adapter.step(a)
                ret += float(r[0])
                done = bool(term[0] or trunc[0])
            returns.append(ret)
            figs.append(adapter.figures())
        out = {"deterministic": {"return": float(np.mean(returns)), "returns": returns,
                                 **{k: float(np.mean([f[k] for f in figs])) for k in figs[0]}}}
        if state is not None:
            out["best_explored"] = {"return": state.best, "actions": state.best_protocol}
        return out
    return {"deterministic": deterministic_episode(agent, env),
            "best_explored": {figures_of(env)[1]: state.best, "protocol": state.best_protocol,
                              "trajectory": state.best_trajectory}}
