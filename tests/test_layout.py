"""The paths users and files name keep working after the layers became folders: old module paths are the new
modules themselves, ``python -m seqstab.<tool>`` runs for every tool, every class path in ``configs/`` resolves,
and a run made before the move (``tests/fixtures/pre_layout``) resumes with ``--ckpt_path last`` and replays."""

from __future__ import annotations

import importlib
import os
import runpy
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

import seqstab
from seqstab._aliases import ALIASES, canonical
from tests.helpers import REPO

PRE_LAYOUT = Path(__file__).parent / "fixtures" / "pre_layout"
TOOLS = ["train", "sweep", "replay", "generate", "score"]


@pytest.mark.parametrize("old", sorted(ALIASES))
def test_an_old_module_path_is_the_new_module(old):
    assert importlib.import_module(old) is importlib.import_module(ALIASES[old])
    assert importlib.import_module(ALIASES[old]).__spec__.name == ALIASES[old]  # the module keeps its own name


def test_canonical_maps_old_class_paths_only():
    assert canonical("seqstab.clipping.NormClip") == "seqstab.core.clipping.NormClip"
    assert canonical("seqstab.tasks.LanguageModel") == "seqstab.tasks.LanguageModel"
    assert canonical("torch.optim.SGD") == "torch.optim.SGD"


def test_the_public_surface_resolves_every_name():
    for name in seqstab.__all__:
        assert getattr(seqstab, name) is not None, name
    assert seqstab.NormClip is importlib.import_module("seqstab.clipping").NormClip
    with pytest.raises(AttributeError):
        seqstab.Nope  # noqa: B018


def class_paths(value) -> list[str]:
    if isinstance(value, dict):
        found = [value["class_path"]] if isinstance(value.get("class_path"), str) else []
        return found + [p for v in value.values() for p in class_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in class_paths(v)]
    return []


def resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_class_path_in_configs_resolves():
    paths = {p for f in (REPO / "configs").rglob("*.yaml") for p in class_paths(yaml.safe_load(f.read_text()))}
    paths |= {p for f in (REPO / "configs").rglob("*.yaml") for p in _grid_class_paths(f)}
    assert len(paths) > 15
    for path in sorted(paths):
        assert isinstance(resolve(path), type), path


def _grid_class_paths(path: Path) -> list[str]:
    """Class paths a sweep file names as plain strings (``args: {model.clipping: seqstab.clipping.NormClip}``)."""
    text = yaml.safe_load(path.read_text())
    found = []

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value.startswith(("seqstab.", "datamodules.", "torch.")) and " " not in value:
            found.append(value)

    walk(text)
    return found


def python_m(monkeypatch, module: str, *args: str) -> int | str | None:
    """``python -m MODULE ARGS`` in this process, the way ``python -m`` runs it (runpy, as ``__main__``); its exit code.
    An old path is looked up afresh, by the alias finder, as in a new interpreter."""
    monkeypatch.setattr(sys, "argv", [module, *args])
    if module in ALIASES:
        monkeypatch.delitem(sys.modules, module, raising=False)
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exited:
        warnings.filterwarnings("ignore", "'seqstab.*' found in sys.modules", RuntimeWarning)  # imported already here
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    return exited.value.code


def test_python_m_runs_every_tool_by_its_old_and_new_path(monkeypatch, capsys):
    """Every command in this process (its imports done once), and one per way of reaching a tool's code in a fresh
    interpreter, at once: the package's command (and its version, which imports no tool), an old path of a package
    and an old path of a module (a fresh interpreter has no alias finder until ``seqstab`` is imported)."""
    commands = [["seqstab", "--version"], ["seqstab", "sweep", "--help"]]
    for tool in TOOLS:
        commands.append([f"seqstab.{tool}", "--help"])
        commands.append([f"seqstab.cli.{tool}", "--help"])
    fresh = [commands[0], commands[1], ["seqstab.sweep", "--help"], ["seqstab.replay", "--help"]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-m", *c], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c in fresh
    ]
    monkeypatch.chdir(REPO)
    for command in commands:
        code = python_m(monkeypatch, *command)
        out, err = capsys.readouterr()
        assert code in (0, None), f"{' '.join(command)}: {err[-500:]}"
        assert "usage" in out or "seqstab 0." in out, command
    for command, proc in zip(fresh, procs, strict=True):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{' '.join(command)}: {err.decode()[-500:]}"
        assert b"usage" in out or b"seqstab 0." in out, command


@pytest.fixture
def pre_layout_run(tmp_path):
    """A copy of the run made before the move, where it was made (``runs/seqstab/version_0``)."""
    run = tmp_path / "runs" / "seqstab" / "version_0"
    shutil.copytree(PRE_LAYOUT, run, ignore=shutil.ignore_patterns("README.md"))
    return tmp_path, run


def test_a_run_made_before_the_move_resumes_with_ckpt_path_last(pre_layout_run):
    from seqstab.cli.train import main

    cwd, _ = pre_layout_run
    args = (REPO / "tests/fixtures/pre_layout/README.md").read_text().split("python -m seqstab.train ")[1]
    args = [a for a in args.replace("\\\n", " ").split() if a]
    args = [str(REPO / a) if a.startswith("configs/") else a for a in args]
    args = [("3" if prev == "--trainer.max_epochs" else a) for prev, a in zip(["", *args[:-1]], args, strict=True)]
    before = os.getcwd()
    os.chdir(cwd)
    try:
        assert main([*args, "--ckpt_path", "last", "--trainer.enable_model_summary", "false"]) == 0
    finally:
        os.chdir(before)
    continued = sorted(p.name for p in (cwd / "runs" / "seqstab").glob("version_1/checkpoints/epoch=2-*.ckpt"))
    assert continued, "the third epoch was trained from the old checkpoint (in the next version directory)"


def test_a_snapshot_made_before_the_move_replays_bitwise(capsys):
    from seqstab.cli.replay import main

    assert main([str(PRE_LAYOUT / "snapshot_update_10.pt")]) == 0
    out = capsys.readouterr().out
    assert "model: seqstab.tasks.SequenceRegressor" in out
    assert "replayed norm == logged norm (bitwise)" in out
