"""What the non-finite origin search costs at an event, against one plain forward and backward of the same chunk.
Printed, never asserted.

    python benchmarks/bench_origin.py                 # the word-LM benchmark model, a chunk of 20 x 35 tokens
    python benchmarks/bench_origin.py --threads 1 --repeats 10

The model is ``benchmarks/bench_monitor.py``'s: pytorch/examples' word LM (embedding 200, 2 x 200 LSTM, dropout
0.2, decoder to 33,278 words), one chunk of 20 streams x 35 tokens. Timed, each the median of ``--repeats``:

    plain       the chunk's loss (SeqTask.chunk_loss) and loss.backward(): what one update's gradient costs
    search      find_origin on a finite update: every module hooked, the forward, then the backward (the most
                the search does: it stops after the forward when the forward is already non-finite)
    forward     find_origin on an update whose loss is nan (a NaN in the hidden state carried in): the forward only

The search runs at a guard event whose loss, norm or weights are non-finite, never between events.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_monitor import VOCAB, machine  # noqa: E402
from seqstab.core.diagnose import find_origin  # noqa: E402
from seqstab.core.monitor import flow_layers  # noqa: E402
from seqstab.data.module import DataSpec  # noqa: E402
from seqstab.nets.recurrent import RecurrentNet  # noqa: E402
from seqstab.tasks import LanguageModel  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall time and median process CPU time of ``fn()`` in ms (after one warm-up call). On a shared CPU the
    CPU time is the steadier figure; on a GPU only the wall time means anything."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        walls.append((time.perf_counter() - start) * 1e3)
        cpus.append((time.process_time() - cpu) * 1e3)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each (median)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    spec = DataSpec(kind="lm", vocab_size=VOCAB, stateful=True)
    model = LanguageModel(spec=spec, net=partial(RecurrentNet, hidden_size=200, num_layers=2, dropout=0.2), dropout=0.2)
    model.to(device).train()
    tokens = torch.randint(0, VOCAB, (20, 36), device=device)
    chunk = {"x": tokens[:, :-1], "y": tokens[:, 1:]}  # (20, 35) each

    def loss() -> torch.Tensor:
        return model.chunk_loss(chunk, None)[0]

    def plain() -> None:
        model.zero_grad(set_to_none=True)
        loss().backward()

    layers = flow_layers(model.net)
    search = timed(lambda: find_origin(model, loss, layers, chunk), args.repeats)
    base = timed(plain, args.repeats)
    finite = find_origin(model, loss, layers, chunk)
    state = tuple((torch.zeros(1, 20, 200, device=device), torch.zeros(1, 20, 200, device=device)) for _ in "ab")
    state[0][0][0, 3, 7] = float("nan")  # a NaN carried in: the loss is nan, the search stops after the forward
    forward = timed(lambda: find_origin(model, lambda: model.chunk_loss(chunk, state)[0], layers, chunk), args.repeats)
    nan_origin = find_origin(model, lambda: model.chunk_loss(chunk, state)[0], layers, chunk)

    print(f"machine: {machine()}")
    print(f"model: word LM, 2 x 200 LSTM, vocabulary {VOCAB:,}, chunk 20 x 35 tokens, on {device}")
    print(f"{'':31} {'wall ms':>9} {'CPU ms':>9} {'wall':>7} {'CPU':>7}")
    for label, (wall, cpu), what in (
        ("plain forward + backward", base, ""),
        ("origin search, finite update", search, finite["evidence"]),
        ("origin search, nan loss", forward, nan_origin["evidence"]),
    ):
        print(f"{label:<31} {wall:9.1f} {cpu:9.1f} {wall / base[0]:6.2f}x {cpu / base[1]:6.2f}x  {what[:44]}")


if __name__ == "__main__":
    main()
