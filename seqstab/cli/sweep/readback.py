"""Reading a finished run back from its folder (TensorBoard events, ``explosions.jsonl``, ``manifest.json``, the
done or failed marker) and summing it up as one row of the report."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from seqstab.cli.sweep.combination import Combination, format_value
from seqstab.cli.sweep.folders import DONE_FILE, FAILED_FILE, GUARD_STOPPED, guard_stopped

TRAIN_TAIL = 20  # final train loss: mean over the last this many updates
SPIKE_REASONS = ("spike", "non-finite")  # spike_count: events of these reasons (a max_norm event is not counted)


def is_finished(row: dict[str, Any]) -> bool:
    """Whether a report row's run finished: ``done``, or stopped by the explosion guard."""
    return row["status"] in ("done", GUARD_STOPPED)


def read_run(run_dir: Path) -> dict[str, Any]:
    """Scalars, explosion events, manifest and outcome of one run directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    if run_dir.is_dir():
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    events_file = run_dir / "explosions.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines()] if events_file.is_file() else []
    return {
        "scalars": scalars,
        "events": events,
        "manifest": _read_json(run_dir / "manifest.json"),
        "done": _read_json(run_dir / DONE_FILE),
        "failed": _read_json(run_dir / FAILED_FILE),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(run: Combination, data: dict[str, Any]) -> dict[str, Any]:
    """One report row: swept values, explosion steps, norms, clipping, final metrics, chance baseline, wall time."""
    scalars, events, done = data["scalars"], data["events"], data["done"]
    norms = [v for _, v in scalars.get("grad/norm_total", [])]
    finite = [v for v in norms if math.isfinite(v)]
    nonfinite_steps = [s for s, v in scalars.get("grad/norm_total", []) if not math.isfinite(v)]
    clipped = [v for _, v in scalars.get("grad/clipped", [])]
    train = [v for _, v in scalars.get("train/loss", [])][-TRAIN_TAIL:]
    growth = [v for _, v in scalars.get("grad_flow/growth", []) if math.isfinite(v)]
    row: dict[str, Any] = {"run": run.id, "variant": run.variant or ""}
    row.update({k: format_value(v) for k, v in run.values.items()})
    row.update(
        {
            "status": status(data),
            "updates": len(norms),
            "first_explosion_step": events[0]["update"] if events else None,
            "first_nonfinite_step": nonfinite_steps[0] if nonfinite_steps else None,
            "spike_count": sum(e.get("reason") in SPIKE_REASONS for e in events) if norms else None,
            "initial_norm": next((v for v in norms if v > 0), None),  # the first gradient: untrained weights
            "max_pre_clip_norm": max(finite) if finite else None,
            "frac_clipped": sum(clipped) / len(clipped) if clipped else None,
            "final_train_loss": statistics.fmean(train) if train else None,
        }
    )
    for tag in sorted(t for t in scalars if t.startswith("val/")):
        row[f"final_{tag}"] = scalars[tag][-1][1]
    manifest = data["manifest"] or {}
    row["chance_loss"] = (manifest.get("task") or {}).get("chance_loss")
    row["grad_flow_growth"] = statistics.median(growth) if growth else None
    row["wall_s"] = done["wall_s"] if done else None
    return row


def status(data: dict[str, Any]) -> str:
    """``done``, ``guard stopped`` (finished with exit 3: the explosion guard applied no update, or stopped the run
    for skipping too many in a row), ``failed (exit N)`` or ``missing`` (never run, or stopped)."""
    if data["done"]:
        return GUARD_STOPPED if guard_stopped(data["done"].get("exit_code")) else "done"
    return f"failed (exit {data['failed']['exit_code']})" if data["failed"] else "missing"
