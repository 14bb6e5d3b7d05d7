"""What passes between the update core and its stations: the :class:`Update` record, the :class:`Action` the guard
decides, and the :class:`Run` the stations see of the training run around them.

Nothing here knows Lightning. A Lightning loop (seqstab's tasks, the ``GradientStability`` callback) hands the
stations a :class:`seqstab.trainer_run.TrainerRun`; a loop of your own, or ``python -m seqstab.replay``, a
:class:`StaticRun`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from seqstab.core.clipping import ClipResult


class Action(enum.Enum):
    """What happens to an update after the guard looked at it."""

    STEP = "step"  # apply the update
    SKIP = "skip"  # drop the update (no gradient reaches the optimizer: weights and optimizer state stay as they are)
    STOP = "stop"  # drop the update and end the run after this update


@dataclass
class Update:
    """One update of the optimization path, as the guard and the monitor see it.

    Attributes:
        step: Index of this update (0-based; skipped updates count too): the x axis of every per-update tag.
        chunk: What was trained on: the chunk ``{"x", "y", "mask"}`` ``(B, k, ...)`` of seqstab's tasks, or the
            batch of a module trained with the ``GradientStability`` callback.
        hidden_in: The (detached) hidden state the chunk started from; None for zeros or stateless models.
        clip: What the clipping policy did (device tensors).
        values: ``train/loss`` and the clip results read back as floats (``grad/norm_total`` ...), plus what the
            stations add (``explosion/events``, per-module norms).
        action: The guard's decision (None until it is taken).
    """

    step: int
    chunk: Any
    hidden_in: Any
    clip: ClipResult
    values: dict[str, float]
    action: Action | None = None


class Run(Protocol):
    """The run around the stations: where things are written and what the loop knows.

    Attributes:
        module: The trained model: parameter names (events, snapshots, per-module norms) and its ``state_dict``.
        net: Where recurrent layers and weights are looked up for gradient flow and spectra (the recurrent
            contract of :mod:`seqstab.nets`); the module itself when it has no separate net.
        loggers: Objects with ``log_metrics(metrics, step)``: every per-update tag goes to each of them; images and
            text also go to MLflow and W&B loggers, histograms to W&B (:func:`add_image`, :func:`add_text`,
            :func:`add_histogram`).
        writers: TensorBoard ``SummaryWriter`` objects: they get text, images and histograms (and TensorBoard's
            dashboard layout); a TensorBoard logger among ``loggers`` is reached through its writer.
        run_dir: Where ``explosions.jsonl`` and snapshots go (created on demand); None writes no file.
        is_global_zero: This process writes files and logs (rank 0).
        global_step: Optimizer steps applied so far.
        epoch: The current epoch.
        log_every_n_steps: How often per-module norms are due.
        optimizer: The optimizer (its learning rate is logged; its state goes into a snapshot), if any.
        loss_scale: The AMP GradScaler's current scale as a device tensor, None without one.
        recipe: How ``python -m seqstab.replay`` rebuilds the model: ``{"kind": "task" | "module", "class_path",
            "hparams"}`` (plain values, or None where they are not), or None where it cannot.
    """

    module: nn.Module
    net: nn.Module
    loggers: Sequence[Any]
    writers: Sequence[Any]
    run_dir: Path | None
    is_global_zero: bool
    global_step: int
    epoch: int
    log_every_n_steps: int
    optimizer: torch.optim.Optimizer | None
    loss_scale: torch.Tensor | None
    recipe: dict[str, Any] | None


@dataclass
class StaticRun:
    """A :class:`Run` filled by hand: for a training loop of your own, replay and tests.

    Update ``global_step`` and ``epoch`` as your loop advances; everything else may stay as built.
    """

    module: nn.Module
    net: nn.Module | None = None
    loggers: Sequence[Any] = ()
    writers: Sequence[Any] = ()
    run_dir: Path | None = None
    is_global_zero: bool = True
    global_step: int = 0
    epoch: int = 0
    log_every_n_steps: int = 50
    optimizer: torch.optim.Optimizer | None = None
    loss_scale: torch.Tensor | None = None
    recipe: dict[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = self.module
