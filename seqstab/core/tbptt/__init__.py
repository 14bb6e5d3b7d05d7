"""Truncated backpropagation through time: truncation policies, how a batch becomes windows, where the graph is cut.

A truncation policy (``model.truncation``, by class path like ``model.clipping``; ``model.tbptt_steps: k`` is the
shorthand for ``Fixed(k)``) turns a batch of ``L`` steps into :class:`Window` s. Each window is one update: its
forward starts from the (detached) hidden state at ``start``, its loss counts the steps ``[score_from, stop)``,
and its backward reaches back to ``start``::

    batch  x, y, mask: (B, L, ...)                                    ✂ = graph cut (the state enters detached)

    Full                 ✂[════════════════════════ 0 … L-1 ════════════════════════]▲           one update
    Fixed(k)             ✂[═══ k ═══]▲✂[═══ k ═══]▲✂[═══ k ═══]▲✂[═ rest ═]▲                    chunks of LENGTH k
    Overlapping(k1, k2)  ✂[═ k1 ═]▲
                         ✂[── k2-k1 ──╫═ k1 ═]▲                          update every k1 steps,
                                ✂[── k2-k1 ──╫═ k1 ═]▲                   backward reaching k2 steps:
                                       ✂[── k2-k1 ──╫═ k1 ═]▲            every scored step sees >= k2-k1 of history
    VariableLength(k, σ) ✂[══ 68 ══]▲✂[═ 31 ═]▲✂[═══ 73 ═══]▲✂[ … ]▲   lengths ~ N(k or k/2, σ); lr × length / k
    Unbiased(c)          ✂[══╪══╪══╪═]▲✂[═╪═]▲✂[══╪══╪══╪══╪═]▲           cut at each candidate step with
                                                                         probability c; where not cut (╪) the
                                                                         gradient through h is × 1/(1-c)

    ═ scored step (in the loss)   ── unscored history (forward and backward, no loss)   ▲ update (step | skip)

    per window:  advance h to `start` (no grad, only where windows overlap or are skipped) ─► forward from
                 h(start) ─► loss of [score_from, stop) ─► backward ─► update ─► h(stop) detached, if the next
                 window starts there

    stateful data (batch i+1 continues batch i's B streams): h(L) survives to the next batch, detached (no
                   window's backward crosses a batch boundary), reset to zeros at each epoch start and before
                   validation/test; stateless data: every batch starts from zeros.

Windows of ``Fixed`` and ``Full`` are exactly today's chunks (``torch.split`` views: chunks of LENGTH k, not k
pieces as ``tensor_split`` and Lightning's old docs), so their numbers are unchanged bitwise. Random policies draw
from their own ``torch.Generator`` (seeded alike on every DDP rank, saved in the checkpoint): every rank makes the
same cuts, and a resumed run draws the lengths the uninterrupted one would have.
"""

from seqstab.core.tbptt.bias import truncation_bias
from seqstab.core.tbptt.carry import HiddenCarry, detach
from seqstab.core.tbptt.chunks import (
    GRAD_SCALE,
    LOSS_WEIGHT,
    carries,
    chunks,
    forward,
    scaled_lr,
    scored,
    scored_steps,
    scored_windows,
    share,
    weighted,
    window_chunk,
)
from seqstab.core.tbptt.policies import (
    Fixed,
    Full,
    Overlapping,
    TruncationPolicy,
    Unbiased,
    VariableLength,
    Window,
    as_windows,
    policy_of,
)

__all__ = [
    "as_windows",
    "carries",
    "chunks",
    "detach",
    "Fixed",
    "forward",
    "Full",
    "GRAD_SCALE",
    "HiddenCarry",
    "LOSS_WEIGHT",
    "Overlapping",
    "policy_of",
    "scaled_lr",
    "scored",
    "scored_steps",
    "scored_windows",
    "share",
    "truncation_bias",
    "TruncationPolicy",
    "Unbiased",
    "VariableLength",
    "weighted",
    "Window",
    "window_chunk",
]
