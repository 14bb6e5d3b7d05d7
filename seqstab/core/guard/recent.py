"""The recent level of the guard's spike rule, kept on the training device (a companion of
:mod:`~seqstab.core.guard.window`).

A norm is a spike when it exceeds ``spike_factor`` times the running median of the window *and* times the recent
level: the median of the last few norms that were not events. A norm that climbs smoothly, as it does out of
warm-up, stays near its recent level however far it rises above the window's median; a jump does not.

>>> level = RecentLevel(3)
>>> for norm in (1.0, 2.0, 4.0, 8.0):
...     level.admit(torch.tensor(norm, dtype=torch.float64), torch.tensor(True))
>>> level.level(torch.device("cpu")).item(), level.tolist()
(4.0, [2.0, 4.0, 8.0])
"""

from __future__ import annotations

import math

import torch

from seqstab.core.guard.window import lower_median

__all__ = ["RecentLevel"]


class RecentLevel:
    """The recent level of the spike rule: the median of the last ``size`` admitted norms (the lower middle one of an
    even count), NaN while none is held. A shift register like :class:`RunningMedian`'s, without its count: admitting
    is a ``cat`` and a ``where``, the level one ``nanmedian`` (empty slots are NaN)."""

    def __init__(self, size: int):
        self.size = size
        self._values: torch.Tensor | None = None  # (size,) float64: NaN (empty), then oldest first

    def _ready(self, device: torch.device) -> torch.Tensor:
        if self._values is None:
            self._values = torch.full((self.size,), torch.nan, dtype=torch.float64, device=device)
        elif self._values.device != device:
            self._values = self._values.to(device)
        return self._values

    def level(self, device: torch.device) -> torch.Tensor:
        return lower_median(self._ready(device))

    def baseline(self, median: torch.Tensor, device: torch.device) -> torch.Tensor:
        """What a norm must exceed ``spike_factor`` times to be a spike: the larger of the window's ``median`` and
        this level (``fmax``: a NaN level, none held yet, is ignored)."""
        return torch.fmax(median, self.level(device))

    def admit(self, value: torch.Tensor, admitted: torch.Tensor) -> None:
        values = self._ready(value.device)
        self._values = torch.where(admitted, torch.cat([values[1:], value.reshape(1)]), values)

    def tolist(self) -> list[float]:
        """The norms held, oldest first (a host read: for a checkpoint)."""
        return [] if self._values is None else [v for v in self._values.tolist() if not math.isnan(v)]

    def load(self, values: list[float]) -> None:
        values = [float(v) for v in values][-self.size :]
        self._values = None
        held = self._ready(torch.device("cpu"))
        if values:
            held[self.size - len(values) :] = torch.tensor(values, dtype=torch.float64)
