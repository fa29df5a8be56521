"""Measurement-limited control: what a closed-loop SAC policy gains per unit of measurement.

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

Runs go to a :class:`~qhil.agents.runstore.RunStore` (``<work>/runs.sqlite``; one run per
configuration, checkpoints ``<work>/<name>.pt``): a finished configuration is skipped, an
unfinished one resumes from its checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qhil.drivers import MeasurementSchedule, REGIMES, ValidationError, create_backend
from qhil.drivers.backend import SEED_MAX
from qhil.envs import DickeBattery, ENVIRONMENTS, ChargingVectorEnv
from qhil.envs.measurement import REWARD_MODES, custom_observables, episode_cost

#: Named custom regimes: E_j plus every Z_iZ_j correlation (N = 4; one setting, like ``energies``).
CUSTOM_REGIMES = {"zz": "custom:" + "+".join(f"Z{i}Z{j}" for i in range(4) for j in range(i + 1, 4))}
#: K, the charging env's default number of steps (τ = 5.6, Δt = 0.2).
N_STEPS = 28
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

    @property
    def name(self) -> str:
        shots = "exact" if self.shots is None else f"s{self.shots}"
        freq = "final" if parse_frequency(self.frequency)[1] else f"every{parse_frequency(self.frequency)[0]}"
        rew = "exact" if self.reward == "exact" else f"tomo{self.tomography_shots or 'exact'}"
        noise = (self.noise or "none").replace(":", "").replace(",", "+")
        return f"{self.env}/{self.regime}/{shots}/{freq}/rew-{rew}/noise-{noise}/steps{self.total_steps}/seed{self.seed}"

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
        every, final_only = parse_frequency(self.frequency)
        battery = battery or self.battery()
        return ChargingVectorEnv(battery=battery, regime=study_observables(self.regime, battery.n_qubits),
                                 n_envs=n_envs, backend=backend or self.backend(cache_size=max(64, 2 * n_envs)),
                                 shots=self.shots if shots == "same" else shots, every=every,
                                 final_only=final_only, reward=self.reward,
                                 tomography_shots=self.tomography_shots, **kwargs)

    def cost(self) -> dict[str, int]:
        """Hardware cost of one episode (see :func:`qhil.envs.measurement.episode_cost`)."""
        every, final_only = parse_frequency(self.frequency)
        n = len(ENVIRONMENTS[self.env])
        sched = MeasurementSchedule(study_observables(self.regime, n), every=every, final_only=final_only,
                                    shots=self.shots)
        return episode_cost(sched, n, N_STEPS, self.reward, self.tomography_shots)


def study_grid(regimes: Sequence[str], shots: Sequence[int | None], frequencies: Sequence[str],
               noise: str | None = None, reward: str = "exact", tomography_shots: int | None = 1000,
               env: str = "env1", seeds: Sequence[int] = (0,), total_steps: int = 5_000) -> list[StudyConfig]:
    """Every combination (regime × shots × frequency × seed), in that nesting order."""
    return [StudyConfig(regime=r, shots=s, frequency=str(f), noise=noise, reward=reward,
                        tomography_shots=tomography_shots, env=env, seed=seed, total_steps=total_steps)
            for seed in seeds for r in regimes for s in shots for f in frequencies]


def t_half_width(x: Sequence[float], level: float = 0.95) -> float:
    """Half-width of the Student-t confidence interval of the mean (NaN for < 2 values)."""
    from scipy.stats import t
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return float("nan")
    return float(t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


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
    from .sac_config import SACConfig
    base = {"total_steps": cfg.total_steps, "seed": cfg.seed,
            "learning_starts": min(5_000, max(1, cfg.total_steps // 5))}
    return SACConfig.from_dict({**base, **{k: v for k, v in overrides.items() if v is not None}}).scaled()


def run_config(cfg: StudyConfig, work_dir: str | Path, n_eval: int = 32, sac: dict[str, Any] | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Train, evaluate and record one configuration (skipped if the store has it finished).
    Returns its summary (what :func:`load_results` reads back)."""
    from .runstore import RunStore
    from .sac import SAC
    from .training import train_off_policy
    work = Path(work_dir)
    store = RunStore(work / "runs.sqlite")
    try:
        done = store.runs().get(cfg.name)
        if done is not None and done["status"] == "done" and done["summary"]:
            return done["summary"]
        scfg = sac_config_for(cfg, **(sac or {}))
        env = cfg.make_env(n_envs=1, w_mean=scfg.w_mean, w_width=scfg.w_width)
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


