"""``reset_moments``: zero a parameter's optimizer moments (SPAM), the guard's fourth policy."""

from __future__ import annotations

import torch

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
