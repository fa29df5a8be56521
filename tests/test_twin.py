"""The digital twin: any device model for simulate, train and grape — by options, a model
JSON, or what a lab server's ``describe`` reports (with its calibration applied)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from qhil.agents.runstore import RunStore
from qhil.drivers import ValidationError
from qhil.envs import ENV2, DickeBattery
from qhil.lab.cli import build_parser, main
from qhil.lab.commands.model_options import model_from_args, twin_from_description
from qhil.lab.device import NullDevice

from labserver import ThreadServer

DEVICE_MODEL = DickeBattery(omegas=(0.8, 1.2), n_max=8, coupling_bound=0.25)


class CalibratedNull(NullDevice):
    """A device whose calibration reports measured qubit frequencies (as a lab's would)."""

    def calibration(self) -> dict[str, Any]:
        return {"omegas": [0.81, 1.19], "frequency_offsets": [0.0, 0.005], "t1_us": [40.0, 55.0]}


@contextlib.contextmanager
def serving(tmp: Path) -> Iterator[str]:
    with ThreadServer(CalibratedNull(DEVICE_MODEL), tmp / "runs.sqlite") as srv:
        yield srv.spec


def model_of(*argv: str) -> tuple[Any, dict]:
    return model_from_args(build_parser().parse_args(["simulate", "--dt", "0.2", "--controls", "0.1", *argv]))


def test_model_options_build_any_battery(tmp_path):
    m, prov = model_of("--omegas", "0.9,1.0,1.1", "--omega-c", "1.05", "--n-max", "20", "--coupling-bound", "0.2")
    assert m == DickeBattery(omegas=(0.9, 1.0, 1.1), omega_c=1.05, n_max=20, coupling_bound=0.2)
    assert prov["source"] == "options"
    m, prov = model_of("--env", "env2")
    assert m == DickeBattery(omegas=ENV2) and prov == {"source": "preset", "env": "env2"}
    m, _ = model_of("--env", "env2", "--coupling-bound", "0.1")    # refining re-derives the converged cutoff
    assert m.coupling_bound == 0.1 and m.n_max == DickeBattery(omegas=ENV2, coupling_bound=0.1).n_max
    path = tmp_path / "model.json"
    path.write_text(json.dumps(DEVICE_MODEL.to_dict()))
    assert model_of("--model-json", str(path))[0] == DEVICE_MODEL
    assert model_of("--model-json", json.dumps(DEVICE_MODEL.to_dict()))[0] == DEVICE_MODEL
    assert model_of()[0] == DickeBattery()                          # Env1 by default


@pytest.mark.parametrize("argv, name", [
    (["--env", "env1", "--omegas", "1,1"], "omegas"),
    (["--omegas", "1,nan"], "--omegas"),
    (["--omegas", ""], "--omegas"),
    (["--omegas", "0,1"], "--omegas"),
    (["--n-max", "0"], "--n-max"),
    (["--model-json", "{bad"], "--model-json"),
    (["--model-json", "missing.json"], "--model-json"),
    (["--model-json", '{"kind": "nope", "params": {}}'], "model"),
    (["--from-endpoint", "tcp://x:1"], "from-endpoint"),
])
def test_bad_model_options_are_refused_before_work(argv, name, capsys):
    try:
        rc = main(["simulate", "--dt", "0.2", "--controls", "0.1", *argv])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr()
    assert name in err.err and "Traceback" not in err.err and err.out == ""


def test_twin_from_endpoint_applies_the_calibration(tmp_path):
    with serving(tmp_path) as spec:
        m, prov = model_of("--from-endpoint", spec)
        doc_rc = main(["simulate", "--from-endpoint", spec, "--dt", "0.2", "--controls", "0.25*3", "--json"])
    assert doc_rc == 0
    assert m.omegas == pytest.approx((0.81, 1.195)) and m.n_max == 8 and m.coupling_bound == 0.25
    assert prov["calibration_applied"] == ["omegas", "frequency_offsets"]
    assert prov["calibration"]["t1_us"] == [40.0, 55.0] and prov["endpoint"] == spec
    # no calibration keys: the device's model itself
    info = {"name": "x", "model": DEVICE_MODEL.to_dict(), "calibration": {"frequency_offsets": [0.0, 0.0]}}
    assert twin_from_description(info)[0] == DEVICE_MODEL
    with pytest.raises(ValidationError, match="reports no model"):
        twin_from_description({"name": "x", "model": None})


def test_train_on_the_twin_with_domain_randomisation(tmp_path):
    with serving(tmp_path) as spec:
        rc = main(["train", "--from-endpoint", spec, "--omega-spread", "0.05", "--regime", "energies",
                   "--total-steps", "84", "--learning-starts", "28", "--hidden", "16,16", "--batch-size", "16",
                   "--run-dir", str(tmp_path / "run"), "--no-progress", "--json", str(tmp_path / "s.json")])
    assert rc == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["run"] == "custom/energies/seed0"
    cfg = RunStore(tmp_path / "run" / "runs.sqlite").runs()["custom/energies/seed0"]["config"]
    assert cfg["model"]["params"]["omegas"] == pytest.approx([0.81, 1.195])
    assert cfg["model"]["params"]["coupling_bound"] == 0.25 and cfg["omega_spread"] == 0.05
    assert cfg["model_provenance"]["source"] == "endpoint"
    # the randomised episodes were drawn around the twin's frequencies, not Env1's
    assert np.all(np.abs(np.asarray(summary["deterministic"]["protocol"])) <= 0.25 + 1e-12)


def test_a_resume_with_another_model_is_refused(tmp_path, capsys):
    base = ["train", "--regime", "energies", "--total-steps", "56", "--learning-starts", "28", "--hidden", "16,16",
            "--batch-size", "16", "--run-dir", str(tmp_path), "--no-progress", "--run", "r"]
    assert main([*base, "--omegas", "0.9,1.1", "--n-max", "8"]) == 0
    assert main([*base, "--omegas", "0.9,1.2", "--n-max", "8"]) == 2
    assert "model" in capsys.readouterr().err


def test_grape_on_a_custom_model(tmp_path):
    out = tmp_path / "g.json"
    assert main(["grape", "--omegas", "0.9,1.1", "--n-max", "8", "--steps", "6", "--tau", "1.2", "--starts", "1",
                 "--maxiter", "20", "--quiet", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["env"] == "custom" and doc["model"] == DickeBattery(omegas=(0.9, 1.1), n_max=8).to_dict()
    assert doc["ergotropy"] == pytest.approx(doc["verified_statevector"], abs=1e-8)
