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

Fine-tuning on a device (issue 14): ``init_from`` starts the networks (actor, critics, targets,
α, optimiser state) from another run's checkpoint (:func:`initialise_from`), with a fresh replay
buffer and step counter; ``residual``/``residual_scale`` make the action a bounded correction to
a reference protocol (:class:`~qhil.envs.residual.ResidualActionEnv`); ``backend`` may be any
Backend object (the emulator's :class:`DeviceBackend`) with ``shots``/``every``/``final_only``
observations. Every experiment the training and the final evaluation run is counted
(:class:`ShotCounter`): the summary and the finish record hold ``shots_spent``,
``experiments_run`` and ``device_s`` of the training (kept across resumes in the run's recorded
``config["spent"]``, replayed episodes included) and ``evaluation_cost`` (the same three) of the
final evaluation.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from qhil.envs.wrapper import VectorEnvWrapper

#: Recorded options a resumed run must keep: they fix what the policy's inputs mean.
_RUN_IDENTITY = ("env", "regime", "history", "history_of")
#: Recorded since runs may use any model: compared when the recorded run has them.
_TWIN_IDENTITY = ("model", "tau", "n_steps")
#: Recorded only when not the default (older runs lack them): compared as recorded.
_MEASUREMENT_IDENTITY = ("shots", "every", "final_only", "reward", "tomography_shots", "residual", "mismatch")
#: Ranges of the domain randomisation over the device mismatch (:class:`~qhil.envs.mismatch.MismatchRandomisedEnv`).
MISMATCH_KEYS = ("amplitude_error", "rise_time", "frequency_spread", "readout_error")
#: Seeds of the random validation (selection) and test (report) disorder realisations.
VALIDATION_SEED, TEST_SEED = 1001, 2002


def checkpoint_path(run_dir: str | Path, run: str) -> Path:
    """Where a charging run ``run`` (e.g. ``env1/energies/seed0``) keeps its checkpoint."""
    return Path(run_dir) / (run.replace("/", "_") + ".pt")


def evaluation_env(omegas: tuple[float, ...] | Any, regime: str, history: int | None, backend: Any,
                   history_of: str = "observations", *, tau: float = 5.6, n_steps: int = 28,
                   weight: float = 0.0, shots: int | None = None, every: int = 1, final_only: bool = False,
                   reward: str = "exact", tomography_shots: int | None = 1000,
                   residual: tuple[Any, float] | None = None, seed: int | None = None) -> Any:
    """One battery for deterministic evaluation: a :class:`DickeBattery`, or TLS frequencies
    ``omegas`` (units ω_0) of the default one; ergotropy reward (w = ``weight`` = 0), the regime's
    observation (exact, or ``shots`` per setting, every ``every``-th step or ``final_only``), if
    given its window, and with ``residual`` = (reference (K,), scale) the residual action. On a
    backend without a state ``reward`` must be ``"tomography_terminal"`` (the estimate then
    stands in ``info["ergotropy"]``); ``seed`` seeds its shot noise per episode."""
    from qhil.envs import ChargingVectorEnv, DickeBattery
    from qhil.envs.history import HistoryVectorEnv
    battery = omegas if isinstance(omegas, DickeBattery) else DickeBattery(omegas=tuple(omegas))
    e: Any = ChargingVectorEnv(battery, regime=regime, backend=backend, weight=weight, tau=tau,
                               n_steps=n_steps, shots=shots, every=every, final_only=final_only,
                               reward=reward, tomography_shots=tomography_shots)
    e = MeasuredEpisodes(e, seed)
    e = HistoryVectorEnv(e, history, of=history_of) if history is not None else e
    return _residual_env(e, residual)


def _residual_env(env: Any, residual: tuple[Any, float] | None) -> Any:
    from qhil.envs.residual import ResidualActionEnv
    return env if residual is None else ResidualActionEnv(env, residual[0], residual[1])


class MeasuredEpisodes(VectorEnvWrapper):
    """A charging vector env as a device run needs it (the physics unchanged):

    * with shot noise (``shots``, or the tomography reward), each round of episodes reseeds it
      from (``seed``, environment steps so far), so a resumed run replays the same noise;
    * on a backend without a state, ``info["ergotropy"]`` at the last step is the tomography
      estimate (``reward="tomography_terminal"``): the figure the run store and the best
      explored protocol are judged by is the measured one;
    * on a backend without a state and with the measured-energy reward (w = 1, no tomography),
      nothing measures the ergotropy: both recorded figures are the measured final energy
      (``figures = ("energy", "energy")``, objective ``energy``).
    """

    _OWN = {"env", "noise_seed", "energy_only"}

    def __init__(self, env: Any, seed: int | None = None) -> None:
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "noise_seed", seed)
        object.__setattr__(self, "energy_only", not env.has_density and env.reward_mode == "exact")

    @property
    def figures(self) -> tuple[str, ...]:
        return ("energy", "energy") if self.energy_only else tuple(self.env.figures)

    @property
    def objective(self) -> str:
        return "energy" if self.energy_only else str(self.env.objective)


    def reset(self) -> tuple[Any, dict[str, Any]]:
        import numpy as np
        e = self.env
        noisy = e.schedule.shots is not None or (e.reward_mode != "exact" and e.tomography_shots is not None)
        if noisy and self.noise_seed is not None:
            e.seed(int(np.random.SeedSequence([int(self.noise_seed), int(e.n_step)]).generate_state(1, np.uint64)[0]
                       % (2**63)))
        return e.reset()

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        import numpy as np
        obs, reward, done, trunc, info = self.env.step(actions)
        if not self.env.has_density and "ergotropy_estimate" in info:
            est = info["ergotropy_estimate"]
            info["ergotropy"] = np.where(np.isfinite(est), est, info["ergotropy"])
        return obs, reward, done, trunc, info


