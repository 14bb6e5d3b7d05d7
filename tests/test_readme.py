"""The README and every page of the docs site say what the repository does: the paths they name exist, the names
resolve, every command parses with the flags it is given, the tables list the code's defaults, the examples are the
shipped files. The README is the front door: short, with the two set-up commands that CI runs."""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import os
import random
import re
import shlex
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from seqstab.core import clipping, guard, monitor, tbptt

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
README_LIMIT = 15_000  # bytes: a front page the size of the anchors' (8-19 KB); the rest is the docs site


def text(page: Path) -> str:
    return page.read_text()


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def per_page(found) -> list:
    """``[pytest.param(page, item)]`` for each item ``found(page_text)`` returns on each page."""
    return [pytest.param(page, item, id=f"{name(page)}:{item}") for page in PAGES for item in sorted(found(text(page)))]


def blocks(source: str, language: str) -> list[str]:
    """The fenced blocks of one language (``""``: those without one)."""
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", source, flags=re.S | re.M) if lang == language]


def prose(source: str) -> str:
    """The page without its fenced blocks."""
    return re.sub(r"```.*?```", "", source, flags=re.S)


# -- the front door ----------------------------------------------------------------------------------------------


def test_the_readme_is_a_short_front_door():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size:,} bytes (limit {README_LIMIT:,}): move a section to docs/"


def set_up_commands(page: Path) -> list[str]:
    return [b.strip() for b in blocks(text(page), "bash") if "pip install" in b]


def test_two_copy_paste_set_up_commands_and_ci_runs_the_second():
    setup = set_up_commands(README)
    assert len(setup) >= 2 and all("\n" not in b for b in setup[:2]), "each set-up command is one line"
    install_and_run, install_and_test = setup[:2]
    assert install_and_run.endswith("python -m seqstab.train")
    test_command = install_and_test.split(" && ", 2)[2]  # after creating and activating the venv
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines, f".ci/run does not run the README's test command: {test_command}"


def test_getting_started_gives_the_readme_set_up_commands():
    assert set_up_commands(DOCS / "getting-started.md")[:2] == set_up_commands(README)[:2]


def closing_lines(page: Path) -> list[str]:
    return [b for b in blocks(text(page), "") if b.startswith("View it in TensorBoard:")]


def test_the_closing_lines_of_the_default_run_are_shown_alike():
    """README and Getting started show the same closing lines (what the code prints is tests/test_golden.py's)."""
    shown = closing_lines(README)
    assert len(shown) == 1 and closing_lines(DOCS / "getting-started.md") == shown
    assert shown[0].rstrip().endswith("seqstab: 240 of 240 updates applied")


def test_the_readme_net_keeps_the_recurrent_contract():
    """The README's own-net example, executed: built as ``net(input_size, **init_args)``, ``forward(x, hidden)`` maps
    ``(B, L, input_size)`` to ``(B, L, hidden_size)`` and a state it takes back."""
    net_class = readme_net()
    net = net_class(3, hidden_size=8)
    out, hidden = net(torch.randn(2, 5, 3))
    assert net.hidden_size == 8 and out.shape == (2, 5, 8)
    out, _ = net(torch.randn(2, 4, 3), hidden)
    assert out.shape == (2, 4, 8)


def readme_net() -> type:
    return readme_net_module().MyRNN


def readme_net_module() -> types.ModuleType:
    """The README's net, in a module named as the README's command names it (``mynets.MyRNN``)."""
    (source,) = [b for b in blocks(text(README), "python") if "class MyRNN" in b]
    module = types.ModuleType("mynets")
    module.nn, module.torch = nn, torch
    exec(compile(source, "README.md", "exec"), module.__dict__)
    return module


# -- paths and names ---------------------------------------------------------------------------------------------

PATHS = r"\b((?:configs|datamodules|docs|benchmarks|tools|seqstab|tests)/[\w./-]+\.(?:yaml|py|md|png|sh))"


@pytest.mark.parametrize(("page", "path"), per_page(lambda t: set(re.findall(PATHS, t))))
def test_every_path_a_page_names_exists(page, path):
    assert (ROOT / path).is_file(), f"{name(page)} names {path}"


PACKAGE = "(?:seqstab|datamodules)"


def dotted_names(source: str) -> set[str]:
    """Class paths (``seqstab.clipping.NormClip``), module and attribute paths in code spans (``seqstab.core.update``,
    ``seqstab.update.UpdateCore.update``), and a table row's siblings after a full path (``datamodules.text.WikiText2``,
    ``PennTreebank``)."""
    found = set(re.findall(rf"\b({PACKAGE}(?:\.[a-z_0-9]+)*\.[A-Z]\w*)", source))
    found |= {s for s in re.findall(r"`([\w.]+)`", source) if re.fullmatch(rf"{PACKAGE}(?:\.\w+)+", s)}
    for module, rest in re.findall(rf"`({PACKAGE}(?:\.[a-z_0-9]+)+)\.[A-Z]\w+`((?:, `[A-Z]\w+`)+)", source):
        found |= {f"{module}.{sibling}" for sibling in re.findall(r"`([A-Z]\w+)`", rest)}
    return found


def resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize(("page", "dotted"), per_page(dotted_names))
def test_every_name_a_page_gives_resolves(page, dotted):
    resolve(dotted)


# -- commands ----------------------------------------------------------------------------------------------------


def commands(source: str) -> set[str]:
    """The seqstab commands and repository scripts a page gives: each line of a ``bash`` block (continuations
    joined, ``&&`` chains split) and each code span that is one (``python -m seqstab.replay ...``)."""
    found = []
    for block in blocks(source, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            found += line.split(" && ")
    for span in re.findall(r"`([^`]+)`", prose(source)):
        found.append(" ".join(span.split()))
    found = [argv(" ".join(c.split())) for c in found]
    return {shlex.join(w) for w in found if w and kind(w) is not None and not placeholder_name(w)}


def placeholder_name(words: list[str]) -> bool:
    """``python -m seqstab.<command>``, ``seqstab <command>``: a form, not a command."""
    return bool(re.search("[<>]", words[2 if kind(words) == "module" else 1]))


def argv(command: str) -> list[str]:
    """The command's words (comments dropped), without a leading ``time`` or ``VAR=value``."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:  # a fragment with an unbalanced quote is no command
        return []
    while words and (words[0] == "time" or re.fullmatch(r"[A-Z_]+=\S*", words[0])):
        words.pop(0)
    return words


def kind(words: list[str]) -> str | None:
    if words[0] in ("python", "python3") and len(words) > 2 and words[1] == "-m" and words[2].startswith("seqstab"):
        return "module"
    if words[0] in ("python", "python3", "bash") and len(words) > 1 and words[1].endswith((".py", ".sh")):
        return "script"
    if words[0] == "seqstab" and len(words) > 1:
        return "console"
    return None


SKETCH = re.compile(r"^\.\.\.$|…|<|>|\||^\[-|^[^\[].*\]$|^[A-Z][A-Z_:]*$")  # FILE, <snapshot>, [--jobs N], a|b


def is_sketch(words: list[str]) -> bool:
    """A command with a placeholder in it (``FILE``, ``<snapshot>``, ``[--jobs N]``, ``fit|validate``): its module
    must exist, its arguments are not parsed."""
    return any(SKETCH.search(word) for word in words)


class Parsed(BaseException):
    """Raised as soon as a command's arguments have parsed: nothing runs."""


@pytest.fixture
def parse_only(monkeypatch):
    """Parse, never run: argparse commands stop after ``parse_args``, ``seqstab.train`` before instantiating
    anything. The CLI's seeding and ``SeqstabCLI.current`` are put back afterwards; placeholder modules the pages
    name (``mymodule``: datamodules/example.py, ``mynets``: the README's net) are importable meanwhile."""
    from seqstab.cli import train

    monkeypatch.chdir(ROOT)  # config paths are relative to the repository root
    for seeded in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # seed_everything sets them: undone at teardown
        monkeypatch.setenv(seeded, os.environ.get(seeded, "0"))
    monkeypatch.setattr(train.SeqstabCLI, "current", train.SeqstabCLI.current)
    monkeypatch.setitem(sys.modules, "mymodule", importlib.import_module("datamodules.example"))
    monkeypatch.setitem(sys.modules, "mynets", readme_net_module())
    monkeypatch.setattr(sys, "argv", ["seqstab.train"])  # LightningCLI compares its args with the command line
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *args, **kwargs):
        parse_args(self, *args, **kwargs)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.random.set_rng_state(states[2])


def parse_train(args: list[str]) -> None:
    from seqstab.cli.train import SeqstabCLI, with_default

    class ParseOnly(SeqstabCLI):
        def before_instantiate_classes(self) -> None:
            raise Parsed

    try:
        ParseOnly(args=with_default(args))
    except Parsed:
        return
    except SystemExit as exit_:  # --print_config, --help: parsed, printed, done
        assert exit_.code in (0, None), f"exit {exit_.code}"
        return
    raise AssertionError("seqstab.train went past parsing")


def entry_points(words: list[str]) -> list[tuple[types.ModuleType, list[str]]]:
    """The module(s) a command runs and the arguments each gets: ``python -m seqstab.replay X`` is
    ``(seqstab.cli.replay, [X])``; ``seqstab fit ...`` is ``(seqstab.cli.train, [fit, ...])`` (``seqstab
    validate|test ...``: one for each)."""
    if kind(words) == "module":
        return [(importlib.import_module(words[2]), words[3:])]
    from seqstab.cli import command

    if words[1] == "--version":
        return []
    found = []
    for sub in words[1].split("|"):
        assert sub in (*command.TRAIN, *command.TOOLS), f"seqstab has no command {sub!r}"
        if sub in command.TRAIN:
            found.append((importlib.import_module("seqstab.cli.train"), words[1:]))
        else:
            found.append((importlib.import_module(f"seqstab.cli.{sub}"), words[2:]))
    return found


