"""``qhil tune``: a tiny Ray Tune search (2 trials of 3 episodes) end to end, resumed, inside a
network namespace with only loopback (Ray binds nothing else); the search set-up's checks."""
from __future__ import annotations

import csv
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from loopback import refused, run_isolated

from qhil.agents.runstore import RunStore
from qhil.drivers import ValidationError
from qhil.experiments.battery.tune import SEARCH_SPACE, TuneSetup, compare_specs

QHIL = Path(sys.executable).with_name("qhil")
TINY = ["--samples", "2", "--total-steps", "84", "--learning-starts", "28", "--report-every", "1",
        "--grace-rounds", "1", "--compare-seeds", "1", "--jobs", "1", "--no-progress"]


def _in_space(name: str, value: float) -> bool:
    kind, args = SEARCH_SPACE[name]
    return value in args if kind == "choice" else args[0] <= value <= args[1]


def test_tiny_search_records_trials_compares_and_resumes(tmp_path):
    why = refused()
    if why:
        pytest.skip(why)
    ray_tmp = tempfile.mkdtemp(prefix="qr")                 # Ray's session files (short socket paths)
    try:
        check_search_and_resume(tmp_path, {"RAY_TMPDIR": ray_tmp})
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def check_search_and_resume(tmp_path: Path, env: dict[str, str]) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    argv = [str(QHIL), "tune", "--work-dir", str(work), "--out", str(out), *TINY]
    first = run_isolated(argv, env=env)
    assert first.returncode == 0, first.stderr[-4000:]
    store = RunStore(work / "runs.sqlite")
    try:
        runs = store.runs()
        trials = {k: v for k, v in runs.items() if k.startswith("tune/search/")}
        assert len(trials) == 2 and all(v["status"] == "done" for v in trials.values())
        for name, rec in trials.items():
            sac = rec["config"]["sac"]
            assert all(_in_space(k, sac[k]) for k in SEARCH_SPACE), sac
            assert len(store.episodes(name)["episode"]) >= 1
        compared = {k: v for k, v in runs.items() if k.startswith("compare/search/")}
        assert sorted(compared) == ["compare/search/default/seed1", "compare/search/tuned/seed1"]
        assert compared["compare/search/default/seed1"]["config"]["sac"]["lr"] == 1e-3     # the default
        assert all(v["summary"]["steps"] == 84 for v in compared.values())
        before = {k: (v["summary"], len(store.episodes(k)["episode"])) for k, v in runs.items()}
    finally:
        store.close()
    rows = list(csv.DictReader(open(out / "tune_search_trials.csv")))
    assert len(rows) == 2 and float(rows[0]["best_explored"]) >= float(rows[1]["best_explored"])
    summary = list(csv.DictReader(open(out / "tune_search_compare.csv")))
    assert [r["setup"] for r in summary] == ["default", "tuned"]
    assert "Best options vs the defaults" in (out / "tune_search.md").read_text()
    # the same command again: the finished search is restored, nothing is trained again
    second = run_isolated(argv, env=env)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "2 of 2 runs already finished" in second.stderr
    store = RunStore(work / "runs.sqlite")
    try:
        after = {k: (v["summary"], len(store.episodes(k)["episode"])) for k, v in store.runs().items()}
    finally:
        store.close()
    assert after == before
    assert list(csv.DictReader(open(out / "tune_search_trials.csv"))) == rows


@pytest.mark.parametrize("field, value", [("num_samples", 0), ("report_every", 0), ("reduction_factor", 1),
                                          ("max_concurrent", 0), ("name", "a/b"), ("name", ""),
                                          ("env", "env9"), ("regime", "bogus"), ("total_steps", 0),
                                          ("seed", -1), ("learning_starts", -1)])
def test_setup_refused_before_work(field, value):
    with pytest.raises(ValidationError, match=field):
        TuneSetup(**{field: value})


def test_rounds_and_comparison_specs():
    s = TuneSetup(total_steps=3000, report_every=20)
    assert s.rounds == 107 // 20                   # 3000 steps are 107 full 28-step episodes
    specs = compare_specs(s, (("lr", 3e-4),), (1, 2))
    assert [x.name for x in specs] == ["compare/search/default/seed1", "compare/search/tuned/seed1",
                                       "compare/search/default/seed2", "compare/search/tuned/seed2"]
    assert all(x.total_steps == 3000 and x.learning_starts == s.learning_starts for x in specs)
    assert specs[0].charging_spec().sac_config().lr == 1e-3 and specs[1].charging_spec().sac_config().lr == 3e-4


def test_resume_with_other_options_refused(tmp_path, capsys):
    """A search resumed with other options is refused (naming them) before Ray starts."""
    import dataclasses
    import json

    from qhil.lab.cli import main
    setup = TuneSetup(num_samples=2, total_steps=84, learning_starts=28)
    (tmp_path / "tune" / "search").mkdir(parents=True)
    (tmp_path / "tune" / "search" / "qhil_setup.json").write_text(json.dumps(dataclasses.asdict(setup)))
    rc = main(["tune", "--work-dir", str(tmp_path), "--samples", "3", "--total-steps", "84",
               "--learning-starts", "28", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "num_samples" in err and "(2, 3)" in err, err
    import ray
    assert not ray.is_initialized()
