"""Onset that moves with T: the first-update gradient norm of a linear RNN with W_hh = ρQ against the ρ^T line.

    python benchmarks/bench_onset.py                  # runs configs/sweeps/onset.yaml (finished runs are kept), ~2 min

Runs the sweep ``configs/sweeps/onset.yaml`` (``python -m seqstab.sweep``; ρ = 1.05, T = 25 ... 200, plain SGD, the
guard flagging norms above 1000) and prints, per T: the first update's pre-clip norm beside the ρ^T and ρ^(2T) lines
through the shortest T's norm; the growth of ‖∂L/∂h_t‖ over the chunk that the first event's diagnosis measured,
beside ρ^(T−1); the first event's update and the diagnosis's top cause.

Theory, for h_t = W_hh h_{t−1} + W_ih x_t with W_hh = ρQ: the backward flow is ∂L/∂h_1 = (W_hh^T)^(T−1) ∂L/∂h_T, so
‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ = ρ^(T−1) exactly. The forward state grows like ρ^T as well, and with it the error ∂L/∂h_T
and every h_{t−1} in ∂L/∂W_hh = Σ_t ∂L/∂h_t h_{t−1}^T, so the parameter gradient's norm grows like ρ^(2T).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import _common

SWEEP = _common.REPO / "configs" / "sweeps" / "onset.yaml"
RHO = 1.05


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/sweeps", help="the sweep's --out (default: runs/sweeps)")
    args = parser.parse_args(argv)
    subprocess.run([sys.executable, "-m", "seqstab.sweep", "--config", str(SWEEP), "--out", args.out], check=True)
    sweep_dir = Path(args.out) / "onset"  # the sweep writes under --out, relative to the working directory
    with open(sweep_dir / "report.csv") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["data.seq_len"]))
    print(f"machine: {_common.machine()}")
    print(f"linear RNN, W_hh = {RHO}·Q, adding problem, SGD lr 0.01, no clipping; guard max_norm 1000\n")
    print(
        "| T | first-update norm | ρ^T line | ρ^(2T) line | flow growth ‖∂L/∂h_1‖/‖∂L/∂h_T‖ (diagnosis) | ρ^(T−1) "
        "| first event (update) | top cause |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    t0, n0 = int(rows[0]["data.seq_len"]), float(rows[0]["initial_norm"])
    for row in rows:
        t, norm = int(row["data.seq_len"]), float(row["initial_norm"])
        event = first_event(sweep_dir / row["run"])
        flow, top = "", ""
        if event is not None:
            diagnosis = event.get("diagnosis") or {}
            top = diagnosis.get("top") or "none"
            time = next((f for f in diagnosis.get("ranked", []) if f["mechanism"] == "time"), None)
            flow = f"{10 ** float(time['score']):.3g}" if time and time["score"] is not None else "n/a"
        print(
            f"| {t} | {norm:.3g} | {n0 * RHO ** (t - t0):.3g} | {n0 * RHO ** (2 * (t - t0)):.3g} | {flow} "
            f"| {RHO ** (t - 1):.3g} | {event['update'] if event else 'none'} | {top} |"
        )
    slope = (math.log(float(rows[-1]["initial_norm"])) - math.log(n0)) / (int(rows[-1]["data.seq_len"]) - t0)
    t1, n1 = int(rows[-2]["data.seq_len"]), float(rows[-2]["initial_norm"])
    late = (math.log(float(rows[-1]["initial_norm"])) - math.log(n1)) / (int(rows[-1]["data.seq_len"]) - t1)
    print(
        f"\nfirst-update norm grows {math.exp(slope):.4g}x per step of T over T = {t0}..{rows[-1]['data.seq_len']}, "
        f"{math.exp(late):.4g}x over the last interval (ρ = {RHO}, ρ² = {RHO**2:.4g})"
    )


def first_event(run_dir: Path) -> dict | None:
    path = run_dir / "explosions.jsonl"
    if not path.is_file() or not path.read_text().strip():
        return None
    return json.loads(path.read_text().splitlines()[0])


if __name__ == "__main__":
    main()
