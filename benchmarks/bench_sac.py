"""Benchmark: one SAC training run (Env1, correlation regime = second_order) to the paper's
full-state value 4.0445, and throughput against stable-baselines3's SAC on the same env.

    .venv/bin/python benchmarks/bench_sac.py                      # full: run to the target
    .venv/bin/python benchmarks/bench_sac.py --max-steps 1200 --learning-starts 200 --sb3-steps 1200
                                                                  # throughput only, quick
    .venv/bin/python benchmarks/bench_sac.py --max-steps 1200 --learning-starts 200 --sb3-steps 0 --precision all
                                                                  # fp32, bf16 and auto (what the probe picks)
    .venv/bin/python benchmarks/bench_sac.py --precision auto --n-envs 8 --updates-per-step 0.125 \
        --history 28 --history-of actions --max-steps 56000 --learning-starts 4000 --sb3-steps 0
                                                                  # batched Table 1 set-up (second order)
    .venv/bin/python benchmarks/bench_sac.py --precision bf16 --n-envs 16 --updates-per-step 0.125 \
        --history 28 --history-of actions --max-steps 168000 --learning-starts 4000 --sb3-steps 0 --seed 1
                                                                  # the speed target: one run to 4.0445

Prints what it measured: wall time to the target (or that it was not reached within
--max-steps), env-steps/s and updates/s of qhil's SAC, the same for stable-baselines3 SAC
(same network, batch, learning rate, one update per step) over --sb3-steps steps, and the ratios.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TARGET = 4.0445           # seed 000, Table 1, Env1 full state


def ours(max_steps: int, seed: int, hidden: tuple[int, ...], target: float | None,
         learning_starts: int = 5_000, precision: str = "fp32", n_envs: int = 1,
         updates_per_step: float = 1.0, history: int | None = None, history_of: str = "observations") -> dict:
    from qhil.agents.runstore import RunStore
    from qhil.agents.sac import SAC, SACConfig
    from qhil.agents.training import train_off_policy
    from qhil.envs import make_charging_env
    from qhil.envs.history import HistoryVectorEnv
    from qhil.envs import RewardWeight
    cfg = SACConfig(total_steps=max_steps, seed=seed, hidden=hidden, learning_starts=learning_starts,
                    precision=precision, updates_per_step=updates_per_step)
    weight = RewardWeight().scaled(cfg.schedule_scale)          # the env's (Eq. 12), in this run's steps
    cfg = cfg.scaled()
    env = make_charging_env("env1", "second_order", n_envs=n_envs, reward_weight=weight)
    if history is not None:
        env = HistoryVectorEnv(env, history, of=history_of)
    agent = SAC(env.obs_dim, env.action_low, env.action_high, cfg)
    hit: dict = {}

    def stop(st):
        if target is not None and st.best >= target and not hit:
            hit.update(step=st.step, wall=st.wall, episode=st.episode)
            return True
        return False
    with tempfile.TemporaryDirectory() as d:
        st = train_off_policy(agent, env, store=RunStore(Path(d) / "r.sqlite"), run="bench",
                              progress=sys.stderr.isatty(), stop=stop)
    return {"steps": st.step, "updates": st.updates, "wall": st.wall, "best": st.best, "hit": hit,
            "learning_starts": cfg.learning_starts, "precision": agent.precision_info}


def sb3(n_steps: int, seed: int, hidden: tuple[int, ...], learning_starts: int) -> dict | None:
    try:
        import stable_baselines3 as sb
    except ImportError:
        return None
    import torch

    from qhil.drivers import set_threads
    from qhil.drivers.threads import default_threads
    from qhil.envs import ChargingEnv
    set_threads(torch=default_threads()["torch"])
    env = ChargingEnv(regime="second_order")
    model = sb.SAC("MlpPolicy", env, learning_rate=1e-3, buffer_size=180_000, batch_size=256, gamma=0.993,
                   tau=0.005, learning_starts=learning_starts, train_freq=1, gradient_steps=1, seed=seed,
                   policy_kwargs={"net_arch": list(hidden)}, verbose=0, device="cpu")
    t0 = time.perf_counter()
    model.learn(total_timesteps=n_steps)
    wall = time.perf_counter() - t0
    return {"steps": n_steps, "updates": max(n_steps - learning_starts, 0), "wall": wall,
            "torch_threads": torch.get_num_threads()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-steps", type=int, default=60_000, help="step budget of our run (schedules scaled to it)")
    p.add_argument("--sb3-steps", type=int, default=2_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", default="512,256")
    p.add_argument("--learning-starts", type=int, default=5_000, help="random warm-up steps (paper: 5000)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto", "both", "all"],
                   help="SAC update precision; 'auto': chosen by the start-up probe; 'both' runs ours "
                        "twice (fp32, then bf16), 'all' three times (fp32, bf16, auto)")
    p.add_argument("--n-envs", type=int, default=1, help="batteries stepped together (ours)")
    p.add_argument("--updates-per-step", type=float, default=1.0, help="SAC updates per env step (ours)")
    p.add_argument("--history", type=int, default=None,
                   help="window K (ours): the last K observations, or actions with --history-of actions")
    p.add_argument("--history-of", default="observations", choices=["observations", "actions"],
                   help="what the window holds: past observations, or the current one + past actions")
    a = p.parse_args()
    if a.history_of != "observations" and a.history is None:
        p.error("--history-of actions needs --history K (the window size)")
    hidden = tuple(int(h) for h in a.hidden.split(","))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; torch threads "
          f"QHIL_TORCH_THREADS={os.environ.get('QHIL_TORCH_THREADS', '1 (default)')}; network {hidden}; "
          f"{a.n_envs} env(s), {a.updates_per_step:g} updates/env step, window {a.history or 1}"
          + (f" ({a.history_of})" if a.history else ""))
    rates = []
    runs = {"both": ["fp32", "bf16"], "all": ["fp32", "bf16", "auto"]}.get(a.precision, [a.precision])
    for precision in runs:
        r = ours(a.max_steps, a.seed, hidden, TARGET, a.learning_starts, precision, a.n_envs,
                 a.updates_per_step, a.history, a.history_of)
        sps, ups = r["steps"] / r["wall"], r["updates"] / max(r["wall"], 1e-9)
        if precision == "auto":
            probe = r["precision"]["probe"]
            timed = "" if probe.get("fp32_ms") is None else (
                f"; probe {probe['fp32_ms']:.2f} ms fp32, {probe['bf16_ms']:.2f} ms bf16 per step")
            print(f"auto chose {r['precision']['chosen']}: {probe['reason']} (CPU bf16 flags: "
                  f"{probe['cpu_bf16_flags']}{timed})")
            precision = f"auto={r['precision']['chosen']}"
        if r["hit"]:
            print(f"qhil SAC {precision}, Env1 second_order: best explored ergotropy reached {TARGET} after "
                  f"{r['hit']['step']} env steps ({r['hit']['episode']} episodes) in {r['hit']['wall']:.0f} s")
        else:
            print(f"qhil SAC {precision}, Env1 second_order: target {TARGET} NOT reached in {r['steps']} steps "
                  f"({r['wall']:.0f} s); best explored {r['best']:.4f}")
        print(f"qhil SAC {precision}: {sps:.1f} env-steps/s, {ups:.1f} updates/s over the run "
              f"({r['learning_starts']} warm-up steps without updates)")
        rates.append((precision, sps, ups))
    if a.sb3_steps <= 0:
        print("--sb3-steps 0: no comparison")
        return 0
    if a.n_envs > 1 or a.history or a.updates_per_step != 1:
        print("note: stable-baselines3 runs one env, no window, one update per step; compare updates/s "
              "only with the same settings on our side")
    # same warm-up fraction for the comparison
    ls = min(r["learning_starts"], a.sb3_steps // 4)
    s = sb3(a.sb3_steps, a.seed, hidden, ls)
    if s is None:
        print("stable-baselines3 not installed: no comparison")
        return 0
    s_sps, s_ups = s["steps"] / s["wall"], s["updates"] / s["wall"]
    print(f"stable-baselines3 SAC (same env, net, batch 256, 1 update/step): {s['steps']} steps "
          f"({ls} warm-up) in {s['wall']:.1f} s: {s_sps:.1f} env-steps/s, {s_ups:.1f} updates/s")
    for precision, sps, ups in rates:
        print(f"ratio qhil {precision}/sb3: updates/s {ups / s_ups:.2f}x  (env-steps/s {sps / s_sps:.2f}x; these "
              f"depend on the warm-up share, updates/s compares like with like)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
