"""The one runner (qhil.experiments.runner) on real, tiny SAC charging runs; the run store's
export/import and the Ray executor's ship-back path (no cluster needed: tests/test_ray_cluster.py
runs a real one)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qhil.agents.runstore import RunStore
from qhil.drivers import ValidationError
from qhil.experiments.battery.tune import SACTrialSpec
from qhil.experiments.runner import LocalExecutor, execute_logged, failed_message, log_path, run_specs

#: Tiny runs: 3 episodes of 28 steps, updates from step 28, small networks.
TINY = dict(total_steps=84, learning_starts=28, options=(("batch_size", 16), ("hidden", (16, 16))))


def grid() -> list[SACTrialSpec]:
    """Two good runs around one that fails (its checkpoint path is a folder)."""
    return [SACTrialSpec(name="grid/seed0", seed=0, **TINY), SACTrialSpec(name="grid/broken", seed=5, **TINY),
            SACTrialSpec(name="grid/seed1", seed=1, **TINY)]


def block(work: Path, name: str) -> Path:
    """Make run ``name`` fail: a folder where its checkpoint goes."""
    p = work / (name.replace("/", "_") + ".pt")
    p.mkdir(parents=True)
    return p


def comparable(summary: dict) -> dict:
    return {k: summary[k] for k in ("best_explored", "deterministic", "deterministic_protocol", "steps", "episodes")}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The grid run with one local worker (in this process) and with two (spawned processes)."""
    out = {}
    for jobs in (1, 2):
        work = tmp_path_factory.mktemp(f"jobs{jobs}")
        block(work, "grid/broken")
        logs: list[str] = []
        out[jobs] = (work, run_specs(grid(), work, LocalExecutor(jobs), progress=False, log=logs.append), logs)
    return out


@pytest.mark.parametrize("jobs", [1, 2])
def test_outcomes_in_order_failure_reported_others_done(two_runs, jobs):
    work, outcomes, logs = two_runs[jobs]
    assert [o.name for o in outcomes] == [s.name for s in grid()]
    assert [o.status for o in outcomes] == ["done", "failed", "done"]
    bad = outcomes[1]
    assert bad.summary is None and "grid/broken" in bad.error and "IsADirectoryError" in bad.error
    assert "grid/broken" in failed_message(outcomes, work) and failed_message(outcomes[:1], work) is None
    assert any("FAILED grid/broken" in line for line in logs) and any("finished grid/seed0" in line for line in logs)
    store = RunStore(work / "runs.sqlite")
    try:
        runs = store.runs()
        assert runs["grid/seed0"]["status"] == runs["grid/seed1"]["status"] == "done"
        assert "grid/broken" not in runs or runs["grid/broken"]["status"] != "done"
        assert len(store.episodes("grid/seed0")["episode"]) == 3
    finally:
        store.close()
    for o in outcomes:
        text = log_path(work, o.name).read_text()
        assert o.name in text                     # the header line of each run
    assert "Traceback" in log_path(work, "grid/broken").read_text()


def test_jobs_1_and_2_give_identical_runs(two_runs):
    (_, one, _), (_, two, _) = two_runs[1], two_runs[2]
    for a, b in zip(one, two):
        if a.status == "done":
            assert comparable(a.summary) == comparable(b.summary), a.name
    assert comparable(one[0].summary) != comparable(one[2].summary)      # seeds 0 and 1 differ


@pytest.mark.parametrize("jobs", [1, 2])
def test_finished_runs_skipped_failed_rerun(two_runs, jobs, tmp_path):
    work, first, _ = two_runs[jobs]
    again = run_specs(grid(), work, LocalExecutor(jobs), progress=False, log=lambda s: None)
    assert [o.status for o in again] == ["skipped", "failed", "skipped"]
    assert again[0].summary == first[0].summary and again[2].summary == first[2].summary
    # the cause removed, only the failed run executes; same numbers as its seed gives elsewhere
    (work / "grid_broken.pt").rmdir()
    lines: list[str] = []
    third = run_specs(grid(), work, LocalExecutor(jobs), progress=False, log=lines.append)
    assert [o.status for o in third] == ["skipped", "done", "skipped"]
    assert lines[0].startswith("2 of 3 runs already finished; 1 to run")
    alone = run_specs([grid()[1]], tmp_path, LocalExecutor(1), progress=False, log=lambda s: None)[0]
    assert comparable(alone.summary) == comparable(third[1].summary)


def test_bad_spec_lists_refused_before_work(tmp_path):
    with pytest.raises(ValidationError, match="specs"):
        run_specs([grid()[0], "not a spec"], tmp_path)
    with pytest.raises(ValidationError, match="twice"):
        run_specs([grid()[0], grid()[0]], tmp_path)
    with pytest.raises(ValidationError, match="jobs"):
        LocalExecutor(0)
    assert not (tmp_path / "runs.sqlite").exists()
    with pytest.raises(ValidationError, match="regime"):
        SACTrialSpec(name="x", regime="bogus")
    with pytest.raises(ValidationError, match="lr"):
        SACTrialSpec(name="x", options=(("lr", -1.0),))


