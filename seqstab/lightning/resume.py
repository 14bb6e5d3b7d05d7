"""Exact resume for seqstab's tasks: :class:`ExactResume`, the one component that carries a run across a kill.

A resumed run must end bitwise where an uninterrupted one ends. Lightning's checkpoint holds the model, optimizer,
scheduler and loop counters; the task's own ``on_save_checkpoint`` adds the update core's state (update count,
clipping policy, guard). The rest is here::

    what                                            where it goes / how
    carried hidden state of stateful streams, RNGs  checkpoint["seqstab"]["ranks"][r]   (every rank's, gathered)
    position within the epoch (+ the RNG state its  ResumableLoader.state_dict -> checkpoint["loops"] (Lightning
      batch order was drawn from)                   stores stateful loaders there); the training loader is made
                                                    resumable at setup
    the training RNG stream across validation       validation loaders made quiet; RNGs restored after validation
    an epoch boundary Lightning skips on resume     a save after an epoch's last batch: the loader must not skip, and
                                                    the task's epoch end (its scheduler step) is owed, or done
    the final state                                 at train end, last.ckpt beside the run's checkpoints, unless a
                                                    save_last checkpoint already holds that very step

The task takes part through three members (:class:`Resumable`): ``carry`` (its training :class:`HiddenCarry`),
``start_train_epoch()`` and ``end_train_epoch()``; :class:`ExactResume` calls the last two from Lightning's epoch
hooks, so the repair and the ordinary case run the same code. The Lightning private names this needs are in
:mod:`seqstab.internals`.

Also here, because they are Lightning glue for files and loaders: :class:`AtomicCheckpointIO` (atomic, safe
checkpoint files for the Trainer) and :func:`in_order_across_ranks` (stateful streams under DDP).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Protocol

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from seqstab import internals
from seqstab.core import tbptt
from seqstab.core.guard import NonFiniteWeightsError
from seqstab.core.io import CheckpointError, load, rng_state, save, set_rng_state
from seqstab.core.plain import map_tensors
from seqstab.data.loaders import in_order_across_ranks, make_quiet, make_resumable, note_scored_steps

__all__ = ["AtomicCheckpointIO", "ExactResume", "Resumable", "in_order_across_ranks"]

STATE_KEY = "seqstab"  # checkpoint[STATE_KEY]: seqstab's part of a checkpoint
EPOCH_OPEN_KEY = "epoch_open"  # checkpoint[STATE_KEY][EPOCH_OPEN_KEY]: saved between an epoch's start and its end
LAST_NAME = "last"  # the final state: <checkpoint dir>/last.ckpt, the name Lightning's save_last uses
RANKS_KEY = "ranks"  # checkpoint[STATE_KEY][RANKS_KEY][r]: what only process r knows ("carry", "carry_batch", "rng")


class Resumable(Protocol):
    """What :class:`ExactResume` needs of the task it resumes."""

    carry: dict[str, tbptt.HiddenCarry]  # "train": the state stateful training streams carry across batches

    def start_train_epoch(self) -> None: ...

    def end_train_epoch(self) -> None: ...


class ExactResume(pl.Callback):
    """Everything an exact resume needs beyond Lightning's checkpoint and the task's own state (see the module).

    seqstab's tasks attach it themselves (``configure_callbacks``); it is not meant for other modules.
    """

    def __init__(self) -> None:
        self._saved_at: int | None = None  # global step of the latest checkpoint this process saved
        self._epoch_open = False  # between the task's epoch start and end: saved in the checkpoint
        self._epoch_end_done: bool | None = None  # resumed at an epoch boundary: was the saved epoch's end done?
        self._rng_before_validation: dict[str, Any] | None = None

    # -- loaders ---------------------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: Resumable, stage: str) -> None:
        """The training loader remembers its position within the epoch (a resume continues mid-epoch) and, for
        stateful streams under DDP, reads each rank's streams in order; validation loaders leave the RNG alone."""
        datamodule = trainer.datamodule
        if stage == "fit" and datamodule is not None:
            resumable = _stateful_train_loader if pl_module.spec.stateful else make_resumable
            _convert_loaders(datamodule, "train_dataloader", lambda loader: note_scored_steps(resumable(loader)))
            _convert_loaders(datamodule, "val_dataloader", make_quiet)

    # -- the training RNG stream does not depend on when validation runs --------------------------------------

    def on_validation_start(self, trainer: pl.Trainer, pl_module: Resumable) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._rng_before_validation = rng_state()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Resumable) -> None:
        if self._rng_before_validation is not None:
            set_rng_state(self._rng_before_validation)
            self._rng_before_validation = None

    # -- epochs, and the boundary Lightning may skip when it resumes at one -----------------------------------

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Resumable) -> None:
        self._cross_saved_epoch_boundary(pl_module)
        self._epoch_open = True
        pl_module.start_train_epoch()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Resumable, batch: Any, batch_idx: int) -> None:
        if self._epoch_end_done is not None:
            self._cross_saved_epoch_boundary(pl_module)
            self._epoch_open = True
            pl_module.start_train_epoch()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Resumable) -> None:
        done, self._epoch_end_done = self._epoch_end_done, None
        if not done:  # True: resumed from a save made after this very epoch end
            pl_module.end_train_epoch()
        self._epoch_open = False

    def _cross_saved_epoch_boundary(self, pl_module: Resumable) -> None:
        """What Lightning may skip when it resumes at an epoch boundary: the old epoch's end (if the save came before
        it), then the new epoch's start (done by the caller)."""
        done, self._epoch_end_done = self._epoch_end_done, None
        if done is False:
            with warnings.catch_warnings():  # no optimizer.step() yet in this process: torch's order check misfires
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                pl_module.end_train_epoch()

    # -- checkpoint ------------------------------------------------------------------------------------------

    def on_train_end(self, trainer: pl.Trainer, pl_module: Resumable) -> None:
        """Every run ends with a checkpoint of its final state, ``last.ckpt`` beside its others, whatever checkpoint
        callbacks the user configured (none: nothing is saved)."""
        savers = [cb for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        if not savers:
            return
        path = Path(savers[0].dirpath) / f"{LAST_NAME}.ckpt"
        if self._saved_at == trainer.global_step:  # this very state is in a checkpoint already (same on every rank)
            if any(getattr(cb, "save_last", False) for cb in savers):
                return  # and it is the save_last one
            io = trainer.strategy.checkpoint_io
            if isinstance(io, AtomicCheckpointIO):  # it knows the file it wrote (on rank 0, the one that writes)
                if trainer.is_global_zero and io.last_saved is not None and io.last_saved != path:
                    link_or_copy(io.last_saved, path)
                return
        try:
            trainer.save_checkpoint(path)
        except NonFiniteWeightsError as err:  # the guard never lets such weights into a checkpoint
            if trainer.is_global_zero:
                print(f"seqstab: not saving the final state to {path}: {err}", flush=True)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: Resumable, checkpoint: dict[str, Any]) -> None:
        self._saved_at = trainer.global_step
        state = checkpoint.setdefault(STATE_KEY, {})
        state[EPOCH_OPEN_KEY] = self._epoch_open
        state[RANKS_KEY] = _gather_process_state(pl_module)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: Resumable, checkpoint: dict[str, Any]) -> None:
        """Called by Lightning only when fitting, before it restores its loops (which read the loader states)."""
        state = checkpoint.get(STATE_KEY, {})
        _restore_process_state(trainer, pl_module, state.get(RANKS_KEY) or [])
        is_last_batch, loader_states = internals.fit_loop_state(checkpoint)
        if is_last_batch:  # Lightning resumes in the next epoch: the loader must not skip
            for loader_state in loader_states:
                if "batches" in loader_state:
                    loader_state["batches"] = 0
            self._epoch_end_done = not state.get(EPOCH_OPEN_KEY, False)  # False: the saved epoch's end is owed


