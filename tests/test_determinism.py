"""Same config + seed on CPU: the same explosion at the same update, bitwise-equal scalars and final weights."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seqstab.cli.train import main
from tests.helpers import REPO, scalars

EXPLODE = REPO / "configs" / "explode" / "adding_rnn.yaml"
SMALL = ["--data.seq_len", "50", "--data.num_train", "500", "--data.num_val", "50", "--trainer.max_epochs", "2"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bits(series: list[tuple[int, float]]) -> list[tuple[int, bytes]]:
    return [(step, struct.pack("<f", value)) for step, value in series]  # nan == nan when the payload is the same


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = run_dir.glob("checkpoints/last.ckpt")
    return torch.load(ckpt, weights_only=True)["state_dict"]


def start_run(cwd: Path, *extra: str) -> subprocess.Popen:
    cwd.mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "seqstab.train", "fit", "--config", str(EXPLODE), *SMALL, *QUIET, *extra],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two separate processes run the unclipped exploding config with the same (default) seed."""
    root = tmp_path_factory.mktemp("determinism")
    procs = [start_run(root / name) for name in ("a", "b")]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    return tuple(root / name / "runs" / "seqstab" / "version_0" for name in ("a", "b"))


def test_same_first_explosion_and_bitwise_equal_norms(two_runs):
    a, b = two_runs
    events_a, events_b = ((d / "explosions.jsonl").read_text() for d in two_runs)
    assert events_a == events_b
    first = json.loads(events_a.splitlines()[0])
    exploded = [json.loads(line) for line in events_a.splitlines()]
    assert any(e["norm"] in ("inf", "nan") or e["norm"] > 1e6 for e in exploded), "the config did not explode"
    series_a, series_b = scalars(a), scalars(b)
    assert bits(series_a["grad/norm_total"]) == bits(series_b["grad/norm_total"])
    assert dict(series_a["grad/norm_total"])[first["update"]] == pytest.approx(first["norm"], rel=1e-7)


def test_every_logged_scalar_and_the_final_weights_are_bitwise_equal(two_runs):
    a, b = two_runs
    series_a, series_b = scalars(a), scalars(b)
    assert series_a.keys() == series_b.keys() and "train/loss" in series_a and "val/loss" in series_a
    for tag in series_a:
        assert bits(series_a[tag]) == bits(series_b[tag]), tag
    weights_a, weights_b = final_weights(a), final_weights(b)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name].view(torch.int32), weights_b[name].view(torch.int32)), name


def test_manifest_records_seed_versions_and_machine(two_runs):
    manifest = json.loads((two_runs[0] / "manifest.json").read_text())
    assert manifest["seed"] == 0
    assert manifest["versions"]["torch"] == str(torch.__version__)
    assert {"seqstab", "pytorch_lightning", "numpy", "python"} <= manifest["versions"].keys()
    assert "git" in manifest and manifest["threads"]["torch"] == 1 and manifest["device"]["type"] == "cpu"
    assert manifest["task"]["chance_loss"] == pytest.approx(1 / 6)
    assert (two_runs[0] / "config.yaml").is_file()


def test_another_seed_gives_another_run(two_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(EXPLODE), *SMALL, *QUIET, "--seed_everything", "1"]) == 0
    other = scalars(tmp_path / "runs" / "seqstab" / "version_0")["grad/norm_total"]
    assert bits(other) != bits(scalars(two_runs[0])["grad/norm_total"])
    manifest = json.loads((tmp_path / "runs" / "seqstab" / "version_0" / "manifest.json").read_text())
    assert manifest["seed"] == 1