def _worker(args: tuple[dict, str, int, dict | None]) -> str:
    cfg, work, n_eval, sac = args
    c = StudyConfig(**cfg)
    run_config(c, work, n_eval=n_eval, sac=sac)
    return c.name


def run_study(configs: Sequence[StudyConfig], work_dir: str | Path, jobs: int = 1, n_eval: int = 32,
              sac: dict[str, Any] | None = None, log: Any = print,
              failures: list[tuple[str, str]] | None = None) -> list[str]:
    """Run the unfinished configurations, ``jobs`` processes at a time. Returns the names
    finished now. With ``failures`` (a list), a configuration that raises is logged and
    appended there as (name, error) and the others still run; without it the error propagates."""
    if isinstance(jobs, bool) or not (isinstance(jobs, int) and 1 <= jobs <= 64):
        raise ValidationError("jobs", f"{jobs!r}", "an integer in [1, 64]")
    if isinstance(n_eval, bool) or not (isinstance(n_eval, int) and 1 <= n_eval <= 100_000):
        raise ValidationError("n_eval", f"{n_eval!r}", "an integer in [1, 100000]")
    if configs:
        sac_config_for(configs[0], **(sac or {}))      # the SAC options, checked before any run
    finished = set(finished_runs(work_dir))
    pending = [c for c in configs if c.name not in finished]
    log(f"study: {len(configs) - len(pending)} of {len(configs)} configurations already finished; "
        f"{len(pending)} to run, {jobs} at a time")
    if not pending:
        return []
    args = [(c.to_dict(), str(work_dir), n_eval, sac) for c in pending]
    out: list[str] = []

    def failed(name: str, exc: BaseException) -> None:
        if failures is None:
            raise exc
        failures.append((name, f"{type(exc).__name__}: {exc}"))
        log(f"FAILED {name}: {type(exc).__name__}: {exc}")

    if jobs == 1:
        for c, a in zip(pending, args):
            try:
                out.append(_worker(a))
            except Exception as exc:                   # noqa: BLE001 — recorded, the others run
                failed(c.name, exc)
                continue
            log(f"finished {out[-1]}")
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
        futures = [(c.name, ex.submit(_worker, a)) for c, a in zip(pending, args)]
        for name, fut in futures:
            try:
                out.append(fut.result())
            except Exception as exc:                   # noqa: BLE001
                failed(name, exc)
                continue
            log(f"finished {name}")
    return out


def finished_runs(work_dir: str | Path) -> dict[str, dict[str, Any]]:
    """{name: summary} of the finished configurations in ``<work_dir>/runs.sqlite``."""
    db = Path(work_dir) / "runs.sqlite"
    if not db.exists():
        return {}
    from .runstore import RunStore
    store = RunStore(db)
    try:
        return {k: v["summary"] for k, v in store.runs().items() if v["status"] == "done" and v["summary"]}
    finally:
        store.close()


def pareto_front(cost: Sequence[float], value: Sequence[float]) -> np.ndarray:
    """Indices of the non-dominated points (lower cost and higher value are better), by cost."""
    c, v = np.asarray(cost, float), np.asarray(value, float)
    order = np.lexsort((-v, c))
    front, best = [], -np.inf
    for i in order:
        if v[i] > best:
            front.append(int(i))
            best = v[i]
    return np.array(front, dtype=int)


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
                     "train_played_steps": s["train_played_steps"], "wall_s": s["wall_s"]})
    key = {"energies": 0, "first_order": 1, "second_order": 2}
    rows.sort(key=lambda r: (key.get(r["regime"], 3), r["regime"], r["noise"], r["reward"],
                             r["shots"] == "exact", r["shots"] if r["shots"] != "exact" else 0,
                             r["frequency"] == "final", r["frequency"]))
    return rows


def load_policy(cfg: StudyConfig, work_dir: str | Path, sac: dict[str, Any] | None = None) -> Any:
    """The SAC agent of a study configuration, from its checkpoint ``<work>/<name>.pt``."""
    import torch

    from .sac import SAC
    path = Path(work_dir) / (cfg.name.replace("/", "_") + ".pt")
    if not path.exists():
        raise ValidationError("policy", f"no checkpoint {path}", "a configuration trained with `qhil study measurement`")
    from .sac_config import SACConfig
    blob = torch.load(path, weights_only=False)
    scfg = SACConfig.from_dict({**blob["agent"]["config"], **(sac or {})})
    env = cfg.make_env(n_envs=1)
    agent = SAC(env.obs_dim, env.action_low, env.action_high, scfg)
    agent.load_state_dict(blob["agent"])
    return agent
