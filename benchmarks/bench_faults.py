"""Fault injection at scale: a stateful LSTM language model stopped at 50 seeded points and resumed each time.

    python benchmarks/bench_faults.py             # ~4 min on 2 cores; --points N, --seed S, --kinds K ...

The run and the points are those of ``tests/fault_injection.py``: a 2-layer LSTM LM with dropout, truncated BPTT
(2 chunks a batch), ZClip, a checkpoint every 4 updates and validation every 6 batches, stopped at a seeded point,
then resumed with ``--ckpt_path last``. A point is a kind and an update: SIGKILL after a training batch, inside a
validation pass, or inside a checkpoint save (the file written to its temporary part, not yet renamed); or SIGTERM
or SIGINT (seqstab's clean stop: the batch in flight completes, ``last.ckpt`` is saved, exit 143 / 130) sent as a
batch starts, inside a validation pass, or as a batch starts and again inside the save it causes (the save
abandoned). Printed: how many of the resumed runs end bitwise where the uninterrupted run ends (weights, optimizer
and clipping state, update and step counts), per kind of point, and any point whose run did not end with its
kind's exit code. Each run is a fork of this process (one torch thread), so the ~8 s of importing Lightning is
paid once.
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

KINDS = [*fault_injection.LAST, *(f"{sig}/{where}" for sig in ("SIGTERM", "SIGINT") for where in fault_injection.LAST)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=50, help="stop points (the first: one of each kind)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the points after the first of each kind")
    parser.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS, help="kinds of point (default: all)")
    args = parser.parse_args(argv)
    kills = fault_injection.points(args.points, args.seed, tuple(args.kinds))
    print(f"machine: {_common.machine()}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root, tqdm(total=len(kills), desc="stop and resume", unit="point") as bar:
        results = fault_injection.check(Path(root), kills, progress=bar.update)
    elapsed = time.perf_counter() - start
    exact = sum(ok for *_, ok in results)
    print("\n| point | stops | resumed bitwise equal |\n|---|---:|---:|")
    kinds, good = Counter(w for w, *_ in results), Counter(w for w, _, _, ok in results if ok)
    for kind in sorted(kinds):
        print(f"| {kind} | {kinds[kind]} | {good[kind]} |")
    missed = [(w, at, code) for w, at, code, ok in results if not ok]
    if missed:
        print("\nnot exact (kind, after update, exit code of the stopped run): " + ", ".join(map(str, missed)))
    not_stopped = [(w, at, code) for w, at, code, _ in results if code != fault_injection.exit_code(w)]
    if not_stopped:
        print("points whose run did not end with its kind's exit code: " + ", ".join(map(str, not_stopped)))
    print(f"\n{exact} of {len(results)} resumes bitwise equal ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
