"""Windows over a split's rows: where they start, their targets a horizon ahead, and the batches they make.

A window of ``L`` steps starting at row ``s`` reads ``x[t] = row[s + t]`` and predicts
``y[t] = targets[s + t + 1 : s + t + 1 + H]`` for ``t < L``; it never reaches past its split's rows.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils.data import Dataset

__all__ = ["WindowDataset", "WindowNorm", "future", "window_starts"]

WindowNorm = Literal["none", "mean", "last"]


def window_starts(rows: int, length: int, horizon: int, stride: int) -> torch.Tensor:
    """Window starts ``s`` that fit in ``rows``: inputs ``[s, s + length)``, targets up to ``s + length + horizon``."""
    last = rows - length - horizon  # the last start whose targets stay inside the rows
    return torch.arange(0, last + 1, stride) if last >= 0 else torch.zeros(0, dtype=torch.long)


def future(targets: torch.Tensor, horizon: int) -> torch.Tensor:
    """``(n, T)`` targets -> ``(n - horizon, horizon, T)``: row ``t`` holds ``targets[t + 1 : t + 1 + horizon]``."""
    if targets.shape[0] <= horizon:
        return targets.new_zeros(0, horizon, targets.shape[1])
    return targets[1:].unfold(0, horizon, 1).permute(0, 2, 1)  # (n - horizon, horizon, T)


class WindowDataset(Dataset):
    """Windows over one split's rows; item = a list of window indices (use a ``BatchSampler``) -> a batch.

    Args:
        rows: ``(n, C)`` inputs of the split.
        targets: ``(n, T)`` targets of the split.
        length: Window length ``L``.
        horizon: Future steps predicted at each step ``H``.
        stride: Rows between consecutive window starts.
        score_last: Only the last ``score_last`` steps of each window carry loss: each batch gets a ``mask``
            ``(B, L)``; None: no mask, every step counts.
        starts: Window starts; None: every ``stride``-th start whose targets stay inside the rows.
        origin: Each batch also gets ``row`` ``(B, L)``: the step's row in the series, ``origin`` being the row of
            ``rows[0]`` (what predictions are labelled with); None: no ``row``.
        known: ``(n, K)`` inputs known for the horizon too (the calendar): each batch gets ``known``
            ``(B, L, H, K)``, their values at rows ``t + 1 … t + H``; None: no ``known``.
        window_norm: ``mean`` or ``last``: shift the first ``norm_columns`` columns of each window's ``x`` by the
            window's mean (or value) over its steps up to and including the first scored one; the batch gets
            ``level`` ``(B, L, T)``, that reference of the targets (the first ``T`` columns). ``none``: no shift.
        norm_columns: How many leading columns ``window_norm`` shifts (the values; not the calendar).
    """

    def __init__(
        self,
        rows: torch.Tensor,
        targets: torch.Tensor,
        length: int,
        horizon: int,
        stride: int,
        score_last: int | None = None,
        starts: torch.Tensor | None = None,
        origin: int | None = None,
        known: torch.Tensor | None = None,
        window_norm: WindowNorm = "none",
        norm_columns: int = 0,
    ):
        self.rows, self.future = rows, future(targets, horizon)  # (n, C), (n - H, H, T)
        self.num_targets = targets.shape[1]
        self.known = None if known is None else future(known, horizon)  # (n - H, H, K)
        self.starts = window_starts(rows.shape[0], length, horizon, stride) if starts is None else starts
        self.origin = origin
        self.offsets = torch.arange(length)
        self.scored = None if score_last is None else self.offsets >= length - score_last  # (L,) bool
        self.window_norm, self.norm_columns = window_norm, norm_columns
        self.reference_end = length - (score_last or length) + 1  # steps [0, end) give the window's reference

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        steps = self.starts[torch.as_tensor(indices)][:, None] + self.offsets  # (B, L) row of each step
        batch = {"x": self.rows[steps], "y": self.future[steps]}  # (B, L, C), (B, L, H, T)
        if self.known is not None:
            batch["known"] = self.known[steps]  # (B, L, H, K)
        if self.window_norm != "none":
            x, c = batch["x"].clone(), self.norm_columns
            seen = x[:, : self.reference_end, :c]  # (B, r, c): never past the first scored step
            reference = seen.mean(dim=1) if self.window_norm == "mean" else seen[:, -1].clone()  # (B, c)
            x[..., :c] -= reference[:, None]
            batch["x"] = x
            batch["level"] = reference[:, None, : self.num_targets].expand(-1, len(self.offsets), -1).contiguous()
        if self.scored is not None:
            batch["mask"] = self.scored.repeat(len(steps), 1)  # (B, L): the last score_last steps
        if self.origin is not None:
            batch["row"] = steps + self.origin
        return batch
