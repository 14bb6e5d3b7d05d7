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
    one shifts them (a ``cat`` and a ``where``); the median is the mean of the lower and the upper middle value
    (two ``nanmedian``, of the values and of their negation), and no count is kept: the empty slots say it.

    Args:
        size: How many of the most recent admitted values count.
        width: Admit vectors of this length (one median per component); None: scalars.
    """

    def __init__(self, size: int, width: int | None = None):
        self.size = size
        self.width = width
        self._values: torch.Tensor | None = None  # (size,) or (size, width) float64: NaN (empty), then oldest first

    def _ready(self, device: torch.device) -> None:
        if self._values is None:
            shape = (self.size,) if self.width is None else (self.size, self.width)
            self._values = torch.full(shape, torch.nan, dtype=torch.float64, device=device)
        elif self._values.device != device:
            self._values = self._values.to(device)

    def median(self, min_history: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(known, median)``: whether ``min_history`` values are held, and their median (NaN while none are)."""
        self._ready(device or torch.device("cpu"))
        values = self._values
        # the lower middle value, and the upper one (the lower middle of the negated values): (a + b) / 2, exactly
        # the sorted list's median; for an odd count both are the middle one, and (x + x) / 2 == x
        lower, upper = lower_median(values), lower_median(-values)
        slot = values[self.size - min_history] if self.width is None else values[self.size - min_history, 0]
        known = slot == slot  # the slot min_history from the back is held (not NaN): as many values are
        return known, (lower - upper) / 2

    def admit(self, value: torch.Tensor, admitted: torch.Tensor) -> None:
        """Add ``value`` (float64, 0-dim or ``(width,)``; never NaN, which marks an empty slot) where ``admitted``
        (0-dim bool) holds: everything shifts one slot towards the front, dropping an empty slot (at the front) or, in
        a full ring, the oldest value."""
        self._ready(value.device)
        shifted = torch.cat([self._values[1:], value.reshape(1, *self._values.shape[1:])])
        self._values = torch.where(admitted, shifted, self._values)

    def tolist(self) -> list:
        """The values held, oldest first (one host read: for a checkpoint)."""
        if self._values is None:
            return []
        held = self._values if self.width is None else self._values[:, 0]
        return self._values[self.size - int((held == held).sum()) :].tolist()

    def load(self, values: list, device: torch.device | None = None) -> None:
        """Hold ``values`` (oldest first; the last ``size`` of them)."""
        values = [v if isinstance(v, list) else float(v) for v in values][-self.size :]
        self._values = None
        self._ready(device or torch.device("cpu"))
        if values:
            held = torch.tensor(values, dtype=torch.float64)
            self._values[self.size - len(values) :] = held.reshape(len(values), *self._values.shape[1:])


def lower_median(values: torch.Tensor) -> torch.Tensor:
    """The lower middle of the values that are not NaN (of each column of a ``(size, width)`` window): NaN where all
    are. Always along ``dim=0``, one kernel on a GPU; the whole-tensor ``nanmedian`` of some CUDA builds reads the
    NaN count back to the host."""
    return torch.nanmedian(values, dim=0).values


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
