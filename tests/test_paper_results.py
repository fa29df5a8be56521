"""Issue 7: Table 2 / Table S1 / Figs. S1–S2 of seed 000 and its Sec. V extensions
(observation history, domain randomisation)."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from qhil.agents.runstore import RunStore
from qhil.agents.selection import CrossEnvSelector, select_best
from qhil.drivers import ValidationError, create_backend
from qhil.envs import ENV1, ChargingVectorEnv, DickeBattery
from qhil.envs.history import HistoryVectorEnv
from qhil.envs.robust import RandomisedChargingEnv, heldout_realisations
from qhil.lab.cli import build_parser, main
from qhil.experiments.battery.records import Window, parse_windows, runs_by_cell
from qhil.experiments.stats import gap_closed, mean_ci, t_half_width, t_reach
from qhil.lab.commands.reproduce import apply_setup


# -- Table S1: T_0.9 ------------------------------------------------------------------------
def test_t_reach_on_a_hand_made_curve():
    erg = [1.0, 0.5, 2.0, 3.0, 9.5, 10.0, 4.0]       # best so far 1 1 2 3 9.5 10 10; 0.9·10 = 9
    assert t_reach(erg) == 5                         # the 5th episode is the first ≥ 9
    assert t_reach(erg, fraction=1.0) == 6
    assert t_reach(erg, fraction=0.25) == 4          # 2.5: 3.0 at the 4th episode
    assert t_reach([0.0, 0.0]) == 1


def test_t_reach_rejects_bad_input():
    with pytest.raises(ValueError, match="ergotropy"):
        t_reach([])
    with pytest.raises(ValueError, match="fraction"):
        t_reach([1.0], fraction=0.0)


# -- confidence intervals -------------------------------------------------------------------
def test_ci_half_width_matches_scipy_t():
    x = [3.1, 3.5, 2.9, 3.3, 3.8]
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert t_half_width(x) == pytest.approx((hi - lo) / 2, rel=1e-12)
    assert t_half_width(x) != pytest.approx(1.96 * stats.sem(x), rel=1e-3)    # Student-t, not normal
    m, h, n = mean_ci(x + [float("nan")])                                   # NaN (missing) dropped
    assert (m, n) == (pytest.approx(np.mean(x)), 5) and h == pytest.approx((hi - lo) / 2)
    assert math.isnan(t_half_width([1.0]))


# -- Table 2: checkpoint selection by the mean across envs ----------------------------------
class _Agent:
    """λ = the actor's bias, whatever the observation."""

    def __init__(self) -> None:
        self.actor = torch.nn.Linear(1, 1)

    def act(self, obs, deterministic=False):
        return np.full((len(obs), 1), float(self.actor.bias.detach()[0]))

    def set(self, value: float) -> None:
        with torch.no_grad():
            self.actor.bias.fill_(value)


class _Env:
    """One-step episode whose terminal 'ergotropy' is a + b·λ."""

    n_envs = 1

    def __init__(self, a: float, b: float) -> None:
        self.a, self.b, self._c = a, b, np.zeros((1, 0))

    def reset(self):
        self._c = np.zeros((1, 0))
        return np.zeros((1, 1), np.float32), {"ergotropy": np.zeros(1), "energy": np.zeros(1)}

    def step(self, lam):
        self._c = np.asarray(lam, float).reshape(1, 1)
        erg = np.array([self.a + self.b * self._c[0, 0]])
        return np.zeros((1, 1), np.float32), erg, np.ones(1, bool), np.zeros(1, bool), \
            {"ergotropy": erg, "energy": erg}

    @property
    def controls(self):
        return self._c


class _State:
    def __init__(self, episode: int, step: int = 0) -> None:
        self.episode, self.step = episode, step


