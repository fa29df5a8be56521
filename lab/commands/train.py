"""``qhil train``: train a SAC charging agent on one environment and observation regime.

    qhil train --env env1 --regime second_order --seed 0 --total-steps 60000
    qhil train --config sac.json --batch-size 128 --run-dir runs/mine     # file, then flags

Every episode goes to the run store (``<run-dir>/runs.sqlite``); a checkpoint
(``<run-dir>/<run>.pt``) is written every ``--checkpoint-every`` episodes, and the same
command resumes from it. The summary printed (and written with ``--json``) reports both
figures, labelled: ``best_explored`` (best terminal ergotropy of any training episode,
the paper's Table 1 metric) and ``deterministic`` (the trained policy's mean-action episode).

Beyond Table 1 (issue 7):

    qhil train --eval-envs env1,env2,env3 --eval-every 20     # Table 2: select by mean over envs
    qhil train --weight 0.5                                   # fixed w of Eq. (11) (Fig. S2)
    qhil train --regime energies --history 4                  # last 4 observations (Sec. V (i))
    qhil train --history 28 --history-of actions              # current observation + last 28 actions
    qhil train --omega-range 0.5,1.5 --eval-random 8 --test-random 32   # domain randomisation

With ``--eval-envs``/``--eval-random`` the deterministic policy is evaluated every
``--eval-every`` episodes on those envs (named ones and/or random validation realisations,
seed 1001) and the policy with the best mean terminal ergotropy is kept; the summary's
``selection`` holds the history, the selected evaluation and, for the selected policy,
Env1–Env3 and ``--test-random`` held-out realisations (seed 2002).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from .args import backend_spec, choice_list, float_in, floats, input_file, int_in, output_dir, output_file
from .model_options import add_model_options, model_from_args, model_label

REGIME_CHOICES = ["full_state", "energies", "first_order", "second_order"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from qhil.agents.sac_config import SACConfig
    s = sub.add_parser("train", help="train a SAC charging agent (Dicke battery)")
    add_model_options(s)
    s.add_argument("--regime", choices=REGIME_CHOICES, default="second_order")
    s.add_argument("--tau", type=float_in(0.0, 1e4, low_open=True), default=5.6,
                   help="charging time τ in (0, 10⁴] (1/ω_0; default 5.6)")
    s.add_argument("--steps", dest="n_steps", type=int_in(1, 10_000), default=28,
                   help="K piecewise-constant steps (default 28); Δt = τ/K")
    s.add_argument("--backend", type=backend_spec, default="statevector",
                   help="driver spec: statevector (default), aer or zmq://host:port")
    s.add_argument("--n-envs", type=int_in(1, 4096), default=1, help="batteries stepped together in one backend call")
    s.add_argument("--config", type=input_file, default=None, help="JSON/TOML file of SAC options")
    s.add_argument("--run-dir", type=output_dir, default=Path("runs/train"), help="run store + checkpoints")
    s.add_argument("--run", default=None, help="run name (default env/regime/seedN, env = custom for a twin)")
    s.add_argument("--checkpoint-every", type=int_in(1, 10**9), default=200, help="episodes between checkpoints")
    s.add_argument("--checkpoint-seconds", type=float_in(0.0, 1e7, low_open=True), default=60.0,
                   help="also checkpoint after this much wall time (seconds; default 60)")
    s.add_argument("--target", type=float_in(-1e6, 1e6), default=None,
                   help="stop once the best explored ergotropy reaches this value")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--json", type=output_file, default=None, help="write the summary here")
    s.add_argument("--weight", type=float_in(0.0, 1.0), default=None,
                   help="fixed reward weight w in [0, 1] of Eq. (11) instead of the schedule of Eq. (12)")
    s.add_argument("--history", type=int_in(1, 10_000), default=None,
                   help="window K: the last K observations (or actions, with --history-of actions)")
    s.add_argument("--history-of", choices=["observations", "actions"], default="observations",
                   help="what the --history window holds: past observations, or the current observation "
                        "plus the last K actions")
    s.add_argument("--omega-range", type=floats(0.0, 100.0, low_open=True, length=2), default=None,
                   help="domain randomisation: ω_j ~ U[lo, hi] every episode, e.g. 0.5,1.5")
    s.add_argument("--omega-spread", type=float_in(0.0, 1.0, low_open=True, high_open=True), default=None,
                   help="domain randomisation: ω_j ~ ω_j(model) (1 + U[−s, s]) every episode, around any "
                        "model (preset, --omegas, --model-json or --from-endpoint)")
    s.add_argument("--omega-seed", type=int_in(0, 2**63 - 1), default=None,
                   help="seed of the ω draws (default: the SAC seed)")
    s.add_argument("--eval-envs", type=choice_list(["env1", "env2", "env3"]), default=[],
                   help="comma-separated envs for checkpoint selection, e.g. env1,env2,env3")
    s.add_argument("--eval-random", type=int_in(0, 10_000), default=0,
                   help="also select on this many random validation realisations U[0.5, 1.5]^N (seed 1001)")
    s.add_argument("--eval-every", type=int_in(1, 10**9), default=20, help="episodes between selection evaluations")
    s.add_argument("--test-random", type=int_in(0, 10_000), default=0,
                   help="evaluate the selected policy on this many held-out realisations (seed 2002)")
    for f in dataclasses.fields(SACConfig):       # every SAC option as a flag, e.g. --batch-size
        flag = "--" + f.name.replace("_", "-")
        if f.name == "hidden":
            s.add_argument(flag, type=lambda t: tuple(int(x) for x in t.split(",")), default=None,
                           help="hidden layer sizes, e.g. 512,256")
        else:
            typ = str if isinstance(f.default, str) else int if isinstance(f.default, int) else float
            s.add_argument(flag, type=typ, default=None, help=f"SAC {f.name} (default {f.default})")
    s.set_defaults(func=run)


#: Recorded options a resumed run must keep: they fix what the policy's inputs mean.
_RUN_IDENTITY = ("env", "regime", "history", "history_of")
#: Recorded since runs may use any model: compared when the recorded run has them.
_TWIN_IDENTITY = ("model", "tau", "n_steps")
#: Seeds of the random validation (selection) and test (report) disorder realisations.
VALIDATION_SEED, TEST_SEED = 1001, 2002


def fixed_weight_schedule(w: float) -> tuple[float, float]:
    """(w_mean, w_width) of Eq. (12) that hold w(n) = w: a fixed weight as a flat schedule
    (|w(n) − w| ≈ n/(4 w_width) < 1e-9 for runs up to 10⁶ steps, even with the schedule scaled
    down 1000× by :meth:`SACConfig.scaled`; exactly 0 or 1 at the ends)."""
    from qhil.drivers import ValidationError
    if isinstance(w, bool) or not (isinstance(w, (int, float)) and 0.0 <= w <= 1.0):
        raise ValidationError("weight", f"{w!r}", "a number in [0, 1]")
    width = 1e18
    if w == 0.0:
        return -1e21, width
    if w == 1.0:
        return 1e21, width
    return -math.log(1.0 / w - 1.0) * width, width


def sac_config(args: argparse.Namespace) -> Any:
    from qhil.agents.sac_config import SACConfig
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(SACConfig)}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "weight", None) is not None:
        overrides["w_mean"], overrides["w_width"] = fixed_weight_schedule(args.weight)
    if args.config is not None:
        return SACConfig.from_file(args.config, **overrides)
    return SACConfig.from_dict(overrides)


def run(args: argparse.Namespace) -> int:
    battery, provenance = model_from_args(args)
    summary = train_run(env=model_label(battery, provenance), regime=args.regime, cfg=sac_config(args),
                        run_dir=args.run_dir, run=args.run, backend=args.backend, n_envs=args.n_envs,
                        battery=battery, model_provenance=provenance, tau=args.tau, n_steps=args.n_steps,
                        checkpoint_every=args.checkpoint_every, checkpoint_seconds=args.checkpoint_seconds,
                        target=args.target,
                        progress=not args.no_progress, history=args.history, history_of=args.history_of,
                        omega_range=args.omega_range, omega_spread=args.omega_spread,
                        omega_seed=args.omega_seed, weight=args.weight,
                        eval_envs=args.eval_envs,
                        eval_random=args.eval_random, eval_every=args.eval_every,
                        test_random=args.test_random)
    text = json.dumps(summary, indent=1)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    b, d = summary["best_explored"], summary["deterministic"]
    if "selection" in summary and summary["selection"]["selected"] is not None:
        sel = summary["selection"]
        print(f"{summary['run']}: selected policy (episode {sel['selected']['episode']}, mean "
              f"{sel['selected']['mean']:.4f} over {', '.join(sel['selected']['ergotropy'])}): "
              + ", ".join(f"{k} {v:.4f}" for k, v in sel["report"].items()), file=sys.stderr)
    print(f"{summary['run']}: best explored ergotropy {b['ergotropy']:.4f} (Table 1 metric), "
          f"deterministic policy {d['ergotropy']:.4f}; {summary['steps']} steps, {summary['wall_s']:.0f} s "
          f"({summary['steps_per_s']:.0f} env-steps/s, {summary['updates_per_s']:.0f} updates/s)",
          file=sys.stderr)
    return 0


def checkpoint_path(run_dir: str | Path, run: str) -> Path:
    """Where ``qhil train`` keeps the checkpoint of run ``run`` (e.g. ``env1/energies/seed0``)."""
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


def train_run(env: str, regime: str, cfg: Any, run_dir: Path, run: str | None = None,
              backend: str = "statevector", n_envs: int = 1, checkpoint_every: int = 200,
              target: float | None = None, progress: bool = True, history: int | None = None,
              history_of: str = "observations",
              omega_range: tuple[float, float] | None = None, omega_spread: float | None = None,
              omega_seed: int | None = None, weight: float | None = None,
              eval_envs: list[str] | None = None, eval_random: int = 0, eval_every: int = 20,
              test_random: int = 0, battery: Any = None, model_provenance: dict[str, Any] | None = None,
              tau: float = 5.6, n_steps: int = 28, checkpoint_seconds: float | None = 60.0) -> dict[str, Any]:
    """Train (resuming if a checkpoint exists), evaluate, record; return the summary.

    env:          the preset's name (env1…), or a label (e.g. ``custom``) when ``battery`` is given
    battery:      the device model (digital twin), a :class:`DickeBattery`; None = the preset ``env``
    model_provenance: where the model came from (recorded; e.g. the endpoint's calibration)
    tau, n_steps: charging time τ (1/ω_0) and K steps (recorded: deployment replays them)

    history:      window size K (:class:`~qhil.envs.history.HistoryVectorEnv`), None = off
    history_of:   what the window holds, "observations" or "actions" (recorded only if "actions")
    omega_range / omega_spread / omega_seed: domain randomisation
                  (:class:`~qhil.envs.robust.RandomisedChargingEnv`); seed default ``cfg.seed``
    weight:       fixed w of Eq. (11) (recorded in the config; ``cfg`` must already hold the
                  flat schedule of :func:`fixed_weight_schedule`, as :func:`sac_config` does)
    eval_envs / eval_random / eval_every: checkpoint selection by the mean deterministic
                  terminal ergotropy (:class:`~qhil.agents.selection.CrossEnvSelector`) over
                  named envs and random validation realisations (seed ``VALIDATION_SEED``)
    test_random:  held-out realisations (seed ``TEST_SEED``) for the selected policy's report
    """
    import numpy as np

    from qhil.agents.runstore import RunStore
    from qhil.agents.sac import SAC
    from qhil.agents.selection import CrossEnvSelector
    from qhil.agents.training import evaluate, train_off_policy
    from qhil.drivers import create_backend
    from qhil.envs import ENVIRONMENTS, ChargingVectorEnv, DickeBattery, check_cutoff
    from qhil.envs.history import HistoryVectorEnv
    from qhil.envs.robust import RandomisedChargingEnv, heldout_realisations
    from qhil.drivers import ValidationError
    if weight is not None:
        fixed_weight_schedule(weight)                # validates
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
    cfg = cfg.scaled()
    run = run or f"{env}/{regime}/seed{cfg.seed}"
    run_dir = Path(run_dir)
    randomised = omega_range is not None or omega_spread is not None
    shape = {"tau": tau, "n_steps": n_steps}
    if randomised:
        venv: Any = RandomisedChargingEnv(battery, regime=regime,
                                          omega_range=omega_range, omega_spread=omega_spread,
                                          omega_seed=cfg.seed if omega_seed is None else omega_seed,
                                          n_envs=n_envs, backend=backend, w_mean=cfg.w_mean, w_width=cfg.w_width,
                                          **shape)
    else:
        venv = ChargingVectorEnv(battery, regime=regime, n_envs=n_envs, backend=backend,
                                 w_mean=cfg.w_mean, w_width=cfg.w_width, **shape)
    if history is not None:
        venv = HistoryVectorEnv(venv, history, of=history_of)
    agent = SAC(venv.obs_dim, venv.action_low, venv.action_high, cfg)
    store = RunStore(run_dir / "runs.sqlite")
    config: dict[str, Any] = {"env": env, "regime": regime, "backend": backend, "n_envs": n_envs,
                              "sac": cfg.to_dict(), "model": battery.to_dict(), "tau": float(tau),
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
                             checkpoint_seconds=checkpoint_seconds, progress=progress, stop=stop)
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
    store.finish_run(run, finish)
    store.close()
    return summary
