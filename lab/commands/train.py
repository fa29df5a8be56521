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

Fine-tuning on a device (issue 14):

    qhil train --init-from runs/sim --backend emulator --emulator amplitude_error=0.05 --shots 100
    qhil train --residual docs/results/grape_env1.json --residual-scale 0.1 --backend emulator --shots 100
    qhil train --init-from runs/sim --init-run env1/energies/seed0 --backend zmq://127.0.0.1:5555 --shots 1000

``--init-from DIR`` (``--init-run NAME`` when DIR holds several runs) starts from that run's
networks with a fresh replay buffer and step count; ``--residual`` (a GRAPE file, a run folder,
DIR::NAME, or constant:x) makes the action a correction of at most ``--residual-scale`` ω_0.
On a backend without a state (emulator, zmq) the reward is measured: ``tomography_terminal``
(measured ΔE, tomography ℰ(τ)) unless ``--weight 1`` (measured energy). Every shot is counted
(summary: shots_spent, experiments_run, device_s, evaluation_cost).

The run is a :class:`qhil.experiments.battery.training.ChargingRunSpec` (selection, held-out
report, resume checks: see there); this module only turns the options into one.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .args import add_backend_options, backend_from_args, checked, choice_list, float_in, floats, input_file, int_in, output_dir, output_file
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
    add_backend_options(s)
    s.add_argument("--shots", type=int_in(1, 10_000_000), default=None,
                   help="shots per setting of each observation (default exact; needed on a measuring backend)")
    s.add_argument("--every", type=int_in(1, 1_000_000), default=1,
                   help="measure the observation every m-th step (the policy sees the last values held)")
    s.add_argument("--final-only", action="store_true", help="measure the observation only after the last step")
    s.add_argument("--reward", choices=["exact", "tomography_terminal"], default=None,
                   help="exact (simulators; or --weight 1 anywhere) or tomography_terminal (measured); "
                        "default: exact where the backend returns a state, else tomography_terminal")
    s.add_argument("--tomography-shots", type=int_in(1, 10_000_000), default=1000,
                   help="shots per setting of the terminal tomography (reward tomography_terminal; default 1000)")
    s.add_argument("--init-from", default=None,
                   help="fine-tune: start from the policy of this `qhil train --run-dir` folder")
    s.add_argument("--init-run", default=None, help="--init-from's run, when its folder holds several")
    s.add_argument("--residual", default=None,
                   help="residual mode: reference protocol (GRAPE JSON, run folder or DIR::NAME, constant:x)")
    s.add_argument("--residual-scale", type=float_in(0.0, 1e6, low_open=True), default=None,
                   help="residual mode: largest correction s (ω_0), in (0, λ_max − λ_min]")
    s.add_argument("--randomise-mismatch", dest="mismatch", type=checked(_mismatch, "randomise-mismatch"), default=None,
                   metavar="KEY=RANGE,...",
                   help="domain randomisation over the device mismatch, per episode and battery: "
                        "amplitude_error=a (ε ~ U[−a, a]), rise_time=r (U[0, r], 1/ω_0), frequency_spread=σ "
                        "(δ_j ~ N(0, σ²), ω_0), readout_error=p (U[0, p]); e.g. amplitude_error=0.08,rise_time=0.05")
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
    s.add_argument("--w-mean", type=float_in(-1e30, 1e30), default=None,
                   help="Eq. (12)'s w_mean (env steps, for --reference-steps; default 40000): the env's schedule")
    s.add_argument("--w-width", type=float_in(0.0, 1e30, low_open=True), default=None,
                   help="Eq. (12)'s w_width (env steps, for --reference-steps; default 20000)")
    s.add_argument("--tensorboard", type=output_dir, default=None,
                   help="also write TensorBoard scalars here (losses, α, entropy, Q values; episode figures)")
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


#: Options of a run spec (``qhil train`` destination = ChargingRunSpec field), beyond model and SAC.
SPEC_OPTIONS = ("regime", "tau", "n_steps", "backend", "n_envs", "checkpoint_every", "checkpoint_seconds",
                "target", "weight", "w_mean", "w_width", "tensorboard",
                "history", "history_of", "omega_range", "omega_spread", "omega_seed",
                "eval_envs", "eval_random", "eval_every", "test_random",
                "shots", "every", "final_only", "reward", "tomography_shots", "init_from", "init_run",
                "residual", "residual_scale", "mismatch")


