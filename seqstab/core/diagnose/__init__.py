"""Why did it explode? The four mechanisms, ranked by what was measured at a guard event.

An update the explosion guard flags (:mod:`seqstab.guard`) gets a **diagnosis**: each mechanism that can make a
gradient explode, with the evidence measured for it and a **score**, the log10 of the amplification that evidence
shows (1 = tenfold; None = not measurable here), ranked highest first, with the remedies to try as seqstab settings:

=========  ===========================================================================  ==========================
mechanism  evidence (score = log10 of)                                                  measured
=========  ===========================================================================  ==========================
time       ``‖∂L/∂h_t‖`` of the top recurrent layer going back over the chunk: its       at the event: one more
           peak over its value at the last scored step (growth per step, where it        forward + backward of the
           peaked)                                                                      chunk, weights untouched
depth      at the last scored step, ``‖∂L/∂h‖`` of the bottom layer over the top         the same pass
           layer's (the per-layer ratio toward the input)
optimizer  the relative size ``‖Δθ‖/‖θ‖`` of the last applied update for the tensor     O(1) per update: the lr,
           it moved most, over that tensor's median over recent updates, or over        the clip scale, the
           ``REL_STEP`` (a step of 1 % of a tensor's norm) when that is larger           policy's per-tensor norms
data       the batch's largest input ``|x|`` over the median of recent batches'          O(1) per update: one
           (inf for a non-finite input)                                                  ``aminmax`` of the chunk
=========  ===========================================================================  ==========================

Time and depth are kept apart by where they are read: the time ratio within the top layer (nothing above it adds
depth), the depth ratio at the last scored step (nothing after it adds time). ``‖Δθ‖`` is the SGD step
``lr · s · ‖g_i‖`` (``s`` the clip scale, ``‖g_i‖`` the tensor's pre-clip norm): exact for plain SGD, a proxy for
optimizers that rescale or accumulate (Adam moves each coordinate by about ``lr`` whatever the gradient).
``‖θ‖`` is read at the event. A mechanism scoring ``IMPLICATED`` (1: tenfold) or more is a cause; the top one is
the diagnosis's ``top`` (None when none reaches it).

In a storm of events the flow is measured again only ``FLOW_EVERY`` (10) updates after it last was; the events in
between carry its findings, marked with the update they were measured at.

A non-finite event (loss, norm or weights) also gets its **origin**: where its first non-finite value appeared —
forward or backward, which module, which step of a recurrent layer, which rows, and what made it
(:mod:`seqstab.core.diagnose.origin`). Apart from explosions, the guard watches for **vanishing** gradients: a run
whose loss stagnates while the gradient to the chunk's first steps is nothing gets a finding of its own
(:mod:`seqstab.core.diagnose.vanishing`).

Between events the guard pays :meth:`Tracker.observe` per update: a few appends and one ``aminmax`` kernel, no host
sync. ``python -m seqstab.replay`` recomputes the flow profile of the snapshot's chunk and ranks it with the
optimizer and data evidence the run stored in the snapshot.
"""

from seqstab.core.diagnose.findings import (
    FLOW_EVERY,
    IMPLICATED,
    REL_STEP,
    Finding,
    data_finding,
    flow_profile,
    optimizer_finding,
    rank,
    time_and_depth,
)
from seqstab.core.diagnose.origin import find_origin, origin_lines
from seqstab.core.diagnose.recompute import event_origin, locate
from seqstab.core.diagnose.remedies import Remedies, remedies_for
from seqstab.core.diagnose.report import diagnose_event, lines, markdown, rediagnose
from seqstab.core.diagnose.tracker import Tracker, inputs_of, learning_rate, optimizer_path
from seqstab.core.diagnose.vanishing import FINDINGS_FILE, Vanishing, VanishingWatch, vanishing_lines

__all__ = [
    "data_finding",
    "diagnose_event",
    "event_origin",
    "find_origin",
    "FINDINGS_FILE",
    "Finding",
    "FLOW_EVERY",
    "flow_profile",
    "IMPLICATED",
    "inputs_of",
    "learning_rate",
    "lines",
    "locate",
    "markdown",
    "optimizer_finding",
    "optimizer_path",
    "origin_lines",
    "rank",
    "rediagnose",
    "REL_STEP",
    "Remedies",
    "remedies_for",
    "time_and_depth",
    "Tracker",
    "Vanishing",
    "vanishing_lines",
    "VanishingWatch",
]
