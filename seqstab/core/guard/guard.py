"""The explosion guard: detects an event, decides step | skip | stop, records it."""

from __future__ import annotations

import bisect
import json
import math
from collections import deque
from typing import Any, Literal

import torch

from seqstab.core import diagnose as diagnose_module
from seqstab.core import io as checkpoint
from seqstab.core.errors import ConfigError, check_choice
from seqstab.core.guard.events import EVENTS_FILE, event_markdown
from seqstab.core.guard.moments import moment_buffers, reset_moments
from seqstab.core.guard.snapshot import save_snapshot
from seqstab.core.guard.weights import grad_norms
from seqstab.core.logs import add_text
from seqstab.core.plain import json_safe, sortable
from seqstab.core.record import Action, Run, Update

POLICIES = ("warn", "skip", "stop", "reset_moments")


class ExplosionGuard:
    """Flags updates whose pre-clip gradient norm is non-finite or spikes, and skips, stops or warns.

    With ``policy="reset_moments"`` a flagged update is not applied (as ``skip``) and the optimizer's moment
    buffers (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, ``momentum_buffer``) of the tensors whose gradient
    spiked are zeroed, with Adam's per-parameter ``step`` set back to 0, so those tensors restart like fresh ones
    (bias correction then undoes the zeroing; SPAM keeps the step and warms the rate up instead, StableSPAM resets
    it). Skipping alone already keeps the flagged gradient out of the moments; the reset also drops what they
    gathered on the way to the spike. A tensor **spiked** when its own pre-clip gradient norm is non-finite or above
    ``spike_factor`` × the median of its norms over the updates the global window holds (the guard's rule, applied
    per tensor; after ``min_history`` of them). When no tensor passes that test (no baseline yet, detection off, or
    a global spike spread thin), the tensor with the largest gradient norm — the one the event names — is reset.
    Per-tensor norms are the policy's pre-clip ones (``ClipResult.tensor_norms``); a policy without them gives no
    baseline. Other optimizer state (Adagrad's sum, RMSprop's average) is left alone. The event's line in
    ``explosions.jsonl`` gains ``spiked`` (the tensors chosen) and ``reset`` (those whose buffers were zeroed: none
    for plain SGD, which keeps no moments).

    ``grad/spike_score`` (with ``log_spike_score``): at every update, the fraction of the last ``window`` updates
    (this one included; AMP overflows left out) whose pre-clip norm was non-finite or above ``spike_factor`` × the
    running median it met — the spike test, whether or not ``max_norm`` flagged the update first. It is computed from
    the norm already read back: no further host sync.

    Args:
        policy: What a flagged update gets: ``warn`` (applied anyway, unless non-finite), ``skip`` (not applied),
            ``stop`` (not applied; the run ends cleanly after a one-line summary) or ``reset_moments`` (not applied;
            the spiked tensors' optimizer moments are zeroed). A non-finite update is never applied under any
            policy.
        spike_factor: Flag a norm above this multiple of the running median. 10 sits well outside the 2-5x
            update-to-update swings of healthy training. None turns spike detection off.
        window: How many recent finite, non-zero norms the running median covers. Flagged norms enter it too, so a
            lasting change of level stops counting as a spike after ``window / 2`` updates.
        min_history: Norms needed in the window before spike detection starts (the first updates have no baseline).
        max_norm: Also flag any norm above this absolute value; None (default) turns it off.
        snapshot: Save a replay snapshot (model, optimizer, the chunk, its hidden state, RNG state) at the first event.
        max_consecutive_skips: Stop the run cleanly after this many updates in a row were not applied (skipping
            forever hides a broken setup); None never stops for that.
        log_spike_score: Log ``grad/spike_score`` at every update (off by default: it adds a tag to every run).
        diagnose: Explain each event (:mod:`seqstab.diagnose`): rank growth through time, through depth, the
            optimizer's step and the data by what is measured at the event, with the settings to try, in the event's
            line (``diagnosis``), its TensorBoard text and the console. Between events it keeps O(1) statistics per
            update (the step's scale, the chunk's largest ``|x|``); the flow profile is measured at the event only.
    """

    def __init__(
        self,
        policy: Literal["warn", "skip", "stop", "reset_moments"] = "skip",
        spike_factor: float | None = 10.0,
        window: int = 50,
        min_history: int = 5,
        max_norm: float | None = None,
        snapshot: bool = True,
        max_consecutive_skips: int | None = None,
        log_spike_score: bool = False,
        diagnose: bool = True,
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
        if max_consecutive_skips is not None and (
            isinstance(max_consecutive_skips, bool)
            or not isinstance(max_consecutive_skips, int)
            or max_consecutive_skips < 1
        ):
            raise ConfigError(f"guard max_consecutive_skips={max_consecutive_skips!r}: must be an integer >= 1")
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
        self.skipped_in_a_row = 0
        self._norms: deque[float] = deque()  # the last `window` finite, non-zero norms, oldest first
        self._sorted: list[float] = []  # the same values, sorted
        self._rows: deque[torch.Tensor] = deque(maxlen=self.window)  # reset_moments: (P,) pre-clip tensor norms
        self._spikes: deque[bool] = deque(maxlen=self.window)  # spike test of the last `window` updates
        self._spike_count = 0  # of them, True
        self.events = 0
        self.peak: tuple[float, int] | None = None  # the largest finite pre-clip norm and its update
        self.applied_max = 0.0  # the largest norm of an applied update (post-clip)
        self.first_event: int | None = None  # update index of the first event
        self.snapshot_path: str | None = None
        self._rng: dict[str, torch.Tensor] | None = None

    # -- the station -----------------------------------------------------------------------------------------

    def arm(self, run: Run | None, step: int) -> None:
        """Before the forward pass: keep the RNG state the snapshot needs to replay dropout (until it is taken)."""
        if self.snapshot and self.snapshot_path is None:
            self._rng = checkpoint.rng_state()

    def check(self, run: Run | None, update: Update) -> Action:
        """Decide what happens to ``update``; add ``explosion/events`` to its logged values."""
        action = self._decide(run, update)
        self._keep_peak(update, action)
        if self._tracker is not None:  # O(1): what the next event's diagnosis compares against
            lr = diagnose_module.learning_rate(run.optimizer) if run is not None else None
            self._tracker.observe(update, lr, action is Action.STEP, diagnose_module.inputs_of(update.chunk))
        if action is Action.STEP:
            self.skipped_in_a_row = 0
            return action
        self.skipped_in_a_row += 1
        limit = self.max_consecutive_skips
        if action is Action.SKIP and limit is not None and self.skipped_in_a_row >= limit:
            if run is None or run.is_global_zero:
                print(
                    f"seqstab: explosion guard: {self.skipped_in_a_row} updates in a row were not applied "
                    f"(max_consecutive_skips={limit}): stopping the run",
                    flush=True,
                )
            return Action.STOP
        return action

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

    def _decide(self, run: Run | None, update: Update) -> Action:
        if update.values.get("amp/overflow"):
            self._tag(update)
            return Action.SKIP
        norm = update.values["grad/norm_total"]
        reason, median = self.detect(norm)
        self._count(not math.isfinite(norm) or self._above(norm, median))
        resetting = reason is not None and run is not None and self.policy == "reset_moments"
        baseline = list(self._rows) if resetting else []  # the per-tensor windows this update met
        if math.isfinite(norm) and norm > 0:
            self._remember(norm)
            if self.policy == "reset_moments" and update.clip.tensor_norms is not None:
                self._rows.append(update.clip.tensor_norms)
        if reason is None:
            self._tag(update)
            return Action.STEP
        self.events += 1
        self._tag(update)
        action = self._action(math.isfinite(norm))
        if run is not None:
            spiked = self._spiked(run, update, baseline) if resetting else []
            extra = {}
            if resetting:
                held = [name for name, param in spiked if moment_buffers(run.optimizer, param)]
                extra = {"spiked": [name for name, _ in spiked], "reset": held}
            self._record(run, update, reason, median, action, extra)  # the snapshot sees the moments as they were
            for _, param in spiked:
                reset_moments(run.optimizer, param)
        return action

    def _tag(self, update: Update) -> None:
        """The guard's per-update tags: ``explosion/events`` (and ``grad/spike_score``)."""
        update.values["explosion/events"] = float(self.events)
        if self.log_spike_score:
            update.values["grad/spike_score"] = self._spike_count / len(self._spikes) if self._spikes else 0.0

    def _above(self, norm: float, median: float | None) -> bool:
        return self.spike_factor is not None and median is not None and norm > self.spike_factor * median

    def _count(self, spike: bool) -> None:
        """Add one update's spike test to the window of the last ``window`` (a running count, O(1))."""
        if len(self._spikes) == self.window:
            self._spike_count -= self._spikes[0]
        self._spikes.append(spike)
        self._spike_count += spike

    def _spiked(self, run: Run, update: Update, baseline: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """The tensors whose own gradient spiked (see the class docstring), by name, with their parameters."""
        named = [(name, p) for name, p in run.module.named_parameters() if p.grad is not None]
        if not named:
            return []
        now = update.clip.tensor_norms
        rows: list[list[float]] = []
        if now is not None and len(now) == len(named):
            kept = [r.to(device=now.device, dtype=now.dtype) for r in baseline if len(r) == len(named)]
            norms, *rows = torch.stack([now, *kept]).tolist()  # one host sync, on an event only
        else:
            norms = list(grad_norms(run.module).values())
        chosen = []
        if len(rows) >= self.min_history:
            for i, norm in enumerate(norms):
                if not math.isfinite(norm) or self._above(norm, _median_of(sorted(r[i] for r in rows))):
                    chosen.append(i)
        else:
            chosen = [i for i, norm in enumerate(norms) if not math.isfinite(norm)]
        if not chosen:
            chosen = [max(range(len(norms)), key=lambda i: sortable(norms[i]))]
        return [named[i] for i in chosen]

    def detect(self, norm: float) -> tuple[str | None, float | None]:
        """Why ``norm`` is an event (``non-finite``, ``max_norm``, ``spike``) or None; and the median it met."""
        if not math.isfinite(norm):
            return "non-finite", self._median()
        if self.max_norm is not None and norm > self.max_norm:
            return "max_norm", self._median()
        median = self._median()
        if self._above(norm, median):
            return "spike", median
        return None, median

    def _remember(self, norm: float) -> None:
        """Add ``norm`` to the window: a deque in arrival order plus the same values kept sorted (for the median)."""
        if len(self._norms) == self.window:
            del self._sorted[bisect.bisect_left(self._sorted, self._norms.popleft())]
        self._norms.append(norm)
        bisect.insort(self._sorted, norm)

    def _median(self) -> float | None:
        if len(self._sorted) < self.min_history:
            return None
        return _median_of(self._sorted)

    def _action(self, finite: bool) -> Action:
        if self.policy == "stop":
            return Action.STOP
        if self.policy in ("skip", "reset_moments") or not finite:
            return Action.SKIP
        return Action.STEP

    # -- what an event leaves behind ------------------------------------------------------------------------

    def _record(
        self, run: Run, update: Update, reason: str, median: float | None, action: Action, extra: dict[str, Any]
    ) -> None:
        norm = update.values["grad/norm_total"]
        modules = grad_norms(run.module, update.clip.tensor_norms)  # pre-clip; one sync, on events only
        largest = max(modules, key=lambda name: sortable(modules[name])) if modules else None
        event = {
            "update": update.step,
            "global_step": run.global_step,
            "epoch": run.epoch,
            "reason": reason,
            "action": action.value,
            "norm": json_safe(norm),
            "median": json_safe(median),
            "ratio": json_safe(norm / median if median else None),
            "loss": json_safe(update.values.get("train/loss")),
            "module": largest,
            "module_norm": json_safe(modules.get(largest)) if largest else None,
            **extra,
        }
        if self._tracker is not None and run.is_global_zero:
            event["diagnosis"] = diagnose_module.diagnose_event(run, update, self._tracker)  # events only
        run_dir = run.run_dir if run.is_global_zero else None
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
        first = self.first_event is None
        if first:
            self.first_event = update.step
            if self.snapshot and run_dir is not None:
                path = run_dir / f"snapshot_update_{update.step}.pt"
                save_snapshot(path, run, update, modules, self._rng, event.get("diagnosis"))
                self.snapshot_path = str(path)
                event["snapshot"] = path.name
        if run_dir is not None:
            with open(run_dir / EVENTS_FILE, "a") as f:
                f.write(json.dumps(event) + "\n")
        if run.is_global_zero:
            add_text(run, "explosion/event", event_markdown(event), update.step)
            if first or action is Action.STOP:
                print(self._summary(event, action), flush=True)
                if "diagnosis" in event:
                    print(
                        "\n".join(f"seqstab: {line}" for line in diagnose_module.lines(event["diagnosis"])), flush=True
                    )

    def _summary(self, event: dict[str, Any], action: Action) -> str:
        what = {Action.STEP: "applied (policy warn)", Action.SKIP: "not applied", Action.STOP: "stopping the run"}
        ratio = ""
        if isinstance(event["ratio"], float):
            ratio = f" = {event['ratio']:.3g}x the median {event['median']:.3g}"
        norm = event["norm"] if isinstance(event["norm"], str) else f"{event['norm']:.4g}"
        line = (
            f"seqstab: explosion guard: {event['reason']} at update {event['update']} (epoch {event['epoch']}): "
            f"pre-clip grad norm {norm}{ratio}; largest in {event['module']}; {what[action]}; "
        )
        if "reset" in event:
            line += f"moments reset for {', '.join(event['reset']) or 'no tensor (the optimizer keeps none)'}; "
        line += f"{self.events} event(s) so far"
        if self.snapshot_path:
            line += f"; replay: python -m seqstab.replay {self.snapshot_path}"
        return line

    # -- checkpoint ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain values only (checkpoints load with ``weights_only=True``)."""
        return {
            "norms": list(self._norms),
            "events": self.events,
            "first_event": self.first_event,
            "snapshot_path": self.snapshot_path,
            "skipped_in_a_row": self.skipped_in_a_row,
            "spikes": list(self._spikes),
            "tensor_norms": [row.tolist() for row in self._rows],  # reset_moments only; a sync at a save
            "peak": list(self.peak) if self.peak is not None else None,
            "applied_max": self.applied_max,
            **{f"diagnosis_{k}": v for k, v in (self._tracker.state_dict() if self._tracker else {}).items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._norms, self._sorted = deque(), []
        for norm in state.get("norms", [])[-self.window :]:
            self._remember(float(norm))
        self.events = int(state.get("events", 0))
        self.first_event = state.get("first_event")
        self.snapshot_path = state.get("snapshot_path")
        self.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))
        peak = state.get("peak")
        self.peak = (float(peak[0]), int(peak[1])) if peak else None
        self.applied_max = float(state.get("applied_max", 0.0))
        if self._tracker is not None:
            self._tracker.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("diagnosis_")})
        self._spikes, self._spike_count = deque(maxlen=self.window), 0
        for spike in state.get("spikes", [])[-self.window :]:
            self._count(bool(spike))
        rows = state.get("tensor_norms", [])[-self.window :]
        self._rows = deque((torch.tensor(row, dtype=torch.float64) for row in rows), maxlen=self.window)

    def __repr__(self) -> str:
        return (
            f"ExplosionGuard(policy={self.policy!r}, spike_factor={self.spike_factor}, window={self.window}, "
            f"min_history={self.min_history}, max_norm={self.max_norm}, snapshot={self.snapshot}, "
            f"max_consecutive_skips={self.max_consecutive_skips}, log_spike_score={self.log_spike_score}, "
            f"diagnose={self.diagnose})"
        )


def _median_of(ordered: list[float]) -> float:
    """The median of an ascending list: its middle value, or the mean of its middle two."""
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
