"""SAC precision by CPU capability (issue 16): ``precision="auto"`` probes once, records the
choice and its evidence; forced fp32/bf16 are honoured. No timing here: the probe's
timings are mocked, its decision logic is checked."""
import numpy as np
import pytest
import torch

import qhil.agents.precision as prec
import qhil.agents.sac as sac_module
from qhil.agents.precision import BF16_MIN_SPEEDUP, choose_precision, cpu_bf16_flags, probe_precision
from qhil.agents.replay import ReplayBuffer
from qhil.agents.runstore import RunStore
from qhil.agents.sac import SAC, SACConfig
from qhil.agents.training import load_checkpoint, save_checkpoint, TrainState, train_off_policy
from qhil.envs import make_charging_env

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_cpu_flags_are_read_from_cpuinfo():
    assert cpu_bf16_flags(AVX2_ONLY, use_torch=False) == []
    assert cpu_bf16_flags(SAPPHIRE, use_torch=False) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_flags(GRAVITON3, use_torch=False) == ["bf16"]
    assert cpu_bf16_flags("model name : something\n", use_torch=False) is None     # no flags line: unknown


@pytest.mark.parametrize("flags, fp32_s, bf16_s, expected", [
    ([], 1.0, 0.1, "fp32"),                          # emulated bf16: never, whatever a probe says
    (["avx512_bf16"], 2.0, 1.0, "bf16"),
    (["avx512_bf16"], 1.0, 1.0, "fp32"),             # no faster
    (["amx_bf16"], 1.0, 10.0, "fp32"),               # the 10× trap
    (["avx512_bf16"], BF16_MIN_SPEEDUP, 1.0, "bf16"),            # at the threshold
    (["avx512_bf16"], BF16_MIN_SPEEDUP * 0.99, 1.0, "fp32"),     # just under it
    (None, 3.0, 1.0, "bf16"),                        # flags unknown: the timing decides
    (None, 1.0, 3.0, "fp32"),
    (["bf16"], None, None, "fp32"),                  # not timed: the safe choice
    (["bf16"], 1.0, 0.0, "fp32"),                    # a broken timing
])
def test_decision_logic(flags, fp32_s, bf16_s, expected):
    chosen, reason = choose_precision(flags, fp32_s, bf16_s)
    assert chosen == expected and reason


def _mock_probe(monkeypatch, flags, seconds):
    calls = []
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: flags)

    def fake(precision, n_in, hidden, batch, reps=3):
        calls.append((precision, n_in, hidden, batch))
        return seconds[precision]
    monkeypatch.setattr(prec, "time_step", fake)
    probe_precision.cache_clear()
    return calls


def test_probe_times_only_when_the_cpu_has_bf16_and_caches(monkeypatch, capsys):
    calls = _mock_probe(monkeypatch, [], {"fp32": 1.0, "bf16": 0.1})
    info = probe_precision(10, (64, 32), 16)
    assert info["chosen"] == "fp32" and calls == [] and info["fp32_ms"] is None
    assert "auto -> fp32" in capsys.readouterr().err
    calls = _mock_probe(monkeypatch, ["avx512_bf16"], {"fp32": 0.004, "bf16": 0.002})
    info = probe_precision(10, (64, 32), 16)
    assert info["chosen"] == "bf16" and info["speedup"] == pytest.approx(2.0)
    assert (info["fp32_ms"], info["bf16_ms"], info["cpu_bf16_flags"]) == (pytest.approx(4.0), pytest.approx(2.0),
                                                                          ["avx512_bf16"])
    assert {c[0] for c in calls} == {"fp32", "bf16"} and all(c[1:] == (10, (64, 32), 16) for c in calls)
    n = len(calls)
    assert probe_precision(10, (64, 32), 16) is info and len(calls) == n        # once per process and shape
    probe_precision.cache_clear()


def _batch(obs_dim, seed=1, n=64):
    rng = np.random.default_rng(seed)
    return {"obs": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (n, 1)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32),
            "next_obs": rng.normal(size=(n, obs_dim)).astype(np.float32), "dones": np.zeros(n, np.float32)}


