"""The update core: measure → clip → guard → step, withheld on the device; read back once every logging step.

This is the one optimization path's inner half, without Lightning. Whoever runs the forward pass and computes the
loss hands it to :meth:`UpdateCore.update` with callables for what only the caller knows how to do::

    core.arm(run)                          before the forward: gradient-flow hooks, the RNG state for a snapshot
    loss = <forward + loss of the chunk>   the caller's (SeqTask.chunk_loss; a module's training_step)
    core.update(run, params, loss,
        backward=...,                      zero the gradients, backward (DDP all-reduce happens here)
        unscale=...,                       AMP: clipping must see unscaled gradients (Lightning #18089)
        step=...)                          the optimizer step (and the LR scheduler's)
      ├─ monitor.step_tensors              pre-clip per-module norms as device tensors; gradient flow
      ├─ clipping policy → ClipResult      one fused norm pass
      ├─ guard.decide → Verdict            finite? spike? step | skip | stop — all on the device
      ├─ step(), the update withheld       weights and optimizer state left as they were where the verdict says
      │  on the device                     so (seqstab.core.withhold), without the host asking
      └─ the values kept on the device     loss, norms, clipped, threshold, events: one row per update
    every log_every_n_steps updates        core.flush(run): one read-back of every row since the last one; each
    (and at validation, a checkpoint,      update's tags to every logger at its own step; the guard settles the
    the end of fit)                        events (explosions.jsonl, console, diagnosis, snapshot); the monitor
                                           writes what was due, and the spectra its worker thread has finished
                                           (at a checkpoint and the fit's end: all of them)

No host synchronisation happens between flushes: a GPU queue is never stalled by the stations. Three callers, one
path: :class:`seqstab.tasks.SeqTask` (its chunk loop), the :class:`seqstab.callbacks.GradientStability` callback
(Lightning steps; the withholding wraps its step) and ``python -m seqstab.replay`` (stepping nothing).

Examples:
    A loop of your own (``StaticRun``: loggers, run directory and the optimizer the withholding needs):

    >>> import torch
    >>> from seqstab import ExplosionGuard, NormClip, StaticRun, UpdateCore
    >>> net = torch.nn.Linear(4, 1)
    >>> optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> core = UpdateCore(NormClip(max_norm=1.0), ExplosionGuard(policy="skip", snapshot=False))
    >>> run = StaticRun(net, optimizer=optimizer, log_every_n_steps=10)
    >>> for _ in range(20):
    ...     loss = net(torch.randn(8, 4)).pow(2).mean()
    ...     update = core.update(run, list(net.parameters()), loss, backward=lambda l: (optimizer.zero_grad(),
    ...                          l.backward()), step=optimizer.step)
    >>> _ = core.flush(run)
    >>> core.summary()
    '20 of 20 updates applied'
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from seqstab.core import logs
from seqstab.core.clipping import ClipPolicy, NoClip
from seqstab.core.guard import ExplosionGuard
from seqstab.core.guard.verdict import READ_BACK, Verdict
from seqstab.core.logs import log_metrics
from seqstab.core.monitor import GradMonitor
from seqstab.core.record import Action, Run, Update
from seqstab.core.withhold import Withholding, undoable, withholding

__all__ = ["Action", "Update", "UpdateCore"]


@dataclass
class _AfterStep:
    """What :meth:`UpdateCore.complete` finishes after an update's optimizer step: undo it where the host decided
    to withhold it (``undo``), or where the device did (``withholding``), then the guard's moment reset."""

    verdict: Verdict
    params: list[torch.Tensor]
    undo: Callable[[], None] | None = None
    withholding: Withholding | None = None


@dataclass
class _Pending:
    """An update whose values are still on the device, and what the host knew of it when it was taken."""

    update: Update
    loss: torch.Tensor
    measured: dict[str, torch.Tensor]
    verdict: Verdict | None
    host: dict[str, Any] = field(default_factory=dict)  # lr, global_step, epoch at the update


