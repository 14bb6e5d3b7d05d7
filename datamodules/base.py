"""What a custom datamodule implements, and helpers for stream data.

The batch contract (a dict of ``x``, ``y`` and an optional ``mask``, batch first, time on dim 1) and
:class:`DataSpec` live in :mod:`seqstab.data`, where the core reads them; they are re-exported here.

Writing your own: subclass :class:`SeqDataModule`, compute the data in ``__init__`` or lazily,
return a :class:`DataSpec` from ``spec`` and implement the dataloaders. ``datamodules.example``
is a complete one to copy.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from seqstab.core.errors import DataError
from seqstab.data.loaders import in_order_across_ranks
from seqstab.data.module import DataSpec, SeqDataModule, TaskKind

__all__ = [
    "DataError",
    "DataSpec",
    "SeqDataModule",
    "StreamWindows",
    "TaskKind",
    "batchify",
    "in_order_across_ranks",
]


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
        row: Optional ``(B, N)`` int64: each step's row in the source (batches get it as ``row``; predictions).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        window: int,
        mask: torch.Tensor | None = None,
        row: torch.Tensor | None = None,
    ):
        if x.shape[:2] != y.shape[:2]:
            raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must share (B, N)")
        if window < 1:
            raise ValueError(f"window={window}: must be >= 1")
        self.x, self.y, self.mask, self.row, self.window = x, y, mask, row, window

    def __len__(self) -> int:
        return self._windows() * self._parts()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        parts = self._parts()
        if not 0 <= i < self._windows() * parts:  # len(self), the process count looked up once
            raise IndexError(i)
        window, part = divmod(i, parts)
        rows = _share(self.x.shape[0], parts, part)  # this process's streams
        t = slice(window * self.window, (window + 1) * self.window)
        batch = {"x": self.x[rows, t], "y": self.y[rows, t]}  # (B / W, L, ...)
        if self.mask is not None:
            batch["mask"] = self.mask[rows, t]
        if self.row is not None:
            batch["row"] = self.row[rows, t]
        return batch

    def _windows(self) -> int:
        return -(-self.x.shape[1] // self.window)  # ceil(N / L) windows of each stream group

    def _parts(self) -> int:
        dist = torch.distributed
        parts = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if parts > self.x.shape[0]:
            raise DataError(f"{self.x.shape[0]} streams cannot be shared by {parts} processes: raise the batch size")
        return parts


def batchify(stream: torch.Tensor, num_streams: int) -> torch.Tensor:
    """Cut a stream ``(N, ...)`` into ``num_streams`` equal rows ``(B, N // B, ...)``, dropping the remainder."""
    n = stream.shape[0] // num_streams
    if n == 0:
        raise DataError(f"a stream of {stream.shape[0]} steps cannot be cut into {num_streams} streams")
    return stream[: n * num_streams].reshape(num_streams, n, *stream.shape[1:])


def _share(streams: int, parts: int, part: int) -> slice:
    """The streams of process ``part`` of ``parts``: ``torch.arange(streams).tensor_split(parts)[part]`` as a slice,
    worked out on the host (the first ``streams % parts`` processes take one stream more)."""
    size, extra = divmod(streams, parts)
    start = part * size + min(part, extra)
    return slice(start, start + size + (part < extra))