def test_table1_windows_are_parsed_per_regime_and_checked():
    assert parse_windows("energies=28, second_order=actions:8") == {"energies": Window(28, "observations"),
                                                                     "second_order": Window(8, "actions")}
    assert parse_windows("first_order=observations:3") == {"first_order": Window(3)}
    assert Window(8, "actions").spec_fields() == {"history": 8, "history_of": "actions"}
    assert Window(8).spec_fields() == {"history": 8, "history_of": "observations"}
    assert Window(8, "actions").matches({"history": 8, "history_of": "actions"})
    assert not Window(8, "actions").matches({"history": 8}) and Window(8).matches({"history": 8})
    assert parse_windows("") == {}
    for bad, word in [("full_state=4", "regime"), ("energy=4", "regime"), ("energies=0", r"\[1, 28\]"),
                      ("energies=states:4", "observations or actions"), ("energies=:4", "observations or actions"), ("energies=actions:", r"\[1, 28\]"),
                      ("energies=29", r"\[1, 28\]"), ("energies=x", r"\[1, 28\]"), ("energies", r"\[1, 28\]"),
                      ("energies=\u00b2", r"\[1, 28\]")]:
        with pytest.raises(SystemExit, match=word):
            parse_windows(bad)


def test_setup_presets_fill_only_the_options_left_unset():
    from pathlib import Path
    args = build_parser().parse_args(["reproduce", "table1", "--setup", "batched", "--total-steps", "100"])
    apply_setup(args)
    assert args.total_steps == 100                                   # given: kept
    assert args.work_dir == Path("runs/table1_batched") and "--n-envs 8" in args.train_args
    assert parse_windows(args.windows)["second_order"] == Window(28, "actions")
    paper = build_parser().parse_args(["reproduce", "tableS1"])
    apply_setup(paper)
    assert (paper.total_steps, paper.train_args, paper.out_dir) == (30_000, "", Path("docs/results"))
    with pytest.raises(SystemExit, match="only for"):
        apply_setup(build_parser().parse_args(["reproduce", "robust", "--setup", "batched"]))
    more = build_parser().parse_args(["reproduce", "table1", "--setup", "batched", "--train-args", "--hidden 8,8"])
    apply_setup(more)                                                # appended after the preset's flags
    assert more.train_args.endswith("--precision auto --hidden 8,8")
    with pytest.raises(SystemExit, match="work-dir"):                # other windows, same runs: refused
        apply_setup(build_parser().parse_args(["reproduce", "table1", "--windows", "energies=4"]))


def test_select_best_on_a_fake_history():
    hist = [{"episode": 0, "mean": 0.4}, {"episode": 20, "mean": 0.45}, {"episode": 40, "mean": 0.25},
            {"episode": 60, "mean": 0.45}]
    assert select_best(hist) == 1          # the first of two equal maxima
    assert select_best([]) == -1


def test_selector_keeps_the_policy_of_best_mean_not_best_env1(tmp_path):
    agent = _Agent()
    envs = {"env1": _Env(0.0, 1.0), "env2": _Env(1.0, -2.0)}          # env1: λ, env2: 1 − 2λ
    sel = CrossEnvSelector(agent, envs, every=10, path=tmp_path / "sel.pt")
    # λ = 0.2 → (0.2, 0.6) mean 0.4;  0.5 → (0.5, 0.0) mean 0.25 (best on env1);  0.1 → (0.1, 0.8) mean 0.45
    for episode, lam in [(0, 0.2), (5, 0.9), (10, 0.5), (20, 0.1), (30, 0.3)]:
        agent.set(lam)
        sel(_State(episode))
    assert [h["episode"] for h in sel.history] == [0, 10, 20, 30]        # every 10 episodes; 5 skipped
    best = sel.best()
    assert best["episode"] == 20 and best["ergotropy"]["env1"] == pytest.approx(0.1)
    assert best["mean"] == pytest.approx(0.45)
    agent.set(0.9)
    sel.restore_best()
    assert float(agent.actor.bias.detach()[0]) == pytest.approx(0.1)
    # persisted; a run resumed from episode 15 forgets the evaluations after it
    again = CrossEnvSelector(agent, envs, every=10, path=tmp_path / "sel.pt")
    assert [h["episode"] for h in again.history] == [0, 10, 20, 30]
    again.prune(15)
    assert again.best()["episode"] == 0
    agent.set(0.9)
    again.restore_best()
    assert float(agent.actor.bias.detach()[0]) == pytest.approx(0.2)


