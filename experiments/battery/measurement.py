"""The measurement study (issue 7): what a closed-loop SAC policy gains per unit of measurement.

For each configuration (observation regime, shots per setting, measurement frequency,
channel noise, reward mode) train SAC on the (noisy) simulator, then evaluate its
deterministic policy under the same measurements. Reported per configuration:

* ``eval_mean`` ± ``eval_ci95``: the exact terminal ergotropy ℰ(τ) (units ω_0, from the
  simulator's state) of the trained policy, over ``n_eval`` episodes whose observations carry
  fresh shot noise;
* ``best_explored``: the best exact ℰ(τ) of any training episode;
* the hardware cost of ONE episode (:func:`qhil.envs.measurement.episode_cost`: settings,
  circuits, shots, played steps including prefix replays) and of the whole training run
  (episodes × that).

A configuration is a :class:`StudyConfig`; its run spec (:class:`MeasurementRun`) goes through
the one runner (:func:`qhil.experiments.run_specs`) into ``<work>/runs.sqlite``, checkpoints
``<work>/<name>.pt``: a finished configuration is skipped, an unfinished one resumes from its
checkpoint. :func:`write_report` writes ``measurement_study.csv/.md`` and ``pareto.png``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qhil.drivers import MeasurementSchedule, REGIMES, ValidationError, create_backend
from qhil.drivers.backend import SEED_MAX
from qhil.envs import DickeBattery, ENVIRONMENTS, ChargingVectorEnv
from qhil.envs.measurement import REWARD_MODES, custom_observables, episode_cost

from ..reports import print_rows, pyplot, write_csv, write_markdown
from ..runner import LocalExecutor, RunOutcome, finished, run_specs
from ..stats import pareto_front, t_half_width

#: Named custom regimes: E_j plus every Z_iZ_j correlation (N = 4; one setting, like ``energies``).
CUSTOM_REGIMES = {"zz": "custom:" + "+".join(f"Z{i}Z{j}" for i in range(4) for j in range(i + 1, 4))}
#: K, the charging env's default number of steps (τ = 5.6, Δt = 0.2).
N_STEPS = 28
#: ``qhil study measurement --setup`` presets: values for the options left unset. ``converged``
#: is the batched Table 1 scale (``qhil reproduce --setup batched``: 56k steps, 8 batteries per
#: call, 1 update per 8 steps, each regime's best memory), 3 seeds, open loop trained once.
SETUPS: dict[str, dict[str, Any]] = {
    "converged": {"about": "batched Table 1 scale, 3 seeds (runs/measurement_converged)",
                  "total_steps": 56_000, "seeds": 3, "n_envs": 8, "updates_per_step": 0.125,
                  "learning_starts": 4_000, "precision": "auto",
                  "windows": "energies=28,first_order=28,zz=28,second_order=actions:28", "share_open_loop": True,
                  "priority": True,
                  "work_dir": Path("runs/measurement_converged"),
                  "out_dir": Path("docs/results/measurement_converged")},
}
#: Aer channels accepted by ``noise`` (probability per step and qubit).
NOISE_CHANNELS = ("bit_flip", "phase_flip", "depolarizing")


def parse_frequency(freq: str | int) -> tuple[int, bool]:
    """Measurement frequency "1" (every step), "m" (every m-th step) or "final" (only at
    k = K) → (every, final_only)."""
    s = str(freq).strip().lower()
    if s in ("final", "final_only"):
        return 1, True
    if s.isascii() and s.isdecimal() and 1 <= int(s) <= 1000:
        return int(s), False
    raise ValidationError("frequency", f"{freq!r}", "'1' (every step), 'm' (every m-th step, 1..1000) or 'final'")


def parse_noise(noise: str | None) -> list[tuple[str, float]]:
    """"depolarizing:0.01,bit_flip:0.005" → [("depolarizing", 0.01), …] (probability per step)."""
    if noise in (None, "", "none"):
        return []
    out = []
    for item in str(noise).split(","):
        name, _, p = item.partition(":")
        name = name.strip()
        if name not in NOISE_CHANNELS:
            raise ValidationError("noise", f"unknown channel {name!r}", ", ".join(NOISE_CHANNELS))
        try:
            prob = float(p)
        except ValueError:
            raise ValidationError("noise", f"{item!r} has no probability",
                                  "channel:p with p in [0, 1], e.g. depolarizing:0.01") from None
        if not 0.0 <= prob <= 1.0:
            raise ValidationError("noise", f"probability {prob} of {name}", "[0, 1] per step")
        out.append((name, prob))
    return out


def study_observables(regime: str, n_qubits: int) -> str | tuple[str, ...]:
    """A regime name (energies, first_order, second_order, full_state), a named custom regime
    (``zz``) or ``custom:P1+P2+…`` → what :class:`ChargingVectorEnv` takes as ``regime``."""
    regime = CUSTOM_REGIMES.get(regime, regime)
    if regime in REGIMES:
        return regime
    if regime.startswith("custom:"):
        labels = [x for x in regime[len("custom:"):].split("+") if x]
        return custom_observables(labels, n_qubits)
    raise ValidationError("regime", f"unknown regime {regime!r}",
                          ", ".join(REGIMES) + ", " + ", ".join(CUSTOM_REGIMES) + " or custom:P1+P2+…")


@dataclass(frozen=True)
class StudyConfig:
    """One point of the study. Steps are environment steps; shots are per local setting."""

    regime: str = "second_order"
    shots: int | None = None          # None: exact expectation values
    frequency: str = "1"              # "1", "m" or "final"
    noise: str | None = None          # e.g. "depolarizing:0.01" (Aer channels, per step)
    reward: str = "exact"             # or "tomography_terminal"
    tomography_shots: int | None = 1000
    env: str = "env1"
    seed: int = 0
    total_steps: int = 5_000
    n_envs: int = 1                   # batteries stepped together (batched training)
    history: int | None = None        # memory window (HistoryVectorEnv): size, None = off
    history_of: str = "observations"  # what the window holds: "observations" or "actions"

    def __post_init__(self) -> None:
        if self.env not in ENVIRONMENTS:
            raise ValidationError("env", f"unknown environment {self.env!r}", ", ".join(ENVIRONMENTS))
        study_observables(self.regime, 4)
        parse_frequency(self.frequency)
        parse_noise(self.noise)
        if self.reward not in REWARD_MODES:
            raise ValidationError("reward", f"unknown reward mode {self.reward!r}", ", ".join(REWARD_MODES))
        MeasurementSchedule("energies", shots=self.shots)            # validates shots
        if self.tomography_shots is not None:
            MeasurementSchedule("energies", shots=self.tomography_shots)
        if isinstance(self.total_steps, bool) or not (isinstance(self.total_steps, int)
                                                      and 1 <= self.total_steps <= 10_000_000):
            raise ValidationError("total_steps", f"{self.total_steps!r}", "an integer in [1, 10^7]")
        if isinstance(self.seed, bool) or not (isinstance(self.seed, int) and 0 <= self.seed <= SEED_MAX):
            raise ValidationError("seed", f"{self.seed!r}", f"an integer in [0, {SEED_MAX}]")
        if isinstance(self.n_envs, bool) or not (isinstance(self.n_envs, int) and 1 <= self.n_envs <= 4096):
            raise ValidationError("n_envs", f"{self.n_envs!r}", "an integer in [1, 4096]")
        if self.history is not None and (isinstance(self.history, bool) or not isinstance(self.history, int)
                                         or not 1 <= self.history <= N_STEPS):
            raise ValidationError("history", f"{self.history!r}", f"None or an integer in [1, {N_STEPS}]")
        if self.history_of not in ("observations", "actions") or (self.history is None
                                                                 and self.history_of != "observations"):
            raise ValidationError("history_of", f"{self.history_of!r}",
                                  "observations or actions (actions only with a history window)")

    @property
    def name(self) -> str:
        shots = "exact" if self.shots is None else f"s{self.shots}"
        freq = "final" if parse_frequency(self.frequency)[1] else f"every{parse_frequency(self.frequency)[0]}"
        rew = "exact" if self.reward == "exact" else f"tomo{self.tomography_shots or 'exact'}"
        noise = (self.noise or "none").replace(":", "").replace(",", "+")
        batch = "" if self.n_envs == 1 else f"/batch{self.n_envs}"
        window = "" if self.history is None else f"/window-{self.history_of}{self.history}"
        return (f"{self.env}/{self.regime}/{shots}/{freq}/rew-{rew}/noise-{noise}/steps{self.total_steps}"
                f"{batch}{window}/seed{self.seed}")

    @property
    def open_loop(self) -> bool:
        """Final-only measurement with the simulator's reward: the policy never sees a
        measurement before its episode ends, so regime and shots cannot change its training."""
        return parse_frequency(self.frequency)[1] and self.reward == "exact" and self.noise is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def battery(self) -> DickeBattery:
        return DickeBattery(omegas=ENVIRONMENTS[self.env])

    def backend(self, seed: int | None = None, cache_size: int = 64) -> Any:
        channels = parse_noise(self.noise)
        if not channels:
            return create_backend("statevector", seed=seed)
        return create_backend("aer", noise=channels, seed=seed, cache_size=cache_size)

    def make_env(self, n_envs: int = 1, battery: DickeBattery | None = None, shots: Any = "same",
                 backend: Any = None, **kwargs: Any) -> ChargingVectorEnv:
        """The charging env of this configuration (``shots="same"``: this config's shots)."""
        from qhil.envs.history import HistoryVectorEnv
        every, final_only = parse_frequency(self.frequency)
        battery = battery or self.battery()
        env = ChargingVectorEnv(battery=battery, regime=study_observables(self.regime, battery.n_qubits),
                                n_envs=n_envs, backend=backend or self.backend(cache_size=max(64, 2 * n_envs)),
                                shots=self.shots if shots == "same" else shots, every=every,
                                final_only=final_only, reward=self.reward,
                                tomography_shots=self.tomography_shots, **kwargs)
        return env if self.history is None else HistoryVectorEnv(env, self.history, of=self.history_of)

    def cost(self) -> dict[str, int]:
        """Hardware cost of one episode (see :func:`qhil.envs.measurement.episode_cost`)."""
        every, final_only = parse_frequency(self.frequency)
        n = len(ENVIRONMENTS[self.env])
        sched = MeasurementSchedule(study_observables(self.regime, n), every=every, final_only=final_only,
                                    shots=self.shots)
        return episode_cost(sched, n, N_STEPS, self.reward, self.tomography_shots)


def study_grid(regimes: Sequence[str], shots: Sequence[int | None], frequencies: Sequence[str],
               noise: str | None = None, reward: str = "exact", tomography_shots: int | None = 1000,
               env: str = "env1", seeds: Sequence[int] = (0,), total_steps: int = 5_000, n_envs: int = 1,
               windows: dict[str, Any] | None = None, share_open_loop: bool = False) -> list[StudyConfig]:
    """Every combination (regime × shots × frequency × seed), in that nesting order.

    windows:         {regime: (size, of)} memory windows (e.g. ``records.parse_windows``'s); others none
    share_open_loop: train the open-loop configurations (:attr:`StudyConfig.open_loop`: final only,
                     simulator reward) once per seed, as the first regime with exact values, since
                     neither regime nor shots can change them; :func:`aggregate_rows` reports it as
                     regime "open loop"."""
    def window(regime: str) -> dict[str, Any]:
        w = (windows or {}).get(regime)
        return {} if w is None else {"history": int(w[0]), "history_of": str(w[1])}

    out: list[StudyConfig] = []
    seen: set[str] = set()
    for r in regimes:                  # seeds innermost: an interrupted study has whole points
        for s in shots:
            for f in frequencies:
                for seed in seeds:
                    c = StudyConfig(regime=r, shots=s, frequency=str(f), noise=noise, reward=reward,
                                    tomography_shots=tomography_shots, env=env, seed=seed, total_steps=total_steps,
                                    n_envs=n_envs, **window(r))
                    if share_open_loop and c.open_loop:
                        c = dataclasses.replace(c, regime=regimes[0], shots=None, **window(regimes[0]))
                    if c.name not in seen:
                        seen.add(c.name)
                        out.append(c)
    return out


def by_priority(configs: Sequence[StudyConfig]) -> list[StudyConfig]:
    """``configs`` reordered so that an interrupted study has the most telling points whole:
    the open-loop configuration, then every-step measurement (shots exact, 100, 10, 1000, each
    over all regimes), then the sparser frequencies; seeds stay together."""
    rank = {None: 0, 100: 1, 10: 2, 1000: 3}
    regimes = list(dict.fromkeys(c.regime for c in configs))

    def key(c: StudyConfig) -> tuple:
        every, final = parse_frequency(c.frequency)
        return (not c.open_loop, final, every, rank.get(c.shots, 4), c.shots or 0, regimes.index(c.regime), c.seed)
    return sorted(configs, key=key)


def play_policy(agent: Any, env: ChargingVectorEnv, seed: int | None = None) -> dict[str, np.ndarray]:
    """Play the policy's deterministic action on every battery of ``env`` for one episode.
    Returns the exact terminal ergotropy (B,) and energy (B,) and the protocols (B, K)."""
    if seed is not None:
        env.seed(seed)
    obs, _ = env.reset()
    while True:
        lam = agent.act(obs, deterministic=True)
        obs, _, done, trunc, info = env.step(lam[:, 0])
        if done.all() or trunc.all():
            break
    return {"ergotropy": np.asarray(info["ergotropy"], float), "energy": np.asarray(info["energy"], float),
            "protocols": env.controls}


def sac_config_for(cfg: StudyConfig, **overrides: Any) -> Any:
    """SAC settings of a study run: the defaults with a warm-up of min(5000, total/5) steps,
    schedules scaled to the run length (:meth:`SACConfig.scaled`)."""
    from qhil.agents.sac_config import SACConfig
    base = {"total_steps": cfg.total_steps, "seed": cfg.seed,
            "learning_starts": min(5_000, max(1, cfg.total_steps // 5))}
    return SACConfig.from_dict({**base, **{k: v for k, v in overrides.items() if v is not None}}).scaled()


def reward_weight_for(cfg: StudyConfig) -> Any:
    """The env's reward weight of a study run: the paper's Eq. (12) schedule (written for
    SAC's reference run length) stretched to ``cfg.total_steps`` like SAC's own schedules."""
    from qhil.agents.sac_config import SACConfig
    from qhil.envs.charging import RewardWeight
    return RewardWeight().scaled(cfg.total_steps / SACConfig().reference_steps)


def run_config(cfg: StudyConfig, work_dir: str | Path, n_eval: int = 32, sac: dict[str, Any] | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Train, evaluate and record one configuration (skipped if the store has it finished).
    Returns its summary (what :func:`finished_runs` reads back); :class:`MeasurementRun` is its run spec."""
    from qhil.agents.runstore import RunStore
    from qhil.agents.sac import SAC
    from qhil.agents.training import train_off_policy
    work = Path(work_dir)
    store = RunStore(work / "runs.sqlite")
    try:
        done = store.runs().get(cfg.name)
        if done is not None and done["status"] == "done" and done["summary"]:
            return done["summary"]
        scfg = sac_config_for(cfg, **(sac or {}))
        env = cfg.make_env(n_envs=cfg.n_envs, reward_weight=reward_weight_for(cfg))
        env.seed(cfg.seed)
        agent = SAC(env.obs_dim, env.action_low, env.action_high, scfg)
        config = {"study": cfg.to_dict(), "sac": scfg.to_dict()}
        state = train_off_policy(agent, env, store=store, run=cfg.name, config=config,
                                 checkpoint=work / (cfg.name.replace("/", "_") + ".pt"),
                                 checkpoint_every=50, progress=progress)
        ev_env = cfg.make_env(n_envs=n_eval, weight=0.0)
        ev = play_policy(agent, ev_env, seed=10_000 + cfg.seed)
        erg = ev["ergotropy"]
        cost = cfg.cost()
        summary = {"config": cfg.to_dict(), "name": cfg.name, "steps": state.step, "episodes": state.episode,
                   "wall_s": state.wall, "best_explored": state.best, "best_protocol": state.best_protocol,
                   "eval_mean": float(erg.mean()), "eval_std": float(erg.std(ddof=1)) if len(erg) > 1 else 0.0,
                   "eval_ci95": t_half_width(erg) if erg.std() > 0 else 0.0, "n_eval": len(erg),
                   "eval_protocol_first": ev["protocols"][0].tolist(), "cost": cost,
                   "train_total_shots": cost["total_total_shots"] * state.episode,
                   "train_played_steps": cost["total_played_steps"] * state.episode}
        store.finish_run(cfg.name, summary)
        return summary
    finally:
        store.close()


def study_rows(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat table rows (one per configuration), sorted by regime, shots, frequency."""
    rows = []
    for s in summaries:
        c, cost = s["config"], s["cost"]
        rows.append({"regime": c["regime"], "shots": "exact" if c["shots"] is None else c["shots"],
                     "frequency": c["frequency"], "noise": c["noise"] or "none", "reward": c["reward"],
                     "seed": c["seed"], "train_steps": s["steps"], "eval_mean": s["eval_mean"],
                     "eval_ci95": s["eval_ci95"], "n_eval": s["n_eval"], "best_explored": s["best_explored"],
                     "settings": cost["obs_settings"], "measured_steps": cost["obs_measured_steps"],
                     "circuits_per_episode": cost["total_circuits"],
                     "shots_per_episode": cost["total_total_shots"],
                     "played_steps_per_episode": cost["total_played_steps"],
                     "train_episodes": s["episodes"], "train_total_shots": s["train_total_shots"],
                     "train_played_steps": s["train_played_steps"], "wall_s": s["wall_s"],
                     "n_envs": c.get("n_envs", 1),
                     "window": "" if c.get("history") is None else f"{c.get('history_of', 'observations')}:{c['history']}",
                     "open_loop": StudyConfig(**c).open_loop})
    key = {"energies": 0, "first_order": 1, "second_order": 2}
    rows.sort(key=lambda r: (key.get(r["regime"], 3), r["regime"], r["noise"], r["reward"],
                             r["shots"] == "exact", r["shots"] if r["shots"] != "exact" else 0,
                             r["frequency"] == "final", r["frequency"]))
    return rows


def load_policy(cfg: StudyConfig, work_dir: str | Path, sac: dict[str, Any] | None = None) -> Any:
    """The SAC agent of a study configuration, from its checkpoint ``<work>/<name>.pt``."""
    import torch

    from qhil.agents.sac import SAC
    path = Path(work_dir) / (cfg.name.replace("/", "_") + ".pt")
    if not path.exists():
        raise ValidationError("policy", f"no checkpoint {path}", "a configuration trained with `qhil study measurement`")
    from qhil.agents.sac_config import SACConfig
    blob = torch.load(path, weights_only=False)
    scfg = SACConfig.from_dict({**blob["agent"]["config"], **(sac or {})})
    env = cfg.make_env(n_envs=1)
    agent = SAC(env.obs_dim, env.action_low, env.action_high, scfg)
    agent.load_state_dict(blob["agent"])
    return agent


# -- the run spec and the runner ---------------------------------------------------------------
@dataclass(frozen=True)
class MeasurementRun:
    """The run spec of one configuration: ``n_eval`` evaluation episodes, ``sac`` overrides of
    the SAC settings as (key, value) pairs (e.g. ``(("hidden", (16, 16)),)``)."""

    config: StudyConfig
    n_eval: int = 32
    sac: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.config, StudyConfig):
            raise ValidationError("config", f"{type(self.config).__name__}", "a StudyConfig")
        if isinstance(self.n_eval, bool) or not (isinstance(self.n_eval, int) and 1 <= self.n_eval <= 100_000):
            raise ValidationError("n_eval", f"{self.n_eval!r}", "an integer in [1, 100000]")
        sac_config_for(self.config, **dict(self.sac))          # the SAC options, checked before any run

    @property
    def name(self) -> str:
        return self.config.name

    def execute(self, work_dir: Path) -> dict[str, Any]:
        return run_config(self.config, work_dir, n_eval=self.n_eval, sac=dict(self.sac) or None)


def measurement_runs(configs: Sequence[StudyConfig], n_eval: int = 32,
                     sac: dict[str, Any] | None = None) -> list[MeasurementRun]:
    """The run specs of ``configs`` (validated, SAC options included, before any run)."""
    items = tuple(sorted((sac or {}).items()))
    return [MeasurementRun(c, n_eval, items) for c in configs]


def run_study(configs: Sequence[StudyConfig], work_dir: str | Path, executor: Any = None, n_eval: int = 32,
              sac: dict[str, Any] | None = None, log: Any = None) -> list[RunOutcome]:
    """Run the unfinished configurations on ``executor`` (default: one after the other, here).
    One outcome per configuration; a failed one is reported there and the others still run."""
    return run_specs(measurement_runs(configs, n_eval, sac), work_dir, executor or LocalExecutor(1), log=log)


def finished_runs(work_dir: str | Path) -> dict[str, dict[str, Any]]:
    """{name: summary} of the finished configurations in ``<work_dir>/runs.sqlite`` (the run
    store is the one record; the study has always kept its summaries there)."""
    return {k: v for k, v in finished(work_dir).items() if v}


# -- the report ---------------------------------------------------------------------------------
#: GRAPE's open-loop terminal ergotropy on Env1 (ω_0; docs/results/grape_env1.json), the
#: reference line of the report.
GRAPE_ENV1 = 4.2716
#: The table's columns (the CSV has every field of :func:`study_rows`).
REPORT_COLUMNS = ["regime", "shots", "frequency", "noise", "reward", "train_steps", "eval_mean", "eval_ci95",
                  "best_explored", "settings", "measured_steps", "shots_per_episode", "played_steps_per_episode",
                  "train_total_shots"]
#: Float format of the committed CSVs of the studies.
CSV_FLOAT = ".6g"


def write_tables(out_dir: str | Path, stem: str, rows: list[dict[str, Any]], cols: Sequence[str], title: str,
                 note: str) -> Path:
    """``<out_dir>/<stem>.csv`` (every field, :data:`CSV_FLOAT`) and ``<stem>.md`` (``cols``
    under ``title`` and ``note``) of a study; returns ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{stem}.csv", rows, CSV_FLOAT)
    write_markdown(out / f"{stem}.md", rows, cols, title, note)
    return out


def scale_note(rows: list[dict]) -> str:
    """The Markdown note under the table's title: scale, statistics and cost conventions."""
    steps = sorted({r["train_steps"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    return (f"Scale: {len(rows)} configurations, SAC trained {', '.join(map(str, steps))} environment steps each "
            f"(the paper uses 100k), seed(s) {', '.join(map(str, seeds))}; `eval_mean` ± `eval_ci95`: the "
            f"deterministic policy's exact terminal ergotropy over `n_eval` episodes with fresh shot noise in its "
            f"observations (95% Student-t); `best_explored`: best exact terminal ergotropy of any training episode. "
            f"Costs are per episode on hardware: `shots_per_episode` = measured steps × settings × shots (+ 81 × "
            f"tomography shots for the tomography reward), `played_steps_per_episode` = control steps played "
            f"including prefix replays (Σ_k k · settings · shots). Exact configurations (shots 'exact') count 0 shots: "
            f"they are the infinite-shot limit. GRAPE (open loop, no measurement): {GRAPE_ENV1} on Env1.")


#: The columns of the seed-aggregated table (:func:`aggregate_rows`).
AGGREGATE_COLUMNS = ["regime", "shots", "frequency", "window", "n_seeds", "eval_mean", "seed_ci95", "eval_min",
                     "eval_max", "best_explored", "settings", "shots_per_episode", "played_steps_per_episode",
                     "train_total_shots"]


def aggregate_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration over its seeds: ``eval_mean`` = mean over seeds of each seed's
    mean exact terminal ergotropy, ``seed_ci95`` its 95% Student-t half-width over seeds (NaN for
    one seed), min/max over seeds, mean ``best_explored``; cost columns as per seed (identical).
    Open-loop configurations (final only, simulator reward) are labelled regime ``open loop``
    and shots ``any``: nothing the policy measures reaches it."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        key = tuple(r[k] for k in ("regime", "shots", "frequency", "noise", "reward", "train_steps", "window"))
        groups.setdefault(key, []).append(r)
    out = []
    for members in groups.values():
        first = members[0]
        means = [m["eval_mean"] for m in members]
        row = {k: first[k] for k in ("regime", "shots", "frequency", "noise", "reward", "train_steps", "window",
                                     "n_envs", "settings", "measured_steps", "shots_per_episode",
                                     "played_steps_per_episode")}
        if first.get("open_loop"):
            row.update(regime="open loop", shots="any")
        row |= {"n_seeds": len(members), "seeds": " ".join(str(m["seed"]) for m in sorted(members, key=lambda m: m["seed"])),
                "eval_mean": float(np.mean(means)), "seed_ci95": t_half_width(means),
                "eval_min": float(np.min(means)), "eval_max": float(np.max(means)),
                "best_explored": float(np.mean([m["best_explored"] for m in members])),
                "train_total_shots": float(np.mean([m["train_total_shots"] for m in members])),
                "wall_s": float(np.mean([m["wall_s"] for m in members]))}
        out.append(row)
    key = {"energies": 0, "first_order": 1, "second_order": 2, "open loop": 9}
    out.sort(key=lambda r: (key.get(r["regime"], 3), r["regime"], r["noise"], r["reward"], r["shots"] == "exact",
                            r["shots"] if isinstance(r["shots"], int) else 0, r["frequency"] == "final", r["frequency"]))
    return out


def write_report(work_dir: str | Path, out_dir: str | Path, echo: bool = True) -> list[dict[str, Any]]:
    """``measurement_study.csv/.md`` (one row per seed) and ``pareto.png`` under ``out_dir``
    from EVERY finished configuration in ``work_dir`` (printed too with ``echo``); with several
    seeds per configuration also ``measurement_study_seeds.csv/.md`` (aggregated over seeds,
    :func:`aggregate_rows`), and the figure shows those means. Returns the per-seed rows; none
    (nothing written) if no configuration has finished."""
    rows = study_rows(list(finished_runs(work_dir).values()))
    if not rows:
        return rows
    out = write_tables(out_dir, "measurement_study", rows, REPORT_COLUMNS,
                       "Measurement-limited SAC: terminal ergotropy (exact, simulator) against measurement cost per "
                       "episode", scale_note(rows))
    agg = aggregate_rows(rows)
    several = any(r["n_seeds"] > 1 for r in agg)
    if several:
        write_tables(out_dir, "measurement_study_seeds", agg, AGGREGATE_COLUMNS,
                     "Measurement-limited SAC over seeds: mean exact terminal ergotropy ± 95% CI over seeds",
                     scale_note(rows) + " Here `eval_mean` is the mean over seeds of each seed's evaluation mean and "
                     "`seed_ci95` its 95% Student-t half-width over seeds. 'open loop' = final-only measurement with "
                     "the simulator's reward: the policy sees no measurement before the episode ends, so it was "
                     "trained once per seed for every regime and shot count.")
    plotted = [r | {"eval_ci95": r["seed_ci95"]} for r in agg] if several else rows
    write_pareto(plotted, out / "pareto.png", seeds=max(r["n_seeds"] for r in agg))
    if echo:
        print_rows(agg if several else rows, AGGREGATE_COLUMNS if several else REPORT_COLUMNS)
    return rows


def write_pareto(rows: list[dict], path: Path, seeds: int = 1) -> None:
    """Ergotropy against shots and against played steps per episode, Pareto front of the shot runs."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    markers = {"1": "o", "2": "s", "final": "^"}
    regimes = sorted({r["regime"] for r in rows})
    colors = {g: plt.cm.tab10(i) for i, g in enumerate(regimes)}
    for ax, key, label in ((axes[0], "shots_per_episode", "shots per episode"),
                           (axes[1], "played_steps_per_episode", "control steps played per episode (prefix replays)")):
        finite = [r for r in rows if r["shots"] not in ("exact", "any")]
        for r in finite:
            ax.errorbar(r[key], r["eval_mean"], yerr=r["eval_ci95"] if r["eval_ci95"] == r["eval_ci95"] else 0,
                        marker=markers.get(str(r["frequency"]), "D"), color=colors[r["regime"]], ms=6, ls="none",
                        mfc="none" if r["reward"] != "exact" or r["noise"] != "none" else None, alpha=0.85)
        if finite:
            front = pareto_front([r[key] for r in finite], [r["eval_mean"] for r in finite])
            ax.plot([finite[i][key] for i in front], [finite[i]["eval_mean"] for i in front], "k-", lw=1,
                    marker="o", ms=13, mfc="none", label="Pareto front (shot runs)")
        for r in rows:
            if r["shots"] in ("exact", "any"):     # ∞ shots, or open loop (no measurement reaches the policy)
                ax.axhline(r["eval_mean"], color=colors[r["regime"]], lw=0.8 if r["shots"] == "exact" else 2.0,
                           ls={"1": "--", "2": "-.", "final": ":"}.get(str(r["frequency"]), "--"), alpha=0.7)
        ax.axhline(GRAPE_ENV1, color="k", lw=1.2, ls=":", label=f"GRAPE open loop {GRAPE_ENV1} (no measurement)")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("terminal ergotropy ℰ(τ) (ω_0), exact")
    handles = [Line2D([], [], color=colors[g], marker="o", ls="none", label=g) for g in regimes]
    handles += [Line2D([], [], color="gray", marker=m, ls="none", label=f"measure every {f}" if f != "final"
                       else "final only") for f, m in markers.items()]
    handles += [Line2D([], [], color="gray", ls="--", label="exact expectation values (∞ shots)"),
                Line2D([], [], color="k", ls="-", marker="o", ms=9, mfc="none", label="Pareto front (shot runs)"),
                Line2D([], [], color="k", ls=":", label=f"GRAPE {GRAPE_ENV1}"),
                Line2D([], [], color="gray", marker="o", mfc="none", ls="none", label="tomography reward / noise")]
    if "open loop" in colors:
        handles.append(Line2D([], [], color=colors["open loop"], lw=2.0, ls=":",
                              label="open loop (final only, simulator reward)"))
    fig.legend(handles=handles, fontsize=7, loc="center right")
    steps = sorted({r["train_steps"] for r in rows})
    over = "one seed: mean ± 95% CI over evaluation episodes" if seeds == 1 else \
        f"{seeds} seeds: mean over seeds ± 95% CI over seeds"
    fig.suptitle(f"Measurement-limited SAC on {len(rows)} configurations ({'/'.join(map(str, steps))} training steps, "
                 f"{over}); deterministic policy", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grape_protocol(env: str, results: str | Path = "docs/results") -> dict[str, Any]:
    """The GRAPE protocol of ``env`` (``<results>/grape_<env>.json``, from ``qhil grape``):
    a dict with ``protocol`` (λ_k, units ω_0), ``tau`` and ``n_steps``."""
    path = Path(results) / f"grape_{env}.json"
    try:
        g = json.loads(path.read_text())
        _ = g["protocol"], g["tau"], g["n_steps"]
        return g
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValidationError("env", f"no usable GRAPE protocol {path} ({exc})",
                              f"run `qhil grape --env {env} --out {path}` first") from None
