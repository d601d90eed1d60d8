"""The package's shape: the root holds only the entry points, every module imports on its own,
no import runs in a circle, and each layer imports only the layers below it (ARCHITECTURE.md).

The imports are read from the source (`ast`), function-level ones included: a lazy import is
still a dependency. Imports under `if TYPE_CHECKING:` are annotations only and are left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clusterdns"

#: package -> the project packages it may import; ARCHITECTURE.md draws the same picture
LAYERS: dict[str, set[str]] = {
    "wire": set(),  # DNS bytes: nothing of the project
    "net": set(),  # addresses and batched socket I/O: no DNS, no Kubernetes
    "options": {"net"},  # how an option is declared and checked: what every section may use
    "kube": set(),  # the API and the store: no DNS wire, no sockets
    "cache": {"wire", "options"},
    "cluster": {"kube", "wire"},  # the compiled zone: no sockets
    "obs": {"wire", "net"},
    "forward": {"wire", "net", "cache", "obs", "options"},
    "server": {"wire", "net", "cache", "cluster", "forward", "obs", "options"},
    # the modes' schemas compose the components' sections; checks reuse the readers below
    "settings": {"net", "kube", "cluster", "cache", "forward", "server", "obs", "options"},
    "app": {"wire", "net", "kube", "cache", "cluster", "obs", "forward", "server", "settings", "options"},
}
ROOT_MODULES = {"__init__", "__main__", "cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (a `from pkg import mod` names the module)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("clusterdns"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in known else node.module)
    return out


MODULES = _modules()
GRAPH = {name: _imports(path, set(MODULES)) - {name} for name, path in MODULES.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_package_root_holds_only_the_entry_points():
    loose = {p.stem for p in PACKAGE.glob("*.py")} - ROOT_MODULES
    assert not loose, f"modules at the package root (move them into a package): {sorted(loose)}"


def test_every_package_has_a_layer_rule():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS), "a new package needs its line in LAYERS (and in ARCHITECTURE.md)"


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_each_layer_imports_only_the_layers_below_it(package):
    allowed = LAYERS[package] | {package}
    wrong = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if _package(m) == package
                   for d in deps if _package(d) and _package(d) not in allowed)
    assert not wrong, f"{package} may import only {sorted(LAYERS[package])}: {wrong}"


def test_no_import_runs_in_a_circle():
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH.get(node, ())):
            if state.get(dep) == 1:
                circles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not circles, "import cycles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_cycle_check_sees_a_circle():
    """The checker itself: two modules importing each other are found."""
    saved = dict(GRAPH)
    try:
        GRAPH["clusterdns.wire.names"] = GRAPH["clusterdns.wire.names"] | {"clusterdns.wire.question"}
        GRAPH["clusterdns.wire.question"] = GRAPH["clusterdns.wire.question"] | {"clusterdns.wire.names"}
        with pytest.raises(AssertionError, match="import cycles"):
            test_no_import_runs_in_a_circle()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_every_module_imports_on_its_own():
    """Each module, imported first in a fresh interpreter, loads (no hidden order between them)."""
    script = (
        "import importlib, sys\n"
        "bad = []\n"
        "for name in sys.argv[1:]:\n"
        "    for m in [m for m in sys.modules if m == 'clusterdns' or m.startswith('clusterdns.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        bad.append(f'{name}: {exc!r}')\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    names = [m for m in MODULES if m != "clusterdns.__main__"]
    result = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