# -- Fig. S2: a fixed reward weight -----------------------------------------------------------
@pytest.mark.parametrize("w", [0.0, 0.5, 0.25, 1.0])
def test_fixed_reward_weight_is_flat(w):
    from qhil.envs.charging import RewardWeight
    weight = RewardWeight.from_options(w).scaled(0.1)
    for n in (0, 5_000, 10_000, 1_000_000):
        assert weight(n) == pytest.approx(w, abs=1e-12)
    assert RewardWeight.from_options().scaled(0.1)(10_000) < 0.5          # the schedule is not flat


def test_fixed_weight_rejects_out_of_range():
    from qhil.envs.charging import RewardWeight
    with pytest.raises(ValueError, match="w"):
        RewardWeight.from_options(1.5)


# -- domain randomisation ---------------------------------------------------------------------
def _omegas(seed, resets=3, **kw):
    env = RandomisedChargingEnv(regime="energies", n_steps=2, tau=0.4, omega_seed=seed, **kw)
    out = []
    for _ in range(resets):
        _, info = env.reset()
        out.append(env.battery.omegas)
        assert np.allclose(info["omegas"][0], env.battery.omegas)
    return np.array(out)


def test_randomised_omegas_in_range_and_reproducible():
    a = _omegas(3, omega_range=(0.6, 1.4))
    assert a.shape == (3, 4) and np.all((a >= 0.6) & (a <= 1.4))
    assert len({tuple(r) for r in a}) == 3                      # new ω every episode
    assert np.array_equal(a, _omegas(3, omega_range=(0.6, 1.4)))
    assert not np.allclose(a, _omegas(4, omega_range=(0.6, 1.4)))
    s = _omegas(5, omega_spread=0.1)
    assert np.all(np.abs(s / np.array(ENV1) - 1) <= 0.1) and not np.allclose(s, ENV1)


def test_randomised_episode_uses_the_drawn_omegas():
    acts = [0.3, -0.2, 0.25]
    env = RandomisedChargingEnv(regime="second_order", n_steps=3, tau=0.6, omega_range=(0.5, 1.5),
                                omega_seed=11, weight=0.0)
    obs, _ = env.reset()
    drawn = env.battery.omegas
    ref = ChargingVectorEnv(DickeBattery(omegas=drawn), regime="second_order", n_steps=3, tau=0.6, weight=0.0)
    nominal = ChargingVectorEnv(DickeBattery(omegas=ENV1), regime="second_order", n_steps=3, tau=0.6, weight=0.0)
    r_obs, _ = ref.reset()
    nominal.reset()
    assert np.allclose(obs, r_obs, atol=1e-7)
    for a in acts:
        o, r, _, _, info = env.step([a])
        ro, rr, _, _, rinfo = ref.step([a])
        _, _, _, _, ninfo = nominal.step([a])
        assert np.allclose(o, ro, atol=1e-6) and np.allclose(r, rr, atol=1e-12)
        assert np.allclose(info["tls_energies"], rinfo["tls_energies"], atol=1e-12)
    assert info["ergotropy"][0] == pytest.approx(rinfo["ergotropy"][0], abs=1e-12)
    assert abs(info["ergotropy"][0] - ninfo["ergotropy"][0]) > 1e-3   # the drawn ω matter


def test_randomisation_options_validated():
    with pytest.raises(ValidationError, match="omega_range"):
        RandomisedChargingEnv(omega_range=(1.5, 0.5))
    with pytest.raises(ValidationError, match="omega_spread"):
        RandomisedChargingEnv(omega_spread=1.5)
    with pytest.raises(ValidationError, match="exactly one"):
        RandomisedChargingEnv()


def test_heldout_realisations_are_reproducible_and_distinct():
    a, b = heldout_realisations(4, 2002), heldout_realisations(4, 1001)
    assert a == heldout_realisations(4, 2002) and not set(a) & set(b)
    assert all(0.5 <= w <= 1.5 for r in a for w in r)


