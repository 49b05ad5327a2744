"""The package's import graph has no cycle, and every module imports on its own.

Data flows one way (docs/how-it-records.md, "The plugin's layout"): fixture -> record -> session, options and
marker below them, report/* below the session.  A cycle makes a module's
behaviour depend on which module happened to be imported first.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_stability"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports, at module level or inside functions (both count)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # "from . import x" imports the submodule x; "from .m import y" imports m
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycle():
    assert {"pytest_stability.plugin", "pytest_stability.integrations.session", "pytest_stability.record"} <= set(
        MODULES
    )
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert graph["pytest_stability.plugin"] >= {"pytest_stability.integrations.session", "pytest_stability.fixtures"}
    assert _cycles(graph) == []


def test_the_session_does_not_import_the_layers_above_it():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    above = {"pytest_stability.plugin", "pytest_stability.fixtures", "pytest_stability.integrations.baseline_gate"}
    assert graph["pytest_stability.integrations.session"] & above == set()
    assert graph["pytest_stability.record"] == set()


def test_the_framework_type_names_are_the_bottom_layer():
    # framework_types names the framework objects for every layer, the pure checks and the training alike
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert graph["pytest_stability.framework_types"] == set()


def test_every_module_imports_on_its_own():
    # A fresh interpreter; before each import every pytest_stability module is dropped from sys.modules,
    # so each one is imported first, the way a user's `import pytest_stability.x` would.  A module of the
    # training engine that imports Keras at its top may miss it where the fast tier runs without any framework
    # installed (only a test that trains imports it); where Keras is installed, it imports like the others.
    code = """
import importlib, importlib.util, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "pytest_stability" or m.startswith("pytest_stability.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        engine = name.startswith("pytest_stability.training.")
        if not (engine and exc.name == "keras" and importlib.util.find_spec("keras") is None):
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code, *MODULES], capture_output=True, text=True, timeout=300, cwd=PACKAGE.parent
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == ""


def test_report_holds_renderers_only():
    """The report package renders; the pytest plugins that write its output live outside it (ci.py,
    html_panels.py, session.py): no module of report/ imports pytest or the session, or defines a hook."""
    for name, path in MODULES.items():
        if not name.startswith("pytest_stability.report"):
            continue
        imported = _imports(name, path)
        assert "pytest_stability.integrations.session" not in imported, name
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(alias.name != "pytest" for alias in node.names), f"{name} imports pytest"
            if isinstance(node, ast.FunctionDef):
                assert not node.name.startswith("pytest_"), f"{name} defines the hook {node.name}"
