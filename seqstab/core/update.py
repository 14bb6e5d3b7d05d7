"""The update core: measure → clip → guard → step | skip, and the :class:`~seqstab.record.Update` it leaves.

This is the one optimization path's inner half, without Lightning. Whoever runs the forward pass and computes the
loss hands it to :meth:`UpdateCore.update` with callables for what only the caller knows how to do::

    core.arm(run)                          before the forward: gradient-flow hooks, the RNG state for a snapshot
    loss = <forward + loss of the chunk>   the caller's (SeqTask.chunk_loss; a module's training_step)
    core.update(run, params, loss,
        backward=...,                      zero the gradients, backward (DDP all-reduce happens here)
        unscale=...,                       AMP: clipping must see unscaled gradients (Lightning #18089)
        step=..., skip=...)                apply, or drop, the update (and step the LR scheduler)
      ├─ monitor.step_tensors              pre-clip per-module norms as device tensors; gradient flow
      ├─ clipping policy → ClipResult      one fused norm pass, no host sync
      ├─ read back loss + norms            the one host sync of the update
      ├─ guard → step | skip | stop        an event: explosions.jsonl, the first one a replay snapshot (an AMP
      │                                    overflow is no event: skipped, the GradScaler lowers its scale)
      ├─ step() or skip()
      └─ log                               one logging step per update: every logger, then monitor.emit

Three callers, one path: :class:`seqstab.tasks.SeqTask` (its chunk loop, manual optimization), the
:class:`seqstab.callbacks.GradientStability` callback (any LightningModule under automatic optimization: Lightning
has run backward, unscaling and will step; ``skip`` withholds the gradient) and ``python -m seqstab.replay``
(recomputes a snapshot's update with the policy of the run, stepping nothing).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch

from seqstab.core.clipping import ClipPolicy, ClipResult, NoClip
from seqstab.core.guard import ExplosionGuard
from seqstab.core.logs import log_metrics
from seqstab.core.monitor import GradMonitor
from seqstab.core.record import Action, Run, Update

__all__ = ["Action", "UpdateCore", "Update", "drop_gradients", "read_back"]


class UpdateCore:
    """The stations of one update, and the count of updates attempted so far.

    Args:
        clipping: Clipping policy (``seqstab.clipping``); None measures only (``NoClip``).
        guard: Explosion guard; None applies every update (what a non-finite one does then is the caller's
            business: seqstab's tasks and the callback always have a guard).
        monitor: What to measure beyond the per-update norms (``GradMonitor``); None measures nothing more.
    """

    def __init__(
        self,
        clipping: ClipPolicy | None = None,
        guard: ExplosionGuard | None = None,
        monitor: GradMonitor | None = None,
    ):
        self.clipping = clipping if clipping is not None else NoClip()
        self.guard = guard
        self.monitor = monitor
        self.updates = 0  # updates attempted so far: the x axis of every per-update tag
        self.applied = 0  # of them, applied (the guard let them through)

    def arm(self, run: Run) -> None:
        """Before the forward pass of the next update."""
        if self.monitor is not None:
            self.monitor.arm(run, self.updates)
        if self.guard is not None:
            self.guard.arm(run, self.updates)  # RNG state for the replay snapshot

    def update(
        self,
        run: Run,
        params: list[torch.Tensor],
        loss: torch.Tensor,
        *,
        step: Callable[[], Any],
        skip: Callable[[], Any],
        backward: Callable[[torch.Tensor], Any] | None = None,
        unscale: Callable[[], Any] | None = None,
        chunk: Any = None,
        hidden_in: Any = None,
        log: bool = True,
    ) -> Update:
        """One update: backward (if given), unscale (if given), measure, clip, guard, then ``step()`` or ``skip()``.

        Args:
            run: The run around the update (where events and tags go).
            params: The trained parameters: their gradients are measured, clipped and guarded.
            loss: The loss of the chunk (a 0-dim tensor); logged as ``train/loss``.
            step: Applies the update (optimizer step, scheduler step).
            skip: Drops it: afterwards no gradient may reach the optimizer (see :func:`drop_gradients`).
            backward: Computes the gradients of ``loss``; None when they are already there.
            unscale: Unscales AMP-scaled gradients; None when they are not scaled (or already unscaled).
            chunk: What was trained on, for the record and the replay snapshot.
            hidden_in: The hidden state the chunk started from, likewise.
            log: Write the update's tags to the run's loggers.

        Returns:
            The :class:`Update`, its ``action`` the guard's decision (``STOP``: the caller ends the run).
        """
        if backward is not None:
            backward(loss)
        if unscale is not None:
            unscale()
        measured = self.monitor.step_tensors(run, self.updates) if self.monitor is not None else {}
        clip = self.clipping(params)
        update = Update(self.updates, chunk, hidden_in, clip, read_back(loss, clip, measured))
        if run.loss_scale is not None:  # 16-bit AMP: a non-finite norm is the GradScaler's overflow, its to handle
            update.values["amp/overflow"] = float(not math.isfinite(update.values["grad/norm_total"]))
        if update.step == 0 and run.is_global_zero:
            _warn_if_suspicious(update)
        update.action = self.guard.check(run, update) if self.guard is not None else Action.STEP
        if run.optimizer is not None:  # the rate this update is applied with: read before a scheduler steps
            update.values["train/lr"] = float(run.optimizer.param_groups[0]["lr"])
        if update.action is Action.STEP:
            step()
            self.applied += 1
        else:
            skip()
        if log:
            self.log(run, update)
        self.updates += 1
        return update

    def log(self, run: Run, update: Update) -> None:
        """The update's tags to every logger at ``update.step``; then what the monitor has due."""
        if run.loggers:
            log_metrics(run, dict(update.values), update.step)
        if self.monitor is not None:
            self.monitor.emit(run, update)

    def start(self, run: Run, hparams: dict[str, Any] | None = None, metric_tags: list[str] | None = None) -> None:
        """Fit start (the monitor's dashboard and its one-time notes)."""
        if self.monitor is not None:
            self.monitor.start(run, hparams, metric_tags)

    def finish(self, run: Run) -> None:
        """Fit end (the final gradient-flow heatmap)."""
        if self.monitor is not None:
            self.monitor.finish(run)

    def summary(self) -> str:
        """One line: how many of the updates attempted were applied."""
        skipped = self.updates - self.applied
        return f"{self.applied} of {self.updates} updates applied" + (
            f", {skipped} held back by the guard" if skipped else ""
        )

    # -- checkpoint ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The update counts, the policy's and the guard's state: plain data and tensors (``weights_only``)."""
        state: dict[str, Any] = {
            "updates": self.updates,
            "applied": self.applied,
            "clipping": self.clipping.state_dict(),
        }
        if self.guard is not None:
            state["guard"] = self.guard.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))
        self.applied = int(state.get("applied", self.updates))  # checkpoints before the count: as if all applied
        self.clipping.load_state_dict(state.get("clipping", {}))
        if self.guard is not None:
            self.guard.load_state_dict(state.get("guard", {}))