# -- the exact driver's propagator cache is bounded -----------------------------------------
def test_propagator_cache_is_bounded_lru(monkeypatch):
    from qhil.drivers import Experiment, MeasurementSchedule
    be = create_backend("statevector")
    monkeypatch.setattr(type(be), "MAX_PROPAGATORS", 3)
    models = [DickeBattery(omegas=(0.9 + 0.1 * i, 1.1), n_max=16) for i in range(5)]
    sched = MeasurementSchedule("energies", final_only=True)
    first = be.run([Experiment(models[0], np.full((3, 1), 0.3), 0.2, sched)])[0].values
    for m in models[1:]:
        be.propagator(m)
    assert len(be._props) == 3 and models[0].key not in be._props
    assert list(be._props) == [m.key for m in models[2:]]
    be.propagator(models[2])                                       # a hit moves it to the end
    assert list(be._props)[-1] == models[2].key
    be.clear_cache()
    again = be.run([Experiment(models[0], np.full((3, 1), 0.3), 0.2, sched)])[0].values
    assert np.allclose(first, again, atol=1e-13)                   # rebuilt after eviction: same physics
    assert len(be._props) == 3


# -- observation history --------------------------------------------------------------------
def test_history_window_holds_past_observations_and_zero_pads():
    base = ChargingVectorEnv(regime="energies", n_steps=4, tau=0.8)
    plain = ChargingVectorEnv(regime="energies", n_steps=4, tau=0.8)
    env = HistoryVectorEnv(base, window=3)
    d = plain.obs_dim
    assert env.obs_dim == 3 * d and env.n_steps == 4
    seen = [plain.reset()[0]]
    obs, _ = env.reset()
    assert np.all(obs[:, :2 * d] == 0) and np.allclose(obs[:, 2 * d:], seen[0])
    for k, a in enumerate([0.3, -0.1, 0.2, 0.0]):
        obs, *_ = env.step([a])
        seen.append(plain.step([a])[0])
        window = [np.zeros_like(seen[0])] * 3 + seen
        assert np.allclose(obs, np.concatenate(window[-3:], axis=1)), k
    obs, _ = env.reset()                                            # a new episode: padding again
    assert np.all(obs[:, :2 * d] == 0)
    env.n_step = 123                                               # the training loop's writes reach the env
    assert base.n_step == 123
    assert np.all(env.obs_low <= 0) and np.all(env.obs_high >= 0)
    with pytest.raises(ValidationError, match="window"):
        HistoryVectorEnv(base, window=0)


def test_action_window_holds_the_played_protocol_beside_the_current_observation():
    base = ChargingVectorEnv(regime="second_order", n_steps=5, tau=1.0, n_envs=2)
    plain = ChargingVectorEnv(regime="second_order", n_steps=5, tau=1.0, n_envs=2)
    env = HistoryVectorEnv(base, window=3, of="actions")
    d = plain.obs_dim
    assert env.obs_dim == d + 3
    obs, _ = env.reset()
    assert np.allclose(obs[:, :d], plain.reset()[0]) and np.all(obs[:, d:] == 0)
    played = []
    for k, a in enumerate([[0.3, -0.3], [-0.15, 0.0], [0.075, 0.3], [0.0, -0.15], [0.3, 0.3]]):
        obs, *_ = env.step(a)
        assert np.allclose(obs[:, :d], plain.step(a)[0]), k            # the observation is unchanged
        played.append(np.asarray(a) / 0.3)                            # λ / λ_max: normalised to [−1, 1]
        expect = np.stack(([np.zeros(2)] * 3 + played)[-3:], axis=1)  # oldest first, newest last
        assert np.allclose(obs[:, d:], expect), k
        assert np.all(obs >= env.obs_low) and np.all(obs <= env.obs_high)
    obs, _ = env.reset()
    assert np.all(obs[:, d:] == 0)                                    # a new episode: no actions yet
    with pytest.raises(ValidationError, match="^of:"):
        HistoryVectorEnv(base, window=3, of="states")
    lopsided = HistoryVectorEnv(ChargingVectorEnv(regime="energies", n_steps=3, tau=0.6,
                                                  action_low=-0.1, action_high=0.25), window=2, of="actions")
    lopsided.reset()
    obs, *_ = lopsided.step([0.25])
    obs, *_ = lopsided.step([-0.1])
    assert np.allclose(obs[0, -2:], [1.0, -1.0])                    # the bounds map to ±1, not λ / λ_max
    obs, *_ = lopsided.step([0.075])
    assert np.allclose(obs[0, -2:], [-1.0, 0.0])                    # the midpoint maps to 0


