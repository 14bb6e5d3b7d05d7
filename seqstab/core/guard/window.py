"""The guard's memory of recent updates, kept on the training device so that deciding costs no host sync.

:class:`RunningMedian` holds the last ``size`` admitted values (finite, non-zero pre-clip norms) in a ring and gives
their median: the middle value, or the mean of the middle two, in float64 — the same number the host's sorted list
gave, bit for bit (``(x + x) / 2 == x`` exactly for an odd count). :class:`RunningRate` holds the last ``size``
booleans and gives the fraction that are true (``grad/spike_score``). Both update with masks (``torch.where``),
never with a Python branch on a device value, and read back to plain lists only for a checkpoint.

>>> window = RunningMedian(4)
>>> for norm in (3.0, 1.0, 2.0, 10.0):
...     window.admit(torch.tensor(norm, dtype=torch.float64), torch.tensor(True))
>>> window.median(min_history=2)[1].item()
2.5
"""

from __future__ import annotations

import torch

__all__ = ["RunningMedian", "RunningRate"]


class RunningMedian:
    """The median of the last ``size`` admitted values (or vectors: the median of each component), on the device.

    Args:
        size: How many of the most recent admitted values count.
        width: Admit vectors of this length (one median per component); None: scalars.
    """

    def __init__(self, size: int, width: int | None = None):
        self.size = size
        self.width = width
        self._values: torch.Tensor | None = None  # (size,) or (size, width) float64 ring, NaN where empty
        self._next: torch.Tensor | None = None  # slot of the next admitted value
        self._count: torch.Tensor | None = None  # values held, <= size

    def _ready(self, device: torch.device) -> None:
        if self._values is None:
            shape = (self.size,) if self.width is None else (self.size, self.width)
            self._values = torch.full(shape, torch.nan, dtype=torch.float64, device=device)
            self._next = torch.zeros((), dtype=torch.long, device=device)
            self._count = torch.zeros((), dtype=torch.long, device=device)
        elif self._values.device != device:
            self._values, self._next, self._count = (t.to(device) for t in (self._values, self._next, self._count))

    def median(self, min_history: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(known, median)``: whether ``min_history`` values are held, and their median (NaN while none are)."""
        self._ready(device or torch.device("cpu"))
        ordered = torch.sort(self._values, dim=0).values  # NaN (empty slots) last
        n = self._count
        middle = torch.stack([((n - 1) // 2).clamp(min=0), n // 2]).clamp(max=self.size - 1)  # the middle one or two
        median = ordered.index_select(0, middle).sum(dim=0) / 2
        return n >= min_history, median

    def admit(self, value: torch.Tensor, admitted: torch.Tensor) -> None:
        """Add ``value`` (float64, 0-dim or ``(width,)``) where ``admitted`` (0-dim bool) holds; the oldest value
        leaves a full ring."""
        self._ready(value.device)
        slot = self._next.reshape(1)
        current = self._values.index_select(0, slot)
        self._values.index_copy_(0, slot, torch.where(admitted, value.reshape(current.shape), current))
        step = admitted.long()
        self._next = (self._next + step) % self.size
        self._count = torch.clamp(self._count + step, max=self.size)

    def tolist(self) -> list[float]:
        """The values held, oldest first (one host read: for a checkpoint)."""
        if self._values is None:
            return []
        count, start = int(self._count), int(self._next)
        ordered = torch.roll(self._values, -start) if count == self.size else self._values[:count]
        return ordered.tolist()

    def load(self, values: list[float], device: torch.device | None = None) -> None:
        """Hold ``values`` (oldest first; the last ``size`` of them)."""
        values = [v if isinstance(v, list) else float(v) for v in values][-self.size :]
        self._values = None
        self._ready(device or torch.device("cpu"))
        if values:
            self._values[: len(values)] = torch.tensor(values, dtype=torch.float64).reshape(
                len(values), *self._values.shape[1:]
            )
        self._next.fill_(len(values) % self.size)
        self._count.fill_(len(values))


class RunningRate:
    """The fraction of true values among the last ``size`` recorded, on the device.

    Args:
        size: How many of the most recent values count.
    """

    def __init__(self, size: int):
        self.size = size
        self._flags: torch.Tensor | None = None  # (size,) bool ring
        self._next: torch.Tensor | None = None
        self._count: torch.Tensor | None = None

    def _ready(self, device: torch.device) -> None:
        if self._flags is None:
            self._flags = torch.zeros((self.size,), dtype=torch.bool, device=device)
            self._next = torch.zeros((), dtype=torch.long, device=device)
            self._count = torch.zeros((), dtype=torch.long, device=device)
        elif self._flags.device != device:
            self._flags, self._next, self._count = (t.to(device) for t in (self._flags, self._next, self._count))

    def record(self, flag: torch.Tensor, recorded: torch.Tensor) -> None:
        """Add ``flag`` where ``recorded`` holds (0-dim bools)."""
        self._ready(flag.device)
        slot = self._next.reshape(1)
        self._flags.index_copy_(
            0, slot, torch.where(recorded, flag, self._flags.index_select(0, slot).squeeze(0)).reshape(1)
        )
        step = recorded.long()
        self._next = (self._next + step) % self.size
        self._count = torch.clamp(self._count + step, max=self.size)

    def rate(self) -> torch.Tensor:
        """The fraction of true values held (0 while none are), float64."""
        if self._flags is None:
            return torch.zeros((), dtype=torch.float64)
        return self._flags.sum().double() / self._count.clamp(min=1).double()

    def tolist(self) -> list[bool]:
        if self._flags is None:
            return []
        count, start = int(self._count), int(self._next)
        ordered = torch.roll(self._flags, -start) if count == self.size else self._flags[:count]
        return ordered.tolist()

    def load(self, flags: list[bool], device: torch.device | None = None) -> None:
        flags = [bool(f) for f in flags][-self.size :]
        self._flags = None
        self._ready(device or torch.device("cpu"))
        if flags:
            self._flags[: len(flags)] = torch.tensor(flags)
        self._next.fill_(len(flags) % self.size)
        self._count.fill_(len(flags))