@pytest.mark.parametrize("probed", ["fp32", "bf16"])
def test_auto_runs_and_records_the_probed_precision(monkeypatch, probed):
    seen = []

    def fake_probe(n_in, hidden, batch):
        seen.append((n_in, hidden, batch))
        return {"chosen": probed, "reason": "mocked", "speedup": 2.0 if probed == "bf16" else 0.1}
    monkeypatch.setattr(sac_module, "probe_precision", fake_probe)
    cfg = dict(hidden=(32, 32), batch_size=64, seed=3)
    auto = SAC(6, -0.3, 0.3, SACConfig(precision="auto", **cfg))
    assert seen == [(7, (32, 32), 64)]
    assert auto.precision == probed
    assert auto.precision_info == {"requested": "auto", "chosen": probed,
                                   "probe": {"chosen": probed, "reason": "mocked",
                                             "speedup": 2.0 if probed == "bf16" else 0.1}}
    forced = {p: SAC(6, -0.3, 0.3, SACConfig(precision=p, **cfg)) for p in ("fp32", "bf16")}
    assert len(seen) == 1                                  # forced precisions never probe
    assert {p: a.precision_info for p, a in forced.items()} == {p: {"requested": p, "chosen": p}
                                                                 for p in ("fp32", "bf16")}
    stats = {}
    for p, a in [("auto", auto), *forced.items()]:        # same weights (seed 3), same noise
        torch.manual_seed(0)
        stats[p] = a.update(_batch(6), 0)
    other = "bf16" if probed == "fp32" else "fp32"
    assert stats["auto"]["q_loss"] == stats[probed]["q_loss"]          # the same arithmetic as forced
    assert stats["auto"]["q_loss"] != stats[other]["q_loss"]


def test_choice_is_recorded_in_the_run_store_and_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setattr(sac_module, "probe_precision",
                        lambda n_in, hidden, batch: {"chosen": "fp32", "reason": "mocked: no native bf16"})
    env = make_charging_env("env1", "energies")
    cfg = SACConfig(hidden=(8, 8), batch_size=8, total_steps=56, learning_starts=28, precision="auto", seed=1)
    agent = SAC(env.obs_dim, env.action_low, env.action_high, cfg)
    store = RunStore(tmp_path / "runs.sqlite")
    train_off_policy(agent, env, store=store, run="r", config={"sac": cfg.to_dict()},
                     checkpoint=tmp_path / "r.pt", progress=False)
    recorded = store.runs()["r"]["config"]
    assert recorded["sac"]["precision"] == "auto"
    assert recorded["precision"] == {"requested": "auto", "chosen": "fp32",
                                     "probe": {"chosen": "fp32", "reason": "mocked: no native bf16"}}
    blob = torch.load(tmp_path / "r.pt", weights_only=False)
    assert blob["agent"]["precision"]["chosen"] == "fp32"


def test_auto_resumes_a_checkpoint_of_either_precision_and_explicit_changes_are_refused(monkeypatch, tmp_path):
    """A run begun with bf16 (the batched Table 1 set-up) resumes under "auto", which may pick
    the other precision on another machine; fp32 ↔ bf16 stays refused."""
    monkeypatch.setattr(sac_module, "probe_precision", lambda n_in, hidden, batch: {"chosen": "fp32"})
    env = make_charging_env("env1", "energies")
    buf = ReplayBuffer(10, env.obs_dim, 1, 2)
    for saved in ("bf16", "fp32"):
        agent = SAC(env.obs_dim, env.action_low, env.action_high, SACConfig(seed=0, precision=saved))
        save_checkpoint(tmp_path / f"{saved}.pt", agent, buf, TrainState(step=5), env)
        auto = SAC(env.obs_dim, env.action_low, env.action_high, SACConfig(seed=0, precision="auto"))
        assert load_checkpoint(tmp_path / f"{saved}.pt", auto, buf, env).step == 5
        other = SAC(env.obs_dim, env.action_low, env.action_high,
                    SACConfig(seed=0, precision="fp32" if saved == "bf16" else "bf16"))
        with pytest.raises(ValueError, match="precision"):
            load_checkpoint(tmp_path / f"{saved}.pt", other, buf, env)


def test_bad_precision_is_refused():
    for bad in ("fp16", "AUTO", "", None):
        with pytest.raises(ValueError, match="precision"):
            SACConfig(precision=bad)