def _mismatch(text: str) -> dict[str, float]:
    """``amplitude_error=0.08,rise_time=0.05`` → the ranges (each ≥ 0 here; their upper bounds are
    checked by the env before any training)."""
    from qhil.experiments.battery.training import MISMATCH_KEYS
    from qhil.lab.device_backend import parse_key_values
    out = parse_key_values(text, MISMATCH_KEYS, "randomise-mismatch")
    negative = [k for k, v in out.items() if v < 0]
    if negative or not out:
        raise ValueError(f"{negative[0]} must be ≥ 0" if negative else "expected one or more key=value ranges")
    return out


def sac_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The SAC options given as flags (None = not given)."""
    from qhil.agents.sac_config import SACConfig
    return {f.name: v for f in dataclasses.fields(SACConfig) if (v := getattr(args, f.name, None)) is not None}


def spec_from_args(args: argparse.Namespace) -> Any:
    """The :class:`ChargingRunSpec` of a ``qhil train`` command line (model and SAC options validated)."""
    from qhil.agents.sac_config import SACConfig
    from qhil.experiments.battery.training import ChargingRunSpec
    battery, provenance = model_from_args(args)
    over = sac_overrides(args)
    if args.init_from is not None and "hidden" not in over:      # the source's network sizes
        over |= _source_hidden(args.init_from, args.init_run)
    legacy: dict[str, float] = {}                # an older options file's w_mean/w_width: the env's
    sac = SACConfig.from_file(args.config, legacy, **over) if args.config is not None else SACConfig.from_dict(over)
    fields = {k: getattr(args, k) for k in SPEC_OPTIONS} | {"eval_envs": tuple(args.eval_envs)}
    fields |= {k: v for k, v in legacy.items() if fields.get(k) is None}
    if fields["tensorboard"] is not None:
        fields["tensorboard"] = str(fields["tensorboard"])
    if args.backend == "emulator" or args.emulator is not None:     # the device emulator, in this process
        from qhil.envs import ENVIRONMENTS, DickeBattery
        model = battery if battery is not None else DickeBattery(omegas=ENVIRONMENTS[args.env])
        fields["backend"] = backend_from_args(args, model, sac.seed)
    spec = ChargingRunSpec(env=model_label(battery, provenance), sac=sac, model=battery, model_provenance=provenance,
                           run=args.run, progress=not args.no_progress, **fields)
    spec.sac_config()                            # validated now
    spec.reward_weight()
    return spec


def _source_hidden(init_from: str, init_run: str | None) -> dict[str, Any]:
    """{"hidden": the --init-from run's layer sizes}, or {} when it cannot be read (train refuses it then)."""
    from qhil.drivers import ValidationError
    from qhil.experiments.battery.deployment import load_run
    try:
        hidden = load_run(Path(init_from), init_run).config.get("sac", {}).get("hidden")
    except (ValidationError, OSError):
        return {}
    return {"hidden": tuple(hidden)} if hidden else {}


def train_fields(words: list[str]) -> dict[str, Any]:
    """``qhil train`` flags (``reproduce --train-args``) → the ChargingRunSpec fields they set
    (``sac``: the SAC options); checked with train's own parser and SACConfig (ValueError)."""
    from qhil.agents.sac_config import SACConfig

    class Raising(argparse.ArgumentParser):
        def error(self, message: str) -> Any:          # type: ignore[override]
            raise ValueError(f"qhil train {message}")

    root = Raising(prog="qhil", add_help=False)
    sub = root.add_subparsers(dest="command")
    add_parser(sub)
    unset = object()
    parser = sub.choices["train"]
    ns = parser.parse_args(words, namespace=argparse.Namespace(**{a.dest: unset for a in parser._actions}))
    given = {k: v for k, v in vars(ns).items() if v is not unset and k != "func"}
    model = sorted(k for k in given if k in ("env", "omegas", "model_json", "from_endpoint", "omega_c", "n_max",
                                            "coupling_bound", "endpoint_key"))
    if model:
        raise ValueError(f"model options ({', '.join(model)}) are set by reproduce (its --envs)")
    sac = {k: v for k, v in given.items() if k in {f.name for f in dataclasses.fields(SACConfig)}}
    SACConfig.from_dict(sac)             # SAC values in range (e.g. --gamma 2 is refused)
    if given.get("backend") == "emulator" or "emulator" in given:
        raise ValueError("--backend emulator / --emulator are for qhil train itself")
    out: dict[str, Any] = {k: v for k, v in given.items() if k in SPEC_OPTIONS}
    if "eval_envs" in out:
        out["eval_envs"] = tuple(out["eval_envs"])
    return out | ({"sac": sac} if sac else {})


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    summary = spec.execute(args.run_dir)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    from qhil.experiments.battery.training import summary_lines
    print("\n".join(summary_lines(summary)), file=sys.stderr)
    return 0
