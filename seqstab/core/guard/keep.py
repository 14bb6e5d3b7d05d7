"""What the first event's replay snapshot needs, kept on the device until the flush writes it.

The guard decides on the device and the host reads the decision up to ``log_every_n_steps`` updates later, by
which time the weights and the optimizer state have moved on. While a snapshot is due, :class:`EventCopy` keeps a
copy of the module's state dict and the optimizer's state tensors, refreshed at every update with a select that
keeps the copy of the first flagged update (``torch.where(take, now, kept)``: no host sync). Memory: one more copy
of the model and its optimizer state; time: one select over them per update, until the snapshot is written.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from seqstab.core.record import Run

__all__ = ["EventCopy"]


class EventCopy:
    """The module's and the optimizer's state at the first update flagged since :meth:`keep` began."""

    def __init__(self) -> None:
        self._names: list[str] = []  # state-dict keys of the kept module tensors
        self._module: list[torch.Tensor] = []
        self._layout: list[tuple[int, str]] = []  # (param index, state key) of the kept optimizer tensors
        self._optimizer: list[torch.Tensor] = []
        self._plain: dict[int, dict[str, Any] | None] = {}  # update -> the optimizer state's non-tensor parts
        self._taken: torch.Tensor | None = None  # bool: the copy holds a flagged update

    def keep(self, run: Run, flagged: torch.Tensor, step: int) -> None:
        """Before the step of update ``step``, whose event flag is ``flagged`` (0-dim bool): keep its state if it is
        the first flagged one. (The optimizer's state only changes layout at a step decided on the host, after a
        flush: a copy is never dropped while it may hold an event the host has not read.)"""
        module_state = {k: v for k, v in run.module.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)}
        optimizer = run.optimizer
        layout, tensors, plain = [], [], None
        if optimizer is not None:
            state = optimizer.state_dict()
            for index, entry in state["state"].items():
                for key, value in entry.items():
                    if isinstance(value, torch.Tensor):
                        layout.append((index, key))
                        tensors.append(value)
            plain = {"param_groups": copy.deepcopy(state["param_groups"]), "state": {
                i: {k: copy.deepcopy(v) for k, v in e.items() if not isinstance(v, torch.Tensor)}
                for i, e in state["state"].items()}}  # fmt: skip
        now = [t.detach() for t in module_state.values()] + [t.detach() for t in tensors]
        self._plain[step] = plain
        if self._taken is None or list(module_state) != self._names or layout != self._layout:
            self._names, self._layout = list(module_state), layout
            self._module = [t.clone() for t in now[: len(module_state)]]
            self._optimizer = [t.clone() for t in now[len(module_state) :]]
            self._taken = flagged.clone()
            return
        take = flagged & ~self._taken
        for kept, tensor in zip(self._module + self._optimizer, now, strict=True):
            torch.where(take, tensor, kept, out=kept)
        self._taken = self._taken | flagged

    def state(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
        """``(module state dict, optimizer state dict)`` as kept for update ``step`` (host copies; called at the flush
        that writes the snapshot)."""
        module = {name: t.detach().cpu().clone() for name, t in zip(self._names, self._module, strict=True)}
        plain = self._plain.get(step)
        if plain is None:
            return module, None
        optimizer = copy.deepcopy(plain)
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
        """The updates up to ``through`` are flushed without a snapshot: their optimizer layouts are not needed."""
        for step in [s for s in self._plain if s <= through]:
            del self._plain[step]

    def release(self) -> None:
        """The snapshot is written: drop the copy (and stop keeping)."""
        self.__init__()
