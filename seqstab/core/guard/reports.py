"""The guard's event rule on the host, at the flush: for a guard whose events change nothing on the device.

Under ``policy="warn"`` without a snapshot, an event (a spike, a norm over ``max_norm``) is only reported: the
update is applied all the same, and nothing is kept for it before the step. What the device must decide before the
step is only whether the norm is finite (and the ``max_consecutive_skips`` stop). The rest of the rule — the running
median, the recent level, the spike test, the event count, ``grad/spike_score`` — needs nothing but the sequence of
pre-clip norms, which the flush reads back anyway; :class:`HostRule` runs it there, one update at a time in update
order, with Python floats. That replaces ~35 small device operations an update (the windows' shifts and three
``nanmedian``) with a few microseconds of host work at the flush, for the guard every task and the callback use by
default.

The values are the device rule's bit for bit: the windows hold the same float64 norms (the float32 norm, widened),
the median is the mean of the two middle values as :class:`~seqstab.core.guard.window.RunningMedian` computes it
(``(a + b) / 2``, and ``a - (-b) == a + b`` exactly), the spike threshold the same IEEE product, the score the same
quotient. ``tests/test_guard_rule.py`` holds both against one plain reference of the rule.

>>> rule = HostRule(spike_factor=10.0, window=4, min_history=2, max_norm=None, spike_score=False)
>>> [rule.judge(norm, live=True, amp=False)[0] for norm in (1.0, 2.0, 1.5, 40.0)]
[None, None, None, 'spike']
>>> rule.events, rule.norms()
(1, [1.0, 2.0, 1.5, 40.0])
"""

from __future__ import annotations

import bisect
import copy
import math
from collections import deque
from typing import Any

import torch

from seqstab.core.guard.verdict import REASONS, Verdict

__all__ = ["HostRule", "action_code", "finite_only"]