@pytest.mark.parametrize(("page", "command"), per_page(commands))
def test_every_command_parses(page, command, parse_only):
    words = argv(command)
    if kind(words) == "script":
        script = ROOT / words[1]
        assert script.is_file(), f"{name(page)}: no {words[1]}"
        flags = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
        unknown = {f for f in flags if f'"{f}"' not in script.read_text()}
        assert not unknown, f"{words[1]} takes no {sorted(unknown)}"
        return
    for module, args in entry_points(words):
        assert callable(getattr(module, "main", None)), f"{module.__name__} has no main"
        train = module.__name__ == "seqstab.cli.train"
        if is_sketch(words) or (not args and not train):  # a placeholder, or a command named in passing
            continue
        if train:
            parse_train(args)
        else:
            with pytest.raises(Parsed):
                module.main(args)


def test_a_wrong_flag_fails_to_parse(parse_only):
    """The check above can fail: a flag the command does not take is an error."""
    with pytest.raises(Exception, match="tbptt_stepz"):
        parse_train(["fit", "--model.tbptt_stepz", "5"])
    assert importlib.import_module("seqstab.cli.replay").main(["snapshot.pt", "--no-such-flag"]) == 2  # one line


# -- blocks and examples -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", [pytest.param(p, id=name(p)) for p in PAGES])
def test_every_yaml_block_parses_and_every_python_block_compiles(page):
    for block in blocks(text(page), "yaml"):
        assert isinstance(yaml.safe_load(block), dict)
    for block in blocks(text(page), "python"):
        compile(block, name(page), "exec")


CONFIG_EXAMPLE = r"This is\n`(configs/[^`]+\.yaml)`:\n\n```yaml\n(.*?)```"
NET_EXAMPLE = r"This is the IndRNN of\n`seqstab.nets.example`.*?```python\n(.*?)```"


def test_config_examples_are_the_shipped_files():
    shown = [m for p in PAGES for m in re.findall(CONFIG_EXAMPLE, text(p), flags=re.S)]
    assert shown, "a page shows a shipped config, introduced as 'This is `configs/....yaml`:'"
    for path, body in shown:
        assert (ROOT / path).read_text() == body, path


def test_the_example_net_is_the_shipped_one():
    from seqstab.nets.example import IndRNN

    shown = [m for p in PAGES for m in re.findall(NET_EXAMPLE, text(p), flags=re.S)]
    assert shown, "a page shows seqstab.nets.example's IndRNN"
    for body in shown:
        assert body.strip() == inspect.getsource(IndRNN).strip()


# -- tables and defaults -----------------------------------------------------------------------------------------

FAMILIES = {"clipping": (clipping, clipping.ClipPolicy), "truncation": (tbptt, tbptt.TruncationPolicy)}
NOT_LISTED = {("ZClip", "eps")}  # a numerical guard, not a knob the table lists


@pytest.mark.parametrize("family", FAMILIES)
def test_policy_tables_list_every_policy_with_its_defaults(family):
    module, base = FAMILIES[family]
    policies = {n: c for n, c in vars(module).items() if isinstance(c, type) and issubclass(c, base) and c is not base}
    policies = {n: c for n, c in policies.items() if not n.startswith("_")}
    tables = [p for p in PAGES if any(re.search(rf"^\| `{n}` \|", text(p), re.M) for n in policies)]
    assert len(tables) == 1, f"the {family} table is on one page, not {[name(p) for p in tables]}"
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| ([^|]*) \|", text(tables[0]), flags=re.M)}
    for policy, cls in policies.items():
        assert policy in rows, f"{name(tables[0])}: the {family} table lacks {policy}"
        listed = {key: ast.literal_eval(value) for key, value in re.findall(r"`(\w+)=([^`]+)`", rows[policy])}
        for param in inspect.signature(cls).parameters.values():
            if (policy, param.name) in NOT_LISTED:
                continue
            if param.default is inspect.Parameter.empty:
                assert re.search(rf"`{param.name}\b", rows[policy]), f"{policy}: {param.name} not listed"
            else:
                assert listed.get(param.name, "absent") == param.default, f"{policy}: {param.name}={param.default}"


STATIONS = (monitor.GradMonitor, guard.ExplosionGuard)


def stated_defaults(source: str) -> set[tuple[str, str]]:
    """``(parameter, value)`` for each "`grad_flow_every_n_steps` (50)" a page states of a station's parameter."""
    params = {p for station in STATIONS for p in inspect.signature(station).parameters}
    return {(p, v) for p, v in re.findall(r"`(\w+)` \(([\w.]+)\)", prose(source)) if p in params}


@pytest.mark.parametrize(("page", "stated"), per_page(stated_defaults))
def test_defaults_stated_in_prose_are_the_code_defaults(page, stated):
    param, value = stated
    signatures = [inspect.signature(station).parameters for station in STATIONS]
    defaults = [params[param].default for params in signatures if param in params]
    assert (None if value == "off" else ast.literal_eval(value)) in defaults, f"{name(page)}: {param} ({value})"
