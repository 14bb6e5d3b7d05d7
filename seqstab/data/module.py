"""The batch contract every seqstab task consumes, and the :class:`DataSpec` a datamodule states about it.

This is the core's side of the contract: the tasks, the update core and replay read it; the datamodules (a separate
package, ``datamodules``, which depends on ``seqstab`` and never the reverse) produce it. ``datamodules.base``
re-exports everything here for datamodule authors.

Batch contract
--------------
A batch is a ``dict`` of tensors, batch-first, time on dim 1::

    x     (B, L) int64 token ids                  -- language model
          (B, L, input_size) float                -- forecast, regression, classification
    y     (B, L) int64 next token                 -- language model: y[:, t] = x[:, t + 1] in the stream
          (B, L, horizon, output_size) float      -- forecast: the `horizon` values after step t
          (B, L, output_size) float               -- regression
          (B, L) int64 class index                -- classification
    mask  (B, L) bool, optional                   -- steps that carry loss; absent = every step
    known (B, L, horizon, known_size), optional   -- forecast: the known-future inputs (calendar) of the horizon
    level (B, L, output_size), optional           -- forecast: what the datamodule subtracted from each window's
                                                     targets (per-window normalisation); added back to the output

``x``, ``y`` and ``mask`` share ``B`` and ``L``: truncated BPTT cuts all of them along dim 1 into
chunks of ``tbptt_steps`` and the loss of a chunk counts only its masked steps.

A datamodule states two more things through :class:`DataSpec`, the single object the CLI links
into the model (``data.spec`` -> ``model.spec``):

* the sizes the model needs (``vocab_size``, ``input_size``, ``output_size``, ``horizon``), and
* ``stateful``: consecutive *training* batches continue the same ``B`` streams (a token stream cut
  into ``B`` rows; one long series). The task then carries the hidden state from one batch to the
  next and resets it at each epoch start; validation and test carry it within their own pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytorch_lightning as pl

__all__ = ["DataSpec", "SeqDataModule", "TaskKind", "as_spec"]

TaskKind = Literal["lm", "forecast", "regression", "classification"]


@dataclass(frozen=True)
class DataSpec:
    """What a datamodule tells the model about its batches.

    Args:
        kind: Which task the batches are for: ``lm``, ``forecast``, ``regression`` or ``classification``.
        vocab_size: Number of token ids (``lm``).
        input_size: Features per time step in ``x`` (every kind but ``lm``).
        output_size: Targets per step (``forecast``, ``regression``) or number of classes (``classification``).
        horizon: Future steps predicted at each time step (``forecast``).
        stateful: Consecutive training batches continue the same streams, so the hidden state carries over.
        char_level: Tokens are characters: the language model also reports bits per character.
        chance_loss: The loss a memoryless baseline reaches on this data, to read results against; None if unknown.
        target_scale: Per-target standard deviation the datamodule divided ``y`` by (``forecast``), so metrics are
            reported in the original units; None if ``y`` is not normalised.
        target_index: Where the targets sit among the input features (``forecast``): ``x[..., target_index[j]]`` is
            target ``j`` at the current step, in the same units as ``y``. None if the inputs do not hold the targets.
            Needed by ``Forecaster(predict="change")``.
        known_size: How many inputs are known for the forecast horizon too (``forecast``; calendar features): the
            last ``known_size`` columns of ``x``, whose values over the horizon come as ``known``
            ``(B, L, horizon, known_size)`` in every batch. 0: none.

    Sequences are stored as tuples (a list, as read back from a checkpoint or YAML, is converted), so the spec stays
    plain data: ``dataclasses.asdict`` of it loads with ``torch.load(weights_only=True)``.
    """

    kind: TaskKind
    vocab_size: int = 0
    input_size: int = 0
    output_size: int = 1
    horizon: int = 1
    stateful: bool = False
    char_level: bool = False
    chance_loss: float | None = None
    target_scale: tuple[float, ...] | None = None
    target_index: tuple[int, ...] | None = None
    known_size: int = 0

    def __post_init__(self) -> None:
        for name, kind in (("target_scale", float), ("target_index", int)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(kind(v) for v in value))  # frozen: set once, here


class SeqDataModule(pl.LightningDataModule):
    """Base class of seqstab datamodules: subclasses provide :attr:`spec` and the dataloaders."""

    @property
    def spec(self) -> DataSpec:
        raise NotImplementedError(f"{type(self).__name__} must define the `spec` property")


def as_spec(spec: DataSpec | dict | None) -> DataSpec | None:
    """A :class:`DataSpec`, also from the plain dict a checkpoint or snapshot stores (``dataclasses.asdict``)."""
    return DataSpec(**spec) if isinstance(spec, dict) else spec
