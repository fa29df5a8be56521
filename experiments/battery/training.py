"""One charging run of seed 000: a SAC agent on a Dicke battery, trained, evaluated and
recorded in a run store (the one train → evaluate → record path of ``qhil train`` and of every
``qhil reproduce`` target).

    spec = ChargingRunSpec(env="env1", regime="second_order", sac={"seed": 0, "total_steps": 30_000})
    summary = spec.execute(Path("runs/table1"))       # or run_specs([spec, …], work_dir, executor)

Each run records its episodes in ``<work_dir>/runs.sqlite`` (:class:`~qhil.agents.runstore.RunStore`),
checkpoints to ``<work_dir>/<run>.pt`` (:func:`checkpoint_path`) and resumes from it, and marks
itself finished last with the finish record of :func:`train_run` (the runner's single record
of finished runs).

With ``eval_envs``/``eval_random`` the deterministic policy is evaluated every ``eval_every``
episodes on those envs (named ones and/or random validation realisations, seed 1001) and the
policy with the best mean terminal ergotropy is kept; the summary's ``selection`` holds the
history, the selected evaluation and, for the selected policy, Env1–Env3 and ``test_random``
held-out realisations (seed 2002).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

#: Recorded options a resumed run must keep: they fix what the policy's inputs mean.
_RUN_IDENTITY = ("env", "regime", "history", "history_of")
#: Recorded since runs may use any model: compared when the recorded run has them.
_TWIN_IDENTITY = ("model", "tau", "n_steps")
#: Seeds of the random validation (selection) and test (report) disorder realisations.
VALIDATION_SEED, TEST_SEED = 1001, 2002


def checkpoint_path(run_dir: str | Path, run: str) -> Path:
    """Where a charging run ``run`` (e.g. ``env1/energies/seed0``) keeps its checkpoint."""
    return Path(run_dir) / (run.replace("/", "_") + ".pt")


def evaluation_env(omegas: tuple[float, ...] | Any, regime: str, history: int | None, backend: Any,
                   history_of: str = "observations", *, tau: float = 5.6, n_steps: int = 28,
                   weight: float = 0.0, shots: int | None = None) -> Any:
    """One battery for deterministic evaluation: a :class:`DickeBattery`, or TLS frequencies
    ``omegas`` (units ω_0) of the default one; ergotropy reward (w = ``weight`` = 0), the regime's
    observation (exact, or ``shots`` per setting) and, if given, its window."""
    from qhil.envs import ChargingVectorEnv, DickeBattery
    from qhil.envs.history import HistoryVectorEnv
    battery = omegas if isinstance(omegas, DickeBattery) else DickeBattery(omegas=tuple(omegas))
    e: Any = ChargingVectorEnv(battery, regime=regime, backend=backend, weight=weight, tau=tau,
                               n_steps=n_steps, shots=shots)
    return HistoryVectorEnv(e, history, of=history_of) if history is not None else e


@dataclasses.dataclass(frozen=True)
class ChargingRunSpec:
    """Everything one charging run takes (frozen, picklable: a run spec of
    :func:`qhil.experiments.run_specs`).

    env:        preset name (env1…), or a label (``custom``) when ``model`` is given
    model:      the device model, a :class:`DickeBattery` or its ``to_dict()``; None = the preset
    sac:        SAC options, a :class:`SACConfig` or a dict of its fields (unscaled; an older
                table's ``w_mean``/``w_width`` are read as the env's reward weight)
    tau, n_steps: charging time τ (1/ω_0) and K steps
    history, history_of: memory window (:class:`~qhil.envs.history.HistoryVectorEnv`)
    omega_range, omega_spread, omega_seed: domain randomisation
    weight:     fixed reward weight w of Eq. (11); None = the schedule of Eq. (12)
    w_mean, w_width: that schedule (env steps, for the SAC ``reference_steps``; default the paper's)
    tensorboard: folder for TensorBoard scalars of the training (None = off)
    eval_envs, eval_random, eval_every, test_random: checkpoint selection and held-out report
    run:        run name (default ``env/regime/seed<seed>``)
    """

    env: str = "env1"
    regime: str = "second_order"
    sac: Any = dataclasses.field(default_factory=dict)
    model: Any = None
    model_provenance: Mapping[str, Any] | None = None
    tau: float = 5.6
    n_steps: int = 28
    history: int | None = None
    history_of: str = "observations"
    omega_range: tuple[float, float] | None = None
    omega_spread: float | None = None
    omega_seed: int | None = None
    weight: float | None = None
    w_mean: float | None = None
    w_width: float | None = None
    tensorboard: str | None = None
    eval_envs: tuple[str, ...] = ()
    eval_random: int = 0
    eval_every: int = 20
    test_random: int = 0
    backend: str = "statevector"
    n_envs: int = 1
    checkpoint_every: int = 200
    checkpoint_seconds: float | None = 60.0
    target: float | None = None
    run: str | None = None
    progress: bool = False

    def sac_config(self) -> Any:
        """The :class:`SACConfig` (validated)."""
        from qhil.agents.sac_config import SACConfig
        return self.sac if isinstance(self.sac, SACConfig) else SACConfig.from_dict(dict(self.sac))

    def reward_weight(self) -> Any:
        """The env's reward weight (:class:`~qhil.envs.charging.RewardWeight`, validated),
        unscaled: the fixed ``weight``, else Eq. (12) with ``w_mean``/``w_width`` (or those of an
        older SAC options table), else the paper's schedule."""
        from qhil.agents.sac_config import SACConfig
        from qhil.envs.charging import RewardWeight
        legacy: dict[str, float] = {}
        if not isinstance(self.sac, SACConfig):
            SACConfig.from_dict(dict(self.sac), legacy)
        return RewardWeight.from_options(self.weight, legacy.get("w_mean") if self.w_mean is None else self.w_mean,
                                         legacy.get("w_width") if self.w_width is None else self.w_width)

    @property
    def name(self) -> str:
        """The run's name in its run store."""
        if self.run:
            return self.run
        seed = self.sac.seed if not isinstance(self.sac, Mapping) else self.sac.get("seed")
        return f"{self.env}/{self.regime}/seed{self.sac_config().seed if seed is None else seed}"

    def battery(self) -> Any:
        """The model as a :class:`DickeBattery` (None = the preset ``env``)."""
        if self.model is None or not isinstance(self.model, Mapping):
            return self.model
        import qhil.envs  # noqa: F401  (registers the built-in models)
        from qhil.drivers import model_from_dict
        return model_from_dict(dict(self.model))

    def execute(self, work_dir: str | Path) -> dict[str, Any]:
        """Train (resuming), evaluate and record into ``<work_dir>/runs.sqlite``: :func:`train_run`."""
        return train_run(env=self.env, regime=self.regime, cfg=self.sac_config(), run_dir=Path(work_dir),
                         run=self.name, backend=self.backend, n_envs=self.n_envs,
                         checkpoint_every=self.checkpoint_every, target=self.target, progress=self.progress,
                         history=self.history, history_of=self.history_of,
                         omega_range=None if self.omega_range is None else tuple(self.omega_range),
                         omega_spread=self.omega_spread, omega_seed=self.omega_seed, weight=self.weight,
                         reward_weight=self.reward_weight(), tensorboard=self.tensorboard,
                         eval_envs=list(self.eval_envs), eval_random=self.eval_random,
                         eval_every=self.eval_every, test_random=self.test_random, battery=self.battery(),
                         model_provenance=None if self.model_provenance is None else dict(self.model_provenance),
                         tau=self.tau, n_steps=self.n_steps, checkpoint_seconds=self.checkpoint_seconds)


def train_run(env: str, regime: str, cfg: Any, run_dir: Path, run: str | None = None,
              backend: str = "statevector", n_envs: int = 1, checkpoint_every: int = 200,
              target: float | None = None, progress: bool = True, history: int | None = None,
              history_of: str = "observations",
              omega_range: tuple[float, float] | None = None, omega_spread: float | None = None,
              omega_seed: int | None = None, weight: float | None = None,
              eval_envs: list[str] | None = None, eval_random: int = 0, eval_every: int = 20,
              test_random: int = 0, battery: Any = None, model_provenance: dict[str, Any] | None = None,
              tau: float = 5.6, n_steps: int = 28, checkpoint_seconds: float | None = 60.0,
              reward_weight: Any = None, tensorboard: str | Path | None = None) -> dict[str, Any]:
    """Train (resuming if a checkpoint exists), evaluate, record; return the summary.

    env:          the preset's name (env1…), or a label (e.g. ``custom``) when ``battery`` is given
    battery:      the device model (digital twin), a :class:`DickeBattery`; None = the preset ``env``
    model_provenance: where the model came from (recorded; e.g. the endpoint's calibration)
    tau, n_steps: charging time τ (1/ω_0) and K steps (recorded: deployment replays them)

    history:      window size K (:class:`~qhil.envs.history.HistoryVectorEnv`), None = off
    history_of:   what the window holds, "observations" or "actions" (recorded only if "actions")
    omega_range / omega_spread / omega_seed: domain randomisation
                  (:class:`~qhil.envs.robust.RandomisedChargingEnv`); seed default ``cfg.seed``
    weight:       fixed w of Eq. (11) (recorded in the config)
    reward_weight: the env's :class:`~qhil.envs.charging.RewardWeight` (unscaled; default: the
                  fixed ``weight``, else the paper's schedule); scaled by ``cfg.schedule_scale``
                  and recorded as ``config["reward_weight"]``
    tensorboard:  folder for TensorBoard scalars (losses, α, entropy, Q; episode figures)
    eval_envs / eval_random / eval_every: checkpoint selection by the mean deterministic
                  terminal ergotropy (:class:`~qhil.agents.selection.CrossEnvSelector`) over
                  named envs and random validation realisations (seed ``VALIDATION_SEED``)
    test_random:  held-out realisations (seed ``TEST_SEED``) for the selected policy's report

    The run store's finish record (``RunStore.runs()[run]["summary"]``) holds steps, episodes,
    updates, wall_s, best_explored, deterministic (terminal ergotropies), deterministic_protocol
    and, with selection, selection_report and selection_heldout.
    """
    import numpy as np

    from qhil.agents.runstore import RunStore
    from qhil.agents.sac import SAC
    from qhil.agents.selection import CrossEnvSelector
    from qhil.agents.training import evaluate, train_off_policy
    from qhil.drivers import ValidationError, create_backend
    from qhil.envs import ENVIRONMENTS, ChargingVectorEnv, DickeBattery, check_cutoff
    from qhil.envs.history import HistoryVectorEnv
    from qhil.envs.robust import RandomisedChargingEnv, heldout_realisations
    from qhil.envs.charging import RewardWeight
    schedule = RewardWeight.from_options(weight) if reward_weight is None else reward_weight
    if not isinstance(schedule, RewardWeight):
        raise ValidationError("reward_weight", f"a {type(schedule).__name__}", "a RewardWeight")
    for name in eval_envs or []:
        if name not in ENVIRONMENTS:
            raise ValidationError("eval_envs", f"unknown environment {name!r}", ", ".join(ENVIRONMENTS))
    for name, n in (("eval_random", eval_random), ("test_random", test_random)):
        if not (isinstance(n, int) and 0 <= n <= 10_000):
            raise ValidationError(name, f"{n!r}", "an integer in [0, 10000] (realisations)")
    if history_of != "observations" and history is None:
        raise ValidationError("history_of", f"{history_of!r} without a window", "observations, or give history too")
    if not (isinstance(eval_every, int) and eval_every >= 1):
        raise ValidationError("eval_every", f"{eval_every!r}", "an integer ≥ 1 (episodes)")
    if battery is None:
        if env not in ENVIRONMENTS:
            raise ValidationError("env", f"unknown environment {env!r}", ", ".join(ENVIRONMENTS) + ", or a battery")
        battery = DickeBattery(omegas=ENVIRONMENTS[env])
    elif not isinstance(battery, DickeBattery):
        raise ValidationError("battery", f"a {type(battery).__name__}", "a DickeBattery (the charging task's model)")
    schedule = schedule.scaled(cfg.schedule_scale)      # the env's weight: in this run's steps
    cfg = cfg.scaled()
    run = run or f"{env}/{regime}/seed{cfg.seed}"
    run_dir = Path(run_dir)
    randomised = omega_range is not None or omega_spread is not None
    shape = {"tau": tau, "n_steps": n_steps}
    if randomised:
        venv: Any = RandomisedChargingEnv(battery, regime=regime,
                                          omega_range=omega_range, omega_spread=omega_spread,
                                          omega_seed=cfg.seed if omega_seed is None else omega_seed,
                                          n_envs=n_envs, backend=backend, reward_weight=schedule,
                                          **shape)
    else:
        venv = ChargingVectorEnv(battery, regime=regime, n_envs=n_envs, backend=backend,
                                 reward_weight=schedule, **shape)
    if history is not None:
        venv = HistoryVectorEnv(venv, history, of=history_of)
    agent = SAC(venv.obs_dim, venv.action_low, venv.action_high, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    store = RunStore(run_dir / "runs.sqlite")
    config: dict[str, Any] = {"env": env, "regime": regime, "backend": backend, "n_envs": n_envs,
                              "sac": cfg.to_dict(), "reward_weight": schedule.to_dict(),
                              "model": battery.to_dict(), "tau": float(tau),
                              "n_steps": int(n_steps)}
    if model_provenance:
        config["model_provenance"] = model_provenance
    extra = {"history": history, "history_of": history_of if history_of != "observations" else None,
             "omega_range": list(omega_range) if omega_range else None,
             "omega_spread": omega_spread, "omega_seed": omega_seed if randomised and omega_seed is not None
             else (cfg.seed if randomised else None), "weight": weight,
             "eval_envs": eval_envs or None, "eval_random": eval_random or None}
    config |= {k: v for k, v in extra.items() if v is not None}
    recorded = store.runs().get(run)
    changed = {k: (recorded["config"].get(k), config.get(k)) for k in _RUN_IDENTITY
               if recorded is not None and recorded["config"].get(k) != config.get(k)}
    if recorded is not None:    # recorded since the digital twin; older runs are presets at τ = 5.6, K = 28
        changed |= {k: (recorded["config"][k], config[k]) for k in _TWIN_IDENTITY
                    if k in recorded["config"] and recorded["config"][k] != config[k]}
    if changed:                                     # a resume must see the same inputs
        store.close()
        raise ValidationError(", ".join(changed), f"run {run!r} was recorded with (recorded, now) {changed}",
                              "the recorded values, or another --run or --run-dir")

    eval_backend = create_backend(backend) if isinstance(backend, str) else backend   # one prefix cache

    def fixed_env(omegas: tuple[float, ...] | DickeBattery) -> Any:
        return evaluation_env(omegas, regime, history, eval_backend, history_of, **shape)

    select_envs = {name: fixed_env(ENVIRONMENTS[name]) for name in (eval_envs or [])}
    select_envs |= {f"val{i}": fixed_env(w) for i, w in enumerate(heldout_realisations(eval_random, VALIDATION_SEED))}
    stop = (lambda st: st.best >= target) if target is not None else None
    selector = None
    if select_envs:
        selector = CrossEnvSelector(agent, select_envs, every=eval_every,
                                    path=run_dir / (run.replace("/", "_") + "_select.pt"), then=stop)
        stop = selector
    state = train_off_policy(agent, venv, store=store, run=run, config=config,
                             checkpoint=checkpoint_path(run_dir, run), checkpoint_every=checkpoint_every,
                             checkpoint_seconds=checkpoint_seconds, progress=progress, stop=stop,
                             tensorboard=tensorboard)
    final_env = fixed_env(battery)
    ev = evaluate(agent, final_env, state)
    if ev["best_explored"]["protocol"] and venv.has_density and not randomised:
        # as Erdman et al.: re-check the best protocol at twice the photon cutoff
        cut = check_cutoff(battery, np.reshape(ev["best_explored"]["protocol"], (-1, 1)), venv.dt)
        ev["best_explored"]["doubled_cutoff_change"] = cut["ergotropy_change"]
    if selector is not None:
        if not selector.history or selector.history[-1]["episode"] != state.episode:
            selector.record(state.episode, state.step)          # the final policy is a candidate too
        selected = selector.restore_best()
        report_envs = {name: fixed_env(w) for name, w in ENVIRONMENTS.items()}
        test = {f"test{i}": fixed_env(w) for i, w in enumerate(heldout_realisations(test_random, TEST_SEED))}
        report = selector.evaluate_on(report_envs)
        test_erg = selector.evaluate_on(test)
        if test_erg:
            report["heldout_mean"] = float(np.mean(list(test_erg.values())))
            report["heldout_min"] = float(np.min(list(test_erg.values())))
        ev["selection"] = {"every": eval_every, "history": selector.history, "selected": selected,
                           "report": report, "heldout": test_erg,
                           "heldout_omegas": heldout_realisations(test_random, TEST_SEED)}
    summary = {"run": run, "env": env, "regime": regime, "seed": cfg.seed, "steps": state.step,
               "episodes": state.episode, "updates": state.updates, "wall_s": state.wall,
               "steps_per_s": state.step / max(state.wall, 1e-9),
               "updates_per_s": state.updates / max(state.wall, 1e-9), **ev, "config": config,
               "precision": agent.precision_info}
    finish = {k: summary[k] for k in ("steps", "episodes", "updates", "wall_s")} | {
        "best_explored": ev["best_explored"]["ergotropy"], "deterministic": ev["deterministic"]["ergotropy"],
        "deterministic_protocol": ev["deterministic"]["protocol"]}
    if selector is not None:
        finish["selection_report"] = ev["selection"]["report"]
        finish["selection_heldout"] = ev["selection"]["heldout"]
    store.finish_run(run, finish)
    store.close()
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """A finished run in a line (two with selection): the selected policy's scores, then best
    explored and deterministic terminal ergotropy (ω_0) and the speed."""
    b, d = summary["best_explored"], summary["deterministic"]
    lines = []
    if "selection" in summary and summary["selection"]["selected"] is not None:
        sel = summary["selection"]
        lines.append(f"{summary['run']}: selected policy (episode {sel['selected']['episode']}, mean "
                     f"{sel['selected']['mean']:.4f} over {', '.join(sel['selected']['ergotropy'])}): "
                     + ", ".join(f"{k} {v:.4f}" for k, v in sel["report"].items()))
    lines.append(f"{summary['run']}: best explored ergotropy {b['ergotropy']:.4f} (Table 1 metric), "
                 f"deterministic policy {d['ergotropy']:.4f}; {summary['steps']} steps, {summary['wall_s']:.0f} s "
                 f"({summary['steps_per_s']:.0f} env-steps/s, {summary['updates_per_s']:.0f} updates/s)")
    return lines