def test_run_store_export_import_round_trip(two_runs, tmp_path):
    work, _, _ = two_runs[1]
    src = RunStore(work / "runs.sqlite")
    dst = RunStore(tmp_path / "runs.sqlite")
    try:
        bundle = src.export_run("grid/seed0")
        dst.start_run("grid/seed0", {"stale": True})          # replaced, not merged
        dst.log_episodes("grid/seed0", [dict(episode=99, step=1, ret=0, energy=0, ergotropy=0, best=0, weight=0)])
        dst.import_run(bundle)
        assert dst.runs() == {"grid/seed0": src.runs()["grid/seed0"]}
        for read in ("episodes", "figures", "best"):
            assert getattr(src, read)("grid/seed0") == getattr(dst, read)("grid/seed0"), read
        assert len(dst.episodes("grid/seed0")["episode"]) == 3          # episode 99 gone
        with pytest.raises(KeyError):
            src.export_run("no/such/run")
        evil = dict(bundle, episodes=(["run", "episode; DROP TABLE runs"], []))
        with pytest.raises(ValueError, match="unknown columns"):
            dst.import_run(evil)
        other = dict(bundle, run="grid/other")
        with pytest.raises(ValueError, match="another run"):
            dst.import_run(other)
        assert dst.status("grid/seed0") == "done"                # a refused import changed nothing
    finally:
        src.close()
        dst.close()


def test_ray_ship_back_path_without_a_cluster(two_runs, tmp_path):
    """A worker that does not see the work folder runs in its own temporary folder and ships
    the run back; imported, it is the same run as one executed in place."""
    from qhil.experiments import ray_executor as rx
    spec = grid()[0]
    shipped = rx._run_task(execute_logged, (spec, str(tmp_path)), token=None, ship="auto")
    assert shipped["_qhil_shipped"] and not (tmp_path / "runs.sqlite").exists()   # nothing written here
    assert set(shipped["files"]) == {"grid_seed0.pt", "logs/grid_seed0.log"}
    result = rx._import_shipped(shipped, tmp_path)
    assert comparable(result) == comparable(two_runs[1][1][0].summary)
    store = RunStore(tmp_path / "runs.sqlite")
    try:
        assert store.status("grid/seed0") == "done" and len(store.episodes("grid/seed0")["episode"]) == 3
    finally:
        store.close()
    assert (tmp_path / "grid_seed0.pt").stat().st_size > 0 and "shipped back" in log_path(tmp_path, spec.name).read_text()
    # in place when the token is visible; refused with ship="never" when it is not
    token = rx._write_token(tmp_path)
    assert rx._sees(str(tmp_path), token) and not rx._sees(str(tmp_path), "0" * 32)
    err = rx._run_task(execute_logged, (spec, str(tmp_path / "elsewhere")), token=token, ship="never")
    assert isinstance(err, RuntimeError) and "does not see the work folder" in str(err)
    evil = dict(shipped, files={"../outside.txt": b"x"})
    with pytest.raises(RuntimeError, match="outside the work folder"):
        rx._import_shipped(evil, tmp_path / "w")


@pytest.mark.parametrize("address", ["", "abc", "nan", "inf", "ray://", "ray://host", "host:0", "host:99999",
                                     "http://host:1", "ray://:10001", "a b:1"])
def test_ray_address_refused(address):
    from qhil.experiments.ray_executor import RayExecutor, check_address
    with pytest.raises(ValidationError, match="address"):
        check_address(address)
    with pytest.raises(ValidationError, match="address"):
        RayExecutor(address=address)


@pytest.mark.parametrize("address", ["auto", "ray://head:10001", "127.0.0.1:6379", "ray://[::1]:10001",
                                     "node-7.cluster.local:6379"])
def test_ray_address_accepted(address):
    from qhil.experiments.ray_executor import RayExecutor, check_address
    assert check_address(address) == address and RayExecutor(address=address).address == address


@pytest.mark.parametrize("field, value", [("max_retries", -1), ("max_retries", 1.5), ("num_cpus", 0),
                                          ("num_cpus", float("nan")), ("ship", "sometimes"), ("heartbeat_s", -1)])
def test_ray_executor_options_refused(field, value):
    from qhil.experiments.ray_executor import RayExecutor
    with pytest.raises(ValidationError, match=field):
        RayExecutor(**{field: value})


def test_specs_are_frozen_and_picklable():
    import pickle
    s = grid()[0]
    assert pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 3                                                    # type: ignore[misc]


def test_ray_missing_named_with_the_extra(monkeypatch):
    import sys

    from qhil.drivers import QhilError
    from qhil.experiments.ray_executor import RayExecutor
    monkeypatch.setitem(sys.modules, "ray", None)             # as if the extra were not installed
    with pytest.raises(QhilError, match=r"qhil\[cluster\]"):
        RayExecutor().connect()
