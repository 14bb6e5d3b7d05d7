"""A batch cut along time: the chunk of each window, its loss weight, the gradient factors a policy puts on the
state between pieces, which windows score a step, and the learning rate a window trains at."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from seqstab.core.plain import map_tensors
from seqstab.core.tbptt.policies import Window, as_windows
from seqstab.nets.recurrent import Hidden

LOSS_WEIGHT = "loss_weight"  # key of a window chunk: 0-dim multiplier of its loss (Unbiased: its share of the batch)


GRAD_SCALE = "bptt_scale"  # key of a window chunk: (n,) factor on the gradient into h_{t-1} from step t (Unbiased)


def window_chunk(
    batch: dict[str, torch.Tensor], window: Window, reduce: Callable[[torch.Tensor, torch.Tensor | None], Any] = None
) -> dict[str, torch.Tensor]:
    """The chunk ``{"x", "y", "mask", ...}`` ``(B, stop - start, ...)`` a window trains on: the batch's steps
    ``[start, stop)``, the unscored history masked out of the loss, and (``Unbiased``) the loss weight and the
    gradient factors (``reduce``, the task's loss reduction, gives the window's share of the batch's loss)."""
    length = batch["x"].shape[1]
    if window.start == 0 and window.stop >= length and window.score_from == 0 and not window.share:
        return batch  # the whole batch: full BPTT (or k >= L) trains on the batch as it is
    chunk = {key: value[:, window.start : window.stop] for key, value in batch.items()}  # (B, n, ...) views
    steps = window.stop - window.start
    if window.score_from > window.start:
        scored = torch.arange(steps, device=chunk["x"].device) >= window.score_from - window.start  # (n,)
        mask = chunk.get("mask")
        if mask is None:
            chunk["mask"] = scored.expand(chunk["x"].shape[0], steps)  # (B, n)
        else:
            scored = scored.view(1, steps, *([1] * (mask.dim() - 2)))
            chunk["mask"] = mask & scored if mask.dtype == torch.bool else mask * scored.to(mask.dtype)
    if window.share:
        if reduce is None:
            raise ValueError("window_chunk: a window weighted by its share needs the task's loss reduction")
        chunk[LOSS_WEIGHT] = share(batch, window, reduce)
    if window.compensate:
        scale = torch.ones(steps, dtype=torch.float32)
        for t, factor in window.compensate:
            scale[t - window.start] = factor
        chunk[GRAD_SCALE] = scale.to(chunk["x"].device)
    return chunk


@torch.no_grad()
def share(batch: dict[str, torch.Tensor], window: Window, reduce: Callable) -> torch.Tensor:
    """The window's share of the batch's loss, for any loss reduction linear in the per-step losses: the batch's
    reduced loss of a per-step loss that is 1 on the window's steps and 0 elsewhere, over the window's own reduced
    loss of all ones (a token mean: scored steps in the window / in the batch; a sum over time: 1)."""
    mask = batch.get("mask")
    shape = batch["y"].shape[:2] if "y" in batch else batch["x"].shape[:2]  # (B, L)
    ones = torch.zeros(shape, device=batch["x"].device)
    ones[:, window.score_from : window.stop] = 1.0
    whole = reduce(ones, mask)
    own_mask = None if mask is None else mask[:, window.score_from : window.stop]
    own = reduce(ones[:, window.score_from : window.stop], own_mask)
    return torch.where(own > 0, whole / own.clamp(min=1e-30), torch.zeros_like(whole))


def weighted(loss: torch.Tensor, chunk: dict[str, torch.Tensor]) -> torch.Tensor:
    """The chunk's loss times its weight, where its window has one."""
    weight = chunk.get(LOSS_WEIGHT)
    return loss if weight is None else loss * weight.to(loss.dtype)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward (bitwise), gradient times ``factor`` backward."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def forward(
    step: Callable[[dict[str, torch.Tensor], Hidden | None], tuple[torch.Tensor, Hidden]],
    chunk: dict[str, torch.Tensor],
    hidden: Hidden | None,
) -> tuple[torch.Tensor, Hidden]:
    """``step(chunk, hidden)`` (the task's ``forward_batch``); for a chunk with gradient factors, in pieces between
    the compensation steps, the state passed from one piece to the next through a factor on its gradient."""
    scale = chunk.get(GRAD_SCALE)
    if scale is None:
        return step(chunk, hidden)
    factors = scale.tolist()
    points = [i for i, f in enumerate(factors) if i > 0 and f != 1.0] + [len(factors)]
    timed = {key: value for key, value in chunk.items() if key not in (GRAD_SCALE, LOSS_WEIGHT)}  # (B, n, ...)
    outs, a = [], 0
    for b in points:
        if a > 0:  # hidden: the state the previous piece left
            hidden = map_tensors(lambda h, f=factors[a]: _ScaleGrad.apply(h, f), hidden)
        out, hidden = step({key: value[:, a:b] for key, value in timed.items()}, hidden)  # (B, b - a, ...)
        outs.append(out)
        a = b
    return torch.cat(outs, dim=1), hidden


