"""Kill a training run at a seeded point, resume it with ``--ckpt_path last``, and check it ends bitwise where an
uninterrupted run ends. ``tests/test_faults.py`` runs 5 points in CI; ``benchmarks/bench_faults.py`` runs 50.

The run is a stateful LSTM language model (2 layers, dropout, truncated BPTT with 2 chunks a batch, ZClip, a
checkpoint every 4 updates, validation every 6) on a small text. A point is where the process SIGKILLs itself:

* ``train``: after the batch that brought it to update ``at``;
* ``validation``: in the first validation batch at or after update ``at``;
* ``save``: inside the first checkpoint save at or after update ``at``, with the file fully written to its
  temporary part and not yet renamed (the kill a save must survive).

Each run is a ``fork`` of the test process running ``seqstab.train.main`` (the imports are done once: a fresh
interpreter spends ~8 s importing Lightning), with one torch thread.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch

STEPS = 16  # updates of the whole run: 8 batches of 2 chunks
LAST = {"train": STEPS - 1, "validation": 12, "save": STEPS}  # the latest update each kind of point can follow:
# validation runs after every 6th batch (update 12 here), a checkpoint is saved every 4 updates and at the end


class Kill(pl.Callback):
    """SIGKILL this process at a point of the run (see the module)."""

    def __init__(self, where: str = "train", at: int = 1):
        self.where, self.at = where, at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.where == "train" and trainer.global_step >= self.at:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.where == "validation" and trainer.global_step >= self.at and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self.where == "save" and trainer.global_step >= self.at:
            from seqstab.core import io as files

            files.os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # dies before the rename


def write_text(path: Path, lines: int, seed: int) -> None:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)]
    sentences = (" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) for _ in range(lines))
    path.write_text("".join(f"{s}\n" for s in sentences))


def args(data: Path) -> list[str]:
    return [
        "fit",
        *["--model", "seqstab.tasks.LanguageModel", "--model.net.hidden_size", "16", "--model.net.num_layers", "2"],
        *["--model.dropout", "0.2", "--model.net.dropout", "0.2", "--model.tbptt_steps", "4"],
        *["--model.clipping", "seqstab.clipping.ZClip", "--model.clipping.warmup_steps", "2"],
        *["--data", "datamodules.text.TextFiles", "--data.train", str(data / "train.txt")],
        *["--data.valid", str(data / "valid.txt"), "--data.cache_dir", str(data / "cache")],
        *["--data.batch_size", "4", "--data.seq_len", "8"],
        *["--trainer.max_steps", str(STEPS), "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "6"],
        *["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"],
        *["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "4"],
        *["--trainer.callbacks.save_last", "true"],
    ]


def _child(cwd: Path, argv: list[str]) -> None:
    import contextlib
    import logging
    import warnings

    from seqstab.cli.train import main

    os.chdir(cwd)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    for name in ("pytorch_lightning", "lightning_fabric"):  # their notes go to handlers made before the fork
        logging.getLogger(name).setLevel(logging.WARNING)
    with open(cwd / "out.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = main(argv)
    os._exit(code)


def run(cwd: Path, argv: list[str]) -> int:
    """``python -m seqstab.train ARGV`` in ``cwd``, as a fork of this process; its exit code (-9: killed)."""
    cwd.mkdir(parents=True, exist_ok=True)
    child = multiprocessing.get_context("fork").Process(target=_child, args=(cwd, argv))
    child.start()
    child.join(timeout=300)
    if child.exitcode is None:
        child.kill()
        raise TimeoutError(f"the run in {cwd} did not end")
    return child.exitcode


def final_state(cwd: Path) -> dict:
    """The last checkpoint of the newest run in ``cwd``: weights, the update count, the clipping policy's state."""
    runs = sorted((cwd / "runs" / "seqstab").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return torch.load(runs[-1] / "checkpoints" / "last.ckpt", weights_only=True)


def same(a: dict, b: dict) -> bool:
    def bits(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1).view(torch.uint8)

    weights = a["state_dict"].keys() == b["state_dict"].keys() and all(
        torch.equal(bits(a["state_dict"][k]), bits(b["state_dict"][k])) for k in a["state_dict"]
    )
    clip_a, clip_b = a["seqstab"]["clipping"], b["seqstab"]["clipping"]
    clipping = clip_a.keys() == clip_b.keys() and all(
        torch.equal(v, clip_b[k]) if isinstance(v, torch.Tensor) else v == clip_b[k] for k, v in clip_a.items()
    )
    return (
        weights
        and clipping
        and a["global_step"] == b["global_step"]
        and a["seqstab"]["updates"] == b["seqstab"]["updates"]
    )


def points(count: int, seed: int = 0) -> list[tuple[str, int]]:
    """``count`` kill points, every kind of point among the first three, the rest drawn with ``seed``."""
    rng = random.Random(seed)
    chosen = [("train", 5), ("validation", 6), ("save", 8)][:count]
    while len(chosen) < count:
        where = rng.choice(sorted(LAST))
        chosen.append((where, rng.randint(1, LAST[where])))
    return chosen


def check(root: Path, kills: list[tuple[str, int]], progress=None) -> list[tuple[str, int, int, bool]]:
    """Run the uninterrupted reference, then each kill point and its resume; ``(where, at, exit code of the killed
    run, resumed bitwise equal)`` per point. ``progress()``, if given, is called after each point."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_text(data / "train.txt", 120, seed=0)  # ~900 tokens: 28 batches an epoch, the run ends in epoch 0
    write_text(data / "valid.txt", 20, seed=1)
    assert run(root / "straight", args(data)) == 0, (root / "straight" / "out.log").read_text()[-3000:]
    reference = final_state(root / "straight")
    results = []
    for i, (where, at) in enumerate(kills):
        here = root / f"point_{i}"
        killed = run(here, [*args(data), "--trainer.callbacks+=tests.fault_injection.Kill"] + [
            "--trainer.callbacks.where", where, "--trainer.callbacks.at", str(at)
        ])  # fmt: skip
        resumed = run(here, [*args(data), "--ckpt_path", "last"])
        exact = resumed == 0 and same(reference, final_state(here))
        results.append((where, at, killed, exact))
        if progress is not None:
            progress()
    return results