def test_gap_closed():
    assert gap_closed(3.6, 3.85, 4.1) == pytest.approx(0.5)
    assert gap_closed(3.6, 3.5, 4.1) < 0


# -- reports from recorded runs (no training) ---------------------------------------------
def _finished_run(work, run, report, legacy_heldout=None):
    """A finished run in the run store; ``legacy_heldout``: recorded as before the runner (the
    held-out scores only in ``summaries/<run>.json``)."""
    store = RunStore(work / "runs.sqlite")
    store.start_run(run, {"env": "env1", "regime": "second_order", "eval_envs": ["env1", "env2", "env3"]})
    finish = {"steps": 100, "best_explored": 1.0, "deterministic": 1.0, "selection_report": report}
    if legacy_heldout is None:
        finish["selection_heldout"] = {"test0": 1.0}
    else:
        path = work / "summaries" / (run.replace("/", "_") + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"selection": {"report": report, "heldout": legacy_heldout}}))
    store.finish_run(run, finish)
    store.close()


def test_finished_summaries_read_the_store_then_an_old_runs_json(tmp_path):
    """The run store says which runs are finished; a run recorded before the runner has its
    held-out scores only in summaries/<run>.json, read as a fallback."""
    from qhil.experiments.battery.records import finished_summaries
    work = tmp_path / "w"
    work.mkdir()
    _finished_run(work, "env1/second_order/seed0", {"env1": 3.0})
    _finished_run(work, "env1/second_order/seed1", {"env1": 3.2}, legacy_heldout={"test0": 2.5, "test1": 2.0})
    store = RunStore(work / "runs.sqlite")
    store.start_run("env1/second_order/seed2", {"env": "env1", "regime": "second_order"})      # unfinished
    store.close()
    done = finished_summaries(work)
    assert sorted(done) == ["env1/second_order/seed0", "env1/second_order/seed1"]
    assert done["env1/second_order/seed0"].selection_heldout == {"test0": 1.0}
    assert done["env1/second_order/seed1"].selection_heldout == {"test0": 2.5, "test1": 2.0}
    assert done["env1/second_order/seed1"].selection_report == {"env1": 3.2}


def test_train_args_become_run_spec_fields():
    """reproduce --train-args: qhil train flags, parsed by train's parser into ChargingRunSpec fields."""
    from qhil.lab.commands.train import train_fields
    got = train_fields(["--n-envs", "8", "--hidden", "8,8", "--history", "4", "--history-of", "actions", "--lr=0.001"])
    assert got == {"n_envs": 8, "history": 4, "history_of": "actions", "sac": {"hidden": (8, 8), "lr": 0.001}}
    assert train_fields([]) == {}
    for bad, word in [(["--gamma", "2"], "gamma"), (["--bogus"], "bogus"), (["--omegas", "1,1"], "model options")]:
        with pytest.raises(ValueError, match=word):
            train_fields(bad)


def test_reproduce_builds_picklable_specs_named_as_before():
    import pickle

    from qhil.experiments.battery.options import ReproduceOptions
    from qhil.experiments.battery.reproduce import specs_for
    opts = ReproduceOptions(what="figS2", seeds=2, weights=("scheduled", "0.5"), total_steps=300, eval_every=5,
                            test_random=2, train_fields={"n_envs": 2, "eval_every": 7, "sac": {"hidden": (8, 8)}})
    specs = specs_for(opts)
    assert [s.name for s in specs] == ["env1/second_order/seed0", "env1/second_order/w0.5/seed0",
                                       "env1/second_order/seed1", "env1/second_order/w0.5/seed1"]
    s = specs[3]
    assert (s.weight, s.eval_envs, s.test_random, s.n_envs, s.eval_every) == (0.5, ("env1", "env2", "env3"), 2, 2, 7)
    cfg = s.sac_config()
    assert (cfg.seed, cfg.total_steps, cfg.hidden) == (1, 300, (8, 8))
    assert pickle.loads(pickle.dumps(specs)) == specs
    robust = specs_for(dataclasses_replace(opts, what="robust", robust_history=3, omega_range=(0.5, 1.5)))
    assert [s.name for s in robust] == ["env1/second_order/dr0.5-1.5/seed0", "env1/second_order/dr0.5-1.5/seed1",
                                        "env1/second_order/dr0.5-1.5/hist3/seed0",
                                        "env1/second_order/dr0.5-1.5/hist3/seed1"]
    assert robust[2].history == 3 and robust[0].omega_range == (0.5, 1.5) and robust[0].eval_random == 8
    table1 = specs_for(dataclasses_replace(opts, what="table1", envs=("env2",), regimes=("energies",), seeds=1,
                                           windows="energies=actions:28"))
    assert [(s.name, s.history, s.history_of, s.eval_envs) for s in table1] == [
        ("env2/energies/seed0", 28, "actions", ())]


