"""The drivers' module graph: no import cycles, counting imports inside functions too (a cycle
hidden by a function-level import is still a cycle)."""
from __future__ import annotations

import ast
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def module_names(folder: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
    """Dotted module name → file, for every .py under ``folder`` (``package`` is its name)."""
    out = {}
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = path
    return out


def from_module(node: ast.ImportFrom, here: str) -> str:
    """The absolute module of ``from … import``, where ``here`` is the importing file's package."""
    if not node.level:
        return node.module or ""
    base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
    return f"{base}.{node.module}" if node.module else base


def imports_of(path: pathlib.Path, name: str, known: set[str]) -> set[str]:
    """Modules of ``known`` that the file imports anywhere (module level or inside a function)."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = from_module(node, here)
            # `from pkg import sub` imports the submodule pkg.sub; `from pkg import name` the package
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def import_graph(folder: pathlib.Path, package: str) -> dict[str, set[str]]:
    mods = module_names(folder, package)
    return {name: imports_of(path, name, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, first = last), or None. Depth-first search."""
    state: dict[str, int] = {}           # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_drivers_import_graph_is_acyclic():
    graph = import_graph(ROOT / "drivers", "qhil.drivers")
    assert "qhil.drivers.schedule" in graph and "qhil.drivers.bridge.client" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in drivers/: " + " → ".join(cycle or [])


def test_the_cycle_check_can_fail(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("from .sub import c\n")
    # the cycle closes only through an import inside a function, two levels up
    (pkg / "sub" / "c.py").write_text("def g():\n    from ..a import h\n    return h\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph(pkg, "pkg")) is None


# -- the drivers' public surface: other layers import no private name -----------------------

LAYERS = ["envs", "agents", "experiments", "lab", "benchmarks", "tests"]


def private_driver_imports(path: pathlib.Path) -> list[str]:
    """Imports in the file of a private drivers name: ``from qhil.drivers… import _x`` or a
    module path with a ``_`` part (``qhil.drivers._x``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("qhil.drivers"):
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("qhil.drivers")]
        else:
            continue
        out += [f"{path.name}:{node.lineno}: {n}" for n in names
                if any(part.startswith("_") and not part.startswith("__") for part in n.split("."))]
    return out


def test_no_private_drivers_names_outside_drivers():
    offenders = [hit for layer in LAYERS for path in sorted((ROOT / layer).rglob("*.py"))
                 for hit in private_driver_imports(path)]
    assert not offenders, f"private drivers names imported from outside drivers/: {offenders}"


def test_the_private_check_can_fail(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from qhil.drivers import _validate as check\nfrom qhil.drivers.model import _x, ok\n"
                   "import qhil.drivers._kernels\nfrom qhil.drivers import checks, __version__\n")
    assert private_driver_imports(bad) == ["x.py:1: qhil.drivers._validate", "x.py:2: qhil.drivers.model._x",
                                           "x.py:3: qhil.drivers._kernels"]


# -- the lab server stack stands on the drivers alone ----------------------------------------

SERVER_STACK = {"qhil.lab.server": ROOT / "lab" / "server.py", "qhil.lab.device": ROOT / "lab" / "device.py",
                "qhil.lab.exec_device": ROOT / "lab" / "exec_device.py"}


def qhil_imports(path: pathlib.Path, name: str) -> set[str]:
    """Every qhil module the file imports, anywhere in it (relative imports resolved)."""
    here = name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "qhil"}
        elif isinstance(node, ast.ImportFrom):
            module = from_module(node, here)
            if module.split(".")[0] == "qhil":
                out.add(module)
    return out


def foreign_imports(files: dict[str, pathlib.Path]) -> dict[str, list[str]]:
    """Per file, the qhil modules it imports outside qhil.drivers and the given files."""
    ok = set(files) | {"qhil.lab"}
    out = {}
    for name, path in files.items():
        bad = sorted(m for m in qhil_imports(path, name)
                     if m not in ok and m != "qhil.drivers" and not m.startswith("qhil.drivers."))
        if bad:
            out[name] = bad
    return out


def test_lab_server_and_devices_import_only_drivers():
    assert not foreign_imports(SERVER_STACK), foreign_imports(SERVER_STACK)


def test_lab_server_and_devices_load_only_drivers_at_run_time():
    import subprocess
    import sys
    code = ("import json, sys, qhil.lab.server, qhil.lab.device, qhil.lab.exec_device\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('qhil.') and m != 'qhil.lab'"
            " and not m.startswith('qhil.drivers'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == sorted(SERVER_STACK)


def test_the_server_stack_check_can_fail(tmp_path):
    (tmp_path / "server.py").write_text("from qhil.drivers import Model\nfrom .device import D\n"
                                        "def f():\n    from ..envs import DickeBattery\n")
    (tmp_path / "device.py").write_text("import qhil.agents.sac\nfrom .commands.args import x\n")
    files = {"qhil.lab.server": tmp_path / "server.py", "qhil.lab.device": tmp_path / "device.py"}
    assert foreign_imports(files) == {"qhil.lab.server": ["qhil.envs"],
                                      "qhil.lab.device": ["qhil.agents.sac", "qhil.lab.commands.args"]}
