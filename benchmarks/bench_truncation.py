"""Truncation policies side by side: WikiText-2 with fixed k = 35 against AWD-LSTM's variable length, and the explode
sweep's truncation rows.

    python benchmarks/bench_truncation.py --data-dir ../shared/data/wikitext-2 --fraction 0.25 --sweep

1. ``configs/lm/wikitext2_lstm.yaml`` (fixed k = 35: 35-token batches, one update each) and
   ``configs/lm/wikitext2_lstm_awd_bptt.yaml`` (140-token batches cut by ``VariableLength(70, 5, 0.05)``, lr × length
   / 70), the same 2×200 LSTM, each for one epoch cut to ``--fraction`` of its batches (the same tokens: 35 × 4 =
   140), then the full validation split. Printed: updates, tokens, val ppl, training tokens/s (tokens over the wall
   time from the run's first TensorBoard event to its last ``train/loss``) and the whole fit's wall time.
2. ``--sweep``: the explode sweep (``configs/sweeps/explode.yaml``) restricted to its truncation rows (full BPTT
   ``noclip``, ``tbptt20``, ``overlap20_40``, ``varlen20``), its report.md printed.

Everything goes under ``--out`` (default ``runs/bench_truncation``); a figure is printed as each part ends, and
``results.md`` there collects them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "fixed k=35": ("configs/lm/wikitext2_lstm.yaml", 35),
    "VariableLength(70, 5, 0.05)": ("configs/lm/wikitext2_lstm_awd_bptt.yaml", 140),
}
SWEEP_ROWS = ["noclip", "tbptt20", "overlap20_40", "varlen20"]


def events(run_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def first_wall(run_dir: Path) -> float:
    """Wall time of the run's first event (fit start, before the first batch)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    path = sorted(run_dir.glob("events.out.tfevents.*"))[0]
    return next(iter(EventFileLoader(str(path)).Load())).wall_time


def lm_run(name: str, config: str, seq_len: int, args: argparse.Namespace, out: Path) -> str:
    where = out / name.split("(")[0].replace(" ", "_").replace("=", "")
    where.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "seqstab.train", "fit", "-c", str(REPO / config), "--data.data_dir", args.data_dir]
    cmd += ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(args.fraction)]
    cmd += ["--trainer.enable_progress_bar", "false", "--seed_everything", "0"]
    if args.limit_val is not None:
        cmd += ["--trainer.limit_val_batches", str(args.limit_val)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=where, env={**os.environ, "PYTHONWARNINGS": "ignore"}, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return f"| {name} | failed (exit {done.returncode}) | | | | |"
    run_dir = sorted((where / "runs" / "seqstab").glob("version_*"))[-1]
    series = events(run_dir)
    losses = series["train/loss"]
    batches = int(args.fraction * {35: 2984, 140: 746}[seq_len])  # 2,088,628 train tokens / 20 streams
    tokens = batches * 20 * seq_len
    train_wall = losses[-1].wall_time - first_wall(run_dir)
    ppl = series["val/ppl"][-1].value
    return f"| {name} | {len(losses)} | {tokens:,} | **{ppl:.1f}** | {tokens / train_wall:,.0f} | {wall / 60:.1f} min |"


def sweep(out: Path) -> str:
    spec = yaml.safe_load((REPO / "configs" / "sweeps" / "explode.yaml").read_text())
    spec["base"] = str(REPO / "configs" / "explode" / "adding_rnn.yaml")
    spec["variants"] = {name: spec["variants"][name] for name in SWEEP_ROWS}
    path = out / "explode_truncation.yaml"
    path.write_text("# python benchmarks/bench_truncation.py --sweep\n" + yaml.safe_dump(spec, sort_keys=False))
    cmd = [sys.executable, "-m", "seqstab.sweep", "--config", str(path), "--out", str(out / "sweeps")]
    subprocess.run(cmd, cwd=out, env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=True)
    return (out / "sweeps" / "explode_truncation" / "report.md").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="WikiText-2 (train.txt, valid.txt, test.txt)")
    parser.add_argument("--fraction", type=float, default=1.0, help="of an epoch's batches (1: a full epoch)")
    parser.add_argument("--sweep", action="store_true", help="also run the explode sweep's truncation rows")
    parser.add_argument("--limit-val", type=int, default=None, help="validation batches (smoke tests; default all)")
    parser.add_argument("--skip-lm", action="store_true", help="only the sweep")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_truncation"))
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.md"
    lines = [
        f"WikiText-2, 2x200 LSTM, one epoch cut to {args.fraction:g} of its batches, then the full validation split",
        "",
        "| truncation | updates | tokens | val ppl | train tokens/s | fit wall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    if not args.skip_lm:
        for name, (config, seq_len) in RUNS.items():
            lines.append(lm_run(name, config, seq_len, args, out))
            results.write_text("\n".join(lines) + "\n")
            print("\n".join(lines), flush=True)
    if args.sweep:
        report = sweep(out)
        results.write_text("\n".join(lines) + "\n\n" + report)
        print(report, flush=True)


if __name__ == "__main__":
    main()
