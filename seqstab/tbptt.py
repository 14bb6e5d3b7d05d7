"""Truncated backpropagation through time: how a batch becomes chunks, and where the graph is cut.

::

    batch  x, y, mask: (B, L, ...)          tbptt_steps = k           (k = None: one chunk, full BPTT)
    ┌───────────── chunk 0 ─────────────┬──────────── chunk 1 ─────────────┬── chunk 2 ──┐
    │ t = 0 … k-1                       │ t = k … 2k-1                      │ t = 2k … L-1│  (last may be shorter)
    └───────────────────────────────────┴───────────────────────────────────┴─────────────┘
    h_carry ─► forward ─► loss ─► backward ─► update ─► detach ─► forward ─► … ─► detach ─► h_carry
                                                          ✂ graph cut: no gradient crosses a chunk boundary

    stateful data (batch i+1 continues batch i's B streams): h_carry survives to the next batch,
                   and is reset to zeros at each epoch start and before validation/test;
    stateless data: every batch starts from zeros.

Chunks have LENGTH k (``torch.split``), not k pieces (``tensor_split``, as in Lightning's old docs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from seqstab.nets import Hidden


def chunks(batch: dict[str, torch.Tensor], steps: int | None) -> Iterator[dict[str, torch.Tensor]]:
    """Cut every tensor of ``batch`` along time (dim 1) into consecutive chunks of length ``steps``."""
    length = batch["x"].shape[1]
    if steps is None or steps >= length:
        yield batch
        return
    pieces = {key: value.split(steps, dim=1) for key, value in batch.items()}  # each (B, <=k, ...)
    for i in range(len(pieces["x"])):
        yield {key: parts[i] for key, parts in pieces.items()}


def scored(batch: dict[str, torch.Tensor], steps: int | None) -> torch.Tensor | None:
    """For each chunk of :func:`chunks`: does it hold a scored step? A bool tensor ``(num_chunks,)`` on the batch's
    device; None without a ``mask`` (every chunk is scored).

    A chunk whose steps are all masked out (truncated BPTT on a task scored at the last step: every chunk but the
    last) has no loss and no gradient; the training step only carries the hidden state across it.
    """
    mask = batch.get("mask")
    if mask is None:
        return None
    per_step = mask.reshape(mask.shape[0], mask.shape[1], -1).ne(0).any(dim=2).any(dim=0)  # (L,)
    if steps is None or steps >= per_step.shape[0]:
        return per_step.any().reshape(1)
    return torch.stack([part.any() for part in per_step.split(steps)])


def map_hidden(fn: Callable[[torch.Tensor], torch.Tensor], hidden: Any) -> Any:
    """Apply ``fn`` to every tensor of a hidden state: any nest of tuples, lists and dicts of tensors (seqstab's
    nets: a tuple of ``h`` or ``(h, c)`` per layer); other leaves pass through."""
    if isinstance(hidden, torch.Tensor):
        return fn(hidden)
    if isinstance(hidden, (tuple, list)):
        return type(hidden)(map_hidden(fn, state) for state in hidden)
    if isinstance(hidden, dict):
        return {key: map_hidden(fn, state) for key, state in hidden.items()}
    return hidden


def detach(hidden: Any) -> Any:
    """Cut the graph at a chunk boundary: same values, no history."""
    return map_hidden(torch.Tensor.detach, hidden)


class HiddenCarry:
    """The hidden state one pass (train, val or test) carries from batch to batch when its data is stateful.

    A batch whose size differs from the one the state came from (e.g. a last, smaller batch) starts from zeros.
    """

    def __init__(self) -> None:
        self.state: Hidden | None = None
        self.batch_size: int | None = None  # of the batch the state came from

    def reset(self) -> None:
        self.state, self.batch_size = None, None

    def get(self, batch_size: int) -> Hidden | None:
        if self.state is not None and self.batch_size != batch_size:
            return None
        return self.state

    def put(self, hidden: Hidden | None, batch_size: int) -> None:
        self.state, self.batch_size = detach(hidden), batch_size
