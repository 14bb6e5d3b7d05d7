"""Memory of truncated BPTT: peak RSS of a Forecaster trained statefully over one series of 10^4 and of 10^6 steps.

    python benchmarks/bench_memory.py                     # ~3 min on 2 cores; --help for the knobs

Each length trains in a fresh subprocess through ``python -m seqstab.train`` (its ``main``, in process, so
``ru_maxrss`` is the run's own peak): a 1-layer LSTM ``Forecaster`` (64 units, ``tbptt_steps: 100``) on one
``SumOfSines`` series in ``stream`` mode (one stream, so the hidden state crosses the whole series), windows of
``--input-length`` steps, one epoch, validation on. Goal: peak RSS at 10^6 / at 10^4 ≤ 1.1 -- memory
independent of the series' length. The runs use one torch thread (``--threads``): on a 2-core machine shared
with other work, OpenMP's barriers on two threads make a small LSTM's backward tens of times slower; the threads
change the speed, not the memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import _common


def child(length: int, input_length: int, hidden: int, tbptt: int, max_epochs: int) -> None:
    """Train once in this process and print one JSON line: peak RSS (MiB), wall time."""
    from seqstab.cli.train import main

    args = [
        "fit",
        "--model", "seqstab.tasks.Forecaster",
        "--model.net.hidden_size", str(hidden),
        "--model.tbptt_steps", str(tbptt),
        "--data", "datamodules.timeseries.SumOfSines",
        "--data.length", str(length),
        "--data.mode", "stream",
        "--data.input_length", str(input_length),
        "--trainer.max_epochs", str(max_epochs),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.enable_checkpointing", "false",
    ]  # fmt: skip
    start = time.perf_counter()
    with open(os.devnull, "w") as sink:
        stdout, sys.stdout = sys.stdout, sink
        try:
            code = main(args)
        finally:
            sys.stdout = stdout
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"length": length, "code": code, "peak_mib": peak_mib, "seconds": seconds}))


def measure(length: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(length), "--input-length", str(args.input_length)]
    cmd += ["--hidden", str(args.hidden), "--tbptt", str(args.tbptt)]
    with tempfile.TemporaryDirectory() as run_dir:  # runs/ lands here
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        done = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"length {length} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="10000,1000000", help="series lengths, comma-separated")
    parser.add_argument("--input-length", type=int, default=1000, help="steps per batch (data.input_length)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--tbptt", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the runs (speed only; 0: torch's)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.input_length, args.hidden, args.tbptt, max_epochs=1)
        return
    print(f"machine: {_common.machine()}")
    print(f"Forecaster: 1×{args.hidden} LSTM, tbptt_steps {args.tbptt}, stream mode, one stream, "
          f"input_length {args.input_length}, 1 epoch, split 0.7/0.1/0.2")  # fmt: skip
    print("| series length | updates | peak RSS (MiB) | wall (s) |")
    print("|---:|---:|---:|---:|")
    results = []
    for length in (int(n) for n in args.lengths.split(",")):
        r = measure(length, args)
        updates = -(-round(0.7 * length) // args.tbptt)
        print(f"| {length:,} | ~{updates:,} | {r['peak_mib']:,.0f} | {r['seconds']:,.0f} |", flush=True)
        results.append(r)
    ratio = results[-1]["peak_mib"] / results[0]["peak_mib"]
    verdict = "met" if ratio <= 1.1 else "NOT met"
    print(f"\npeak RSS ratio {results[-1]['length']:,} / {results[0]['length']:,}: {ratio:.3f} (goal ≤ 1.1: {verdict})")


if __name__ == "__main__":
    main()
