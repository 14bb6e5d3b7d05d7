"""The explosion guard: detects an event and decides step | skip | stop on the device; records it at the flush."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from seqstab.core import diagnose as diagnose_module
from seqstab.core import io as checkpoint
from seqstab.core.diagnose.vanishing import Vanishing, VanishingWatch
from seqstab.core.errors import ConfigError, check_choice, check_count
from seqstab.core.guard.events import record_event
from seqstab.core.guard.keep import EventCopy
from seqstab.core.guard.moments import reset_moments_of, spiked_tensors
from seqstab.core.guard.recent import RecentLevel
from seqstab.core.guard.reports import HostRule, action_code, finite_only
from seqstab.core.guard.verdict import ACTIONS, READ_BACK, REASONS, Verdict
from seqstab.core.guard.window import RunningMedian, RunningRate
from seqstab.core.record import Action, Run, Update

POLICIES = ("warn", "skip", "stop", "reset_moments")


class ExplosionGuard:
    """Flags updates whose pre-clip gradient norm is non-finite or spikes, and skips, stops or warns.

    The decision is taken on the training device, with no host synchronisation: the running median, the spike test
    and the policy are tensor operations, and a withheld update is kept from changing weights and optimizer state on
    the device (:mod:`seqstab.core.withhold`). What an event leaves — its line in ``explosions.jsonl``, the console
    summary, the diagnosis, the replay snapshot — is written when the update core next reads its values back (every
    ``trainer.log_every_n_steps`` updates, and at validation, a checkpoint and the end of fit): at most one flush
    late. While a guard with ``snapshot=True`` has not yet taken its snapshot, it keeps a copy of the weights and
    optimizer state as they were before the first flagged update, on the device (one more copy of the model and its
    optimizer state in memory, and a select over it per update, until the snapshot is written).

    With ``policy="reset_moments"`` a flagged update is not applied (as ``skip``) and the optimizer's moment
    buffers (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, ``momentum_buffer``) of the tensors whose gradient
    spiked are zeroed, with Adam's per-parameter ``step`` set back to 0, so those tensors restart like fresh ones
    (bias correction then undoes the zeroing; SPAM keeps the step and warms the rate up instead, StableSPAM resets
    it). A tensor **spiked** when its own pre-clip gradient norm is non-finite or above ``spike_factor`` × the median
    of its norms over the updates the global window holds (after ``min_history`` of them). When no tensor passes that
    test, the tensor with the largest gradient norm — the one the event names — is reset. Per-tensor norms are the
    policy's pre-clip ones (``ClipResult.tensor_norms``). The event's line gains ``spiked`` and ``reset``.

    ``grad/spike_score`` (with ``log_spike_score``): at every update, the fraction of the last ``window`` updates
    (this one included; AMP overflows left out) whose pre-clip norm was non-finite or above ``spike_factor`` × the
    running median it met.

    With ``policy="warn"`` and no ``snapshot`` (the default of seqstab's tasks and callback) an event changes nothing
    on the device: the device decides only whether the norm is finite (and the ``max_consecutive_skips`` stop), and
    the rest of the rule runs on the host at the flush, on the norms read back (:mod:`~seqstab.core.guard.reports`:
    the same values, ~35 fewer device operations an update). Every other setting decides all of it on the device.

    Args:
        policy: What a flagged update gets: ``warn`` (applied anyway, unless non-finite), ``skip`` (not applied),
            ``stop`` (not applied, nor any later one; the run ends at the next flush after a one-line summary) or
            ``reset_moments`` (not applied; the spiked tensors' optimizer moments are zeroed). A non-finite update is
            never applied under any policy.
        spike_factor: Flag a norm above this multiple of the running median and of the recent level (a norm rising
            smoothly out of warm-up stays near it: :mod:`~seqstab.core.guard.recent`). 10 sits well outside the
            2-5x update-to-update swings of healthy training. None turns spike detection off.
        window: How many recent finite, non-zero norms the running median covers. Flagged norms enter it too, so a
            lasting change of level stops counting as a spike after ``window / 2`` updates.
        min_history: Norms needed before spike detection starts, and how many make the recent level.
        max_norm: Also flag any norm above this absolute value; None (default) turns it off.
        snapshot: Save a replay snapshot (model, optimizer, the chunk, its hidden state, RNG state) at the first event.
        max_consecutive_skips: Stop the run after this many updates in a row were not applied: skipping forever hides
            a broken setup (weights or data that make every update non-finite), and a run that applies nothing must
            still end. The CLI then exits 3. 50 by default (a lasting change of level stops counting as a spike after
            ``window / 2`` updates); None never stops for that.
        log_spike_score: Log ``grad/spike_score`` at every update (off by default: it adds a tag to every run).
        diagnose: Explain each event (:mod:`seqstab.core.diagnose`): rank growth through time, through depth, the
            optimizer's step and the data by what is measured, with the settings to try, in the event's line
            (``diagnosis``), its TensorBoard text and the console. The flow profile is measured at the flush, on the
            event's chunk (and, for the first event of a guard with ``snapshot``, on the weights it was flagged with).
            A non-finite event's diagnosis also says where its first non-finite value appeared (``origin``:
            :mod:`seqstab.core.diagnose.origin`).
        vanishing: When to record a ``vanishing`` finding: the training loss stagnates while the gradient to the
            chunk's first steps has vanished (:class:`~seqstab.core.diagnose.vanishing.Vanishing`: ``window``,
            ``min_improvement``, ``flow_ratio``, ``every``); host values read at the flush, never stops the run. None
            turns it off.

    Examples:
        >>> guard = ExplosionGuard(policy="skip", spike_factor=10, min_history=3)
        >>> [guard.check(None, norm) for norm in (1.0, 1.2, 0.9, 1.1, 50.0)][-1]
        <Action.SKIP: 'skip'>
    """

    def __init__(
        self,
        policy: Literal["warn", "skip", "stop", "reset_moments"] = "skip",
        spike_factor: float | None = 10.0,
        window: int = 50,
        min_history: int = 5,
        max_norm: float | None = None,
        snapshot: bool = True,
        max_consecutive_skips: int | None = 50,
        log_spike_score: bool = False,
        diagnose: bool = True,
        vanishing: Vanishing | None = Vanishing(),  # frozen: one shared default is safe
    ):
        check_choice("guard policy", policy, POLICIES)
        if spike_factor is not None and not spike_factor > 1:
            raise ConfigError(f"guard spike_factor={spike_factor!r}: must be > 1 (or null to turn it off)")
        if not window >= 1:
            raise ConfigError(f"guard window={window!r}: must be >= 1")
        if not 1 <= min_history <= window:
            raise ConfigError(f"guard min_history={min_history!r}: must be in [1, window={window}]")
        if max_norm is not None and not max_norm > 0:
            raise ConfigError(f"guard max_norm={max_norm!r}: must be > 0")
        check_count("guard max_consecutive_skips", max_consecutive_skips)
        self.policy = policy
        self.spike_factor = None if spike_factor is None else float(spike_factor)
        self.window = int(window)
        self.min_history = int(min_history)
        self.max_norm = None if max_norm is None else float(max_norm)
        self.snapshot = snapshot
        self.max_consecutive_skips = max_consecutive_skips
        self.log_spike_score = bool(log_spike_score)
        self.diagnose = bool(diagnose)
        self._tracker = diagnose_module.Tracker(self.window) if self.diagnose else None
        self.vanishing = vanishing
        self._watch = VanishingWatch(vanishing) if vanishing is not None else None
        self._reset()
        self.events = 0  # host: events recorded so far (the device count is ahead by at most a flush)
        self.skipped_in_a_row = 0  # host, as of the last flush
        self.peak: tuple[float, int] | None = None  # the largest finite pre-clip norm and its update
        self.applied_max = 0.0  # the largest norm of an applied update (post-clip)
        self.first_event: int | None = None  # update index of the first event
        self.snapshot_path: str | None = None
        self.snapshot_flags = ""  # what replay needs besides the path (--module, --loss), once it is written
        self.stop_reason: str | None = None  # why the guard stopped the run: "policy stop", "max_consecutive_skips"

    def _reset(self) -> None:
        """The device state (and the host rule's, for a guard whose events change nothing), empty."""
        self._host: HostRule | None = None
        if self.policy == "warn" and not self.snapshot:
            self._host = HostRule(self.spike_factor, self.window, self.min_history, self.max_norm, self.log_spike_score)
        self._norms = RunningMedian(self.window)  # the last `window` finite, non-zero norms
        self._recent = RecentLevel(self.min_history)  # the last `min_history` of them that were not events
        self._spikes = RunningRate(self.window)  # the spike test of the last `window` updates
        self._rows: RunningMedian | None = None  # reset_moments: per-tensor norms, (window, P)
        self._rows_width: int | None = None
        self._events: torch.Tensor | None = None  # events so far (long)
        self._skipped: torch.Tensor | None = None  # updates withheld in a row (long)
        self._stopped: torch.Tensor | None = None  # a STOP was decided: withhold everything after it (bool)
        self._constants: dict[str, torch.Tensor] | None = None  # the codes, as device tensors (made once)
        self._copy = EventCopy() if self.snapshot else None
        self._rng: dict[int, dict[str, Any]] = {}  # update -> RNG state before its forward, while a snapshot is due

    # -- on the device, every update -------------------------------------------------------------------------

    def arm(self, run: Run | None, step: int) -> None:
        """Before the forward pass: while the snapshot is still to be taken, keep the RNG state the replay needs to
        draw the same dropout masks (a host copy of the generators' state: no sync)."""
        if self._snapshot_due():
            self._rng[step] = checkpoint.rng_state()

    def _snapshot_due(self) -> bool:
        return self.snapshot and self.snapshot_path is None

    @torch.inference_mode()
    def decide(self, run: Run | None, update: Update, overflow_possible: bool = False) -> Verdict:
        """The verdict on ``update`` (its ``clip`` is set), as device tensors; updates the running state. In inference
        mode (~45 small operations without autograd's bookkeeping: ~95 µs alone on a 2-core VM; 4 where the event
        rule runs at the flush, ``warn`` without a snapshot, and the clip tested the norm's finiteness), so state and
        verdict are inference tensors: read anywhere, never changed in place outside (a load makes new ones).

        Args:
            run: The run (the optimizer's moments, for ``reset_moments``); None without one.
            update: The update, its clip result set.
            overflow_possible: Under 16-bit AMP: a non-finite norm is the GradScaler's overflow (withheld, no event).
        """
        norm = update.clip.pre_norm  # no graph: inference mode records none (a detach would cost an operation)
        self._ready(norm.device)
        if self._host is not None:  # events change nothing: the rest of the rule runs at the flush (settle)
            finite = update.clip.finite
            if finite is None:  # a policy that did not test it
                finite = norm.abs() < math.inf  # NaN and inf fail it (two kernels, where isfinite takes four)
            limit, zero = self.max_consecutive_skips, self._constants["zero"]
            verdict, self._skipped = finite_only(finite, self._skipped, limit, zero)
            return verdict
        live = ~self._stopped  # after a STOP, nothing is decided any more: everything is withheld
        norm = (norm if norm.dtype == torch.float32 else norm.float()).double()  # float32 first: the value logged
        k = self._constants
        finite = norm.abs() < math.inf  # NaN and inf fail it (two kernels, where isfinite takes four)
        counted, overflow = live, None
        if overflow_possible:  # 16-bit AMP: a non-finite norm is the GradScaler's overflow, not an event
            overflow = live & ~finite
            counted = live & finite
        known, median = self._norms.median(self.min_history, norm.device)
        flagged = finite & counted
        above = None
        reason = torch.where(finite, k["none"], k["non-finite"])
        if self.spike_factor is not None:
            above = known & (norm > self.spike_factor * self._recent.baseline(median, norm.device))
            reason = torch.where(above & flagged, k["spike"], reason)
        if self.max_norm is not None:
            reason = torch.where(flagged & (norm > self.max_norm), k["max_norm"], reason)
        if overflow is not None:
            reason = torch.where(overflow, k["overflow"], torch.where(counted, reason, k["none"]))
        elif self.max_consecutive_skips is not None or self.policy == "stop":
            reason = torch.where(counted, reason, k["none"])  # after a stop: no more events
        event = reason != k["none"] if overflow is None else (reason != k["none"]) & (reason != k["overflow"])
        calm = ~event
        reset = self._spiked(update, event, counted) if self.policy == "reset_moments" else None
        if self.log_spike_score:
            self._spikes.record(~finite | above if above is not None else ~finite, counted)
        positive = flagged & (norm > 0)  # finite, counted, non-zero: what the windows admit
        self._norms.admit(norm, positive)
        self._recent.admit(norm, positive & calm)
        self._admit_row(update, positive)
        self._events = self._events + event
        apply = flagged if self.policy == "warn" else flagged & calm  # never a non-finite one, none after a stop
        withheld = ~apply
        stop = event if self.policy == "stop" else None  # an update withheld that also ends the run
        if self.max_consecutive_skips is not None:
            self._skipped = torch.where(withheld, self._skipped + 1, k["zero"])  # >= 1: this one is withheld
            limit = live & (self._skipped >= self.max_consecutive_skips)
            stop = limit if stop is None else stop | limit
        action = withheld.long()  # step 0, skip 1, stop 2 (a stop is withheld too)
        if stop is not None:
            action = action + stop
            self._stopped = self._stopped | stop
        return Verdict(
            reason=reason,
            median=torch.where(known, median, torch.nan),
            apply=apply,
            action=action,
            events=self._events,
            spike_score=self._spikes.rate() if self.log_spike_score else None,
            reset=reset,
        )

    def _ready(self, device: torch.device) -> None:
        if self._events is None:
            self._events = torch.zeros((), dtype=torch.long, device=device)
            self._skipped = torch.zeros((), dtype=torch.long, device=device)
            self._stopped = torch.zeros((), dtype=torch.bool, device=device)
        elif self._events.device != device:
            self._events, self._skipped, self._stopped = (
                t.to(device) for t in (self._events, self._skipped, self._stopped)
            )
        if self._constants is None or self._constants["zero"].device != device:
            codes = {name or "none": i for i, name in enumerate(REASONS)} | {"zero": 0}
            self._constants = {name: torch.tensor(code, device=device) for name, code in codes.items()}

    def _spiked(self, update: Update, event: torch.Tensor, counted: torch.Tensor) -> torch.Tensor | None:
        """``reset_moments``: ``(P,)`` the tensors whose moments an event resets (see the class docstring)."""
        norms = update.clip.tensor_norms
        if norms is None:
            return None
        now = norms.detach().float().double()  # (P,)
        rows = self._rows if self._rows_width == len(now) else None
        return spiked_tensors(now, rows, self.spike_factor, self.min_history) & event & counted

    def _admit_row(self, update: Update, admitted: torch.Tensor) -> None:
        norms = update.clip.tensor_norms
        if self.policy != "reset_moments" or norms is None:
            return
        if self._rows is None or self._rows_width != len(norms):
            self._rows, self._rows_width = RunningMedian(self.window, width=len(norms)), len(norms)
        self._rows.admit(norms.detach().float().double(), admitted)

    def keep(self, run: Run, verdict: Verdict, step: int) -> None:
        """Before the step: while the snapshot is due, keep the weights and optimizer state of the first event."""
        if self._snapshot_due() and self._copy is not None and run is not None:
            self._copy.keep(run, (verdict.reason >= 1) & (verdict.reason <= 3), step)

    def after_step(self, run: Run | None, verdict: Verdict) -> None:
        """After the step (and its withholding): ``reset_moments`` zeroes the spiked tensors' moments."""
        if verdict.reset is None or run is None or run.optimizer is None:
            return
        params = [p for p in run.module.parameters() if p.grad is not None]
        if len(params) == len(verdict.reset):
            reset_moments_of(run.optimizer, params, verdict.reset)

    # -- on the host, at the flush ---------------------------------------------------------------------------

    def settle(self, run: Run | None, update: Update, read: dict[str, Any]) -> Action:
        """At the flush, in update order: what the device decided about ``update`` (``read``: its verdict read back,
        ``reason``, ``median``, ``action``, ``reset``), recorded — peak, diagnosis statistics, the event's line,
        summary and snapshot. Returns the action."""
        if self._host is not None:  # the rule's reason, median, event count and score, from the norm read back
            self._host.fill(update.values, read, live=self.stop_reason is None)  # set below, at a STOP
            norm = read.get("norm", update.values["grad/norm_total"])
            read["action"] = action_code(read, norm, self.max_consecutive_skips)
        action = ACTIONS[int(read["action"])]
        reason = REASONS[int(read["reason"])]
        self._keep_peak(update, action)
        if self._tracker is not None:  # O(1): what the next event's diagnosis compares against
            self._tracker.observe(
                update, read.get("lr"), action is Action.STEP, diagnose_module.inputs_of(update.chunk)
            )
        if self._watch is not None and run is not None:  # host values: the vanishing test
            self._watch.observe(run, update, read, action is Action.STEP)
        self.skipped_in_a_row = 0 if action is Action.STEP else self.skipped_in_a_row + 1
        limit_stop = action is Action.STOP and self.policy != "stop"  # max_consecutive_skips, not the event
        if action is Action.STOP:
            self.stop_reason = "max_consecutive_skips" if limit_stop else "policy stop"
        if reason is not None and reason != "overflow":
            self.events += 1
            if run is not None:
                record_event(self, run, update, reason, read, Action.SKIP if limit_stop else action)
        if limit_stop and (run is None or run.is_global_zero):
            print(
                f"seqstab: explosion guard: {self.skipped_in_a_row} updates in a row were not applied "
                f"(max_consecutive_skips={self.max_consecutive_skips}): stopping the run",
                flush=True,
            )
        return action

    def snapshot_rng(self, step: int) -> dict[str, Any] | None:
        return self._rng.get(step)

    def flushed(self, through: int) -> None:
        """The updates up to ``through`` are settled: what was kept for their snapshot is no longer needed."""
        for step in [s for s in self._rng if s <= through]:
            del self._rng[step]
        if self._copy is not None:
            self._copy.forget(through)

    def check(self, run: Run | None, update: Update | float) -> Action:
        """Decide and record one update at once (one host read): for a loop that wants the answer now, and tests.

        ``update`` may be a bare norm (a float), for a guard used on its own; an update whose ``values`` already hold
        ``grad/norm_total`` (and ``amp/overflow``) is judged by them. Fills ``explosion/events`` (and
        ``grad/spike_score``) in its values."""
        from seqstab.core.clipping import ClipResult

        if not isinstance(update, Update):
            update = Update(0, None, None, None, {"grad/norm_total": float(update)})
        values = update.values
        if "grad/norm_total" in values:
            norm = torch.tensor(values["grad/norm_total"], dtype=torch.float32)
            norms = update.clip.tensor_norms if update.clip is not None else None
            update.clip = ClipResult(norm, norm, torch.zeros((), dtype=torch.bool), tensor_norms=norms)
        amp = bool(values.get("amp/overflow"))
        verdict = self.decide(run, update, overflow_possible=amp)
        names = [n for n in READ_BACK if getattr(verdict, n) is not None]  # none: warn, no snapshot, no limit
        values_read = torch.stack([getattr(verdict, n).double() for n in names]).tolist() if names else []
        read = dict(zip(names, values_read, strict=True))
        norm = float(update.clip.pre_norm.float())
        values.setdefault("grad/norm_total", norm)
        if "events" in read:  # the device's verdict (else settle's host rule fills them, from norm and amp)
            values["explosion/events"] = read["events"]
        if "spike_score" in read:
            values["grad/spike_score"] = read["spike_score"]
        if "median" in read:
            read["median"] = None if math.isnan(read["median"]) else read["median"]
        read["norm"], read["amp"] = norm, amp  # for the host rule: the float32 norm, and whether AMP's
        if verdict.reset is not None:
            read["reset"] = verdict.reset.tolist()
        update.action = self.settle(run, update, read)
        return update.action

    def detect(self, norm: float) -> tuple[str | None, float | None]:
        """Why ``norm`` would be an event now (``non-finite``, ``max_norm``, ``spike``) or None, and the median it
        would meet; changes nothing (reads the window on the host: for inspection and tests)."""
        if self._host is not None:
            return self._host.detect(norm)
        known, median = self._norms.median(self.min_history)
        baseline, median = float(self._recent.baseline(median, median.device)), float(median) if bool(known) else None
        if not math.isfinite(norm):
            return "non-finite", median
        if self.max_norm is not None and norm > self.max_norm:
            return "max_norm", median
        if self.spike_factor is not None and median is not None and norm > self.spike_factor * baseline:
            return "spike", median
        return None, median

    def _keep_peak(self, update: Update, action: Action) -> None:
        """The run's largest pre-clip norm and largest applied norm, for the closing lines (:meth:`closing`)."""
        norm = update.values["grad/norm_total"]
        if math.isfinite(norm) and (self.peak is None or norm > self.peak[0]):
            self.peak = (norm, update.step)
        if action is Action.STEP:
            self.applied_max = max(self.applied_max, update.values.get("grad/norm_total_clipped", 0.0))

    def closing(self, clipping: Any) -> str | None:
        """One line for the end of a run: where the pre-clip norm peaked and whether the clipping policy held every
        applied update at its threshold (``max_norm``); None before any update."""
        if self.peak is None:
            return None
        norm, step = self.peak
        line = f"the pre-clip gradient norm peaked at {norm:.3g} (update {step})"
        bound = getattr(clipping, "max_norm", None)
        if isinstance(bound, float) and norm > bound:
            line += f", {norm / bound:.3g}x the clip threshold"
            held = "held" if self.applied_max <= bound * (1 + 1e-6) else "did not hold"
            line += f"; {type(clipping).__name__} {held} every applied update at <= {bound:g}"
            line += f" (largest {self.applied_max:.3g})"
        return line

    # -- checkpoint ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain values only (checkpoints load with ``weights_only=True``); reads the device state (at a save)."""
        host = self._host
        return {
            "norms": self._norms.tolist() if host is None else host.norms(),
            "recent": self._recent.tolist() if host is None else host.recent(),
            "events": self.events,
            "first_event": self.first_event,
            "snapshot_path": self.snapshot_path,
            "skipped_in_a_row": self.skipped_in_a_row,
            "spikes": self._spikes.tolist() if host is None else host.spikes(),
            "tensor_norms": self._rows.tolist() if self._rows is not None else [],
            "peak": list(self.peak) if self.peak is not None else None,
            "applied_max": self.applied_max,
            **{f"diagnosis_{k}": v for k, v in (self._tracker.state_dict() if self._tracker else {}).items()},
            **{f"vanishing_{k}": v for k, v in (self._watch.state_dict() if self._watch else {}).items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._reset()
        self._norms.load(state.get("norms", []))
        self._recent.load(state.get("recent", []))  # a checkpoint from before: filled again by the next updates
        self._spikes.load(state.get("spikes", []))
        rows = state.get("tensor_norms", [])
        if rows:
            self._rows, self._rows_width = RunningMedian(self.window, width=len(rows[0])), len(rows[0])
            self._rows.load(rows)
        self.events = int(state.get("events", 0))
        if self._host is not None:
            self._host.load(state.get("norms", []), state.get("recent", []), state.get("spikes", []), self.events)
        self.first_event = state.get("first_event")
        self.snapshot_path = state.get("snapshot_path")
        self.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))
        self._ready(torch.device("cpu"))
        self._events.fill_(self.events)
        self._skipped.fill_(self.skipped_in_a_row)
        peak = state.get("peak")
        self.peak = (float(peak[0]), int(peak[1])) if peak else None
        self.applied_max = float(state.get("applied_max", 0.0))
        if self._tracker is not None:
            self._tracker.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("diagnosis_")})
        if self._watch is not None:
            self._watch.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("vanishing_")})

    def __repr__(self) -> str:
        return (
            f"ExplosionGuard(policy={self.policy!r}, spike_factor={self.spike_factor}, window={self.window}, "
            f"min_history={self.min_history}, max_norm={self.max_norm}, snapshot={self.snapshot}, "
            f"max_consecutive_skips={self.max_consecutive_skips}, log_spike_score={self.log_spike_score}, "
            f"diagnose={self.diagnose}, vanishing={self.vanishing})"
        )
