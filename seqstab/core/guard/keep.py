"""What the first event's replay snapshot needs, kept on the device until the flush writes it.

The guard decides on the device and the host reads the decision up to ``log_every_n_steps`` updates later, by
which time the weights and the optimizer state have moved on. While a snapshot is due, :class:`EventCopy` keeps a
copy of the module's state dict and the optimizer's state tensors, refreshed at every update with a select that
keeps the copy of the first flagged update (``torch.where(take, now, kept)``: no host sync). Memory: one more copy
of the model and its optimizer state; time: one select per tensor, until the snapshot is written. The host's part
is kept small: the module's tensors are listed once and again at each flush (a module does not swap its tensors
between two flushes), the optimizer's walked from its ``state`` (no ``state_dict()``, no deep copy) at each update.
"""

from __future__ import annotations

from typing import Any

import torch

from seqstab.core.record import Run

__all__ = ["EventCopy"]


class EventCopy:
    """The module's and the optimizer's state at the first update flagged since :meth:`keep` began."""

    def __init__(self) -> None:
        self._module_of: Any = None  # the module whose tensors _listed holds
        self._listed: list[tuple[str, torch.Tensor]] = []  # its state dict's tensors (keep_vars), listed at a flush
        self._detached: list[torch.Tensor] = []
        self._names: list[str] = []  # state-dict keys of the kept module tensors
        self._module: list[torch.Tensor] = []
        self._layout: list[tuple[int, str]] = []  # (param index, state key) of the kept optimizer tensors
        self._sources: list[torch.Tensor] = []  # the live tensors the copies follow (module's, then optimizer's)
        self._optimizer: list[torch.Tensor] = []
        self._plain: dict[int, dict[str, Any] | None] = {}  # update -> the optimizer state's non-tensor parts
        self._taken: torch.Tensor | None = None  # bool: the copy holds a flagged update

    def keep(self, run: Run, flagged: torch.Tensor, step: int) -> None:
        """Before the step of update ``step``, whose event flag is ``flagged`` (0-dim bool): keep its state if it is
        the first flagged one. (The optimizer's state only changes layout at a step decided on the host, after a
        flush: a copy is never dropped while it may hold an event the host has not read.)"""
        if self._module_of is not run.module:
            self._list(run.module)
        optimizer = getattr(run.optimizer, "optimizer", run.optimizer)
        layout, tensors, plain = _optimizer_tensors(optimizer)
        now = [t for _, t in self._listed] + tensors
        self._plain[step] = plain
        if self._taken is None or layout != self._layout or any(
            a is not b for a, b in zip(now, self._sources, strict=False)
        ) or len(now) != len(self._sources):  # fmt: skip
            self._names, self._layout, self._sources = [name for name, _ in self._listed], layout, now
            self._module = [t.detach().clone() for _, t in self._listed]
            self._optimizer = [t.detach().clone() for t in tensors]
            self._taken = flagged.clone()
            return
        take = flagged & ~self._taken
        for kept, tensor in zip(self._module + self._optimizer, self._detached + tensors, strict=True):
            torch.where(take, tensor, kept, out=kept)
        self._taken = self._taken | flagged

    def _list(self, module: torch.nn.Module) -> None:
        self._module_of = module
        self._listed = [(k, v) for k, v in module.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)]
        self._detached = [v.detach() for _, v in self._listed]  # views of the same storage: the step shows in them

    def state(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
        """``(module state dict, optimizer state dict)`` as kept for update ``step`` (host copies; called at the flush
        that writes the snapshot). The optimizer's is laid out as ``Optimizer.state_dict()`` lays it out."""
        module = {name: t.detach().cpu().clone() for name, t in zip(self._names, self._module, strict=True)}
        plain = self._plain.get(step)
        if plain is None:
            return module, None
        optimizer = {
            "state": {i: dict(values) for i, values in plain["state"].items()},
            "param_groups": [dict(group) for group in plain["param_groups"]],
        }
        for (index, key), tensor in zip(self._layout, self._optimizer, strict=True):
            optimizer["state"].setdefault(index, {})[key] = tensor.detach().cpu().clone()
        return module, optimizer

    def holds(self) -> bool:
        return bool(self._names)

    def load_into(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Put the kept weights into ``module`` (for measuring at the event); returns what it held, to put back."""
        held = {name: t.detach().clone() for name, t in module.state_dict().items()}
        module.load_state_dict(dict(zip(self._names, self._module, strict=True)), strict=False)
        return held

    def forget(self, through: int) -> None:
        """The updates up to ``through`` are flushed without a snapshot: their optimizer layouts are not needed, and
        the module's tensors are listed again (in case it swapped one)."""
        for step in [s for s in self._plain if s <= through]:
            del self._plain[step]
        if self._module_of is not None:
            self._list(self._module_of)

    def release(self) -> None:
        """The snapshot is written: drop the copy (and stop keeping)."""
        self.__init__()


def _optimizer_tensors(optimizer: Any) -> tuple[list[tuple[int, str]], list[torch.Tensor], dict[str, Any] | None]:
    """``(layout, tensors, plain)`` of ``optimizer``'s state, indexed as ``Optimizer.state_dict()`` indexes it (the
    parameters numbered across the groups in order): ``(index, key)`` and the tensor of each state tensor, and the
    rest (the groups' settings, the state's non-tensor values) as a state dict without tensors."""
    if optimizer is None:
        return [], [], None
    layout, tensors, state, groups = [], [], {}, []
    index = 0
    for group in optimizer.param_groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        settings["params"] = list(range(index, index + len(group["params"])))
        groups.append(settings)
        for p in group["params"]:
            entry = optimizer.state.get(p)  # .get: state is a defaultdict
            if entry:
                state[index] = {}
                for key, value in entry.items():
                    if isinstance(value, torch.Tensor):
                        layout.append((index, key))
                        tensors.append(value)
                    else:
                        state[index][key] = value
            index += 1
    return layout, tensors, {"state": state, "param_groups": groups}
