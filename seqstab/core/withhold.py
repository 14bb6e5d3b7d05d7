"""Withholding an update: on a GPU the guard decides on the device and the host never asks; on the CPU the host
reads the decision, which waits for nothing there.

Every update calls the optimizer's ``step``. When the guard's decision (a 0-dim bool tensor, ``apply``) says the
update is withheld, the step must leave the weights *and* the optimizer's state (momentum, Adam's moments and step
count) exactly as they were. On an accelerator this happens without the host reading ``apply``, which would stall
the device's queue. How, depends on where the parameters live and on the optimizer; :func:`withholding` picks the
cheapest exact way:

=====================  ==========================================================  ==============================
strategy               when                                                        cost per update
=====================  ==========================================================  ==============================
:class:`ReadOnHost`    the parameters live on the CPU: a CPU kernel has run by     one read of a 0-dim tensor; a
                       the time Python reads its result, so reading ``apply``      withheld update: a copy of
                       waits for nothing (:func:`reads_wait`); a withheld update   what its step changes, made
                       is stepped, then undone from copies made for it alone       for it alone (:func:`undoable`)
:class:`MaskGradient`  on a device, ``torch.optim.SGD`` without momentum and       one pass over the gradients
                       weight decay: a zero gradient steps nothing (``p - lr·0     (a fused multiply of their bits,
                       == p``), so the gradient is zeroed where withheld           viewed as integers)
                       (non-finite values too)
:class:`FoundInf`      on a device, an optimizer whose step reads ``found_inf``    nothing: the fused kernel skips
                       (``fused`` Adam, AdamW, SGD, Adagrad), not under a          itself, step count included
                       GradScaler
:class:`Restore`       on a device, any other optimizer: params and state          a copy before and a select
                       tensors are copied before the step and selected back        after, over params and state
                       after it (``where``)
=====================  ==========================================================  ==============================

On the CPU the device's ways would cost time for nothing: over the 14 M parameters of the 2×200 word LM at 33k
words, ``Restore`` added 14–31 ms to each step of ``torch.optim.Adam`` (19–64 ms, at one or two threads) and
``MaskGradient`` 1.1–1.6 ms to plain SGD's 1.5–2.8; reading the decision added nothing the runs' noise did not
(three runs of ``python benchmarks/bench_withhold.py`` on the 2-core VM of ``benchmarks/RESULTS.md``).

On a device, two cases read ``apply`` on the host instead (one sync for that update): before the optimizer's first
step (its state does not exist yet, and a withheld first step must leave none), and where the optimizer keeps a
state tensor on another device than its parameter (``torch.optim.Adam`` on a GPU, neither fused nor capturable,
counts steps on the CPU). Then the step is taken and undone exactly on the host, as :class:`ReadOnHost` does. Under
a GradScaler (16-bit AMP) the scaler skips an overflowing step itself; the guard's mask comes on top.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from seqstab import internals

__all__ = [
    "FoundInf",
    "MaskGradient",
    "ReadOnHost",
    "Restore",
    "Withholding",
    "reads_wait",
    "undoable",
    "withholding",
]


class Withholding:
    """Base: how a withheld update is kept from changing anything. Subclasses implement :meth:`before` and
    :meth:`after`, around the optimizer's step."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def host_decides(self, params: list[torch.Tensor]) -> bool:
        """Whether this update's decision must be read on the host: a parameter with a gradient has no optimizer
        state yet (the step would create it), or keeps state on another device."""
        state = self.optimizer.state
        for p in params:
            if p.grad is None:
                continue
            mine = state.get(p)  # .get: state is a defaultdict
            if not mine or any(isinstance(t, torch.Tensor) and t.device != p.device for t in mine.values()):
                return True
        return False

    def before(self, params: list[torch.Tensor], apply: torch.Tensor) -> None:
        """Before the optimizer's step."""

    def after(self, params: list[torch.Tensor], apply: torch.Tensor) -> None:
        """After the optimizer's step."""