class Window:
    """The last ``size`` values added (finite, positive floats), oldest first, and the same values sorted."""

    def __init__(self, size: int):
        self.values: deque[float] = deque(maxlen=size)
        self.ordered: list[float] = []

    def add(self, value: float) -> None:
        if len(self.values) == self.values.maxlen:
            del self.ordered[bisect.bisect_left(self.ordered, self.values[0])]
        self.values.append(value)
        bisect.insort(self.ordered, value)

    def lower(self) -> float:
        """The lower middle value (``torch.nanmedian``'s), NaN while none is held."""
        return self.ordered[(len(self.ordered) - 1) // 2] if self.ordered else math.nan

    def median(self) -> float:
        """The middle value, or the mean of the middle two; NaN while none is held."""
        if not self.ordered:
            return math.nan
        return (self.ordered[(len(self.ordered) - 1) // 2] + self.ordered[len(self.ordered) // 2]) / 2

    def load(self, values: list[float]) -> None:
        self.values.clear()
        self.ordered.clear()
        for value in values[-self.values.maxlen :]:
            self.add(float(value))


class HostRule:
    """The spike rule of :class:`~seqstab.core.guard.ExplosionGuard` with its windows on the host.

    Args:
        spike_factor, window, min_history, max_norm: The guard's.
        spike_score: Keep the spike test of the last ``window`` updates (``grad/spike_score``).
    """

    def __init__(
        self,
        spike_factor: float | None,
        window: int,
        min_history: int,
        max_norm: float | None,
        spike_score: bool,
    ):
        self.spike_factor, self.max_norm, self.min_history = spike_factor, max_norm, min_history
        self._norms = Window(window)  # the last `window` finite, non-zero norms counted
        self._recent = Window(min_history)  # the last `min_history` of them that were no event
        self._spikes: deque[bool] | None = deque(maxlen=window) if spike_score else None
        self.events = 0

    def judge(self, norm: float, live: bool, amp: bool) -> tuple[str | None, float, float | None]:
        """Why the update with pre-clip ``norm`` (the float32 value, as a float) is an event (None: it is not; or
        ``overflow``: AMP's, no event), the running median it met (NaN before ``min_history`` norms) and
        ``grad/spike_score`` (None without it); then admits it. ``live``: no stop was decided before it."""
        finite = math.isfinite(norm)
        counted = live and finite if amp else live
        known = len(self._norms.values) >= self.min_history
        median = self._norms.median() if known else math.nan
        above = False
        if self.spike_factor is not None and known:
            level = self._recent.lower()  # fmax: a NaN level (none held) leaves the median
            baseline = median if math.isnan(level) else max(median, level)
            above = norm > self.spike_factor * baseline
        reason = None if finite else "non-finite"
        if finite and counted and above:
            reason = "spike"
        if finite and counted and self.max_norm is not None and norm > self.max_norm:
            reason = "max_norm"
        if amp and live and not finite:
            reason = "overflow"  # the GradScaler's: withheld, no event
        elif not counted:
            reason = None  # not live: after a stop, no more events
        event = reason is not None and reason != "overflow"
        if self._spikes is not None and counted:
            self._spikes.append(not finite or above)
        if finite and counted and norm > 0:
            self._norms.add(norm)
            if not event:
                self._recent.add(norm)
        self.events += event
        score = None if self._spikes is None else sum(self._spikes) / max(len(self._spikes), 1)
        return reason, median, score

    def fill(self, values: dict[str, float], read: dict[str, Any], live: bool) -> None:
        """:meth:`judge` at the flush, on an update's ``values`` read back (the float32 ``grad/norm_total``; under
        AMP, ``amp/overflow``), or on ``read``'s ``norm`` and ``amp`` where it holds them: the reason's code and the
        median into ``read``, ``explosion/events`` (and ``grad/spike_score``) into ``values`` — where the device's
        verdict puts them for every other guard."""
        norm = read.get("norm", values["grad/norm_total"])
        reason, median, score = self.judge(norm, live, read.get("amp", "amp/overflow" in values))
        read["reason"], read["median"] = REASONS.index(reason), None if math.isnan(median) else median
        values["explosion/events"] = float(self.events)
        if score is not None:
            values["grad/spike_score"] = score

    def detect(self, norm: float) -> tuple[str | None, float | None]:
        """:meth:`ExplosionGuard.detect`: why ``norm`` would be an event now, and the median it would meet; changes
        nothing (:meth:`judge` on a copy: one rule)."""
        reason, median, _ = copy.deepcopy(self).judge(norm, live=True, amp=False)
        return reason, None if math.isnan(median) else median

    # -- checkpoint: the lists ExplosionGuard.state_dict always held ---------------------------------------------

    def norms(self) -> list[float]:
        return list(self._norms.values)

    def recent(self) -> list[float]:
        return list(self._recent.values)

    def spikes(self) -> list[bool]:
        return [] if self._spikes is None else list(self._spikes)

    def load(self, norms: list[float], recent: list[float], spikes: list[bool], events: int) -> None:
        self._norms.load(norms)
        self._recent.load(recent)
        if self._spikes is not None:
            self._spikes.clear()
            self._spikes.extend(bool(s) for s in spikes[-self._spikes.maxlen :])
        self.events = events


def finite_only(
    finite: torch.Tensor, skipped: torch.Tensor, limit: int | None, zero: torch.Tensor
) -> tuple[Verdict, torch.Tensor]:
    """What the device decides for a guard whose rule runs here: the update is applied where its pre-clip norm is
    finite (``finite``: 0-dim bool, the clip's test where it made one), until the ``limit``-th
    (``max_consecutive_skips``) withheld update in a row stops the run. Returns the verdict (``apply``, and the
    count of updates withheld in a row, this one included, from which the host reads the action at the flush:
    :func:`action_code`) and the new count (``skipped``: 0-dim long, the whole state: nothing else stops such a
    guard, so it has stopped once the count reached the limit, and every update after is withheld). 4 kernels, none
    without a limit; ``zero``: a 0-dim long 0 on the device (made once)."""
    if limit is None:
        return Verdict(apply=finite), skipped
    apply = finite & (skipped < limit)
    skipped = torch.where(apply, zero, skipped + 1)
    return Verdict(apply=apply, skipped=skipped), skipped


def action_code(read: dict[str, Any], norm: float, limit: int | None) -> int:
    """The action (an index into ``ACTIONS``) of :func:`finite_only`'s verdict, on the host at the flush: from
    the count read back (0: step; the ``limit``-th in a row: stop; else skip), or without a limit from the pre-clip
    ``norm`` read back (finite: step)."""
    if limit is None:
        return 0 if math.isfinite(norm) else 1
    skipped = int(read["skipped"])
    return 0 if skipped == 0 else 2 if skipped == limit else 1