class ShotCounter:
    """Counts what a backend runs (a :class:`~qhil.experiments.battery.deployment.RecordingBackend`'s
    ``record``): experiments, shots (``Experiment.cost().total_shots``; 0 for exact values)
    and device seconds (results' ``metadata["device_s"]``, or a lab bridge's, where present)."""

    def __init__(self, start: dict[str, Any] | None = None) -> None:
        start = start or {}
        self.shots = int(start.get("shots_spent", 0))
        self.experiments = int(start.get("experiments_run", 0))
        self.device_s = float(start.get("device_s", 0.0))

    def __call__(self, experiment: Any, result: Any) -> None:
        from qhil.envs.figure_of_merit import measured_device_s
        self.experiments += 1
        self.shots += int(experiment.cost().total_shots)
        dev = measured_device_s(result)
        if dev is not None:
            self.device_s += dev

    def totals(self) -> dict[str, Any]:
        """{shots_spent, experiments_run, device_s (seconds)}."""
        return {"shots_spent": self.shots, "experiments_run": self.experiments, "device_s": self.device_s}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (hex)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def init_source(init_from: str | Path, init_run: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The run a fine-tune starts from (:class:`~qhil.experiments.battery.deployment.TrainedRun`)
    and its record: path, run, steps the source trained, SHA-256 of its checkpoint. A missing or
    unreadable run store or checkpoint is refused (ValidationError naming ``init_from``)."""
    import torch

    from qhil.drivers import ValidationError
    from .deployment import load_run, renamed
    try:
        src = load_run(Path(init_from), init_run)
    except ValidationError as exc:
        raise renamed(exc, "init_from") from None
    try:
        blob = torch.load(src.checkpoint, weights_only=False)
        agent = blob["agent"]
        [agent[k] for k in ("actor", "q1", "q2", "q1_targ", "q2_targ", "log_alpha")]
        steps = int(blob["state"]["step"])
    except Exception as exc:                     # any unreadable file: refused, not half-loaded
        raise ValidationError("init_from", f"checkpoint {str(src.checkpoint)!r} cannot be read "
                              f"({type(exc).__name__}: {exc})", "a SAC checkpoint written by `qhil train`") from None
    record = {"path": str(Path(init_from).resolve()), "run": src.name, "source_steps": steps,
              "sha256": file_sha256(src.checkpoint)}
    return (src, blob), record


def initialise_from(agent: Any, source: tuple[Any, dict[str, Any]], layout: dict[str, Any]) -> dict[str, Any]:
    """Load the source run's networks into ``agent`` (actor, both critics and their targets, α;
    the optimisers' state too where it fits, at ``agent.cfg.lr``). ``layout`` is the new run's
    observation and action layout (obs_dim, regime, history, history_of, n_steps, bounds,
    residual); every difference from the source's is refused (ValidationError naming
    ``init_from``). Returns {"optimiser": whether the optimiser state was loaded}."""
    import math

    from qhil.drivers import ValidationError
    src, blob = source
    cfg = src.config
    weights = blob["agent"]
    first = next(v for k, v in weights["actor"].items() if k.endswith("weight"))
    bounds = [src.battery.controls[0].lower, src.battery.controls[0].upper]
    theirs = {"obs_dim": int(first.shape[1]), "regime": src.regime, "history": src.history,
              "history_of": src.history_of, "n_steps": src.n_steps, "bounds": bounds,
              "residual": cfg.get("residual"), "every": cfg.get("every", 1),
              "final_only": cfg.get("final_only", False)}
    diff = {}
    for k, v in theirs.items():
        now = layout.get(k)
        same = (all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(v, now)) if k == "bounds" else v == now)
        if not same:
            diff[k] = tuple(_brief(x) for x in (v, now)) if k == "residual" else (v, now)
    if diff:
        raise ValidationError("init_from", f"run {src.name!r} in {str(src.run_dir)!r} observes or acts otherwise "
                              f"(source, now): {diff}", "a source run with the same observation layout "
                              "(regime, history, history_of, steps, measurement schedule) and actions")
    try:
        for name in ("actor", "q1", "q2", "q1_targ", "q2_targ"):
            getattr(agent, name).load_state_dict(weights[name])
    except (RuntimeError, KeyError) as exc:
        raise ValidationError("init_from", f"networks of run {src.name!r} do not fit "
                              f"(hidden {tuple(cfg.get('sac', {}).get('hidden', ()))} there, "
                              f"{tuple(agent.cfg.hidden)} now): {str(exc).splitlines()[0]}",
                              "the same --hidden as the source run") from None
    import torch
    with torch.no_grad():
        agent.log_alpha.copy_(weights["log_alpha"])
    try:
        for name in ("actor_opt", "q_opt", "alpha_opt"):
            opt = getattr(agent, name)
            opt.load_state_dict(weights[name])
            for group in opt.param_groups:
                group["lr"] = agent.cfg.lr
        optimiser = True
    except (ValueError, KeyError, RuntimeError):          # another optimiser layout: fresh Adam moments
        optimiser = False
    return {"optimiser": optimiser}


def _brief(residual: dict[str, Any] | None) -> str | None:
    """A recorded residual setting in a few words (errors)."""
    if residual is None:
        return None
    ref = residual["reference"]
    return f"residual, scale {residual['scale']:g}, reference {ref[:3]}… ({len(ref)} steps)"


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
    backend:    a driver spec (statevector, aer, zmq://…) or a Backend object (in-process, e.g.
                the emulator's ``DeviceBackend``)
    shots, every, final_only: the observation's shots per setting (None = exact) and schedule
    reward, tomography_shots: the env's reward mode (None: ``exact`` where the backend returns a
                state or w = 1, else ``tomography_terminal``) and its terminal tomography's shots
    init_from, init_run: fine-tune: start from this run folder's (run's) checkpoint
    residual, residual_scale: residual mode: reference protocol (file, run folder, constant:x)
                and the correction's size s (units ω_0)
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
    backend: Any = "statevector"
    shots: int | None = None
    every: int = 1
    final_only: bool = False
    reward: str | None = None
    tomography_shots: int | None = 1000
    init_from: str | None = None
    init_run: str | None = None
    residual: str | None = None
    residual_scale: float | None = None
    mismatch: Mapping[str, float] | None = None
    mismatch_seed: int | None = None
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
                         tau=self.tau, n_steps=self.n_steps, checkpoint_seconds=self.checkpoint_seconds,
                         shots=self.shots, every=self.every, final_only=self.final_only, reward=self.reward,
                         tomography_shots=self.tomography_shots, init_from=self.init_from,
                         init_run=self.init_run, residual=self.residual, residual_scale=self.residual_scale,
                         mismatch=None if self.mismatch is None else dict(self.mismatch),
                         mismatch_seed=self.mismatch_seed)


def train_run(env: str, regime: str, cfg: Any, run_dir: Path, run: str | None = None,
              backend: str = "statevector", n_envs: int = 1, checkpoint_every: int = 200,
              target: float | None = None, progress: bool = True, history: int | None = None,
              history_of: str = "observations",
              omega_range: tuple[float, float] | None = None, omega_spread: float | None = None,
              omega_seed: int | None = None, weight: float | None = None,
              eval_envs: list[str] | None = None, eval_random: int = 0, eval_every: int = 20,
              test_random: int = 0, battery: Any = None, model_provenance: dict[str, Any] | None = None,
              tau: float = 5.6, n_steps: int = 28, checkpoint_seconds: float | None = 60.0,
              reward_weight: Any = None, tensorboard: str | Path | None = None,
              shots: int | None = None, every: int = 1, final_only: bool = False, reward: str | None = None,
              tomography_shots: int | None = 1000, init_from: str | Path | None = None,
              init_run: str | None = None, residual: str | Path | None = None,
              residual_scale: float | None = None, mismatch: Mapping[str, float] | None = None,
              mismatch_seed: int | None = None) -> dict[str, Any]:
    """Train (resuming if a checkpoint exists), evaluate, record; return the summary.

    env:          the preset's name (env1…), or a label (e.g. ``custom``) when ``battery`` is given
    battery:      the device model (digital twin), a :class:`DickeBattery`; None = the preset ``env``
    model_provenance: where the model came from (recorded; e.g. the endpoint's calibration)
    tau, n_steps: charging time τ (1/ω_0) and K steps (recorded: deployment replays them)

    history:      window size K (:class:`~qhil.envs.history.HistoryVectorEnv`), None = off
    history_of:   what the window holds, "observations" or "actions" (recorded only if "actions")
    omega_range / omega_spread / omega_seed: domain randomisation
                  (:class:`~qhil.envs.robust.RandomisedChargingEnv`); seed default ``cfg.seed``
    mismatch / mismatch_seed: domain randomisation over the device mismatch, ranges of
                  :data:`MISMATCH_KEYS` (:class:`~qhil.envs.mismatch.MismatchRandomisedEnv`);
                  seed default ``cfg.seed``
    weight:       fixed w of Eq. (11) (recorded in the config)
    reward_weight: the env's :class:`~qhil.envs.charging.RewardWeight` (unscaled; default: the
                  fixed ``weight``, else the paper's schedule); scaled by ``cfg.schedule_scale``
                  and recorded as ``config["reward_weight"]``
    tensorboard:  folder for TensorBoard scalars (losses, α, entropy, Q; episode figures)
    eval_envs / eval_random / eval_every: checkpoint selection by the mean deterministic
                  terminal ergotropy (:class:`~qhil.agents.selection.CrossEnvSelector`) over
                  named envs and random validation realisations (seed ``VALIDATION_SEED``)
    test_random:  held-out realisations (seed ``TEST_SEED``) for the selected policy's report
    backend:      a driver spec or a Backend object; the training and the final evaluation each
                  run behind a :class:`ShotCounter`
    shots / every / final_only: shots per setting of the observation (None = exact; a device
                  needs them) and which steps are measured (recorded; resume must keep them)
    reward:       ``exact`` (Eq. 11 on the simulator's state; on a stateless backend only with
                  w = 1, the measured-energy reward) or ``tomography_terminal`` (measured ΔE and the
                  tomography estimate of ℰ(τ), ``tomography_shots`` per setting); None = ``exact``
                  where the backend returns a state or w = 1, else ``tomography_terminal``
    init_from / init_run: continue the policy of this run folder's run (:func:`initialise_from`;
                  recorded as ``config["init_from"]`` with the checkpoint's SHA-256); a resume
                  continues from the run's OWN checkpoint and does not read the source
    residual / residual_scale: residual mode (:func:`~.deployment.reference_protocol`,
                  :class:`~qhil.envs.residual.ResidualActionEnv`); recorded, resume must keep them

    The run store's finish record (``RunStore.runs()[run]["summary"]``) holds steps, episodes,
    updates, wall_s, best_explored, deterministic (terminal ergotropies), deterministic_protocol
    and, with selection, selection_report and selection_heldout; shots_spent, experiments_run,
    device_s (the training's, over every process of the run) and evaluation_cost.
    """
    import json

    import numpy as np

    from qhil.agents.runstore import RunStore
    from qhil.agents.sac import SAC
    from qhil.agents.selection import CrossEnvSelector
    from qhil.agents.training import evaluate, train_off_policy
    from qhil.drivers import Backend, ValidationError, create_backend
    from qhil.envs import ENVIRONMENTS, ChargingVectorEnv, DickeBattery, check_cutoff
    from qhil.envs.history import HistoryVectorEnv
    from qhil.envs.robust import RandomisedChargingEnv, heldout_realisations
    from qhil.envs.charging import RewardWeight
    from .deployment import RecordingBackend, reference_protocol
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
    if mismatch is not None:
        unknown = sorted(set(mismatch) - set(MISMATCH_KEYS))
        if unknown or not isinstance(mismatch, Mapping):
            raise ValidationError("mismatch", f"unknown range {unknown[0] if unknown else mismatch!r}",
                                  ", ".join(MISMATCH_KEYS))
        if randomised:
            raise ValidationError("mismatch", "given with omega_range/omega_spread",
                                  "one domain randomisation: mismatch's frequency_spread covers the frequencies")
    shape = {"tau": tau, "n_steps": n_steps}
    # -- the device side: backend, measurements, reward, residual and source, all checked first --
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1):
        raise ValidationError("shots", f"{shots!r}", "None (exact values) or an integer ≥ 1 per setting")
    if reward not in (None, "exact", "tomography_terminal"):
        raise ValidationError("reward", f"{reward!r}", "exact, tomography_terminal, or None (chosen by the backend)")
    if residual_scale is not None and residual is None:
        raise ValidationError("residual_scale", "given without a reference protocol", "give residual too")
    if init_run is not None and init_from is None:
        raise ValidationError("init_run", "given without init_from", "give init_from (the source run folder) too")
    train_counter, eval_counter = ShotCounter(), ShotCounter()
    raw_backend = create_backend(backend) if isinstance(backend, str) else backend
    if not isinstance(raw_backend, Backend):
        raise ValidationError("backend", f"a {type(raw_backend).__name__}", "statevector, aer, zmq://host:port or a Backend")
    caps = raw_backend.capabilities
    has_state = bool(caps.qubit_density)
    if reward is None:
        reward = "exact" if has_state or schedule.w == 1.0 else "tomography_terminal"
    if reward == "exact" and not has_state and schedule.w != 1.0:
        raise ValidationError("reward", f"the exact ergotropy reward on {raw_backend.name}, which returns no state",
                              "tomography_terminal (measured ΔE + tomography ℰ(τ)), or weight 1 (measured energy)")
    if shots is None and not caps.exact_expectations:
        raise ValidationError("shots", f"exact expectation values on {raw_backend.name}, which measures",
                              "shots per setting ≥ 1 (--shots)")
    if reward == "tomography_terminal" and tomography_shots is None and not caps.exact_expectations:
        raise ValidationError("tomography_shots", f"exact tomography on {raw_backend.name}, which measures",
                              "shots per setting ≥ 1")
    chan = battery.controls[0]
    ref = None
    if residual is not None:
        from qhil.envs.residual import check_reference, check_scale
        ref, ref_info = reference_protocol(residual, n_steps, tau, name="residual")
        ref = check_reference(ref, n_steps, chan.lower, chan.upper)
        if residual_scale is None:
            raise ValidationError("residual_scale", "missing", "the correction's size s in (0, λ_max − λ_min] (ω_0)")
        residual_scale = check_scale(residual_scale, chan.lower, chan.upper)
    measure = {"shots": shots, "every": every, "final_only": final_only, "reward": reward,
               "tomography_shots": tomography_shots}
    backend_train = RecordingBackend(raw_backend, train_counter)
    if mismatch is not None:
        from qhil.envs.mismatch import MismatchRandomisedEnv
        venv: Any = MismatchRandomisedEnv(battery, regime=regime, **dict(mismatch),
                                          mismatch_seed=cfg.seed if mismatch_seed is None else mismatch_seed,
                                          n_envs=n_envs, backend=backend_train, reward_weight=schedule,
                                          **shape, **measure)
        mismatch_record = venv.config()
    elif randomised:
        venv = RandomisedChargingEnv(battery, regime=regime, omega_range=omega_range, omega_spread=omega_spread,
                                     omega_seed=cfg.seed if omega_seed is None else omega_seed,
                                     n_envs=n_envs, backend=backend_train, reward_weight=schedule,
                                     **shape, **measure)
    else:
        venv = ChargingVectorEnv(battery, regime=regime, n_envs=n_envs, backend=backend_train,
                                 reward_weight=schedule, **shape, **measure)
    venv = MeasuredEpisodes(venv, cfg.seed)
    if history is not None:
        venv = HistoryVectorEnv(venv, history, of=history_of)
    residual_pair = None if ref is None else (ref, residual_scale)
    venv = _residual_env(venv, residual_pair)
    agent = SAC(venv.obs_dim, venv.action_low, venv.action_high, cfg)
    residual_record = None if ref is None else {"reference": ref.tolist(), "scale": residual_scale}
    ckpt = checkpoint_path(run_dir, run)
    loaded = None                   # fine-tune: the source's networks, unless the run resumes from its own
    if init_from is not None and not ckpt.exists():
        source, loaded = init_source(init_from, init_run)
        layout = {"obs_dim": int(venv.obs_dim), "regime": regime, "history": history, "history_of": history_of,
                  "n_steps": int(n_steps), "bounds": [chan.lower, chan.upper], "residual": residual_record,
                  "every": int(every), "final_only": bool(final_only)}
        loaded |= initialise_from(agent, source, layout)
    run_dir.mkdir(parents=True, exist_ok=True)
    store = RunStore(run_dir / "runs.sqlite")
    config: dict[str, Any] = {"env": env, "regime": regime,
                              "backend": backend if isinstance(backend, str) else raw_backend.name,
                              "n_envs": n_envs, "sac": cfg.to_dict(), "reward_weight": schedule.to_dict(),
                              "model": battery.to_dict(), "tau": float(tau),
                              "n_steps": int(n_steps)}
    if not isinstance(backend, str):
        config["backend_info"] = json.loads(json.dumps(raw_backend.describe(), default=str))
    if model_provenance:
        config["model_provenance"] = model_provenance
    extra = {"history": history, "history_of": history_of if history_of != "observations" else None,
             "omega_range": list(omega_range) if omega_range else None,
             "omega_spread": omega_spread, "omega_seed": omega_seed if randomised and omega_seed is not None
             else (cfg.seed if randomised else None), "weight": weight,
             "eval_envs": eval_envs or None, "eval_random": eval_random or None,
             # the measurement and action identity: recorded only where not the default
             "shots": None if shots is None else int(shots), "every": int(every) if every != 1 else None,
             "final_only": True if final_only else None, "reward": reward if reward != "exact" else None,
             "tomography_shots": tomography_shots if reward != "exact" else None,
             "residual": residual_record,
             "mismatch": mismatch_record if mismatch is not None else None,
             "residual_protocol": None if ref is None else ref_info}
    config |= {k: v for k, v in extra.items() if v is not None}
    recorded = store.runs().get(run)
    changed = {k: (recorded["config"].get(k), config.get(k)) for k in _RUN_IDENTITY + _MEASUREMENT_IDENTITY
               if recorded is not None and recorded["config"].get(k) != config.get(k)}
    if recorded is not None:    # recorded since the digital twin; older runs are presets at τ = 5.6, K = 28
        changed |= {k: (recorded["config"][k], config[k]) for k in _TWIN_IDENTITY
                    if k in recorded["config"] and recorded["config"][k] != config[k]}
    if changed:                                     # a resume must see the same inputs
        store.close()
        raise ValidationError(", ".join(changed), f"run {run!r} was recorded with (recorded, now) {changed}",
                              "the recorded values, or another --run or --run-dir")
    # -- fine-tuning: the same source as recorded; a resume keeps the run's own record -----------
    before = None if recorded is None else recorded["config"].get("init_from")
    try:
        if init_from is None and before is not None:
            raise ValidationError("init_from", f"run {run!r} was fine-tuned from {before['path']}::{before['run']}",
                                  "the same --init-from (and --init-run), or another --run or --run-dir")
        if init_from is not None:
            here = str(Path(init_from).resolve())
            if recorded is not None and before is None:
                raise ValidationError("init_from", f"run {run!r} was recorded without it (trained from scratch)",
                                      "no --init-from, or another --run or --run-dir")
            if before is not None and (before["path"] != here or (init_run is not None and before["run"] != init_run)):
                raise ValidationError("init_from", f"run {run!r} was fine-tuned from "
                                      f"{before['path']}::{before['run']}, not {here}::{init_run}",
                                      "the recorded source, or another --run or --run-dir")
            if loaded is not None and before is not None and before["sha256"] != loaded["sha256"]:
                raise ValidationError("init_from", f"the checkpoint of {loaded['path']}::{loaded['run']} "
                                      "changed since this run started from it",
                                      "the source as it was, or another --run or --run-dir")
            config["init_from"] = loaded if loaded is not None else before
            if config["init_from"] is None:
                raise ValidationError("init_from", f"run {run!r} has a checkpoint {str(ckpt)!r} but no recorded "
                                      "source", "another --run or --run-dir")
    except ValidationError:
        store.close()
        raise

    # evaluation: one backend (one prefix cache) for selection (counted with the training) and
    # the final evaluation (counted apart)
    eval_raw = create_backend(backend) if isinstance(backend, str) else raw_backend
    select_backend, final_backend = RecordingBackend(eval_raw, train_counter), RecordingBackend(eval_raw, eval_counter)
    eval_measure = measure | {"reward": "exact" if has_state else "tomography_terminal"}

    def fixed_env(omegas: tuple[float, ...] | DickeBattery, be: Any = select_backend) -> Any:
        return evaluation_env(omegas, regime, history, be, history_of, **shape, **eval_measure,
                              residual=residual_pair, seed=cfg.seed)

    select_envs = {name: fixed_env(ENVIRONMENTS[name]) for name in (eval_envs or [])}
    select_envs |= {f"val{i}": fixed_env(w) for i, w in enumerate(heldout_realisations(eval_random, VALIDATION_SEED))}
    if recorded is not None:                        # spent by earlier processes of this run (its ledger)
        train_counter.__init__(recorded["config"].get("spent"))
    stop = (lambda st: st.best >= target) if target is not None else None
    selector = None
    if select_envs:
        selector = CrossEnvSelector(agent, select_envs, every=eval_every,
                                    path=run_dir / (run.replace("/", "_") + "_select.pt"), then=stop)
        stop = selector
    then = stop

    def stop_and_count(st: Any) -> bool:            # after each round: the ledger, then the stop rule
        store.annotate(run, spent=train_counter.totals())
        return bool(then(st)) if then is not None else False

    state = train_off_policy(agent, venv, store=store, run=run, config=config,
                             checkpoint=ckpt, checkpoint_every=checkpoint_every,
                             checkpoint_seconds=checkpoint_seconds, progress=progress, stop=stop_and_count,
                             tensorboard=tensorboard)
    final_env = fixed_env(battery, final_backend)
    ev = evaluate(agent, final_env, state)
    if getattr(venv, "objective", "ergotropy") == "energy":   # a device with the measured-energy reward:
        best = ev["best_explored"]                            # the best episode was judged by its energy
        best["energy_measured"], best["ergotropy"] = best["ergotropy"], float("nan")
    if ev["best_explored"]["protocol"] and venv.has_density and not randomised and mismatch is None:
        # as Erdman et al.: re-check the best protocol at twice the photon cutoff
        cut = check_cutoff(battery, np.reshape(ev["best_explored"]["protocol"], (-1, 1)), venv.dt)
        ev["best_explored"]["doubled_cutoff_change"] = cut["ergotropy_change"]
    if selector is not None:        # selection is the training's spend (select_backend)
        if not selector.history or selector.history[-1]["episode"] != state.episode:
            selector.record(state.episode, state.step)          # the final policy is a candidate too
    store.annotate(run, spent=train_counter.totals())
    if selector is not None:
        selected = selector.restore_best()
        report_envs = {name: fixed_env(w, final_backend) for name, w in ENVIRONMENTS.items()}
        test = {f"test{i}": fixed_env(w, final_backend) for i, w in enumerate(heldout_realisations(test_random, TEST_SEED))}
        report = selector.evaluate_on(report_envs)
        test_erg = selector.evaluate_on(test)
        if test_erg:
            report["heldout_mean"] = float(np.mean(list(test_erg.values())))
            report["heldout_min"] = float(np.min(list(test_erg.values())))
        ev["selection"] = {"every": eval_every, "history": selector.history, "selected": selected,
                           "report": report, "heldout": test_erg,
                           "heldout_omegas": heldout_realisations(test_random, TEST_SEED)}
    spent = train_counter.totals() | {"evaluation_cost": eval_counter.totals()}
    summary = {"run": run, "env": env, "regime": regime, "seed": cfg.seed, "steps": state.step,
               "episodes": state.episode, "updates": state.updates, "wall_s": state.wall,
               "steps_per_s": state.step / max(state.wall, 1e-9),
               "updates_per_s": state.updates / max(state.wall, 1e-9), **ev, **spent, "config": config,
               "precision": agent.precision_info}
    finish = {k: summary[k] for k in ("steps", "episodes", "updates", "wall_s")} | {
        "best_explored": ev["best_explored"]["ergotropy"], "deterministic": ev["deterministic"]["ergotropy"],
        "deterministic_protocol": ev["deterministic"]["protocol"]} | spent
    if selector is not None:
        finish["selection_report"] = ev["selection"]["report"]
        finish["selection_heldout"] = ev["selection"]["heldout"]
    store.finish_run(run, finish)
    store.close()
    if isinstance(backend, str):                  # the clients this run opened (a lab's sockets)
        for b in {id(raw_backend): raw_backend, id(eval_raw): eval_raw}.values():
            b.close()
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