def dataclasses_replace(obj, **kw):
    import dataclasses
    return dataclasses.replace(obj, **kw)


def test_missing_grape_ceilings_are_computed_once_and_failures_reported(tmp_path, monkeypatch, capsys):
    from qhil.envs import ENVIRONMENTS
    from qhil.experiments.battery import grape as g
    g.ensure_grape("env2", tmp_path, starts=1, maxiter=3, verbose=False)
    doc = json.loads((tmp_path / "grape_env2.json").read_text())
    again = g.grape_ceiling(DickeBattery(omegas=ENVIRONMENTS["env2"]), "env2", starts=1, maxiter=3, verbose=False)
    assert doc["ergotropy"] == again["ergotropy"] and doc["protocol"] == again["protocol"]
    assert doc["env"] == "env2" and doc["n_steps"] == 28 and doc["tau"] == 5.6

    def boom(*a, **k):
        raise RuntimeError("diverged")
    monkeypatch.setattr(g, "grape_ceiling", boom)
    g.ensure_grape("env2", tmp_path)                                 # present: not recomputed
    g.ensure_grape("env3", tmp_path)                                 # fails: reported, no file
    assert "GRAPE ceiling of env3 failed (RuntimeError: diverged)" in capsys.readouterr().err
    assert not (tmp_path / "grape_env3.json").exists()


def test_table2_report_from_the_run_store(tmp_path, capsys):
    work, out = tmp_path / "w", tmp_path / "o"
    work.mkdir()
    _finished_run(work, "env1/second_order/seed0", {"env1": 3.0, "env2": 2.0, "env3": 2.5})
    _finished_run(work, "env1/second_order/seed1", {"env1": 3.2, "env2": 2.4, "env3": 2.7}, legacy_heldout={})
    assert main(["reproduce", "table2", "--report-only", "--regimes", "second_order", "--seeds", "2",
                 "--work-dir", str(work), "--out-dir", str(out)]) == 0
    rows = {r.split(",")[1]: r.split(",") for r in (out / "table2.csv").read_text().splitlines()[1:]}
    assert float(rows["env2"][2]) == pytest.approx(2.2)
    assert float(rows["env2"][3]) == pytest.approx(t_half_width([2.0, 2.4]))
    assert "1.7048" in capsys.readouterr().out                     # the paper's value beside ours
    assert (out / "table2_robustness.png").exists()


def test_tableS1_report_from_the_run_store(tmp_path, capsys):
    work, out = tmp_path / "w", tmp_path / "o"
    store = RunStore(work / "runs.sqlite")
    # seeds 0, 1: plain (paper set-up), T_0.9 = 3 and 2; seed 2: a window of 28 (batched), T_0.9 = 2;
    # seed 3: a window of 28 actions, T_0.9 = 1
    windows = [{}, {}, {"history": 28}, {"history": 28, "history_of": "actions"}]
    for seed, erg in enumerate([[1.0, 2.0, 9.5, 10.0], [5.0, 9.0, 9.0, 9.0], [1.0, 9.5, 10.0, 10.0],
                                [9.5, 9.5, 10.0, 10.0]]):
        run = f"env1/energies/seed{seed}"
        store.start_run(run, {"env": "env1", "regime": "energies"} | windows[seed])
        best = np.maximum.accumulate(erg)
        store.log_episodes(run, [{"episode": i, "step": 28 * (i + 1), "ret": e, "energy": e, "ergotropy": e,
                                  "best": b, "weight": 0.0} for i, (e, b) in enumerate(zip(erg, best))])
        store.finish_run(run, {})
    store.close()
    assert main(["reproduce", "tableS1", "--envs", "env1", "--regimes", "energies",
                 "--work-dir", str(work), "--out-dir", str(out)]) == 0
    row = (out / "tableS1.csv").read_text().splitlines()[1].split(",")
    assert float(row[2]) == pytest.approx(2.5) and row[5] == "3 2"
    assert "1744.0" in capsys.readouterr().out
    assert main(["reproduce", "tableS1", "--setup", "batched", "--envs", "env1", "--regimes", "energies",
                 "--work-dir", str(work), "--out-dir", str(out)]) == 0
    assert (out / "tableS1.csv").read_text().splitlines()[1].split(",")[5] == "2"
    assert main(["reproduce", "tableS1", "--windows", "energies=actions:28", "--envs", "env1",
                 "--regimes", "energies", "--work-dir", str(work), "--out-dir", str(out)]) == 0
    assert (out / "tableS1.csv").read_text().splitlines()[1].split(",")[5] == "1"


