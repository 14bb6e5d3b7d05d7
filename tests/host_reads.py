"""Counting device→host reads on the CPU, as if the CPU were an accelerator.

On a GPU, every read of a value the device computed (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``,
``.numpy()``, a blocking ``.cpu()``) makes the host wait for the device's queue: ``torch.cuda.set_sync_debug_mode``
catches them there. On the CPU nothing waits, so the reads are counted instead: :class:`DeviceReads` marks every
tensor the training computes as *on the device* — the module's parameters and buffers, the optimizer's state, the
batch as the model receives it (:meth:`DeviceReads.on_device`), and anything an operation makes from such a tensor —
and counts each read of one. (A tensor a factory makes from nothing, ``torch.zeros(..., device=...)``, is not
marked: at the dispatcher a host default and a device meant for training look the same; the GPU check sees those.) A
copy to the CPU (``.to("cpu", copy=True)``, ``non_blocking``) is on the host, as its counterpart on a GPU is (its
later reads wait for nothing). Reads are counted under the label of the innermost :meth:`DeviceReads.labelled` block
(``"elsewhere"`` outside any).
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

READS = {
    torch.ops.aten._local_scalar_dense.default,  # .item(), float(t), int(t)
    torch.ops.aten.is_nonzero.default,  # bool(t)
    torch.ops.aten.equal.default,  # torch.equal
}


class DeviceReads(TorchDispatchMode):
    """Counts reads of on-device tensors, by label (see the module)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()
        self.where: Counter[str] = Counter()  # label: what read it (the method names), for a failing test's message
        self._device: dict[int, weakref.ref] = {}  # id -> the tensor (by identity: == is elementwise)
        self._labels: list[str] = ["elsewhere"]
        self._patched: list[tuple[Any, str, Any]] = []
        self.counting = True  # False: reads outside a labelled block are no longer counted (a loop's teardown)

    # -- marking ------------------------------------------------------------------------------------------------

    def on_device(self, *objects: Any) -> None:
        """Mark every tensor in ``objects`` (modules, optimizers, nests of tensors) as on the device."""
        for obj in objects:
            if isinstance(obj, torch.nn.Module):
                self.on_device(*obj.parameters(), *obj.buffers())
            elif isinstance(obj, torch.optim.Optimizer):
                self.on_device(*(v for s in obj.state.values() for v in s.values()))
            else:
                for leaf in tree_flatten(obj)[0]:
                    if isinstance(leaf, torch.Tensor):
                        self._mark(leaf)

    def _mark(self, tensor: torch.Tensor) -> None:
        key = id(tensor)  # dropped when the tensor dies, before its id can be reused
        self._device[key] = weakref.ref(tensor, lambda _, key=key: self._device.pop(key, None))

    def is_on_device(self, tensor: torch.Tensor) -> bool:
        ref = self._device.get(id(tensor))
        return ref is not None and ref() is tensor

    @contextlib.contextmanager
    def labelled(self, label: str) -> Iterator[None]:
        self._labels.append(label)
        try:
            yield
        finally:
            self._labels.pop()

    def _read(self, what: str) -> None:
        label = self._labels[-1]
        if not self.counting and label == "elsewhere":
            return
        self.reads[label] += 1
        self.where[f"{label}: {what} at {_caller()}"] += 1

    # -- the dispatch mode -----------------------------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        from_device = any(self.is_on_device(t) for t in inputs)
        if func in READS and from_device:
            self._read(func.__name__)
        out = func(*args, **kwargs)
        to_host = func is torch.ops.aten._to_copy.default and str(kwargs.get("device", "")) == "cpu"
        if from_device and not to_host:
            for leaf in tree_flatten(out)[0]:
                if isinstance(leaf, torch.Tensor):
                    self._mark(leaf)
        return out

    def __enter__(self):
        for name in ("tolist", "numpy", "cpu"):
            original = getattr(torch.Tensor, name)
            self._patched.append((torch.Tensor, name, original))
            setattr(torch.Tensor, name, self._reading(name, original))
        return super().__enter__()

    def __exit__(self, *exc):
        for owner, name, original in self._patched:
            setattr(owner, name, original)
        self._patched = []
        return super().__exit__(*exc)

    def _reading(self, name: str, original: Any) -> Any:
        mode = self

        def read(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if mode.is_on_device(tensor):
                mode._read(name)
            return original(tensor, *args, **kwargs)

        return read


def _caller() -> str:
    """The innermost frame of seqstab or Lightning that read (what a failing test's message names)."""
    import traceback

    for frame in reversed(traceback.extract_stack()[:-3]):
        if ("seqstab" in frame.filename or "lightning" in frame.filename) and "host_reads" not in frame.filename:
            return (
                f"{frame.filename.rsplit('/', 2)[-2]}/{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.name}"
            )
    return "?"
