"""A full disk, for real: a small tmpfs mounted for the test and filled up (root only; skipped where mounting is
not permitted). At start, and at a checkpoint save after training began, the run ends with one line naming the file
(or, when not even a block is free, the directory), exit code 2, no traceback, and nothing half-written: a start
leaves no run directory, a failed save leaves the previous checkpoint whole and no part file."""

from __future__ import annotations

import errno
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from seqstab.cli.train import main

PAGE = 4096  # tmpfs allocates memory pages
TINY = ["--data.num_train", "100", "--data.num_val", "50", "--trainer.enable_progress_bar", "false"]


def fill(directory: Path, leave_pages: int = 0) -> None:
    """Fill the file system of ``directory`` up, then free ``leave_pages`` pages."""
    with open(directory / "filler", "wb", buffering=0) as f:
        for size in (1 << 16, PAGE, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as err:
                assert err.errno == errno.ENOSPC
        if leave_pages:
            f.truncate(max(f.tell() - leave_pages * PAGE, 0))


class FillDisk(pl.Callback):
    """Fill the disk of the working directory once update ``at`` is done (before that batch's checkpoint save)."""

    def __init__(self, at: int = 2):
        self.at, self.done = at, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.at and not self.done:
            self.done = True
            fill(Path.cwd())


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 256 KiB tmpfs mounted in ``tmp_path``, made the working directory; unmounted after."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    monkeypatch.chdir(disk)
    yield disk
    monkeypatch.chdir(tmp_path)
    subprocess.run(["umount", "-l", str(disk)], check=False)


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("seqstab.train: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_a_disk_full_at_start_is_refused_before_anything_is_written(small_disk, capsys):
    fill(small_disk)
    assert main(["fit", *TINY, "--trainer.max_steps", "2"]) == 2
    assert error_line(capsys) == (
        "seqstab.train: error: trainer.logger.save_dir='runs': cannot write there: No space left on device "
        f"(creating a file in {small_disk / 'runs'})"
    )
    assert not (small_disk / "runs").exists()


@pytest.mark.parametrize("free_pages", [1, 2, 3])
def test_a_disk_that_fills_up_during_the_start_is_one_line_naming_the_file(small_disk, capsys, free_pages):
    """Room for the probe, then not for every file the start writes (which one depends on the room left)."""
    fill(small_disk, leave_pages=free_pages)
    assert main(["fit", *TINY, "--trainer.max_steps", "2"]) == 2
    line = error_line(capsys)
    named = r"runs/seqstab/version_0/(config\.yaml|manifest\.json|hparams\.yaml): cannot write it"
    events = r"runs/seqstab/version_0: cannot write the TensorBoard event file there"
    assert re.fullmatch(rf"seqstab\.train: error: ({named}|{events}): No space left on device", line), line
    assert not (small_disk / "runs").exists()  # a failed start leaves nothing behind


def test_a_disk_full_at_a_checkpoint_save_keeps_the_previous_checkpoint(small_disk, capsys):
    every = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "1"]
    every += ["--trainer.callbacks.save_top_k", "-1", "--trainer.callbacks+=tests.test_disk_full.FillDisk"]
    assert main(["fit", *TINY, "--trainer.max_steps", "4", *every]) == 2
    checkpoints = small_disk / "runs" / "seqstab" / "version_0" / "checkpoints"
    assert error_line(capsys) == (
        f"seqstab.train: error: {checkpoints.relative_to(small_disk)}/epoch=0-step=2.ckpt: cannot write the "
        "checkpoint: No space left on device"
    )
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch=0-step=1.ckpt"]  # no part file, no half file
    previous = torch.load(checkpoints / "epoch=0-step=1.ckpt", weights_only=True)
    assert previous["global_step"] == 1 and previous["seqstab"]["updates"] == 1
