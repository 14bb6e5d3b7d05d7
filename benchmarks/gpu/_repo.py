"""Put the repository root on ``sys.path`` (``python benchmarks/gpu/<helper>.py`` from a clean checkout finds
seqstab, datamodules and benchmarks/_common.py), and small pieces the GPU helpers share."""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def write_json(path: str | Path, data: dict) -> None:
    """``data`` as JSON (inf and nan as strings, so any JSON reader takes it)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(_plain(data), indent=1) + "\n")


def _plain(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the TensorBoard event files under ``run_dir``: ``tag -> [(step, value)]`` (float32 as
    stored), read with TensorBoard's own ``EventAccumulator``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(run_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def float32_bits(series: list[tuple[int, float]]) -> list[tuple[int, bytes]]:
    """``(step, the float32's bytes)``: bitwise comparison in which nan equals nan when the payload is the same."""
    return [(step, struct.pack("<f", value)) for step, value in series]
