"""The docs site: every page is in the nav, the architecture page says what the code holds (its layers and the old
module paths), the API reference's docstrings come out as Markdown, and every ``Examples:`` block in a docstring
runs (doctest). The checks every page shares with the README are in ``tests/test_readme.py``; the site itself is
built by ``mkdocs build --strict`` in ``.ci/run``."""

from __future__ import annotations

import ast
import doctest
import importlib
import importlib.util
import re
from pathlib import Path

import griffe
import pytest
import yaml

import seqstab
from seqstab import _aliases
from tests.test_imports import LAYERS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
ARCHITECTURE = (DOCS / "architecture.md").read_text()


def nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return [page for item in nav for page in nav_pages(item)]


def test_ci_builds_the_site_strict_and_not_quiet():
    """``--quiet`` drops MkDocs' warnings before ``--strict`` counts them: with both, a build with warnings passes
    (two from a docstring did, for a while)."""
    builds = [line.split() for line in (ROOT / ".ci" / "run").read_text().splitlines() if "mkdocs build" in line]
    assert builds, ".ci/run does not build the docs site"
    for words in builds:
        assert "--strict" in words and not {"--quiet", "-q"} & set(words), " ".join(words)


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    listed = nav_pages(MKDOCS["nav"])
    assert len(listed) == len(set(listed)), "a page is listed twice in mkdocs.yml's nav"
    assert pages - set(listed) == set(), "pages missing from mkdocs.yml's nav"
    assert set(listed) - pages == set(), "nav entries without a page"


def table_rows(source: str, first: str) -> list[list[str]]:
    """The rows (cells stripped) of the table whose header row starts with ``| first |``."""
    match = re.search(rf"^\| {re.escape(first)} \|.*\n\|[- |]+\|\n((?:\|.*\|\n)+)", source, flags=re.M)
    assert match, f"no table headed '{first}'"
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in match.group(1).splitlines()]


def code_names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_the_architecture_page_mirrors_the_layers_tests_hold():
    """Its table of layers is ``LAYERS`` of tests/test_imports.py: the same layers, bottom first, each allowed the
    same imports."""
    rows = table_rows(ARCHITECTURE, "layer")
    drawn = {code_names(layer)[0]: set(code_names(allowed)) for layer, _, allowed in rows}
    assert list(drawn) == list(LAYERS)
    assert drawn == LAYERS


def test_the_architecture_page_lists_every_old_module_path():
    rows = table_rows(ARCHITECTURE, "old path")
    assert {code_names(old)[0]: code_names(new)[0] for old, new in rows} == _aliases.ALIASES


def test_the_folders_the_architecture_page_draws_exist():
    for _, folder, _ in table_rows(ARCHITECTURE, "layer"):
        assert (ROOT / code_names(folder)[0]).exists(), folder


# -- the API reference --------------------------------------------------------------------------------------------


def reference_targets() -> list[str]:
    """The objects the reference pages render with their members (``::: seqstab.core.clipping``; not those given
    ``members: false``, whose docstring alone is shown)."""
    found = []
    for page in sorted((DOCS / "reference").glob("*.md")):
        for target, options in re.findall(r"^::: ([\w.]+)\n((?:    .*\n)*)", page.read_text(), flags=re.M):
            if "members: false" not in options:
                found.append(target)
    return found


def test_every_public_name_of_seqstab_is_in_the_api_reference():
    """What ``from seqstab import ...`` offers is rendered on a reference page: a member the page's target counts as
    public, as mkdocstrings' ``filters: public`` does (in ``__all__``, or not underscored and not imported). A
    package that re-exports without ``__all__`` would otherwise leave its page silently empty."""
    loader = griffe.GriffeLoader(search_paths=[str(ROOT)])
    packages = {name: loader.load(name) for name in ("seqstab", "datamodules")}
    loader.resolve_aliases(implicit=False, external=False)
    rendered = set()
    for target in reference_targets():
        top, _, rest = target.partition(".")
        obj = packages[top][rest] if rest else packages[top]
        rendered |= {member.name for member in obj.members.values() if member.is_public}
    assert set(seqstab.__all__) - {"__version__"} - rendered == set()