class UpdateCore:
    """The stations of one update, the count of updates attempted, and the rows not yet read back.

    Args:
        clipping: Clipping policy (``seqstab.clipping``); None measures only (``NoClip``).
        guard: Explosion guard; None applies every update (a non-finite one too: seqstab's tasks and the callback
            always have a guard).
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
        self.applied = 0  # of those read back, applied
        self.stop_requested = False  # a flush read a STOP: the caller ends the run
        self.last: Update | None = None  # the last update read back (its values: the progress bar's)
        self._pending: list[_Pending] = []
        self._withholding: Withholding | None = None
        self._after: _AfterStep | None = None  # what complete() finishes after the step

    def arm(self, run: Run) -> None:
        """Before the forward pass of the next update."""
        if self.monitor is not None:
            self.monitor.arm(run, self.updates)
        if self.guard is not None:
            self.guard.arm(run, self.updates)

    def update(
        self,
        run: Run,
        params: list[torch.Tensor],
        loss: torch.Tensor,
        *,
        step: Callable[[], Any] | None,
        backward: Callable[[torch.Tensor], Any] | None = None,
        unscale: Callable[[], Any] | None = None,
        chunk: Any = None,
        hidden_in: Any = None,
        log: bool = True,
    ) -> Update:
        """One update: backward (if given), unscale (if given), measure, clip, guard, ``step``.

        ``step`` is called once per update, also for an update the guard withholds: the withholding
        (:mod:`seqstab.core.withhold`) keeps it from changing anything, on the device. Its ``values`` and ``action``
        are filled at the next :meth:`flush` (here, when this is a logging step: every ``run.log_every_n_steps``).

        Args:
            run: The run around the update (where events and tags go; its ``optimizer`` is withheld from).
            params: The trained parameters: their gradients are measured, clipped and guarded.
            loss: The loss of the chunk (a 0-dim tensor); logged as ``train/loss``.
            step: Applies the update (optimizer step, scheduler step). None: the caller steps after this returns,
                then calls :meth:`complete` (Lightning's automatic optimization, under the callback).
            backward: Computes the gradients of ``loss``; None when they are already there.
            unscale: Unscales AMP-scaled gradients; None when they are not scaled (or already unscaled).
            chunk: What was trained on, for the record and the replay snapshot.
            hidden_in: The hidden state the chunk started from, likewise.
            log: Write the update's tags to the run's loggers (at its flush).
        """
        if backward is not None:
            backward(loss)
        if unscale is not None:
            unscale()
        index = self.updates
        measured = self.monitor.step_tensors(run, index) if self.monitor is not None else {}
        clip = self.clipping(params)
        update = Update(index, chunk, hidden_in, clip, {})
        verdict, amp, optimizer = None, run.loss_scale is not None, run.optimizer
        if self.guard is not None:
            verdict = self.guard.decide(run, update, overflow_possible=amp)
        host = {"global_step": run.global_step, "epoch": run.epoch, "log": log, "amp": amp}
        if verdict is not None:  # whose gradient the clip's tensor_norms measured, for naming them at an event
            host["with_grad"] = [p for p in params if p.grad is not None]
        if optimizer is not None:  # the rate this update is applied with: read before a scheduler steps
            host["lr"] = float(optimizer.param_groups[0]["lr"])
        self._pending.append(_Pending(update, loss.detach(), measured, verdict, host))
        self.updates += 1
        if verdict is None:
            if step is not None:
                step()
            return update
        self.guard.keep(run, verdict, index)
        withholding = self._withholding_of(optimizer, amp)
        due = log and index % max(run.log_every_n_steps, 1) == 0
        if withholding is None or due or withholding.host_decides(params):
            self.flush(run)  # the verdict read before the step: the host takes it, or takes and undoes it
            withheld = update.action is not Action.STEP
            undo = undoable(optimizer, params) if withheld and optimizer is not None else None
            self._after = _AfterStep(verdict, params, undo=undo)
            take = not withheld or undo is not None  # with no optimizer to undo, a withheld step is not taken
        else:
            withholding.before(params, verdict.apply)
            self._after = _AfterStep(verdict, params, withholding=withholding)
            take = True
        if step is None:  # the caller steps (Lightning, under the callback), then calls complete()
            return update
        if take:
            step()
        self.complete(run)
        return update

    def complete(self, run: Run) -> None:
        """After the optimizer step of the last :meth:`update` (``step=None``: the caller stepped): undo a withheld
        update (on the device, or on the host where it was decided there) and let the guard reset moments."""
        after, self._after = self._after, None
        if after is None:
            return
        if after.undo is not None:
            after.undo()
        if after.withholding is not None:
            after.withholding.after(after.params, after.verdict.apply)
        self.guard.after_step(run, after.verdict)

    def _withholding_of(self, optimizer: Any, scaled: bool) -> Withholding | None:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer's own
        if optimizer is None:
            return None
        if self._withholding is None or self._withholding.optimizer is not optimizer:
            self._withholding = withholding(optimizer, scaled=scaled)
        return self._withholding

    def flush(self, run: Run, complete: bool = False) -> list[Update]:
        """Read back every update since the last flush (one transfer), settle the guard's verdicts in order, and
        write each update's tags to the loggers at its own step; then what the monitor computed off the training
        thread since (the spectra; ``complete``: all it was given, waiting for it, as before a checkpoint).
        Returns the updates read back."""
        pending, self._pending = self._pending, []
        values = _read_back(pending) if pending else []
        for item, read in zip(pending, values, strict=True):
            update = item.update
            update.values = read["values"]
            if item.verdict is not None:
                read.update({k: item.host.get(k) for k in ("lr", "global_step", "epoch", "with_grad")})
                update.action = self.guard.settle(run, update, read)
            else:
                update.action = Action.STEP
            if "lr" in item.host:
                update.values["train/lr"] = item.host["lr"]
            if update.step == 0 and run.is_global_zero:
                _warn_if_suspicious(update)
            self.applied += update.action is Action.STEP
            if item.host["log"]:
                self.log(run, update)
            elif self.monitor is not None:
                self.monitor.drop(update.step)
            if update.action is Action.STOP:
                self.stop_requested = True
        if pending:
            if self.guard is not None:
                self.guard.flushed(pending[-1].update.step)
            self.last = pending[-1].update
        if self.monitor is not None:
            self.monitor.collect(run, wait=complete)
        logs.flush(run)
        return [item.update for item in pending]

    def log(self, run: Run, update: Update) -> None:
        """The update's tags to every logger at ``update.step``; then what the monitor has due."""
        if run.loggers:
            log_metrics(run, dict(update.values), update.step, flushed=False)  # flush() makes them readable
        if self.monitor is not None:
            self.monitor.emit(run, update)

    def start(self, run: Run, hparams: dict[str, Any] | None = None, metric_tags: list[str] | None = None) -> None:
        """Fit start (the monitor's dashboard and its one-time notes)."""
        self.stop_requested = False
        if self.monitor is not None:
            self.monitor.start(run, hparams, metric_tags)

    def finish(self, run: Run) -> None:
        """Fit end: the last rows read back; the final gradient-flow heatmap."""
        self.flush(run)
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
        """The update counts, the policy's and the guard's state: plain data and tensors (``weights_only``).
        Call :meth:`flush` first (the tasks and the callback do, at every checkpoint)."""
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


def _read_back(pending: list[_Pending]) -> list[dict[str, Any]]:
    """Every pending update's values in one host transfer: the loss, the clip results, the monitor's tensors and the
    guard's verdict, in the order and the rounding the loggers always got (float32 values, as float). The 0-dim
    tensors are stacked by kind (a value or a code) and dtype, a handful of stacks a flush however many fields and
    updates it holds (the per-module norms and saturation tags are ~25 fields of one update each)."""
    fields: dict[tuple[str, bool, torch.dtype], list[tuple[int, torch.Tensor]]] = {}  # (name, as float32?, dtype)

    def add(index: int, name: str, tensor: torch.Tensor, value: bool) -> None:
        fields.setdefault((name, value, tensor.dtype), []).append((index, tensor))  # 0-dim, no graph

    for i, item in enumerate(pending):
        clip, verdict = item.update.clip, item.verdict
        for name, tensor in (("train/loss", item.loss), ("grad/norm_total", clip.pre_norm),
                             ("grad/norm_total_clipped", clip.post_norm), ("grad/clipped", clip.clipped),
                             ("grad/clip_threshold", clip.threshold), *item.measured.items()):  # fmt: skip
            if tensor is not None:
                add(i, name, tensor, True)
        if verdict is not None:
            for name in READ_BACK:
                tensor = getattr(verdict, name)
                if tensor is not None:
                    add(i, name, tensor, False)
            if verdict.reset is not None:
                for j, flag in enumerate(verdict.reset.unbind()):
                    add(i, f"reset/{j}", flag, False)
    device = pending[0].loss.device
    kinds: dict[tuple[bool, torch.dtype, torch.device], list[torch.Tensor]] = {}  # its tensors, field by field
    where = []  # per field, in its order: (name, its updates, its kind, where its values start in the kind's)
    for (name, value, dtype), entries in fields.items():
        kind = (value, dtype, entries[0][1].device)  # as float32?, dtype, device
        tensors = kinds.setdefault(kind, [])
        where.append((name, [i for i, _ in entries], kind, len(tensors)))
        tensors.extend(t for _, t in entries)
    starts, stacks, size = {}, [], 0
    for kind, tensors in kinds.items():
        stacked = torch.stack(tensors).to(device)
        stacks.append(stacked.float().double() if kind[0] else stacked.double())  # values: float32 first, as logged
        starts[kind], size = size, size + len(tensors)
    flat = torch.cat(stacks).tolist()  # the one host synchronisation of the flush
    reads: list[dict[str, Any]] = [{"values": {}} for _ in pending]
    for name, indices, kind, offset in where:  # field by field: each update's values in the order they always came
        at = starts[kind] + offset
        for i in indices:
            value = flat[at]
            at += 1
            if name in ("reason", "median", "action", "skipped"):
                reads[i][name] = None if name == "median" and math.isnan(value) else value
            elif name == "events":
                reads[i]["values"]["explosion/events"] = value
            elif name == "spike_score":
                reads[i]["values"]["grad/spike_score"] = value
            elif name.startswith("reset/"):
                reads[i].setdefault("reset", {})[int(name[6:])] = bool(value)
            else:
                reads[i]["values"][name] = value
    for item, read in zip(pending, reads, strict=True):
        if "reset" in read:
            read["reset"] = [read["reset"][j] for j in range(len(read["reset"]))]
        read["values"] = _ordered(read["values"], item)
    return reads


FIRST_TAGS = ("train/loss", "grad/norm_total", "grad/norm_total_clipped", "grad/clipped", "grad/clip_threshold")


def _ordered(values: dict[str, float], item: _Pending) -> dict[str, float]:
    """The tags in the order the loggers always got them: clip results, the monitor's, AMP's, the guard's."""
    events = values.pop("explosion/events", None)
    spike = values.pop("grad/spike_score", None)
    values = {**{k: values.pop(k) for k in FIRST_TAGS if k in values}, **values}
    if item.host.get("amp"):
        values["amp/overflow"] = float(not math.isfinite(values["grad/norm_total"]))
    if events is not None:
        values["explosion/events"] = events
    if spike is not None:
        values["grad/spike_score"] = spike
    return values


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
