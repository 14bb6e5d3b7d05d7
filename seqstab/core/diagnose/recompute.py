"""Recomputing a flagged update's loss for the origin search, whichever door the run came in by.

* A seqstab task (``chunk_loss``): the loss of the event's chunk from the hidden state it started from.
* A module under the ``GradientStability`` callback: its ``training_step(batch, batch_idx)`` on the event's batch,
  with the module detached from its Trainer for the call (``self.log`` then does nothing, as in
  ``python -m seqstab.replay``). What ``training_step`` does besides computing the loss (a torchmetrics update, say)
  sees that batch once more, at the event only.

The RNG state the update's forward pass drew its dropout masks from is used where the guard kept it (while its
snapshot is due); the caller's RNG state is left as it was.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from seqstab import internals
from seqstab.core.diagnose.origin import find_origin
from seqstab.core.plain import json_safe

__all__ = ["event_origin", "locate", "training_step_loss", "with_origin"]


def locate(run: Any, update: Any, rng: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where ``update``'s first non-finite value appeared (:func:`~seqstab.core.diagnose.origin.find_origin`), on the
    weights ``run.module`` holds now; ``rng``: the RNG state before the update's forward pass, if kept."""
    from seqstab.core.monitor import flow_layers

    module = run.module
    if hasattr(module, "chunk_loss") and isinstance(update.chunk, dict):

        def loss_fn() -> torch.Tensor:
            return module.chunk_loss(update.chunk, update.hidden_in)[0]

    elif callable(getattr(module, "training_step", None)) and update.chunk is not None:

        def loss_fn() -> torch.Tensor:
            return training_step_loss(module, update.chunk, 0)

    else:
        return {"phase": None, "evidence": "not located: the run's loss cannot be recomputed (no chunk_loss)"}
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if rng and "torch" in rng:
            torch.set_rng_state(rng["torch"])
        return find_origin(module, loss_fn, flow_layers(run.net), update.chunk)


def training_step_loss(module: Any, batch: Any, batch_idx: int) -> torch.Tensor:
    """A LightningModule's training loss on ``batch``, computed off its Trainer (``self.log`` does nothing)."""
    with _detached(module), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*self\.log\(\).*")
        out = module.training_step(batch, batch_idx)
    loss = out["loss"] if isinstance(out, dict) else out
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.training_step returned no loss tensor")
    return loss


@contextlib.contextmanager
def _detached(module: Any) -> Iterator[None]:
    """Within the block the module has no Trainer (``module.trainer = None``: Lightning's public setter)."""
    trainer = internals.attached_trainer(module)
    if trainer is None:
        yield
        return
    module.trainer = None
    try:
        yield
    finally:
        module.trainer = trainer


def event_origin(run: Any, update: Any, reason: str, rng: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """At a guard event: the origin of its non-finite values (JSON-safe) when its loss, gradient norm or weights are
    non-finite; None for a finite event. Never raises: a search that fails says why in its ``evidence``."""
    loss = update.values.get("train/loss")
    finite_loss = isinstance(loss, float) and math.isfinite(loss)
    params = [p.detach() for p in run.module.parameters()]
    weights_finite = not params or bool(torch.stack([torch.isfinite(p).all() for p in params]).all())  # one read
    if reason != "non-finite" and finite_loss and weights_finite:
        return None
    try:
        return json_safe(locate(run, update, rng))
    except Exception as err:  # a measurement must never end the run it explains
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return {"phase": None, "evidence": f"not located: the recompute failed ({type(err).__name__}: {first})"}


def with_origin(diagnosis: dict[str, Any], origin: dict[str, Any] | None) -> dict[str, Any]:
    """``diagnosis`` with the event's ``origin``; non-finite values the batch brought in make the data the top cause
    (the flow findings are then non-finite only because the input was)."""
    if origin is None:
        return diagnosis
    ranked = diagnosis.get("ranked", [])
    if origin.get("phase") == "input" and origin.get("in_batch"):
        data = [f for f in ranked if f["mechanism"] == "data"]
        ranked = data + [f for f in ranked if f["mechanism"] != "data"]
        return {**diagnosis, "top": "data" if data else diagnosis.get("top"), "ranked": ranked, "origin": origin}
    return {**diagnosis, "origin": origin}