@pytest.mark.slow
def test_reproduce_robust_end_to_end(tmp_path):
    """A tiny domain-randomised run through the job runner, then its report (~1 min)."""
    out = tmp_path / "o"
    assert main(["reproduce", "robust", "--seeds", "1", "--total-steps", "120", "--jobs", "1",
                 "--eval-random", "2", "--test-random", "2", "--eval-every", "2", "--work-dir", str(tmp_path / "w"),
                 "--out-dir", str(out), "--train-args=--learning-starts 60 --hidden 16,16 --batch-size 16"]) == 0
    [s] = [r["summary"] for n, r in RunStore(tmp_path / "w" / "runs.sqlite").runs().items() if "dr0.5-1.5" in n]
    assert set(s["selection_report"]) >= {"env1", "env2", "env3", "heldout_mean"}
    assert set(s["selection_heldout"]) == {"test0", "test1"}
    assert (out / "robust.csv").exists()


def test_table1_counts_and_resumes_only_runs_with_the_set_ups_memory(tmp_path):
    """A work dir from before a set-up changed its windows: the old runs are neither reported
    as the new set-up's nor resumed with the wrong inputs."""
    work, out = tmp_path / "w", tmp_path / "o"
    store = RunStore(work / "runs.sqlite")
    store.start_run("env1/second_order/seed0", {"env": "env1", "regime": "second_order", "history": 28})
    store.finish_run("env1/second_order/seed0", {"best_explored": 3.9, "deterministic": 3.8})
    store.close()
    batched = ["reproduce", "table1", "--setup", "batched", "--envs", "env1", "--regimes", "second_order",
               "--seeds", "1", "--work-dir", str(work), "--out-dir", str(out), "--grape-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="another --windows memory.*env1/second_order/seed0"):
        main(batched)
    assert main(batched + ["--report-only"]) == 0
    [row] = csv.DictReader(open(out / "table1.csv"))
    assert row["n_seeds"] == "0"                                    # observation window: not this set-up's
    assert main(batched + ["--report-only", "--windows", "second_order=28"]) == 0
    [row] = csv.DictReader(open(out / "table1.csv"))
    assert row["n_seeds"] == "1" and float(row["mean"]) == pytest.approx(3.9)
    recorded = {"a": {"config": {"env": "env1", "regime": "second_order", "history": 28}},
                "b": {"config": {"env": "env1", "regime": "second_order", "history": 28, "history_of": "actions"}},
                "c": {"config": {"env": "env1", "regime": "full_state"}},
                "d": {"config": {"env": "env1", "regime": "full_state", "history": 4}}}
    cells = runs_by_cell(recorded, parse_windows("second_order=actions:28"))
    assert cells == {("env1", "second_order"): ["b"], ("env1", "full_state"): ["c"]}     # what Figs. 1-2 plot


def test_a_resumed_run_must_keep_its_memory(tmp_path, capsys):
    """Energies with 2 observations and with 6 actions both give 12 inputs: the checkpoint would
    load, so the recorded window is what refuses the switch."""
    flags = ["train", "--regime", "energies", "--total-steps", "56", "--learning-starts", "28", "--hidden", "8,8",
             "--batch-size", "8", "--run-dir", str(tmp_path), "--no-progress", "--run", "r"]
    assert main(flags + ["--history", "2"]) == 0
    capsys.readouterr()
    assert main(flags + ["--history", "6", "--history-of", "actions"]) == 2
    err = capsys.readouterr().err
    assert "history" in err and "history_of" in err and "'actions'" in err
    assert main(flags + ["--history", "2"]) == 0                    # the same memory resumes


@pytest.mark.parametrize("flags, param", [(["--weight", "1.5"], "weight"), (["--eval-envs", "env9"], "--eval-envs"),
                                          (["--eval-every", "0", "--eval-envs", "env1"], "--eval-every"),
                                          (["--history", "0"], "--history"),
                                          (["--history-of", "actions"], "history_of"),
                                          (["--omega-range", "1.5,0.5"], "omega_range")])
def test_train_rejects_bad_options_with_exit_2(tmp_path, capsys, flags, param):
    assert main(["train", "--total-steps", "10", "--run-dir", str(tmp_path), "--no-progress", *flags]) == 2
    assert param in capsys.readouterr().err


def test_randomised_draws_follow_the_round_so_a_resumed_run_continues_them():
    """ω of round r depends only on (omega_seed, r): an env whose step count is restored
    (as a checkpoint does) draws what the uninterrupted env draws at that round."""
    kw = dict(regime="energies", n_envs=2, tau=0.4, n_steps=2, omega_range=(0.5, 1.5), omega_seed=11)
    run = RandomisedChargingEnv(**kw)
    draws = []
    for _ in range(3):
        draws.append(run.reset()[1]["omegas"][0])
        for _ in range(2):
            run.step(np.zeros(2))
    resumed = RandomisedChargingEnv(**kw)
    resumed.n_step = 2 * 2 * 2                       # two rounds of B = 2 envs × K = 2 steps done
    assert np.array_equal(resumed.reset()[1]["omegas"][0], draws[2])
    assert not np.array_equal(draws[0], draws[1])


@pytest.mark.parametrize("of", ["observations", "actions"])
def test_transfer_scores_the_final_table1_policies_on_other_batteries(tmp_path, of):
    """`reproduce transfer`: the final Env1 policy, deterministic, on Env1–3 and held-out draws,
    equals an independent replay of the checkpoint; a wrong window is refused by name."""
    from qhil.agents.selection import load_policy
    from qhil.agents.training import deterministic_episode
    from qhil.envs import make_charging_env
    work, out = tmp_path / "w", tmp_path / "o"
    assert main(["train", "--env", "env1", "--regime", "energies", "--history", "3", "--history-of", of,
                 "--total-steps", "84", "--learning-starts", "28", "--hidden", "8,8", "--batch-size", "8",
                 "--run-dir", str(work), "--no-progress"]) == 0
    assert main(["reproduce", "transfer", "--regimes", "energies", "--windows", f"energies={of}:3",
                 "--test-random", "2", "--work-dir", str(work), "--out-dir", str(out)]) == 0
    [run] = list(csv.DictReader(open(out / "transfer_seeds.csv")))
    assert run["run"] == "env1/energies/seed0"
    env2 = HistoryVectorEnv(make_charging_env("env2", "energies", weight=0.0), 3, of=of)
    agent = load_policy(work / "env1_energies_seed0.pt", env2.obs_dim, env2.action_low, env2.action_high)
    assert float(run["env2"]) == pytest.approx(deterministic_episode(agent, env2)["ergotropy"], abs=1e-6)
    rows = {r["env"]: r for r in csv.DictReader(open(out / "transfer.csv"))}
    assert set(rows) == {"env1", "env2", "env3", "heldout_mean", "heldout_min"}
    assert rows["env2"]["window"] == "3" and rows["env2"]["window_of"] == of
    assert int(rows["env3"]["n_seeds"]) == 1 and float(rows["heldout_min"]["mean"]) <= float(rows["heldout_mean"]["mean"])
    plain = make_charging_env("env1", "energies")
    with pytest.raises(ValueError, match="obs_dim"):
        load_policy(work / "env1_energies_seed0.pt", plain.obs_dim, plain.action_low, plain.action_high)
