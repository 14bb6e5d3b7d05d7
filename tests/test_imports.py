"""The shape of the code: the update core runs without Lightning, no import cycle, the packages depend one way, and
every private name of another library is touched in seqstab/internals.py alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SEQSTAB = REPO / "seqstab"
STATIONS = ["seqstab.update", "seqstab.clipping", "seqstab.guard", "seqstab.monitor", "seqstab.record"]


def test_the_update_core_and_its_stations_import_no_lightning_and_no_task():
    """In a fresh interpreter: importing the core loads neither Lightning (any namespace) nor seqstab's tasks."""
    code = (
        f"import sys; import {', '.join(STATIONS)}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning', "
        "'lightning_fabric', 'datamodules') or m in ('seqstab.tasks', 'seqstab.trainer_run', 'seqstab.resume')); "
        "print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def module_imports(path: Path, top_level_only: bool) -> set[str]:
    """The ``seqstab.*`` and ``datamodules.*`` modules a file imports (at module level, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "seqstab":  # from seqstab import checkpoint, internals
                found |= {f"seqstab.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] in ("seqstab", "datamodules")}


def graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = {f"seqstab.{p.stem}": p for p in SEQSTAB.glob("*.py") if p.stem != "__init__"}
    return {name: module_imports(path, top_level_only) & modules.keys() - {name} for name, path in modules.items()}


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module level", "anywhere, deferred ones too"])
def test_no_import_cycle_in_seqstab(top_level_only):
    edges = graph(top_level_only)
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_stations_do_not_import_tasks_or_the_trainer():
    edges = graph(top_level_only=False)
    for station in ("seqstab.clipping", "seqstab.guard", "seqstab.monitor", "seqstab.update", "seqstab.record"):
        assert not edges[station] & {"seqstab.tasks", "seqstab.trainer_run", "seqstab.resume", "seqstab.callbacks"}


def test_seqstab_never_imports_datamodules():
    for path in SEQSTAB.glob("*.py"):
        assert not any(m.startswith("datamodules") for m in module_imports(path, top_level_only=False)), path.name


def _named_call(node: ast.AST, function: str) -> bool:
    """``function(obj, "name", ...)`` with the name as a literal."""
    return (
        isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == function
        and len(node.args) > 1
        and isinstance(node.args[1], ast.Constant)
    )


def own_private_names() -> set[str]:
    """Underscored names seqstab defines itself (outside internals.py): functions, classes, attributes it assigns."""
    names = set()
    for path in SEQSTAB.glob("*.py"):
        if path.name == "internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif _named_call(node, "setattr"):
                names.add(node.args[1].value)
    return {n for n in names if isinstance(n, str) and n.startswith("_")}


DOCUMENTED = {"_exit"}  # os._exit: public, documented API despite its underscore


def test_private_names_of_other_libraries_only_in_internals():
    own = own_private_names() | DOCUMENTED
    offenders = []
    for path in sorted(SEQSTAB.glob("*.py")):
        if path.name == "internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif _named_call(node, "getattr") or _named_call(node, "hasattr"):
                name = node.args[1].value
            if isinstance(name, str) and name.startswith("_") and not name.startswith("__") and name not in own:
                offenders.append(f"{path.name}:{node.lineno} {name}")
    assert not offenders, "private names outside seqstab/internals.py: " + ", ".join(offenders)
