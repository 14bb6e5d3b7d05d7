"""Every benchmark of this folder run once in its smallest setting, one after the other: does each still run to the
end and print its figures? The figures themselves mean nothing at these sizes. A change that moves files, tags or
exit codes breaks benchmarks that no test runs. On 2026-12-07 four were found broken this way.

    python benchmarks/smoke.py                      # all of them, ~13 min on 2 cores (2026-12-07)
    python benchmarks/smoke.py bench_etth1 bench_peer   # some of them
    .venv-peers/bin/python benchmarks/smoke.py bench_callback_peers bench_neuralforecast   # the peers' own
                                                                                           # environment

A benchmark that needs a library the interpreter lacks (darts, neuralforecast, pytorch-forecasting, Ray) is
skipped, and the table says so. Outputs go to a temporary folder, so nothing is written into the checkout. Exit 1
if any benchmark failed. ``tests/test_benchmarks.py`` checks that every ``bench_*.py`` has an entry here.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TIMEOUT_S = 400  # each command's limit: the slowest smallest setting (bench_false_alarms --collect) takes ~3 min

# script -> (modules it needs, [arguments of each command]); "{out}" is the run's temporary folder
SMOKE: dict[str, tuple[tuple[str, ...], list[list[str]]]] = {
    "bench_dropout": ((), [["--widths", "16", "--rounds", "1", "--calls", "10"]]),
    "bench_events": ((), [["--tags", "7", "--rounds", "1", "--events", "10"]]),
    "bench_data": ((), [["--repeats", "1", "--tokenizers", "word"]]),
    "bench_origin": ((), [["--repeats", "1"]]),
    "bench_monitor": ((), [["--block", "100", "--cycles", "1", "--warmup", "1"]]),
    "bench_guard": ((), [["--rounds", "1", "--lm-updates", "2", "--small-updates", "10"]]),
    "bench_throughput": (
        (),
        [["--rounds", "1", "--updates", "2", "--warmup", "1"], ["--fused", "--vocab", "10000", "--repeats", "1"]],
    ),
    "bench_memory": ((), [["--lengths", "5000,10000"]]),
    "bench_onset": ((), [["--out", "{out}/onset"]]),
    "bench_faults": ((), [["--points", "9"]]),
    "bench_stations": ((), [["--updates", "20", "--warmup", "5", "--ops"]]),
    "bench_withhold": ((), [["--vocab", "1000", "--hidden", "16", "--rounds", "1", "--steps", "2"]]),
    "bench_peer": ((), [["--settings", "floor", "--rounds", "1", "--updates", "10", "--warmup", "5", "--every", "5"]]),
    "bench_truncation": (
        (),
        [
            ["--bias", "--out", "{out}/truncation"],
            ["--fraction", "0.005", "--limit-val", "2", "--sweep", "--out", "{out}/truncation_sweep"],
        ],
    ),
    "bench_sweep_backends": (("ray",), [["--budget", "1", "--rounds", "1"]]),
    "bench_etth1": ((), [["--epochs", "1", "--models", "lstm"]]),
    "bench_forecast": (
        (),
        [
            ["--system", "naive", "--out", "{out}/forecast"],
            ["--system", "seqstab-lstm", "--out", "{out}/forecast"],
            ["--report", "--out", "{out}/forecast"],
        ],
    ),
    "bench_neuralforecast": (("neuralforecast",), [["--steps", "8", "--warmup", "1", "--rounds", "1"]]),
    "bench_callback_peers": (
        ("darts", "neuralforecast", "pytorch_forecasting"),
        [["--steps", "20", "--cost-steps", "10", "--warmup", "2", "--spike-at", "12", "--norms", "{out}/norms.json"]],
    ),
    "bench_false_alarms": ((), [["--collect", "{out}/runs_norms.json", "--steps", "5", "--timeout", "60"]]),
}


def run(name: str, out: Path) -> tuple[str, float, str]:
    """``(result, seconds, detail)`` of one benchmark's commands, run in order until one fails."""
    needs, commands = SMOKE[name]
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        return "skipped", 0.0, f"needs {', '.join(missing)}"
    out.mkdir(parents=True)
    start = time.perf_counter()
    for args in commands:
        cmd = [sys.executable, str(BENCH / f"{name}.py"), *(a.format(out=out) for a in args)]
        try:
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return "FAILED", time.perf_counter() - start, f"{' '.join(args)}: over {TIMEOUT_S} s"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            return "FAILED", time.perf_counter() - start, f"{' '.join(args)}: exit {done.returncode}: {tail[0][:200]}"
    return "ok", time.perf_counter() - start, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(SMOKE)}")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n.removesuffix(".py") not in SMOKE]
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)}")
    names = [n.removesuffix(".py") for n in args.names] or list(SMOKE)
    print("| benchmark | result | seconds | detail |\n|---|---|---:|---|", flush=True)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="bench_smoke_") as tmp:
        for name in names:
            result, seconds, detail = run(name, Path(tmp) / name)
            failed += result == "FAILED"
            print(f"| {name} | {result} | {seconds:.0f} | {detail} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
