"""seqstab's dropout (``seqstab.nets.dropout``) against ``torch.nn.functional.dropout`` on the CPU, side by side.

    python benchmarks/bench_dropout.py                    # the word LM's activations, 2 threads, ~20 s
    python benchmarks/bench_dropout.py --threads 1 --rounds 9

For each shape (batch 20 × bptt 35 × width: 16 is the host-floor setting of ``bench_peer.py``, 200 the 2×200 LMs,
1500 the large one) the two functions run in alternating rounds (which goes first alternates too), each round
``--calls`` training-mode calls with ``p = 0.2`` after a few untimed ones; the table gives each one's median µs a
call (forward only: the backward of both is the same multiply by the mask), the ratio torch ÷ seqstab, and the
fraction of elements kept by seqstab's masks over all its calls (the keep probability, 0.8). The process keeps its
heap as ``python -m seqstab.train`` does (``seqstab.cli.heap.keep_heap``: the arrays of the largest shape are not
mapped and faulted in again at every call, for either function). Both draw from torch's
default CPU generator; the masks differ (another draw), so no bits are compared here: ``tests/test_dropout.py``
checks the mask's statistics and layout.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from seqstab.cli.heap import keep_heap
from seqstab.nets.dropout import dropout

P = 0.2


def timed(fn, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(x, P, True)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="16,200,1500", help="comma list of the last dimension")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    keep_heap()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds × {args.calls} calls, p = {P}\n")
    print("| shape | torch µs | seqstab µs | torch ÷ seqstab | kept by seqstab |")
    print("|---|---:|---:|---:|---:|")
    for width in (int(w) for w in args.widths.split(",")):
        x = torch.randn(20, 35, width)
        functions = {"torch": F.dropout, "seqstab": dropout}
        for fn in functions.values():
            timed(fn, x, 5)
        times: dict[str, list[float]] = {name: [] for name in functions}
        for r in range(args.rounds):
            for name in list(functions)[:: 1 if r % 2 == 0 else -1]:
                times[name].append(timed(functions[name], x, args.calls))
        kept = sum(int((dropout(x, P, True) != 0).sum()) for _ in range(20)) / (20 * x.numel())
        torch_us, ours_us = statistics.median(times["torch"]), statistics.median(times["seqstab"])
        print(f"| 20×35×{width} | {torch_us:.0f} | {ours_us:.0f} | {torch_us / ours_us:.2f} | {kept:.4f} |")


if __name__ == "__main__":
    main()
