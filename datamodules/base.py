"""The batch contract every seqstab task consumes, and what a custom datamodule implements.

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

``x``, ``y`` and ``mask`` share ``B`` and ``L``: truncated BPTT cuts all of them along dim 1 into
chunks of ``tbptt_steps`` and the loss of a chunk counts only its masked steps.

A datamodule states two more things through :class:`DataSpec`, the single object the CLI links
into the model (``data.spec`` -> ``model.spec``):

* the sizes the model needs (``vocab_size``, ``input_size``, ``output_size``, ``horizon``), and
* ``stateful``: consecutive *training* batches continue the same ``B`` streams (a token stream cut
  into ``B`` rows; one long series). The task then carries the hidden state from one batch to the
  next and resets it at each epoch start; validation and test carry it within their own pass.

Writing your own: subclass :class:`SeqDataModule`, compute the data in ``__init__`` or lazily,
return a :class:`DataSpec` from ``spec`` and implement the dataloaders. ``datamodules.example``
is a complete one to copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from seqstab.errors import DataError

__all__ = ["DataError", "DataSpec", "SeqDataModule", "StreamWindows", "batchify", "in_order_across_ranks"]

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


class StreamWindows(Dataset):
    """Consecutive windows over ``B`` parallel streams: item ``i`` is the ``i``-th window of every stream.

    This is the classic word-LM ``batchify`` + ``get_batch``: a stream is cut into ``B`` rows and read
    left to right, so batch ``i + 1`` continues batch ``i`` row by row (stateful truncated BPTT).
    Use it with ``DataLoader(dataset, batch_size=None, shuffle=False)``: each item is already a batch.

    Multi-process (DDP, ``W`` processes): the ``B`` streams are split into ``W`` disjoint groups and item ``j`` is
    window ``j // W`` of group ``j % W``. An unshuffled ``DistributedSampler`` gives rank ``r`` the items ``r, r + W,
    ...``: its own streams, window after window, so each rank carries its own hidden state. ``W`` is read from
    ``torch.distributed`` (1 when it is not initialised). Lightning's own sampler shuffles training data; seqstab's
    tasks put :func:`in_order_across_ranks` on the training loader of stateful data instead.

    Args:
        x: Inputs ``(B, N, ...)``.
        y: Targets ``(B, N, ...)`` aligned with ``x`` (the target of step ``t`` sits at ``t``).
        window: Window length ``L``; the last window may be shorter.
        mask: Optional ``(B, N)`` bool mask of steps that carry loss.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, window: int, mask: torch.Tensor | None = None):
        if x.shape[:2] != y.shape[:2]:
            raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must share (B, N)")
        if window < 1:
            raise ValueError(f"window={window}: must be >= 1")
        self.x, self.y, self.mask, self.window = x, y, mask, window

    def __len__(self) -> int:
        return -(-self.x.shape[1] // self.window) * self._parts()  # ceil(N / L) windows of each stream group

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        parts = self._parts()
        window, part = divmod(i, parts)
        rows = torch.arange(self.x.shape[0]).tensor_split(parts)[part]  # this process's streams
        rows = slice(int(rows[0]), int(rows[-1]) + 1)
        t = slice(window * self.window, (window + 1) * self.window)
        batch = {"x": self.x[rows, t], "y": self.y[rows, t]}  # (B / W, L, ...)
        if self.mask is not None:
            batch["mask"] = self.mask[rows, t]
        return batch

    def _parts(self) -> int:
        dist = torch.distributed
        parts = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if parts > self.x.shape[0]:
            raise DataError(f"{self.x.shape[0]} streams cannot be shared by {parts} processes: raise the batch size")
        return parts


def in_order_across_ranks(loader: DataLoader) -> DataLoader:
    """Under DDP, the same loader with an unshuffled ``DistributedSampler``: rank ``r`` reads items ``r, r + W, ...``
    in order (Lightning would inject a shuffling one for training). Without DDP, or for a loader with a sampler or
    batch sampler of its own, the loader itself."""
    dist = torch.distributed
    if not (isinstance(loader, DataLoader) and dist.is_available() and dist.is_initialized()):
        return loader
    if dist.get_world_size() == 1:
        return loader
    custom_batches = loader.batch_size is None and loader.batch_sampler is not None
    if custom_batches or not isinstance(loader.sampler, SequentialSampler):
        return loader  # the datamodule chose its own sampling
    sampler = DistributedSampler(loader.dataset, shuffle=False, drop_last=False)
    workers = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers}
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        **(workers if loader.num_workers > 0 else {}),
    )


def batchify(stream: torch.Tensor, num_streams: int) -> torch.Tensor:
    """Cut a stream ``(N, ...)`` into ``num_streams`` equal rows ``(B, N // B, ...)``, dropping the remainder."""
    n = stream.shape[0] // num_streams
    if n == 0:
        raise DataError(f"a stream of {stream.shape[0]} steps cannot be cut into {num_streams} streams")
    return stream[: n * num_streams].reshape(num_streams, n, *stream.shape[1:])
