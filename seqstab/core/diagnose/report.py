"""A diagnosis at an event (and again at replay), and how it reads: console lines and TensorBoard markdown."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from seqstab.core.diagnose.findings import (
    FLOW_EVERY,
    Finding,
    data_finding,
    flow_profile,
    optimizer_finding,
    rank,
    ranked_lines,
    ranked_rows,
    time_and_depth,
    times,
)
from seqstab.core.diagnose.origin import origin_lines, origin_markdown
from seqstab.core.diagnose.remedies import Remedies, remedies_for
from seqstab.core.diagnose.tracker import Tracker, inputs_of


def diagnose_event(run: Any, update: Any, tracker: Tracker) -> dict[str, Any]:
    """The diagnosis of ``update`` (a guard event) from the live run: flow measured now, the rest from ``tracker``."""
    module = run.module
    clipping = getattr(getattr(module, "core", None), "clipping", None)
    remedies = remedies_for(run.net, clipping, run.optimizer)
    if tracker.flow is not None and update.step - tracker.flow[0] < FLOW_EVERY:  # an event storm: measured lately
        step, time, depth = tracker.flow
        later = f" (measured at update {step})"
        time, depth = (Finding(**{**f, "evidence": f["evidence"] + later}) for f in (time, depth))
    else:
        time, depth = _flow_findings(run, update, remedies)
        tracker.flow = (update.step, asdict(time), asdict(depth))
    x = inputs_of(update.chunk)
    return rank(
        [
            time,
            depth,
            optimizer_finding(tracker, module, remedies),
            data_finding(tracker, x, remedies),
        ]
    )


def _flow_findings(run: Any, update: Any, remedies: Remedies) -> tuple[Finding, Finding]:
    """Time and depth from the flow profile of the event's chunk, measured now on the live module."""
    module = run.module
    why = "the net offers no recurrent layers to follow (seqstab.nets: recurrent contract)"
    profile = None
    if hasattr(module, "chunk_loss") and isinstance(update.chunk, dict):
        try:
            profile = flow_profile(run.net, lambda: module.chunk_loss(update.chunk, update.hidden_in)[0])
        except Exception as err:  # a measurement must never end the run it explains
            why = f"the flow could not be measured ({type(err).__name__}: {err})"
    else:
        why = "measured by python -m seqstab.replay (the run's loss is not a seqstab task's chunk loss)"
    return time_and_depth(profile, why, remedies)


def rediagnose(stored: dict[str, Any] | None, profile: np.ndarray | None, why: str, remedies: Remedies) -> dict:
    """Replay: the flow findings recomputed from ``profile``, the optimizer and data findings as the run stored them."""
    time, depth = time_and_depth(profile, why, remedies)
    kept = {f["mechanism"]: f for f in (stored or {}).get("ranked", [])}
    others = []
    for name in ("optimizer", "data"):
        f = kept.get(name)
        if f is None:
            others.append(Finding(name, None, "not recorded in the snapshot"))
        else:
            score = f["score"] if not isinstance(f["score"], str) else float(f["score"])
            others.append(Finding(name, score, f["evidence"], list(f.get("remedies", []))))
    return rank([time, depth, *others])


def lines(diagnosis: dict[str, Any]) -> list[str]:
    """The diagnosis as console lines: the verdict, then each mechanism with its score, evidence and remedies."""
    top = diagnosis.get("top")
    out = [
        f"why: {top} ({times(diagnosis['ranked'][0]['score'])} amplification)"
        if top
        else "why: no mechanism stands out (none shows a tenfold amplification)"
    ]
    out += origin_lines(diagnosis.get("origin"))  # a non-finite event: where its first non-finite value appeared
    return out + ranked_lines(diagnosis["ranked"], width=9)


def markdown(diagnosis: dict[str, Any]) -> str:
    rows = ranked_rows(diagnosis["ranked"], "amplification")
    where = origin_markdown(diagnosis.get("origin"))
    return f"**why**: {diagnosis.get('top') or 'no mechanism stands out'}\n\n{where}" + "\n".join(rows)
