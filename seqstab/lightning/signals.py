"""SIGTERM and SIGINT end a command cleanly: a fit stops at a batch boundary with its state saved, and the exit
code says it was stopped, so a cluster scheduler does not count a pre-empted job as finished.

    when the signal comes                       what happens
    before a fit trains (parsing, set-up, the   the command stops at once (:class:`StoppedBySignal`): nothing is
      sanity check), or in validate/test/predict  worth saving yet, and every file is written atomically
    while a fit trains (:class:`StopOnSignal`)  the batch in flight completes (and a validation in flight); at its end
                                                the state is saved to ``last.ckpt`` beside the run's checkpoints,
                                                then :class:`StoppedBySignal`; a resume with ``--ckpt_path last`` is
                                                exact (:class:`seqstab.resume.ExactResume`). In the run's last batch
                                                the run ends as usual instead (exit 0: it finished)
    again, while stopping                       stops at once: a save under way is abandoned (its part file removed,
                                                the previous checkpoint whole: writes are atomic)

The exit code is the one a shell gives a process the signal ended: ``128 + signum``, 130 for SIGINT, 143 for
SIGTERM. Lightning's own SIGTERM handling (stop, exit 0, no checkpoint) is replaced while the fit trains. Under DDP
the ranks agree on the batch to stop after: one all-reduce of a flag per batch, as Lightning's own does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from seqstab.core.guard import NonFiniteWeightsError

__all__ = ["SIGNALS", "StopOnSignal", "StoppedBySignal", "stop_at_once"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
LAST_FILE = "last.ckpt"  # the name Lightning's save_last and seqstab's final save use


class StoppedBySignal(Exception):
    """A command stopped by SIGINT or SIGTERM.

    Args:
        signum: The signal.
        reason: What became of the run, in words (saved where, or why not).
        update: The updates the run had made when it stopped (None: it had not started training).
        saved: The checkpoint holding the state it stopped in (None: none saved).
    """

    def __init__(self, signum: int, reason: str, update: int | None = None, saved: Path | None = None):
        super().__init__(f"stopped by {signal.Signals(signum).name}: {reason}")
        self.signum, self.reason, self.update, self.saved = signum, reason, update, saved

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def stop_at_once() -> Iterator[None]:
    """Within the block (one command), SIGINT and SIGTERM raise :class:`StoppedBySignal` where the program is
    (:class:`StopOnSignal` defers them while a fit trains). Outside the main thread, which alone may set handlers,
    the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, _raise_now)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(sig, handler)


def _raise_now(signum: int, frame: Any) -> None:
    raise StoppedBySignal(signum, "before training started: nothing to save")


class StopOnSignal(pl.Callback):
    """While a fit trains, SIGINT and SIGTERM stop it at the end of the batch in flight with its state saved to
    ``last.ckpt`` beside the run's checkpoints (the first checkpoint callback's directory); a second signal stops
    it at once. Registered by ``python -m seqstab.train`` for every fit; Lightning puts the handlers that were there
    before the fit back when it ends."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the signal received while training, until the stop
        self._module: pl.LightningModule | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.signum, self._module = None, pl_module
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                signal.signal(sig, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise StoppedBySignal(
                signum,
                "at once, by a second signal, without saving: resume from the newest checkpoint with --ckpt_path last",
                update=getattr(self._module, "updates", None),
            )
        self.signum = signum
        _say(
            f"\nseqstab: {signal.Signals(signum).name} received: stopping at the end of this batch with its state "
            "saved (a second signal stops at once, unsaved)"
        )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx):
        signum = self._agreed(trainer, pl_module)
        if signum is None or _last_batch_of_the_run(trainer):  # a run that ends here anyway ends as usual
            return
        update = getattr(pl_module, "updates", trainer.global_step)
        saved, reason = self._save(trainer)
        raise StoppedBySignal(signum, reason, update=update, saved=saved)

    def _agreed(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int | None:
        """The signal to stop on, the same on every rank (a signal may reach one rank only)."""
        dist = torch.distributed
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([self.signum or 0], device=pl_module.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return int(flag.item()) or None
        return self.signum

    def _save(self, trainer: pl.Trainer) -> tuple[Path | None, str]:
        savers = [cb for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        if not savers:
            return None, "no checkpoint callback (trainer.enable_checkpointing false): nothing saved"
        path = Path(savers[0].dirpath) / LAST_FILE
        try:
            trainer.save_checkpoint(path, weights_only=False)  # the whole state: a resume needs all of it
        except NonFiniteWeightsError as err:  # the guard never lets such weights into a checkpoint
            return None, f"not saved: {err}"
        return path, f"its state is saved in {path}: resume it with the same command and --ckpt_path last"


def _last_batch_of_the_run(trainer: pl.Trainer) -> bool:
    """The batch that just ended is the fit's last: ``max_steps`` reached, or the last batch of the last epoch."""
    if trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps:
        return True
    last_epoch = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
    return last_epoch and trainer.fit_loop.epoch_loop.done


def _say(text: str) -> None:
    """One line on stderr from a signal handler: through ``sys.stderr`` unless the handler interrupted a write to
    it (a reentrant write raises), then straight to the file descriptor."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (RuntimeError, OSError, ValueError):
        with contextlib.suppress(OSError):
            os.write(2, (text + "\n").encode())
