"""The guard's rule, decided on the device, against a plain-Python reference of what its docstring says (hypothesis).

``ExplosionGuard.decide`` keeps its windows as device tensors and decides with masks, never a Python branch on a
device value; this file says the same rule with host floats, lists and ``if``s, one update at a time, and checks
that both give the same verdict — reason, the median the norm met, applied or not, the action, the event count and
the spike score — for every policy and setting, on norms that spike, vanish, overflow and go non-finite. A guard
whose events change nothing (``warn`` without a snapshot) decides only the action on the device and the rest at the
flush, on the host (:mod:`seqstab.core.guard.reports`): it is held to the same reference, through ``settle``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstab.core.clipping import ClipResult
from seqstab.core.guard import ExplosionGuard
from seqstab.core.guard.guard import ACTIONS, REASONS
from seqstab.core.record import Action, Update


@dataclass
class Reference:
    """The guard's rule on the host (the class docstring of :class:`ExplosionGuard`, said with lists)."""

    policy: str
    spike_factor: float | None
    window: int
    min_history: int
    max_norm: float | None
    max_consecutive_skips: int | None
    norms: list[float] = field(default_factory=list)  # the last `window` finite, non-zero norms counted
    recent: list[float] = field(default_factory=list)  # the last `min_history` of them that were no event
    spikes: list[bool] = field(default_factory=list)  # the spike test of the last `window` updates counted
    events: int = 0
    skipped: int = 0
    stopped: bool = False

    def decide(self, norm: float, amp: bool) -> dict:
        finite, live = math.isfinite(norm), not self.stopped
        overflow = amp and live and not finite  # under AMP a non-finite norm is the GradScaler's, no event
        counted = live and finite if amp else live
        known = len(self.norms) >= self.min_history
        median = _median(self.norms)
        level = sorted(self.recent)[(len(self.recent) - 1) // 2] if self.recent else math.nan  # the lower middle
        baseline = level if math.isnan(median) else median if math.isnan(level) else max(median, level)
        above = self.spike_factor is not None and known and norm > self.spike_factor * baseline
        reason = None if finite else "non-finite"
        if finite and counted and above:
            reason = "spike"
        if finite and counted and self.max_norm is not None and norm > self.max_norm:
            reason = "max_norm"
        if overflow:
            reason = "overflow"
        elif not counted and (amp or self.max_consecutive_skips is not None or self.policy == "stop"):
            reason = None  # after a stop: no more events
        event = reason not in (None, "overflow")
        if counted:
            self.spikes = [*self.spikes, not finite or above][-self.window :]
        if finite and counted and norm > 0:
            self.norms = [*self.norms, norm][-self.window :]
            if not event:
                self.recent = [*self.recent, norm][-self.min_history :]
        self.events += event
        applied = finite and live and (self.policy == "warn" or not event)
        stop = self.policy == "stop" and event
        if self.max_consecutive_skips is not None:
            self.skipped = 0 if applied else self.skipped + 1
            stop = stop or (live and self.skipped >= self.max_consecutive_skips)
        self.stopped = self.stopped or stop
        return {
            "reason": reason,
            "median": median if known else math.nan,
            "apply": applied,
            "action": Action.STOP if stop else Action.STEP if applied else Action.SKIP,
            "events": self.events,
            "spike_score": sum(self.spikes) / max(len(self.spikes), 1),
        }


def _median(values: list[float]) -> float:
    """The middle value, or the mean of the middle two (NaN for none)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2


NORMS = st.one_of(
    st.floats(0.5, 2.0),  # the usual level
    st.floats(0.0, 1e4),  # spikes, and norms above max_norm
    st.sampled_from([0.0, math.inf, -math.inf, math.nan, 3.4e38]),  # vanished, non-finite, the float32 edge
)


@settings(max_examples=600, deadline=None)
@given(
    policy=st.sampled_from(["warn", "skip", "stop", "reset_moments"]),
    spike_factor=st.sampled_from([None, 2.0, 10.0]),
    window=st.integers(1, 9),
    data=st.data(),
    max_norm=st.sampled_from([None, 5.0, 500.0]),
    max_consecutive_skips=st.sampled_from([None, 1, 3]),
    amp=st.booleans(),
    snapshot=st.booleans(),
    norms=st.lists(NORMS, min_size=1, max_size=40),
)
def test_the_device_verdict_is_the_rule_said_on_the_host(
    policy, spike_factor, window, data, max_norm, max_consecutive_skips, amp, snapshot, norms
):
    min_history = data.draw(st.integers(1, window), label="min_history")
    kwargs = dict(policy=policy, spike_factor=spike_factor, window=window, min_history=min_history, max_norm=max_norm)
    assert_the_rule(kwargs | dict(max_consecutive_skips=max_consecutive_skips), snapshot, amp, norms)


@pytest.mark.parametrize(("policy", "snapshot"), [("warn", False), ("warn", True), ("skip", False)])
def test_a_norm_at_the_spike_threshold_is_no_spike_and_one_float_above_is(policy, snapshot):
    """The threshold's edge, which random norms rarely hit: ``spike_factor`` × the baseline exactly is no spike, the
    next float32 above it is one (on the device, and in the host rule of a ``warn`` guard without a snapshot)."""
    edge = float(np.nextafter(np.float32(2.0), np.float32(3.0)))
    kwargs = dict(policy=policy, spike_factor=2.0, window=4, min_history=2, max_norm=None, max_consecutive_skips=None)
    assert assert_the_rule(kwargs, snapshot, False, [1.0, 1.0, 1.0, 2.0, edge]) == [None, None, None, None, "spike"]


def assert_the_rule(kwargs: dict, snapshot: bool, amp: bool, norms: list[float]) -> list[str | None]:
    """Each of ``norms`` through the guard and through :class:`Reference`: the same verdict at every update (the
    guard's device verdict, or its host rule through ``settle`` where it has one). Returns the reasons."""
    guard = ExplosionGuard(**kwargs, snapshot=snapshot, log_spike_score=True, diagnose=False, vanishing=None)
    reference, reasons = Reference(**kwargs), []
    for step, value in enumerate(norms):
        norm32 = torch.tensor(value, dtype=torch.float32)  # what the clip station hands over
        tensor_norms = torch.stack([norm32, torch.tensor(1.0)])
        clipped_by_norm = step % 2 and not value < 0  # a norm a clip measured (never negative): its finite test
        finite = norm32 < math.inf if clipped_by_norm else None  # scale_to's; None: the guard tests
        clip = ClipResult(norm32, norm32, torch.tensor(False), tensor_norms=tensor_norms, finite=finite)
        update = Update(step, None, None, clip, {})
        verdict = guard.decide(None, update, overflow_possible=amp)
        expected = reference.decide(float(np.float32(value)), amp)
        got = {"apply": bool(verdict.apply)}
        if verdict.reason is None:  # the host rule, as the flush runs it on the values read back
            assert kwargs["policy"] == "warn" and not snapshot and verdict.action is None
            update.values = {"grad/norm_total": float(np.float32(value))}
            if amp:
                update.values["amp/overflow"] = float(not math.isfinite(value))
            read = {} if verdict.skipped is None else {"skipped": float(verdict.skipped)}  # the action: from these
            guard.settle(None, update, read)
            median = math.nan if read["median"] is None else read["median"]
            got |= {"action": ACTIONS[read["action"]], "reason": REASONS[read["reason"]], "median": median}
            got |= {"events": int(update.values["explosion/events"]), "spike_score": update.values["grad/spike_score"]}
        else:
            assert not (kwargs["policy"] == "warn" and not snapshot)
            got |= {"action": ACTIONS[int(verdict.action)]}
            got |= {"reason": REASONS[int(verdict.reason)], "median": float(verdict.median)}
            got |= {"events": int(verdict.events), "spike_score": float(verdict.spike_score)}
        assert got["median"] == expected["median"] or math.isnan(got["median"]) and math.isnan(expected["median"])
        got["median"] = expected["median"]
        assert got == expected, (step, value, norms[: step + 1])
        reasons.append(got["reason"])
    return reasons
