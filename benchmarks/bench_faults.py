"""Fault injection at scale: a stateful LSTM language model SIGKILLed at 50 seeded points and resumed each time.

    python benchmarks/bench_faults.py             # ~4 min on 2 cores; --points N, --seed S

The run and the points are those of ``tests/fault_injection.py`` (the CI test takes its first 5): a 2-layer LSTM
LM with dropout, truncated BPTT (2 chunks a batch), ZClip, a checkpoint every 4 updates and validation every 6
batches, killed after a training batch, inside a validation pass, or inside a checkpoint save (the file written to
its temporary part, not yet renamed), then resumed with ``--ckpt_path last``. Printed: how many of the resumed runs
end bitwise where the uninterrupted run ends (weights, clipping state, update and step counts), per kind of point.
Each run is a fork of this process (one torch thread), so the ~8 s of importing Lightning is paid once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import _common
from tqdm import tqdm

sys.path.insert(0, str(_common.REPO))  # tests.fault_injection, and the Kill callback the runs name by class path

from tests import fault_injection  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=50, help="kill points (the first 3: one of each kind)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the points after the first three")
    args = parser.parse_args(argv)
    kills = fault_injection.points(args.points, args.seed)
    print(f"machine: {_common.machine()}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root, tqdm(total=len(kills), desc="kill and resume", unit="point") as bar:
        results = fault_injection.check(Path(root), kills, progress=bar.update)
    elapsed = time.perf_counter() - start
    exact = sum(ok for *_, ok in results)
    print("\n| point | kills | resumed bitwise equal |\n|---|---:|---:|")
    kinds, good = Counter(w for w, *_ in results), Counter(w for w, _, _, ok in results if ok)
    for kind in sorted(kinds):
        print(f"| {kind} | {kinds[kind]} | {good[kind]} |")
    missed = [(w, at, code) for w, at, code, ok in results if not ok]
    if missed:
        print("\nnot exact (where, after update, exit code of the killed run): " + ", ".join(map(str, missed)))
    not_killed = [(w, at) for w, at, code, _ in results if code != -9]
    if not_killed:
        print("points that did not kill the run: " + ", ".join(map(str, not_killed)))
    print(f"\n{exact} of {len(results)} resumes bitwise equal ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
