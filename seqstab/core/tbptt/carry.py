"""The hidden state carried from batch to batch (stateful streams) and cut at each window boundary."""

from __future__ import annotations

from typing import Any

import torch

from seqstab.core.plain import map_tensors
from seqstab.nets.recurrent import Hidden


def detach(hidden: Any) -> Any:
    """Cut the graph at a window boundary: same values, no history (a tensor in no graph is kept as it is)."""
    return map_tensors(_without_history, hidden)


def _without_history(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach() if tensor.requires_grad else tensor


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
        """Keep ``hidden`` without history (:func:`detach`: the loop has usually cut it already)."""
        self.state, self.batch_size = detach(hidden), batch_size
