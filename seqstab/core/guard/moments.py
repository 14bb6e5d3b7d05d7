"""``reset_moments``: zero a parameter's optimizer moments (SPAM), the guard's fourth policy."""

from __future__ import annotations

import math

import torch

from seqstab.core.guard.window import RunningMedian

MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")  # Adam/AdamW (amsgrad), SGD momentum


def moment_buffers(optimizer: torch.optim.Optimizer | None, param: torch.Tensor) -> list[torch.Tensor]:
    """The optimizer's moment buffers of ``param`` that :func:`reset_moments` zeroes (``MOMENT_KEYS`` it holds)."""
    state = optimizer.state.get(param) if optimizer is not None else None  # .get: state is a defaultdict
    return [state[key] for key in MOMENT_KEYS if isinstance(state.get(key), torch.Tensor)] if state else []


def reset_moments(optimizer: torch.optim.Optimizer | None, param: torch.Tensor) -> bool:
    """Zero ``param``'s moment buffers in place (Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD
    ``momentum_buffer``) and set its ``step`` back to 0 where the optimizer keeps one (Adam's bias correction then
    treats the tensor as new). Whether there was anything to reset."""
    buffers = moment_buffers(optimizer, param)
    for buffer in buffers:
        buffer.zero_()
    state = optimizer.state[param] if buffers else {}
    step = state.get("step")
    if isinstance(step, torch.Tensor):
        step.zero_()
    elif step is not None:
        state["step"] = type(step)(0)
    return bool(buffers)


def reset_moments_where(optimizer: torch.optim.Optimizer, param: torch.Tensor, reset: torch.Tensor) -> None:
    """:func:`reset_moments` where ``reset`` (a 0-dim bool tensor) holds, decided on the device: the moment buffers
    are multiplied by 0 or 1 (exact: they are finite) and a tensor ``step`` is selected back to 0. A Python-number
    ``step`` is left alone (torch's optimizers keep tensors)."""
    keep = (~reset).to(torch.float32)
    for buffer in moment_buffers(optimizer, param):
        buffer.mul_(keep.to(buffer.dtype))
    step = optimizer.state[param].get("step")
    if isinstance(step, torch.Tensor):
        torch.where(reset.to(step.device), torch.zeros_like(step), step, out=step)


def reset_moments_of(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], reset: torch.Tensor) -> None:
    """:func:`reset_moments_where` for each of ``params`` that has moments, ``reset`` ``(P,)`` saying which."""
    for i, param in enumerate(params):
        if moment_buffers(optimizer, param):
            reset_moments_where(optimizer, param, reset[i])


def spiked_tensors(
    norms: torch.Tensor, rows: RunningMedian | None, spike_factor: float | None, min_history: int
) -> torch.Tensor:
    """``(P,)`` the tensors whose moments an event resets, from their pre-clip gradient ``norms`` ``(P,)`` (float64):
    each one non-finite or above ``spike_factor`` × the median of its own norms (``rows``, once ``min_history`` are
    held); where none is, the one with the largest norm (the one the event names)."""
    spiked = ~torch.isfinite(norms)
    if rows is not None and spike_factor is not None:
        known, medians = rows.median(min_history, norms.device)
        spiked = spiked | (known & (norms > spike_factor * medians))
    largest = torch.where(torch.isnan(norms), math.inf, norms).argmax()
    fallback = torch.zeros_like(spiked).index_fill_(0, largest.reshape(1), True)
    return torch.where(spiked.any(), spiked, fallback)