# -- reStructuredText in the docstrings, as Markdown ------------------------------------------------------------


def load_extension():
    spec = importlib.util.spec_from_file_location("rst_markup", DOCS / "_griffe" / "rst_markup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rst = load_extension()


def test_the_griffe_extension_is_the_one_mkdocs_loads():
    options = MKDOCS["plugins"][1]["mkdocstrings"]["handlers"]["python"]["options"]
    assert "docs/_griffe/rst_markup.py" in options["extensions"]


@pytest.mark.parametrize(
    ("docstring", "markdown"),
    [
        ("a :class:`ClipResult` b", "a `ClipResult` b"),
        ("see :class:`~seqstab.record.Run` and :func:`seqstab.io.load`", "see `Run` and `seqstab.io.load`"),
        (":mod:`the record <seqstab.record>`", "`the record`"),
        ("Choose one::\n\n    model: x\n", "Choose one:\n\n    model: x\n"),
        ("Text.\n\n::\n\n    code\n", "Text.\n\n\n    code\n"),
        ("a :: b", "a :: b"),
    ],
)
def test_rst_roles_and_literal_blocks_become_markdown(docstring, markdown):
    assert rst.markdown(docstring) == markdown


def test_markup_the_extension_does_not_convert_is_found():
    assert RST_LEFT.search(rst.markdown("see :ref:`the guard <guard>`"))
    assert RST_LEFT.search(rst.markdown(".. note::\n\n   careful"))


def test_a_simple_table_becomes_a_markdown_table():
    table = (
        "Before.\n\n"
        "=====  ===========\n"
        "name   what\n"
        "=====  ===========\n"
        "a      first, with\n"
        "       two lines\n"
        "b|c    ``|x|``\n"
        "=====  ===========\n\n"
        "After."
    )
    assert rst.markdown(table) == (
        "Before.\n\n| name | what |\n| --- | --- |\n| a | first, with two lines |\n| b\\|c | ``|x|`` |\n\nAfter."
    )


SOURCES = sorted([*(ROOT / "seqstab").rglob("*.py"), *(ROOT / "datamodules").rglob("*.py")])
RST_LEFT = re.compile(r":\w+:`|::$|^={3,} +=|^\.\. [\w-]+:", flags=re.M)


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_no_docstring_keeps_rst_markup_the_reference_would_show(path):
    """Roles, literal-block markers and simple tables are what the extension converts; markup it does not know
    (``:ref:``, a grid table, a directive ...) would reach the rendered page as written."""
    left = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and RST_LEFT.search(rst.markdown(doc)):
                left.append(f"line {getattr(node, 'lineno', 1)}: {RST_LEFT.findall(rst.markdown(doc))}")
    assert not left, "reStructuredText the API reference would show verbatim: " + "; ".join(left)


# -- doctests ----------------------------------------------------------------------------------------------------


def module_names() -> list[str]:
    names = []
    for path in sorted((ROOT / "seqstab").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # importing it would run the command
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = module_names()
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=FLAGS, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {module}"


def test_the_doctests_are_found():
    """The test above runs what doctest finds: the ``Examples:`` blocks there are today are among them."""
    finder = doctest.DocTestFinder()
    found = {m for m in MODULES if any(t.examples for t in finder.find(importlib.import_module(m)))}
    assert {"seqstab.core.errors", "seqstab.core.recipes"} <= found


def test_a_failing_example_fails():
    module = type(importlib)("broken")
    module.__doc__ = ">>> 1 + 1\n3\n"
    result = doctest.testmod(module, optionflags=FLAGS, report=False)
    assert (result.failed, result.attempted) == (1, 1)
