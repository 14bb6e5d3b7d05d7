"""Determinism on the GPU: two runs of the explode config with ``--trainer.deterministic true`` must give bitwise-equal
``grad/norm_total`` series, the same first line of ``explosions.jsonl`` and bitwise-equal final weights; a third run
without the flag is compared with them too (equal or not: it is reported).

    python benchmarks/gpu/determinism.py OUT.json DET_A_ROOT DET_B_ROOT NONDET_ROOT

Each ROOT is the ``--trainer.default_root_dir`` of one run. The series are read back from the TensorBoard event files
with TensorBoard's ``EventAccumulator`` (float32, as logged) and compared as bytes.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import _repo
import torch


def run_dir(root: Path) -> Path | None:
    runs = sorted(root.glob("runs/*/version_*"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def load(root: Path) -> dict:
    d = run_dir(root)
    if d is None:
        return {"root": str(root), "error": "no run directory"}
    events = d / "explosions.jsonl"
    lines = events.read_text().splitlines() if events.is_file() else []
    ckpt = d / "checkpoints" / "last.ckpt"
    manifest = d / "manifest.json"
    return {
        "root": str(root),
        "run_dir": str(d),
        "series": _repo.scalars(d).get("grad/norm_total", []),
        "events": lines,
        "weights": torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"] if ckpt.is_file() else None,
        "manifest": json.loads(manifest.read_text()) if manifest.is_file() else {},
    }


def compare(a: dict, b: dict) -> dict:
    sa, sb = _repo.float32_bits(a["series"]), _repo.float32_bits(b["series"])
    first_diff = next((x[0] for x, y in zip(sa, sb, strict=False) if x != y), None)
    if first_diff is None and len(sa) != len(sb):
        first_diff = min(len(sa), len(sb))
    rel = [
        abs(x - y) / abs(x)
        for (_, x), (_, y) in zip(a["series"], b["series"], strict=False)
        if math.isfinite(x) and math.isfinite(y) and x != 0
    ]
    weights = None
    if a["weights"] is not None and b["weights"] is not None:
        weights = a["weights"].keys() == b["weights"].keys() and all(
            torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"]
        )
    return {
        "points": [len(sa), len(sb)],
        "grad_norm_total_bitwise_equal": sa == sb and len(sa) > 0,
        "first_differing_update": first_diff,
        "max_rel_diff": max(rel) if rel else None,
        "first_event_equal": bool(a["events"]) and a["events"][:1] == b["events"][:1],
        "all_events_equal": a["events"] == b["events"],
        "final_weights_bitwise_equal": weights,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("det_a")
    parser.add_argument("det_b")
    parser.add_argument("nondet")
    args = parser.parse_args()
    runs = {name: load(Path(root)) for name, root in (("det_a", args.det_a), ("det_b", args.det_b),
                                                        ("nondet", args.nondet))}  # fmt: skip
    result: dict = {"runs": {}}
    for name, r in runs.items():
        if "error" in r:
            result["runs"][name] = r
            continue
        first = json.loads(r["events"][0]) if r["events"] else None
        norms = [v for _, v in r["series"]]
        result["runs"][name] = {
            "run_dir": r["run_dir"],
            "updates_logged": len(r["series"]),
            "first_event": first,
            "events": len(r["events"]),
            "first_update_norm_above_1e6": next((s for s, v in r["series"] if not v <= 1e6), None),
            "first_non_finite_update": next((s for s, v in r["series"] if not math.isfinite(v)), None),
            "peak_finite_norm": max((v for v in norms if math.isfinite(v)), default=None),
            "determinism": r["manifest"].get("determinism"),
            "device": r["manifest"].get("device"),
        }
    ok = all("error" not in r for r in runs.values())
    if ok:
        result["det_a_vs_det_b"] = compare(runs["det_a"], runs["det_b"])
        result["det_a_vs_nondet"] = compare(runs["det_a"], runs["nondet"])
        d = result["det_a_vs_det_b"]
        result["pass"] = bool(d["grad_norm_total_bitwise_equal"] and d["first_event_equal"])
        result["nondet_differs"] = not result["det_a_vs_nondet"]["grad_norm_total_bitwise_equal"]
    else:
        result["pass"] = False
    _repo.write_json(args.out, result)
    print(json.dumps(result, indent=1, default=str)[:4000])


if __name__ == "__main__":
    main()
