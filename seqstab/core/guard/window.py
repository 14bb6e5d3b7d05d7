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

    The values sit oldest first at the back of a ``(size, ...)`` tensor, empty slots (NaN) at the front: admitting
    one shifts them (a ``cat`` and a ``where``); the median sorts them (NaN last) and averages the middle one or two,
    looked up for the count held in a small table.

    Args:
        size: How many of the most recent admitted values count.
        width: Admit vectors of this length (one median per component); None: scalars.
    """

    def __init__(self, size: int, width: int | None = None):
        self.size = size
        self.width = width
        self._values: torch.Tensor | None = None  # (size,) or (size, width) float64: NaN (empty), then oldest first
        self._count: torch.Tensor | None = None  # values held, <= size
        self._middle: torch.Tensor | None = None  # (size + 1, 2): the middle one or two of n sorted values

    def _ready(self, device: torch.device) -> None:
        if self._values is None:
            shape = (self.size,) if self.width is None else (self.size, self.width)
            self._values = torch.full(shape, torch.nan, dtype=torch.float64, device=device)
            self._count = torch.zeros((), dtype=torch.long, device=device)
        elif self._values.device != device:
            self._values, self._count = self._values.to(device), self._count.to(device)
        if self._middle is None or self._middle.device != device:
            n = torch.arange(self.size + 1)
            middle = torch.stack([((n - 1) // 2).clamp(min=0), (n // 2).clamp(max=self.size - 1)], dim=1)
            self._middle = middle.to(device)

    def median(self, min_history: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(known, median)``: whether ``min_history`` values are held, and their median (NaN while none are)."""
        self._ready(device or torch.device("cpu"))
        ordered = torch.sort(self._values, dim=0).values  # NaN (empty slots) last
        middle = self._middle.index_select(0, self._count.reshape(1)).reshape(2)  # no host read of the count
        median = ordered.index_select(0, middle).sum(dim=0) / 2  # (x + x) / 2 == x
        return self._count >= min_history, median

    def admit(self, value: torch.Tensor, admitted: torch.Tensor) -> None:
        """Add ``value`` (float64, 0-dim or ``(width,)``) where ``admitted`` (0-dim bool) holds: everything shifts one
        slot towards the front, dropping an empty slot (NaN, at the front) or, in a full ring, the oldest value."""
        self._ready(value.device)
        shifted = torch.cat([self._values[1:], value.reshape(1, *self._values.shape[1:])])
        self._values = torch.where(admitted, shifted, self._values)
        self._count = torch.clamp(self._count + admitted.long(), max=self.size)

    def tolist(self) -> list:
        """The values held, oldest first (one host read: for a checkpoint)."""
        if self._values is None:
            return []
        return self._values[self.size - int(self._count) :].tolist()

    def load(self, values: list, device: torch.device | None = None) -> None:
        """Hold ``values`` (oldest first; the last ``size`` of them)."""
        values = [v if isinstance(v, list) else float(v) for v in values][-self.size :]
        self._values = None
        self._ready(device or torch.device("cpu"))
        if values:
            held = torch.tensor(values, dtype=torch.float64)
            self._values[self.size - len(values) :] = held.reshape(len(values), *self._values.shape[1:])
        self._count.fill_(len(values))


class RunningRate:
    """The fraction of true values among the last ``size`` recorded, on the device (a shift register, as
    :class:`RunningMedian`'s).

    Args:
        size: How many of the most recent values count.
    """

    def __init__(self, size: int):
        self.size = size
        self._flags: torch.Tensor | None = None  # (size,) bool, oldest first at the back
        self._count: torch.Tensor | None = None

    def _ready(self, device: torch.device) -> None:
        if self._flags is None:
            self._flags = torch.zeros((self.size,), dtype=torch.bool, device=device)
            self._count = torch.zeros((), dtype=torch.long, device=device)
        elif self._flags.device != device:
            self._flags, self._count = self._flags.to(device), self._count.to(device)

    def record(self, flag: torch.Tensor, recorded: torch.Tensor) -> None:
        """Add ``flag`` where ``recorded`` holds (0-dim bools)."""
        self._ready(flag.device)
        self._flags = torch.where(recorded, torch.cat([self._flags[1:], flag.reshape(1)]), self._flags)
        self._count = torch.clamp(self._count + recorded.long(), max=self.size)

    def rate(self) -> torch.Tensor:
        """The fraction of true values held (0 while none are), float64."""
        if self._flags is None:
            return torch.zeros((), dtype=torch.float64)
        return self._flags.sum().double() / self._count.clamp(min=1).double()

    def tolist(self) -> list[bool]:
        if self._flags is None:
            return []
        return self._flags[self.size - int(self._count) :].tolist()

    def load(self, flags: list[bool], device: torch.device | None = None) -> None:
        flags = [bool(f) for f in flags][-self.size :]
        self._flags = None
        self._ready(device or torch.device("cpu"))
        if flags:
            self._flags[self.size - len(flags) :] = torch.tensor(flags)
        self._count.fill_(len(flags))
