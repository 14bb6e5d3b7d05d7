"""The guard's decision on one update (:class:`Verdict`), and the codes it is read back in."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seqstab.core.record import Action

__all__ = ["ACTIONS", "READ_BACK", "REASONS", "Verdict"]

REASONS = (None, "non-finite", "max_norm", "spike", "overflow")  # Verdict.reason codes; overflow: AMP's, no event
ACTIONS = (Action.STEP, Action.SKIP, Action.STOP)  # Verdict.action codes
READ_BACK = ("reason", "median", "action", "events", "spike_score", "skipped")  # the 0-dim fields read at the flush


@dataclass
class Verdict:
    """The guard's decision on one update, as 0-dim device tensors (read on the host only at the flush).

    Attributes:
        apply: Whether the update is applied (bool).
        action: Index into :data:`ACTIONS`; None where the host reads it from ``skipped`` (or the norm) at the flush
            (the event rule on the host: :func:`~seqstab.core.guard.reports.finite_only`).
        reason: Index into :data:`REASONS` (0: no event); None where the event rule runs on the host at the flush
            (a guard whose events change nothing: :mod:`~seqstab.core.guard.reports`), as for the next three.
        median: The running median the norm met (float64; NaN before ``min_history`` norms).
        events: Events so far, this one included (the ``explosion/events`` tag).
        spike_score: ``grad/spike_score`` (with ``log_spike_score``), else None.
        reset: ``reset_moments``: ``(P,)`` which tensors' moments are zeroed (bool), else None.
        skipped: Updates withheld in a row, this one included (long), where ``action`` is None and the guard stops
            after ``max_consecutive_skips`` of them; else None.
    """

    apply: torch.Tensor
    action: torch.Tensor | None = None
    reason: torch.Tensor | None = None
    median: torch.Tensor | None = None
    events: torch.Tensor | None = None
    spike_score: torch.Tensor | None = None
    reset: torch.Tensor | None = None
    skipped: torch.Tensor | None = None