def _gather_process_state(pl_module: Resumable) -> list[dict[str, Any]]:
    """What only each process knows, from every rank: the hidden state its streams carry, its RNG states."""
    carry = pl_module.carry["train"]
    mine = {"carry": map_tensors(torch.Tensor.cpu, carry.state), "carry_batch": carry.batch_size}
    mine["rng"] = rng_state()
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [mine]
    ranks: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)  # on_save_checkpoint runs on every rank; rank 0 writes the file
    return ranks


def _restore_process_state(trainer: pl.Trainer, pl_module: Resumable, ranks: list[dict[str, Any]]) -> None:
    if len(ranks) != trainer.world_size:
        if ranks:
            warnings.warn(
                f"checkpoint saved by {len(ranks)} process(es), resumed on {trainer.world_size}: carried "
                "hidden states restart from zeros and random streams from the seed; the resume is not exact",
                stacklevel=2,
            )
        return
    mine = ranks[trainer.global_rank]
    carry = pl_module.carry["train"]
    carry.state = map_tensors(lambda t: t.to(pl_module.device), mine["carry"])
    carry.batch_size = mine.get("carry_batch", _legacy_batch_size(carry.state))
    set_rng_state(mine["rng"])


def _legacy_batch_size(hidden: Any) -> int | None:
    """Checkpoints before ``carry_batch``: seqstab's nets' layout, ``(1, B, H)`` per layer."""
    leaves: list[torch.Tensor] = []
    map_tensors(leaves.append, hidden)
    return leaves[0].shape[1] if leaves else None


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` holds what ``source`` holds, atomically: a hard link where the file system has them, else a copy."""
    tmp = target.with_name(f".{target.name}.link.part")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
        os.replace(tmp, target)
    except OSError as err:  # a full disk: the part goes, the target stays as it was
        tmp.unlink(missing_ok=True)
        raise _unwritten(err, target) or err from None


def _unwritten(err: BaseException, path) -> CheckpointError | None:
    """The one-line error for a checkpoint the disk refused: the file, and the operating system's reason. torch's
    zip writer reports a full disk as a RuntimeError raised while handling the OSError; any other error is a bug."""
    cause = err
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__context__
    if cause is None:
        return None
    return CheckpointError(f"{path}: cannot write the checkpoint: {cause.strerror or cause}")


def _stateful_train_loader(loader):
    """Stateful streams stay in order on every rank under DDP; the loader can resume mid-epoch."""
    return make_resumable(in_order_across_ranks(loader))


def _convert_loaders(datamodule: pl.LightningDataModule, hook: str, convert) -> None:
    """Wrap ``datamodule.<hook>`` (once) so the loaders it returns pass through ``convert``."""
    make = getattr(datamodule, hook)
    if getattr(make, "__seqstab__", False):
        return

    def converted():
        return convert(make())

    converted.__seqstab__ = True
    setattr(datamodule, hook, converted)


# -- files -------------------------------------------------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, but writes are atomic and durable and loads are ``weights_only``.

    seqstab's CLI installs it by default (``trainer.plugins``). Errors while loading are
    :class:`seqstab.checkpoint.CheckpointError`.
    """

    last_saved: Path | None = None  # the file of the latest save

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        try:
            save(checkpoint, path)
        except (OSError, RuntimeError) as err:  # a full disk, a directory gone: one line; the previous files stay
            unwritten = _unwritten(err, path)
            if unwritten is None:
                raise
            raise unwritten from None
        self.last_saved = Path(path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        """Always ``weights_only=True``: a checkpoint is data; it never needs to run code to load."""
        if map_location is None:
            map_location = lambda storage, loc: storage  # noqa: E731 (Lightning's default: keep on CPU)
        return load(path, map_location)