def read_back(loss: torch.Tensor, clip: ClipResult, extra: dict[str, torch.Tensor]) -> dict[str, float]:
    """The single host synchronisation of an update: loss, clip results and monitor tensors in one transfer."""
    tensors = {
        "train/loss": loss.detach(),
        "grad/norm_total": clip.pre_norm,
        "grad/norm_total_clipped": clip.post_norm,
        "grad/clipped": clip.clipped,
    }
    if clip.threshold is not None:
        tensors["grad/clip_threshold"] = clip.threshold
    tensors.update(extra)
    stacked = torch.stack([t.detach().float().reshape(()).to(clip.pre_norm.device) for t in tensors.values()])
    return dict(zip(tensors, stacked.tolist(), strict=True))


def drop_gradients(params: list[torch.Tensor]) -> None:
    """Set every gradient to None: an optimizer then passes the parameters over, so a step changes neither them nor
    its own state (momentum, Adam's moments and step count are per parameter and only updated where a gradient is)."""
    for p in params:
        p.grad = None


def _warn_if_suspicious(update: Update) -> None:
    """Legal but likely a mistake, seen at the first update: a clip threshold far below the gradient norm."""
    norm, threshold = update.values["grad/norm_total"], update.values.get("grad/clip_threshold")
    if threshold is not None and math.isfinite(norm) and 0 < threshold < norm / 100:
        warnings.warn(
            f"clip threshold {threshold:g} is {norm / threshold:.0f}x below the first gradient norm {norm:g}: "
            "nearly every update will be clipped to it (a threshold carries over only with the same loss "
            "reduction and model size)",
            UserWarning,
            stacklevel=3,
        )
