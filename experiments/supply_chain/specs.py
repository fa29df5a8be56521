"""One training run of a seed-004 agent on the supply chain: the run spec of the sweeps.

* :data:`AGENTS` — the learned agents, in the order of the paper's Table II: the proposed
  ensemble (Eq. 46), PPO, Double DQN, DDPG (continuous variant), Bootstrapped DQN.
* :class:`SweepRun` — one run (a frozen run spec for :func:`qhil.experiments.run_specs`):
  agent, learning rate, N, weights (α1, α2, α3), a noise channel on the Aer driver, seed,
  episodes; :attr:`SweepRun.name` is its key in the run store, :meth:`SweepRun.execute` is
  :func:`run_one`.
* :func:`make_env`, :func:`make_agent` — the environment and agent of a spec.
* :func:`run_one` — train with :func:`qhil.agents.training.train` (run store, checkpoints,
  resumable), evaluate the deterministic policy on unseen seeds, mark the run done (last).
* :func:`curve_stats` — the paper's statistics of a learning curve: 10-episode moving average
  (edge-padded), its mean, its maximum, the average of the final 10 episodes.
* :func:`reference_returns` — random, GRAPE and MPC on the same environment (flat lines).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qhil.drivers import ValidationError
from qhil.drivers import checks as check
from qhil.drivers.backend import check_seed

from ..stats import moving_average

#: The learned agents, in Table II's order ("Proposed" = the DQN+PPO ensemble of Eq. 46).
AGENTS = ("ensemble", "ppo", "dqn", "ddpg", "bdqn")
LABELS = {"ensemble": "Proposed (DQN+PPO ensemble, Eq. 46)", "ppo": "PPO", "dqn": "DDQN (Double DQN)",
          "ddpg": "DDPG (continuous variant)", "bdqn": "Bootstrapped DQN"}
CHANNELS = ("bit_flip", "depolarizing", "phase_flip")


@dataclass(frozen=True)
class SweepRun:
    """One training run. ``channel``/``p``: a noise channel on every qubit after every step,
    through the Aer driver (None: the exact statevector driver)."""

    sweep: str
    agent: str
    seed: int
    episodes: int
    lr: float = 5e-4
    n_spins: int = 3
    weights: tuple[float, float, float] = (1.0, 1.0, 0.5)
    channel: str | None = None
    p: float = 0.0
    n_warehouses: int = 3

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise ValidationError("agent", f"unknown agent {self.agent!r}", ", ".join(AGENTS))
        if self.channel is not None and self.channel not in CHANNELS:
            raise ValidationError("channel", f"unknown channel {self.channel!r}", ", ".join(CHANNELS))
        if not (isinstance(self.sweep, str) and self.sweep and "/" not in self.sweep):
            raise ValidationError("sweep", f"{self.sweep!r}", "a non-empty name without '/'")
        check_seed(self.seed)
        check.integer("episodes", self.episodes, 1, 1_000_000)
        check.finite_float("lr", self.lr, 0.0, 1.0, lo_open=True)
        check.integer("n_spins", self.n_spins, 1, 12)
        object.__setattr__(self, "weights", check.float_vector("weights", self.weights, 0.0, 1e6, 3, 3))
        check.finite_float("p", self.p, 0.0, 1.0)
        check.integer("n_warehouses", self.n_warehouses, 1, 1000)

    @property
    def name(self) -> str:
        parts = [self.sweep, self.agent, f"lr={self.lr:g}", f"N={self.n_spins}",
                 "w=" + ",".join(f"{w:g}" for w in self.weights)]
        if self.channel is not None:
            parts.append(f"{self.channel}={self.p:g}")
        if self.n_warehouses != 3:
            parts.append(f"wh={self.n_warehouses}")
        return "/".join(parts) + f"/seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def execute(self, work_dir: Path) -> dict[str, Any]:
        """Train, evaluate and record this run in ``<work_dir>/runs.sqlite`` (:func:`run_one`)."""
        return run_one(self, work_dir)


def make_env(spec: SweepRun, continuous: bool | None = None) -> Any:
    """The supply-chain env of a spec (continuous for DDPG), on Aer when a channel is set."""
    from qhil.drivers import create_backend
    from qhil.envs import SupplyChainEnv
    backend = None
    if spec.channel is not None:
        from qhil.drivers import channels as qn
        backend = create_backend("aer", noise=[getattr(qn, spec.channel)(p=spec.p)], seed=spec.seed)
    cont = spec.agent == "ddpg" if continuous is None else continuous
    return SupplyChainEnv(n_spins=spec.n_spins, weights=spec.weights, continuous=cont,
                          n_warehouses=spec.n_warehouses, backend=backend)


def make_agent(name: str, env: Any, lr: float = 5e-4, seed: int = 0, total_steps: int = 50_000) -> Any:
    """A fresh agent for ``env`` with learning rate ``lr`` (every other setting at its default)."""
    from qhil.agents.bdqn import BootstrappedDQN, BootstrappedDQNConfig
    from qhil.agents.ddpg import DDPG, DDPGConfig
    from qhil.agents.dqn import DQN, DQNConfig
    from qhil.agents.ensemble import Ensemble, EnsembleConfig
    from qhil.agents.ppo import PPO, PPOConfig
    D = int(np.prod(env.observation_space.shape))
    w = env.weights
    if name == "ddpg":
        if not env.continuous:
            raise ValidationError("agent", "DDPG needs the continuous variant", "continuous=True")
        return DDPG(D, env.action_space.shape[0], DDPGConfig(lr=lr, seed=seed, total_steps=total_steps), w)
    if env.continuous:
        raise ValidationError("agent", f"{name} needs the discrete variant", "continuous=False")
    n = env.action_space.n
    if name == "dqn":
        return DQN(D, n, DQNConfig(lr=lr, seed=seed, total_steps=total_steps), w)
    if name == "ppo":
        return PPO(D, n, PPOConfig(lr=lr, seed=seed, total_steps=total_steps), w)
    if name == "bdqn":
        return BootstrappedDQN(D, n, BootstrappedDQNConfig(lr=lr, seed=seed, total_steps=total_steps), w)
    if name == "ensemble":
        return Ensemble(D, n, EnsembleConfig.with_lr(lr, seed=seed, total_steps=total_steps,
                                                     episode_steps=env.max_steps), w)
    raise ValidationError("agent", f"unknown agent {name!r}", ", ".join(AGENTS))


def run_one(spec: SweepRun, work_dir: str | Path, eval_episodes: int = 5, progress: bool = False,
            checkpoint_every: int = 20) -> dict[str, Any]:
    """Train (resuming from the checkpoint if any), evaluate, mark done; return the summary.
    A run marked done in ``<work_dir>/runs.sqlite`` with at least ``spec.episodes`` episodes is
    not trained again; asked for more episodes, it continues from its checkpoint."""
    from qhil.agents.runstore import RunStore
    from qhil.agents.training import GymEpisodes, evaluate, train
    work = Path(work_dir)
    store = RunStore(work / "runs.sqlite")
    run = spec.name
    if store.status(run) == "done":
        summary = store.runs()[run]["summary"]
        if summary["episodes"] >= spec.episodes:
            store.close()
            return summary                     # else: a longer run, extended from its checkpoint
    env = make_env(spec)
    agent = make_agent(spec.agent, env, spec.lr, spec.seed, spec.episodes * env.max_steps)
    t0 = time.perf_counter()
    state = train(agent, GymEpisodes(env, seed=1000 * spec.seed), store=store, run=run,
                  config=spec.to_dict(), checkpoint=work / "ckpt" / (run.replace("/", "_") + ".pt"),
                  checkpoint_every=checkpoint_every, progress=progress)
    ev = evaluate(agent, env, state, seeds=range(900_000, 900_000 + eval_episodes))["deterministic"]
    summary = {"episodes": state.episode, "steps": state.step, "wall_s": state.wall,
               "eval_return": ev["return"], "eval_mean_fidelity": ev.get("mean_fidelity"),
               "eval_final_fidelity": ev.get("final_fidelity"), "run_s": time.perf_counter() - t0}
    store.finish_run(run, summary)
    store.close()
    env.close()
    return summary


def curve_stats(returns: np.ndarray, k: int = 10) -> dict[str, float]:
    """Mean of the MA, mean of the final k episodes, max of the MA, best single episode."""
    r = np.asarray(returns, float)
    ma = moving_average(r, k)
    return {"mean_ma": float(ma.mean()), "final10": float(r[-k:].mean()), "best_ma": float(ma.max()),
            "best_episode": float(r.max())}


def reference_returns(spec: SweepRun, episodes: int = 3, grape: bool = True) -> dict[str, float]:
    """Mean return of random, MPC (horizon 3) and GRAPE (mean-F objective, open loop) on the
    spec's environment (discrete variant), over ``episodes`` seeds."""
    from qhil.agents.chain_control import GrapePolicy, MPCPolicy, RandomPolicy, rollout
    env = make_env(spec, continuous=False)
    seeds = range(900_000, 900_000 + episodes)
    out = {"random": float(np.mean([rollout(env, RandomPolicy(env, s), seed=s).ret for s in seeds])),
           "mpc": float(np.mean([rollout(env, MPCPolicy(env, horizon=3), seed=s).ret for s in seeds]))}
    if grape:
        pol = GrapePolicy(env, objective="mean", seed=0, maxiter=200, restarts=2)
        out["grape"] = float(np.mean([rollout(env, pol, seed=s).ret for s in seeds]))
    env.close()
    return out


def evaluate_checkpoint(spec: SweepRun, work_dir: str | Path, weights: tuple[float, float, float] | None = None,
                        episodes: int = 5) -> dict[str, float]:
    """The trained policy of a finished run (its last checkpoint), deterministic, on the spec's
    environment — with the reward weights replaced by ``weights`` if given (to compare runs
    trained under different weights on one scale). Returns the mean return and figures."""
    import torch

    from qhil.agents.training import evaluate
    path = Path(work_dir) / "ckpt" / (spec.name.replace("/", "_") + ".pt")
    if not path.exists():
        raise ValidationError("run", f"no checkpoint for {spec.name} under {work_dir}")
    env = make_env(spec)
    agent = make_agent(spec.agent, env, spec.lr, spec.seed, spec.episodes * env.max_steps)
    agent.load_state_dict(torch.load(path, weights_only=False)["agent"])
    if weights is not None:
        env.weights = tuple(float(w) for w in weights)
    out = evaluate(agent, env, seeds=range(900_000, 900_000 + episodes))["deterministic"]
    env.close()
    return {k: v for k, v in out.items() if k != "returns"}
