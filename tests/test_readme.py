"""The README is the front door: its commands, paths, class paths and config example match the repository."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

from seqstab.core import clipping

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_two_copy_paste_set_up_commands_and_ci_runs_the_second():
    setup = [b.strip() for b in bash_blocks() if "pip install" in b]
    assert len(setup) >= 2 and all("\n" not in b for b in setup[:2]), "each set-up command is one line"
    install_and_run, install_and_test = setup[:2]
    assert install_and_run.endswith("python -m seqstab.train")
    test_command = install_and_test.split(" && ", 2)[2]  # after creating and activating the venv
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines, f".ci/run does not run the README's test command: {test_command}"


def test_the_config_example_is_the_shipped_file():
    match = re.search(r"This is\n`(configs/[^`]+\.yaml)`:\n\n```yaml\n(.*?)```", README, flags=re.S)
    assert match, "the README's config example is introduced as 'This is `configs/....yaml`:'"
    path, text = match.groups()
    assert (ROOT / path).read_text() == text


PATHS = r"\b((?:configs|datamodules|docs|benchmarks|tools|seqstab)/[\w./-]+\.(?:yaml|py|md|png))"


@pytest.mark.parametrize("path", sorted(set(re.findall(PATHS, README))))
def test_every_path_the_readme_names_exists(path):
    assert (ROOT / path).is_file(), path


def class_paths() -> list[str]:
    found = set(re.findall(r"\b((?:seqstab|datamodules)\.[a-z_]+\.[A-Z]\w+)", README))
    # table rows name siblings after the first full path: "`datamodules.text.WikiText2`, `PennTreebank`"
    for module, rest in re.findall(r"`((?:seqstab|datamodules)\.[a-z_]+)\.[A-Z]\w+`((?:, `[A-Z]\w+`)+)", README):
        found |= {f"{module}.{name}" for name in re.findall(r"`([A-Z]\w+)`", rest)}
    return sorted(found)


@pytest.mark.parametrize("class_path", class_paths())
def test_every_class_path_the_readme_names_imports(class_path):
    module, name = class_path.rsplit(".", 1)
    assert hasattr(importlib.import_module(module), name), class_path


def test_clipping_table_lists_every_policy_with_its_defaults():
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| ([^|]*) \|", README, flags=re.M)}
    for name, cls in vars(clipping).items():
        if isinstance(cls, type) and issubclass(cls, clipping.ClipPolicy) and cls is not clipping.ClipPolicy:
            assert name in rows, f"clipping table lacks {name}"
            listed = {key: ast.literal_eval(value) for key, value in re.findall(r"`(\w+)=([^`]+)`", rows[name])}
            for param in inspect.signature(cls).parameters.values():
                if param.name == "eps" and name == "ZClip":
                    continue  # a numerical guard, not a knob the table lists
                assert listed.get(param.name, "absent") == param.default, f"{name}: {param.name}={param.default}"


def test_every_shipped_config_in_a_yaml_block_parses():
    for block in re.findall(r"```yaml\n(.*?)```", README, flags=re.S):
        assert isinstance(yaml.safe_load(block), dict)


def test_the_example_net_is_the_shipped_one():
    match = re.search(r"This is the IndRNN of\n\[`seqstab/nets/example.py`\].*?```python\n(.*?)```", README, flags=re.S)
    assert match, "the README shows seqstab/nets/example.py's net"
    source = (ROOT / "seqstab" / "nets" / "example.py").read_text()
    assert match.group(1).strip() == source[source.index("class IndRNN") :].strip()
