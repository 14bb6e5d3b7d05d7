"""Wall time of one sweep on the local backend against a local Ray with the same number of cores, side by side.

    python benchmarks/bench_sweep_backends.py                 # ~12 min on 2 cores; --help for the knobs

The sweep (default: ``configs/sweeps/stability_map.yaml`` cut to ``--budget 2`` runs per variant, 18 runs) runs as a
user runs it, ``python -m seqstab.sweep``, once with ``--backend local --jobs C`` and once with ``--backend ray
--cpus-per-run 1`` (Ray started by the sweep with all C cores: its start-up counts), each into a fresh directory,
alternating the order round by round (local first in odd rounds). Each wall time is the whole command; the ratio
is Ray / local per round, and its median. Every round also checks that both reports hold the same metrics bit for
bit (``report.csv`` without the wall-time column).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def derived_sweep(path: Path, budget: int | None, directory: Path) -> Path:
    """The sweep file with its search budget cut (its base resolved against the original's directory)."""
    spec = yaml.safe_load(path.read_text())
    bases = spec.get("base") or []
    bases = [bases] if isinstance(bases, str) else bases
    spec["base"] = [str((path.parent / b).resolve()) for b in bases]
    if budget is not None and spec.get("search"):
        spec["search"]["budget"] = budget
    out = directory / path.name
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def run(sweep: Path, out: Path, backend: str, cores: int) -> float:
    cmd = [sys.executable, "-m", "seqstab.sweep", "--config", str(sweep), "--out", str(out)]
    cmd += ["--jobs", str(cores)] if backend == "local" else ["--backend", "ray", "--cpus-per-run", "1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{backend} sweep failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return wall


def metrics(report: Path) -> list[dict[str, str]]:
    with open(report) as f:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "sweeps" / "stability_map.yaml")
    parser.add_argument("--budget", type=int, default=2, help="search runs per variant (default 2; none: the file's)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="local --jobs; Ray's CPUs are all")
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        tmp = Path(tmp)
        sweep = derived_sweep(args.config, args.budget, tmp)
        name = yaml.safe_load(sweep.read_text()).get("name") or sweep.stem
        for i in range(args.rounds):
            order = ("local", "ray") if i % 2 == 0 else ("ray", "local")
            walls = {}
            for backend in order:
                out = tmp / f"round{i}-{backend}"
                walls[backend] = run(sweep, out, backend, args.cores)
            same = metrics(tmp / f"round{i}-local" / name / "report.csv") == metrics(
                tmp / f"round{i}-ray" / name / "report.csv"
            )
            ratios.append(walls["ray"] / walls["local"])
            print(
                f"round {i + 1} ({' then '.join(order)}): local {walls['local']:.1f} s, ray {walls['ray']:.1f} s, "
                f"ray/local {ratios[-1]:.3f}; same report: {same}",
                flush=True,
            )
    print(f"ray/local wall, median of {len(ratios)} rounds: {statistics.median(ratios):.3f} (goal: <= 1.10)")


if __name__ == "__main__":
    main()
