"""Dependencies point one way: lab → experiments → agents → envs → drivers. Nothing imports upward."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ORDER = ["drivers", "envs", "agents", "experiments", "lab"]


def imported_layers(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return {n.split(".")[1] for n in names if n.startswith("qhil.") and n.count(".") >= 1}


@pytest.mark.parametrize("layer", ORDER)
def test_no_upward_imports(layer):
    above = set(ORDER[ORDER.index(layer) + 1:])
    offenders = {str(p.relative_to(ROOT)): sorted(imported_layers(p) & above)
                 for p in (ROOT / layer).rglob("*.py")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{layer} imports from a layer above it: {offenders}"


def test_the_check_can_fail(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from qhil.envs import DickeBattery\nimport qhil.lab.cli\n")
    assert imported_layers(bad) == {"envs", "lab"}
