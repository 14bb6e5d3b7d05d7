"""What the diagnosis compares an event against: O(1) running statistics of the updates before it."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch


class Tracker:
    """What the optimizer and data evidence need from the updates before an event, kept in O(1) per update.

    Per update: the step's scale (``lr`` × clip scale, floats already read back), a reference to the clipping
    policy's per-tensor pre-clip norms (a device tensor it computed anyway) and the chunk's smallest and largest
    input (one ``aminmax``, left on the device). Nothing is read back until an event.
    """

    def __init__(self, window: int = 50):
        self.steps: deque[tuple[float, torch.Tensor | None, float]] = deque(
            maxlen=window
        )  # applied: lr·s, ‖g_i‖, lr·‖g‖
        self.ranges: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=window)  # batches' (min x, max x)
        self.flow: tuple[int, dict, dict] | None = None  # the last event's flow findings (as dicts), its update

    def state_dict(self) -> dict[str, Any]:
        """Plain values (a weights_only checkpoint): one host sync, at a save."""
        return {
            "steps": [[scale, None if n is None else n.tolist(), step] for scale, n, step in self.steps],
            "ranges": [[float(lo), float(hi)] for lo, hi in self.ranges],
            "flow": None if self.flow is None else [self.flow[0], dict(self.flow[1]), dict(self.flow[2])],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps.clear()
        for scale, norms, step in state.get("steps", []):
            tensor = None if norms is None else torch.tensor(norms, dtype=torch.float64)
            self.steps.append((float(scale), tensor, float(step)))
        self.ranges.clear()
        for lo, hi in state.get("ranges", []):
            self.ranges.append((torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)))
        flow = state.get("flow")
        self.flow = None if flow is None else (int(flow[0]), dict(flow[1]), dict(flow[2]))

    def observe(self, update: Any, lr: float | None, applied: bool, x: torch.Tensor | None) -> None:
        """After the guard's decision on ``update``: remember its step (if applied) and its input range."""
        if applied and lr is not None:
            pre, post = update.values["grad/norm_total"], update.values.get("grad/norm_total_clipped", math.nan)
            scale = post / pre if pre > 0 and math.isfinite(pre) and math.isfinite(post) else 1.0
            self.steps.append((lr * scale, update.clip.tensor_norms, lr * post))
        if x is not None and x.numel():
            self.ranges.append(torch.aminmax(x.detach()))  # one kernel, left on the device (half abs().amax()'s cost)


def inputs_of(chunk: Any) -> torch.Tensor | None:
    """The floating-point inputs of a chunk or batch, as :func:`inputs_named` finds them; None for token ids or a
    batch that holds no floating-point tensor."""
    found = inputs_named(chunk)
    return found[1] if found is not None else None


def inputs_named(chunk: Any) -> tuple[str, torch.Tensor] | None:
    """``(where, tensor)``: the floating-point inputs the data evidence measures, and where they sit in the batch.

    A chunk of seqstab's tasks: its ``x``. Any other batch: the first non-empty floating-point tensor found walking
    it depth first in order (:func:`seqstab.core.plain.leaves`: tensors, dataclasses, named tuples, dicts, lists,
    tuples), so that an ``(inputs, targets)`` pair gives its inputs: darts' ``TorchTrainingBatch`` its
    ``past_target``, pytorch-forecasting's ``(x, (y, weight))`` its ``x['encoder_cont']``, neuralforecast's dict its
    ``temporal``. ``where`` reads like Python: ``batch[0]['encoder_cont']``. None where there is none (token ids).
    """
    from seqstab.core.plain import leaves

    task_chunk = isinstance(chunk, dict) and "x" in chunk
    candidates = [("batch['x']", chunk["x"])] if task_chunk else leaves(chunk)
    for where, tensor in candidates:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel():
            return where, tensor
    return None


def optimizer_path(optimizer: Any) -> str | None:
    """``torch.optim.SGD`` for an SGD optimizer (or Lightning's wrapper of one); the full class path otherwise."""
    if optimizer is None:
        return None
    cls = type(getattr(optimizer, "optimizer", optimizer))
    return f"torch.optim.{cls.__name__}" if getattr(torch.optim, cls.__name__, None) is cls else _path(cls)


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def learning_rate(optimizer: torch.optim.Optimizer | None) -> float | None:
    if optimizer is None or not optimizer.param_groups:
        return None
    return float(optimizer.param_groups[0]["lr"])
