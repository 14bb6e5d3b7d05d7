"""What a ``python -m seqstab.train fit`` run left: its run directory's manifest, TensorBoard scalars and the
``seqstab: A of U updates applied`` line of its log.

    python benchmarks/gpu/fit_summary.py ROOT LOG OUT.json [--seconds S]

ROOT is the run's ``--trainer.default_root_dir`` (the run directory is the newest ``runs/*/version_*`` under it).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import _repo

TAGS = ("train/loss", "grad/norm_total", "grad/norm_total_clipped", "val/loss", "val/ppl", "grad_flow/first",
        "grad_flow/growth", "explosion/events")  # fmt: skip


def summarize(root: Path, log: Path, seconds: float | None) -> dict:
    runs = sorted(root.glob("runs/*/version_*"), key=lambda p: p.stat().st_mtime)
    text = log.read_text(errors="replace") if log.is_file() else ""
    applied = re.findall(r"seqstab: (\d+) of (\d+) updates applied.*", text)
    out: dict = {"log": str(log), "seconds": seconds, "applied_line": None, "run_dir": None}
    if applied:
        out["applied"], out["attempted"] = int(applied[-1][0]), int(applied[-1][1])
        out["applied_line"] = re.findall(r"seqstab: \d+ of \d+ updates applied.*", text)[-1]
    if not runs:
        return out
    run = runs[-1]
    out["run_dir"] = str(run)
    manifest = run / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        out["device"] = m.get("device")
        out["determinism"] = m.get("determinism")
        out["versions"] = m.get("versions")
    tags = _repo.scalars(run)
    out["scalars"] = {
        tag: {"points": len(tags[tag]), "first": tags[tag][0], "last": tags[tag][-1]} for tag in TAGS if tag in tags
    }
    out["tags"] = sorted(tags)
    if seconds and out.get("attempted"):
        out["updates_per_s_whole_command"] = out["attempted"] / seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("log")
    parser.add_argument("out")
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args()
    result = summarize(Path(args.root), Path(args.log), args.seconds)
    _repo.write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "tags"}, indent=1, default=str)[:3000])


if __name__ == "__main__":
    main()
