"""The shape of the code, as the docs' architecture page draws it: the layers are folders, ``seqstab/core/`` imports
no Lightning (any file under it, however deep), the layers depend one way, no import cycle, and every private name
of another library is touched in ``seqstab/internals.py`` alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SEQSTAB = REPO / "seqstab"
CORE = SEQSTAB / "core"
LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric", "lightning_utilities")
MAX_LINES = 450  # one job per file: a file that grows past this holds two

# What each layer may import of seqstab (besides itself). The order is the architecture page's, bottom first.
LAYERS = {
    "seqstab.internals": set(),
    "seqstab.nets": {"seqstab.core.errors", "seqstab.internals"},
    "seqstab.core": {"seqstab.nets", "seqstab.internals"},
    "seqstab.data": {"seqstab.core", "seqstab.internals"},
    "seqstab.lightning": {"seqstab.core", "seqstab.nets", "seqstab.data", "seqstab.internals"},
    "seqstab.tasks": {"seqstab.core", "seqstab.nets", "seqstab.data", "seqstab.lightning", "seqstab.internals"},
    "seqstab.cli": {"seqstab"},
    "datamodules": {"seqstab.core", "seqstab.data"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Every module a file imports (at module level, or anywhere), ``from a import b`` counted as ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> str | None:
    return max((layer for layer in LAYERS if within(module, layer)), key=len, default=None)


def test_nothing_under_core_imports_lightning():
    """The folder rule, read from the source of every file under seqstab/core/ (deferred imports too)."""
    offenders = [
        f"{path.relative_to(REPO)}: {module}"
        for path in files(CORE)
        for module in imports(path)
        if module.split(".")[0] in LIGHTNING or within(module, "datamodules")
    ]
    assert CORE.is_dir() and len(files(CORE)) > 5
    assert not offenders, "Lightning imported under seqstab/core/: " + ", ".join(offenders)


def test_the_folder_rule_catches_a_lightning_import(tmp_path):
    """The check above would see a Lightning import hidden in a function of a nested file."""
    nested = tmp_path / "deep" / "station.py"
    nested.parent.mkdir()
    nested.write_text("def later():\n    from lightning.pytorch import Trainer\n    return Trainer\n")
    assert "lightning.pytorch" in imports(nested)


def test_importing_every_core_module_loads_no_lightning():
    """In a fresh interpreter: every module under seqstab/core/ imported, and neither Lightning (any namespace) nor
    seqstab's tasks, callback or resume are loaded."""
    names = [module_name(path) for path in files(CORE)]
    code = (
        f"import sys, importlib; [importlib.import_module(m) for m in {names!r}]; "
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {LIGHTNING!r} + ('datamodules',) "
        "or m.startswith(('seqstab.tasks', 'seqstab.lightning', 'seqstab.cli'))); print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_import_seqstab_is_light():
    """``import seqstab`` loads no Lightning and no torch: its public names are loaded on first use."""
    code = "import sys, seqstab; print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_every_file_belongs_to_a_layer_and_imports_only_what_its_layer_may():
    offenders = []
    for path in [*files(SEQSTAB), *files(REPO / "datamodules")]:
        name = module_name(path)
        if name in ("seqstab", "seqstab.__main__", "seqstab._aliases"):
            continue  # the public surface and the front door see every layer
        layer = layer_of(name)
        assert layer is not None, f"{path.relative_to(REPO)} is in no layer of LAYERS"
        allowed = LAYERS[layer] | {layer}
        for module in imports(path):
            if within(module, "seqstab") or within(module, "datamodules"):
                if module in ("seqstab", "datamodules") and layer != "seqstab.cli":
                    continue  # `from seqstab import x` is counted as seqstab.x too
                if not any(within(module, ok) for ok in allowed):
                    offenders.append(f"{path.relative_to(REPO)} ({layer}) imports {module}")
    assert not offenders, "\n".join(offenders)


def graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in [*files(SEQSTAB), *files(REPO / "datamodules")]}
    return {name: (imports(path, top_level_only) & modules.keys()) - {name} for name, path in modules.items()}


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module level", "anywhere, deferred ones too"])
def test_no_import_cycle(top_level_only):
    edges = graph(top_level_only)
    for package in [name for name in edges if (SEQSTAB.parent / name.replace(".", "/")).is_dir()]:
        for name in edges:  # a package's __init__ re-exports its children: the child does not import the package
            edges[name].discard(package) if within(name, package) else None
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


def test_no_file_under_seqstab_is_over_the_line_limit():
    long = {str(p.relative_to(REPO)): n for p in files(SEQSTAB) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (one job per file): {long}"


def _named_call(node: ast.AST, function: str) -> bool:
    """``function(obj, "name", ...)`` with the name as a literal."""
    return (
        isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == function
        and len(node.args) > 1
        and isinstance(node.args[1], ast.Constant)
    )


INTERNALS = SEQSTAB / "internals.py"


def own_private_names() -> set[str]:
    """Underscored names seqstab defines itself (outside internals.py): functions, classes, attributes it assigns."""
    names = set()
    for path in files(SEQSTAB):
        if path == INTERNALS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif _named_call(node, "setattr"):
                names.add(node.args[1].value)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if isinstance(n, str) and n.startswith("_")}


DOCUMENTED = {"_exit"}  # os._exit: public, documented API despite its underscore


def test_private_names_of_other_libraries_only_in_internals():
    own = own_private_names() | DOCUMENTED
    offenders = []
    for path in files(SEQSTAB):
        if path == INTERNALS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif _named_call(node, "getattr") or _named_call(node, "hasattr"):
                name = node.args[1].value
            if isinstance(name, str) and name.startswith("_") and not name.startswith("__") and name not in own:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    assert not offenders, "private names outside seqstab/internals.py: " + ", ".join(offenders)
