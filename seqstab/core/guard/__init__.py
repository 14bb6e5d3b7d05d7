"""Explosion guard: the station after clipping that decides step | skip | stop, and records what happened.

At every update the update core (:class:`seqstab.core.update.UpdateCore`) calls :meth:`ExplosionGuard.decide`
with the update's clip result: the running median (:mod:`~seqstab.core.guard.window`), the spike test and the
policy are tensor operations on the training device, and the verdict (a :class:`Verdict` of 0-dim tensors) withholds
the update there (:mod:`seqstab.core.withhold`) — no host synchronisation. A guard whose events change nothing
(``policy="warn"`` without a snapshot, the tasks' and the callback's default) decides only the action there and runs
the rest of the rule at the flush, on the norms read back (:mod:`~seqstab.core.guard.reports`, the same values). When
the update core reads its rows back
(every ``log_every_n_steps`` updates, and at validation, a checkpoint and the end of fit) the guard settles each
verdict in order (:meth:`ExplosionGuard.settle`): the closing lines' peak, the diagnosis's O(1) statistics, and what
an event leaves.

An **event** is an update whose pre-clip norm is

  * non-finite (inf or nan), or
  * above ``max_norm`` (an absolute bound, off by default), or
  * above ``spike_factor`` × the median of the last ``window`` finite, non-zero norms (after ``min_history`` of them).

Per event, written at that flush (at most ``log_every_n_steps`` updates late), on rank 0 and only when the run has a
directory (``Run.run_dir``: the logger's ``log_dir`` under
Lightning):

  * ``explosion/events`` (the cumulative count of events, logged at every update) steps up;
  * a text entry ``explosion/event`` in TensorBoard and a line in ``explosions.jsonl``: update, epoch, norm,
    its ratio to the median, the parameter with the largest gradient norm (computed only now: events are rare),
    and its ``diagnosis`` (:mod:`seqstab.core.diagnose`: growth through time, depth, the optimizer's step or the data,
    ranked by measured evidence, with the settings to try), also printed for the first event;
  * on the first event, a replay snapshot ``snapshot_update_<N>.pt`` (:func:`save_snapshot`, replayed by
    ``python -m seqstab.replay``).

Under ``policy="reset_moments"`` (SPAM, Huang et al., ICLR 2025, arXiv 2501.06842) a flagged update is skipped as
under ``skip`` and the optimizer's moment buffers of the tensors whose gradient spiked are zeroed
(:func:`reset_moments`); the event's line lists them. With ``log_spike_score`` the guard also logs
``grad/spike_score``, the fraction of spikes among the last ``window`` updates.

A non-finite update is never applied, whatever the policy. Under 16-bit AMP a non-finite norm is the
GradScaler's overflow (``amp/overflow`` 1): skipped without an event, while the scaler lowers its scale. No
checkpoint holding non-finite weights is ever written: :func:`check_finite_weights` runs when seqstab's tasks and the
``GradientStability`` callback save a checkpoint, and refuses.
"""

from seqstab.core.guard.events import EVENTS_FILE
from seqstab.core.guard.guard import ACTIONS, POLICIES, REASONS, ExplosionGuard, Verdict
from seqstab.core.guard.moments import MOMENT_KEYS, moment_buffers, reset_moments, reset_moments_where
from seqstab.core.guard.snapshot import SNAPSHOT_FORMAT, save_snapshot
from seqstab.core.guard.weights import NonFiniteWeightsError, check_finite_weights, grad_norms
from seqstab.core.guard.window import RunningMedian, RunningRate
from seqstab.core.record import Action

__all__ = [
    "ACTIONS",
    "Action",
    "REASONS",
    "RunningMedian",
    "RunningRate",
    "Verdict",
    "reset_moments_where",
    "check_finite_weights",
    "EVENTS_FILE",
    "ExplosionGuard",
    "grad_norms",
    "moment_buffers",
    "MOMENT_KEYS",
    "NonFiniteWeightsError",
    "POLICIES",
    "reset_moments",
    "save_snapshot",
    "SNAPSHOT_FORMAT",
]
