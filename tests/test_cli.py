"""The `qhil` command line, run as a user would (the installed console script)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from qhil.drivers import Experiment, MeasurementSchedule, create_backend
from qhil.envs import ENV1, DickeBattery


def qhil(*args):
    exe = shutil.which("qhil") or None
    cmd = [exe, *args] if exe else [sys.executable, "-m", "qhil.lab.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_simulate_json_matches_the_driver():
    u = np.linspace(-0.3, 0.3, 12)
    out = qhil("simulate", "--model", "dicke", "--omegas", ",".join(map(str, ENV1)), "--dt", "0.2",
               "--controls=" + ",".join(f"{x:.17g}" for x in u), "--backend", "statevector",
               "--regime", "second_order", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    model = DickeBattery(omegas=ENV1)
    ref = create_backend("statevector").run(Experiment(model, u, 0.2, MeasurementSchedule("second_order")))[0]
    assert doc["steps"] == list(range(13))
    assert np.allclose(doc["ergotropy"], model.ergotropy(ref.qubit_density), atol=1e-12)
    assert np.allclose(np.array(doc["energies"]).sum(1), doc["energy"])
    assert np.allclose(doc["observables"]["values"], ref.values, atol=1e-12)
    assert len(doc["observables"]["labels"]) == 66 and doc["cost"]["settings"] == 9


def test_simulate_table_and_chain():
    out = qhil("simulate", "--model", "xy_chain", "--dt", "0.5", "--controls", "5,0,0;0,5,0")
    assert out.returncode == 0, out.stderr
    assert "fidelity" in out.stdout


@pytest.mark.parametrize("args,needle", [
    (["--dt", "0", "--controls", "0.1"], "dt"),
    (["--dt", "0.2", "--controls", "0.4"], "controls[0, coupling]"),
    (["--dt", "0.2", "--controls", "0.1", "--omegas", "1,-1"], "omegas"),
    (["--dt", "0.2", "--controls", "0.1", "--regime", "Z9"], "observable"),
    (["--dt", "0.2", "--controls", "0.1", "--backend", "qpu"], "backend")])
def test_simulate_bad_input_exits_2_with_a_named_parameter(args, needle):
    out = qhil("simulate", *args)
    assert out.returncode == 2
    assert needle in out.stderr and "Traceback" not in out.stderr