def chunks(batch: dict[str, torch.Tensor], steps: int | None) -> Iterator[dict[str, torch.Tensor]]:
    """Cut every tensor of ``batch`` along time (dim 1) into consecutive chunks of length ``steps``."""
    for window in as_windows(batch["x"].shape[1], steps):
        yield window_chunk(batch, window)


def scored(batch: dict[str, torch.Tensor], steps: int | list[Window] | None) -> torch.Tensor | None:
    """For each window (``steps``: a list of windows, or ``Fixed(steps)``'s chunks): does its scored part hold a
    scored step? A bool tensor ``(num_windows,)`` on the batch's device; None without a ``mask`` (all are scored).

    A window whose steps are all masked out (truncated BPTT on a task scored at the last step: every chunk but the
    last) has no loss and no gradient; the training step only carries the hidden state across it.
    """
    mask = batch.get("mask")
    if mask is None:
        return None
    per_step = mask.reshape(mask.shape[0], mask.shape[1], -1).ne(0).any(dim=2).any(dim=0)  # (L,)
    windows = as_windows(per_step.shape[0], steps)
    if len(windows) == 1 and windows[0].score_from == 0:
        return per_step.any().reshape(1)
    if all(w.score_from == w.start for w in windows) and all(
        a.stop == b.start for a, b in zip(windows, windows[1:], strict=False)
    ):
        lengths = [w.stop - w.start for w in windows]
        return torch.stack([part.any() for part in per_step.split(lengths)])
    return torch.stack([per_step[w.score_from : w.stop].any() for w in windows])


def scored_steps(mask: torch.Tensor) -> torch.Tensor:
    """``(L,)`` bool: which steps of a batch hold a scored step in any stream (a mask ``(B, L, ...)``)."""
    return mask.reshape(mask.shape[0], mask.shape[1], -1).ne(0).any(dim=2).any(dim=0)


def scored_windows(per_step: Sequence[bool], windows: list[Window]) -> list[bool]:
    """For each window: does its scored part hold a scored step (``per_step``: :func:`scored_steps` as host booleans,
    the ones the training loader noted)."""
    return [any(per_step[w.score_from : w.stop]) for w in windows]


def carries(windows: list[Window], i: int, length: int) -> bool:
    """Does the next window (or the batch's end) start where window ``i`` stops? Then its final state is carried."""
    following = windows[i + 1].start if i + 1 < len(windows) else length
    return following == windows[i].stop


@contextmanager
def scaled_lr(optimizer: Any, scale: float) -> Iterator[None]:
    """Every parameter group's learning rate times ``scale`` for one update (``VariableLength``), then back: to the
    rate before, or, where a scheduler stepped meanwhile, to its new rate over ``scale``."""
    if scale == 1.0:
        yield
        return
    groups = getattr(optimizer, "optimizer", optimizer).param_groups
    saved = [group["lr"] for group in groups]
    for group in groups:
        group["lr"] = group["lr"] * scale
    try:
        yield
    finally:
        for group, lr in zip(groups, saved, strict=True):
            group["lr"] = lr if group["lr"] == lr * scale else group["lr"] / scale
