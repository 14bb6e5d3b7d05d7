"""Stop a training run at a seeded point (SIGKILL, or SIGTERM / SIGINT and seqstab's clean stop), resume it with
``--ckpt_path last``, and check it ends bitwise where an uninterrupted run ends. ``tests/test_faults.py`` runs a few
points in CI; ``benchmarks/bench_faults.py`` runs 50.

The run is a stateful LSTM language model (2 layers, dropout, truncated BPTT with 2 chunks a batch, ZClip, a
checkpoint every 4 updates, validation every 6 batches) on a small text. A point is ``(kind, at)``; the process
signals itself, a real signal through the real handlers:

* ``train``: SIGKILL after the batch that brought it to update ``at``;
* ``validation``: SIGKILL in the first validation batch at or after update ``at``;
* ``save``: SIGKILL inside the first checkpoint save at or after update ``at``, with the file fully written to its
  temporary part and not yet renamed (the kill a save must survive);
* ``SIGTERM/train``, ``SIGINT/train``: the signal as the first batch at or after update ``at`` starts (the batch
  in flight completes, then the run saves ``last.ckpt`` and exits 143 / 130);
* ``SIGTERM/validation``, ``SIGINT/validation``: the signal in the first validation batch at or after update ``at``;
* ``SIGTERM/save``, ``SIGINT/save``: the signal as a batch at or after update ``at`` starts, and the same signal
  again inside the save it causes, with the file written to its temporary part and not renamed: the run stops at
  once, the save abandoned; the previous ``last.ckpt`` must be whole.

Each run is a ``fork`` of the test process running ``seqstab.train.main`` (the imports are done once: a fresh
interpreter spends ~8 s importing Lightning), with one torch thread. :func:`stop_from_outside` sends the signal
from this process instead, while the run is paced (:class:`Pace`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

STEPS = 16  # updates of the whole run: 8 batches of 2 chunks
LAST = {"train": STEPS - 1, "validation": 12, "save": STEPS}  # the latest update each kind of point can follow:
# validation runs after every 6th batch (update 12 here), a checkpoint is saved every 4 updates and at the end
SIGNALED = {"train": STEPS - 4, "validation": 12, "save": STEPS - 4}  # a signal's: sent as a batch starts, it
# stops the run at that batch's end, which must not be the run's last (there the run finishes, exit 0)
FIRST = {"train": 5, "validation": 6, "save": 8}  # where the first point of each kind is
EXIT = {"SIGKILL": -signal.SIGKILL, "SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}


def exit_code(kind: str) -> int:
    """The exit code a point of ``kind`` must end its run with."""
    return EXIT[kind.split("/")[0]] if "/" in kind else EXIT["SIGKILL"]


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


class Signal(pl.Callback):
    """Send this process SIGTERM or SIGINT at a point of the run (see the module)."""

    def __init__(self, signum: str = "SIGTERM", where: str = "train", at: int = 1):
        self.signum, self.where, self.at = signal.Signals[signum], where, at
        self.sent = False

    def _send(self) -> None:
        self.sent = True
        os.kill(os.getpid(), self.signum)

    def setup(self, trainer, pl_module, stage):
        if self.where == "setup":  # before training: the command stops at once
            self._send()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.where in ("train", "save") and trainer.global_step >= self.at and not self.sent:
            self._send()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        due = self.where == "validation" and trainer.global_step >= self.at and not self.sent
        if due and not trainer.sanity_checking:
            self._send()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self.where == "save" and self.sent:
            from seqstab.core import io as files

            replace = files.os.replace

            def again_before_the_rename(*args):
                os.kill(os.getpid(), self.signum)  # the handler raises here: the rename never happens
                replace(*args)

            files.os.replace = again_before_the_rename


class Pace(pl.Callback):
    """Sleep after every batch once ``after`` updates are done: time for a signal from outside to arrive mid-run."""

    def __init__(self, after: int = 0, seconds: float = 0.0):
        self.after, self.seconds = after, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.seconds and trainer.global_step >= self.after:
            time.sleep(self.seconds)


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


def point_args(data: Path, kind: str, at: int) -> list[str]:
    """The command line of the run stopped at point ``(kind, at)``."""
    if "/" in kind:
        signum, where = kind.split("/")
        stop = ["--trainer.callbacks+=tests.fault_injection.Signal", "--trainer.callbacks.signum", signum]
    else:
        where, stop = kind, ["--trainer.callbacks+=tests.fault_injection.Kill"]
    return [*args(data), *stop, "--trainer.callbacks.where", where, "--trainer.callbacks.at", str(at)]


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


def start(cwd: Path, argv: list[str]) -> multiprocessing.Process:
    """``python -m seqstab.train ARGV`` in ``cwd``, as a fork of this process, started."""
    cwd.mkdir(parents=True, exist_ok=True)
    child = multiprocessing.get_context("fork").Process(target=_child, args=(cwd, argv))
    child.start()
    return child


def wait(child: multiprocessing.Process, cwd: Path, timeout: float = 300) -> int:
    """The exit code of a run :func:`start` started (-9: killed)."""
    child.join(timeout=timeout)
    if child.exitcode is None:
        child.kill()
        raise TimeoutError(f"the run in {cwd} did not end")
    return child.exitcode


def run(cwd: Path, argv: list[str]) -> int:
    """``python -m seqstab.train ARGV`` in ``cwd``, as a fork of this process; its exit code (-9: killed)."""
    return wait(start(cwd, argv), cwd)


def stop_from_outside(cwd: Path, data: Path, signum: signal.Signals, after: int = 4) -> int:
    """Start a run paced after update ``after``, send it ``signum`` from this process once its checkpoint of
    update ``after`` is written (the run is then mid-epoch, between two batches or in one), and return its exit
    code."""
    paced = ["--trainer.callbacks+=tests.fault_injection.Pace", "--trainer.callbacks.after", str(after)]
    child = start(cwd, [*args(data), *paced, "--trainer.callbacks.seconds", "0.5"])
    mark = cwd / "runs" / "seqstab" / "version_0" / "checkpoints" / f"epoch=0-step={after}.ckpt"
    deadline = time.monotonic() + 240
    while not mark.exists() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if child.is_alive():
        os.kill(child.pid, signum)
    return wait(child, cwd)


def final_state(cwd: Path) -> dict:
    """The last checkpoint of the newest run in ``cwd``: weights, optimizer, update count, clipping policy's state."""
    runs = sorted((cwd / "runs" / "seqstab").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return torch.load(runs[-1] / "checkpoints" / "last.ckpt", weights_only=True)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def _equal(a, b) -> bool:
    """Bitwise equal tensors, recursively through dicts, lists and tuples; plain values by ``==``."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def same(a: dict, b: dict) -> bool:
    """Weights, optimizer state, clipping state, step and update counts: bitwise the same."""
    return (
        _equal(a["state_dict"], b["state_dict"])
        and _equal(a["optimizer_states"], b["optimizer_states"])
        and _equal(a["seqstab"]["clipping"], b["seqstab"]["clipping"])
        and a["global_step"] == b["global_step"]
        and a["seqstab"]["updates"] == b["seqstab"]["updates"]
    )


def points(count: int, seed: int = 0, kinds: tuple[str, ...] = tuple(LAST)) -> list[tuple[str, int]]:
    """``count`` points of the given ``kinds``: one of each first (SIGKILL's at the updates CI has always used), the
    rest drawn with ``seed``."""
    rng = random.Random(seed)
    chosen = [(kind, FIRST[kind.split("/")[-1]]) for kind in kinds][:count]
    while len(chosen) < count:
        kind = rng.choice(sorted(kinds))
        limits = SIGNALED if "/" in kind else LAST
        chosen.append((kind, rng.randint(1, limits[kind.split("/")[-1]])))
    return chosen


def write_data(root: Path) -> Path:
    """The runs' text, in ``root/data``."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_text(data / "train.txt", 120, seed=0)  # ~900 tokens: 28 batches an epoch, the run ends in epoch 0
    write_text(data / "valid.txt", 20, seed=1)
    return data


def prepare(root: Path) -> tuple[Path, dict]:
    """The data, and the uninterrupted run's final state."""
    data = write_data(root)
    assert run(root / "straight", args(data)) == 0, (root / "straight" / "out.log").read_text()[-3000:]
    return data, final_state(root / "straight")


def check(
    root: Path,
    stops: list[tuple[str, int]],
    progress=None,
    prepared: tuple[Path, dict] | None = None,
    jobs: int = 1,
) -> list[tuple[str, int, int, bool]]:
    """Run the uninterrupted reference (unless ``prepared``), then each point and its resume; ``(kind, at, exit
    code of the stopped run, resumed bitwise equal)`` per point. ``progress()``, if given, is called after each.

    ``jobs``: runs at a time, each a fork in a folder of its own with one torch thread (the reference first, then
    the points in order; a point's resume starts once its stopped run has ended, before the next point's run)."""
    data = write_data(root) if prepared is None else prepared[0]
    todo = [(None, root / "straight", args(data))] if prepared is None else []  # (point, folder, argv)
    todo += [(i, root / f"point_{i}", point_args(data, kind, at)) for i, (kind, at) in enumerate(stops)]
    stopped: dict[int, int] = {}
    resumed: dict[int, int] = {}
    running: dict[multiprocessing.Process, tuple[int | None, Path]] = {}
    while todo or running:
        while todo and len(running) < max(1, jobs):
            i, cwd, argv = todo.pop(0)
            running[start(cwd, argv)] = (i, cwd)
        if not multiprocessing.connection.wait([child.sentinel for child in running], timeout=300):
            for child in running:
                child.kill()
            raise TimeoutError(f"no run ended in 300 s: {sorted(str(cwd) for _, cwd in running.values())}")
        for child in [child for child in running if not child.is_alive()]:
            i, cwd = running.pop(child)
            code = wait(child, cwd)
            if i is None:
                assert code == 0, (cwd / "out.log").read_text()[-3000:]
            elif i not in stopped:
                stopped[i] = code
                todo.insert(0, (i, cwd, [*args(data), "--ckpt_path", "last"]))
            else:
                resumed[i] = code
                if progress is not None:
                    progress()
    reference = prepared[1] if prepared is not None else final_state(root / "straight")
    return [
        (kind, at, stopped[i], resumed[i] == 0 and same(reference, final_state(root / f"point_{i}")))
        for i, (kind, at) in enumerate(stops)
    ]