class ReadOnHost(Withholding):
    """Parameters on the CPU: ``apply`` is read on the host (nothing to wait for there), and a withheld update is
    stepped, then undone from copies of what the step changes, made for that update alone (:func:`undoable`: the
    parameters, their state tensors, and no state where the step created it). An applied update costs the read."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        super().__init__(optimizer)
        self._undo: Callable[[], None] | None = None

    def host_decides(self, params: list[torch.Tensor]) -> bool:
        return False  # it always does, here, and undoable() covers a step that creates the state too

    def before(self, params: list[torch.Tensor], apply: torch.Tensor) -> None:
        self._undo = None if bool(apply) else undoable(self.optimizer, params)

    def after(self, params: list[torch.Tensor], apply: torch.Tensor) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()


class MaskGradient(Withholding):
    """``torch.optim.SGD`` without momentum or weight decay: the gradient of a withheld update becomes zeros.

    One pass over the gradients: each is viewed as integers of its width and multiplied by ``apply`` (1 or 0), which
    keeps every bit of an applied gradient and zeroes a withheld one, NaN and infinities included (a float multiply
    by 0 would keep those, and need a second pass, ``nan_to_num_``: 0.53 → 0.28–0.35 ms an update over the 10k-word
    LM's gradients in place, ``python benchmarks/bench_stations.py --setting wt2-10k``, on a 2-core VM). A sparse
    gradient is coalesced and its values masked (on a GPU coalescing reads its size back: one sync an update); a
    complex one takes the two passes.
    """

    def host_decides(self, params: list[torch.Tensor]) -> bool:
        return False  # no state to create or keep

    def before(self, params: list[torch.Tensor], apply: torch.Tensor) -> None:
        by_width: dict[torch.dtype, list[torch.Tensor]] = {}
        other = []
        for p in params:
            values = p.grad
            if values is None:
                continue
            if values.is_sparse:  # its values, coalesced (a view of the gradient's own)
                p.grad = p.grad.coalesce()
                values = p.grad.values()
            bits = _BITS.get(values.dtype)
            if bits is None:
                other.append(values)
            else:
                by_width.setdefault(bits, []).append(values.view(bits))
        for bits, views in by_width.items():
            internals.foreach_mul_(views, apply.to(bits))  # 1: every bit kept; 0: +0.0, whatever was there
        for values in other:
            values.mul_(apply.to(values.dtype)).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


_WIDTHS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_BITS = {  # an integer view of a real floating-point gradient, of its width (a complex one has none)
    dtype: _WIDTHS[dtype.itemsize]
    for dtype in vars(torch).values()
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point
}


class FoundInf(Withholding):
    """An optimizer whose step reads ``found_inf`` (torch's fused implementations; the attribute a GradScaler sets
    for them): the kernel skips a withheld update itself, its step count included."""

    def before(self, params: list[torch.Tensor], apply: torch.Tensor) -> None:
        self.optimizer.found_inf = (~apply).to(torch.float32)

    def after(self, params: list[torch.Tensor], apply: torch.Tensor) -> None:
        del self.optimizer.found_inf


class Restore(Withholding):
    """Any optimizer: the parameters and their state tensors are copied before the step and selected back after it
    where the update is withheld (``torch.where``: bitwise the copy)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        super().__init__(optimizer)
        self._tensors: list[torch.Tensor] = []
        self._copies: list[torch.Tensor] = []

    def before(self, params: list[torch.Tensor], apply: torch.Tensor) -> None:
        tensors = stepped_tensors(self.optimizer, params)
        if len(tensors) != len(self._copies) or any(
            c.shape != t.shape or c.dtype != t.dtype or c.device != t.device
            for c, t in zip(self._copies, tensors, strict=True)
        ):
            self._copies = [torch.empty_like(t) for t in tensors]
        self._tensors = tensors
        if tensors:
            internals.foreach_copy_(self._copies, tensors)

    def after(self, params: list[torch.Tensor], apply: torch.Tensor) -> None:
        for tensor, copy in zip(self._tensors, self._copies, strict=True):
            torch.where(apply, tensor, copy, out=tensor)
        self._tensors = []


def stepped_tensors(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors an optimizer step may change: each parameter with a gradient, and the tensors of its state."""
    tensors = []
    for p in params:
        if p.grad is None:
            continue
        tensors.append(p.data)
        tensors += [t for t in optimizer.state.get(p, {}).values() if isinstance(t, torch.Tensor)]
    return tensors


def reads_wait(device: torch.device) -> bool:
    """Whether the host waits when it reads a value computed on ``device``: on an accelerator, whose queue runs ahead
    of the host, it does; on the CPU, whose kernels have run by the time the next line of Python does, it does not.
    (The tests that count reads on the CPU as an accelerator's, ``tests/host_reads.py``, make it say yes there.)"""
    return device.type != "cpu"


def withholding(optimizer: torch.optim.Optimizer, scaled: bool = False) -> Withholding:
    """The cheapest exact way to withhold an update of ``optimizer`` (see the module's table); ``scaled``: a
    GradScaler drives the step (it sets ``found_inf`` itself)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper
    groups = optimizer.param_groups
    if not any(reads_wait(p.device) for group in groups for p in group["params"]):
        return ReadOnHost(optimizer)
    if type(optimizer) is torch.optim.SGD and all(
        g.get("momentum", 0) == 0 and g.get("weight_decay", 0) == 0 for g in groups
    ):
        return MaskGradient(optimizer)
    if internals.steps_with_found_inf(optimizer) and not scaled:
        return FoundInf(optimizer)
    return Restore(optimizer)


def undoable(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> Callable[[], None]:
    """Before a step decided on the host to be withheld: copy what it may change, and return how to put it back
    exactly afterwards (the parameters, their state tensors, and no state where the step created it)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    stepped = [p for p in params if p.grad is not None]
    had = {p: (p in optimizer.state) for p in stepped}
    before = {
        p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in optimizer.state[p].items()}
        for p in stepped
        if had[p]
    }
    data = {p: p.detach().clone() for p in stepped}

    def undo() -> None:
        with torch.no_grad():
            for p, old in data.items():
                p.copy_(old)
            for p in stepped:
                if not had[p]:
                    optimizer.state.pop(p, None)
                    continue
                current, old = optimizer.state[p], before[p]
                for key in [k for k in current if k not in old]:
                    del current[key]
                for key, value in old.items():
                    if isinstance(value, torch.Tensor) and isinstance(current.get(key), torch.Tensor):
                        current[key].copy_(value)
                    else:
                        current[key] = value

    return undo
