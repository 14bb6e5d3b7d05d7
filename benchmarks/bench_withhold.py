"""What keeping a withheld update out costs an applied one: each optimizer's step alone, and with each way of
``seqstab.core.withhold`` around it, over the parameters of the word LM.

    python benchmarks/bench_withhold.py                     # 2×200 LSTM at 33,278 words (14 M parameters), ~1 min
    python benchmarks/bench_withhold.py --vocab 10000 --hidden 650 --threads 2

Every update calls the optimizer's step, and the guard's decision (``apply``, a 0-dim bool tensor) says whether it
counts. On the CPU seqstab reads that decision on the host (:class:`~seqstab.core.withhold.ReadOnHost`: a CPU kernel
has run by the time Python reads its result, so nothing waits) and undoes a withheld step from copies made for it
alone. On a GPU it decides on the device, never reading ``apply``: the gradient zeroed (``MaskGradient``, plain SGD),
the fused kernel's ``found_inf`` (``FoundInf``), or every parameter and state tensor copied before the step and
selected back after it (``Restore``, every other optimizer). This benchmark times both on the CPU, the device's way
as the GPU runs it (the CPU taken for an accelerator: ``withhold.reads_wait``), for an applied update: the common
case, and what every update pays.

The parameters are the word LM's (embedding, two LSTM layers, decoder: ``--vocab`` × ``--hidden``), each with a
random gradient; each optimizer is stepped once before timing (its state made), and the weights move on from one
optimizer to the next. Per optimizer and round, the plain step and the step with each way around it run
``--steps`` times each, one after the other; the table gives the median over rounds of the ms per step, and each
way's extra over the plain step.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import _common
import torch

from seqstab.core import withhold

OPTIMIZERS: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    "SGD": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "SGD momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "Adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
    "AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-3),
    "Adam fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
}


def word_lm_parameters(vocab: int, hidden: int, layers: int = 2) -> list[torch.nn.Parameter]:
    """The shapes of the word LM's parameters (embedding, ``layers`` LSTM layers, decoder), each with a gradient."""
    g = torch.Generator().manual_seed(0)
    shapes = [(vocab, hidden)]
    for _ in range(layers):
        shapes += [(4 * hidden, hidden), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    shapes += [(vocab, hidden), (vocab,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return params


@contextlib.contextmanager
def as_on_a_device() -> Iterator[None]:
    """The CPU taken for an accelerator, where reading a value waits: ``withholding`` picks the device's ways."""
    original = withhold.reads_wait
    withhold.reads_wait = lambda device: True
    try:
        yield
    finally:
        withhold.reads_wait = original


def timed(run: Callable[[], None], steps: int) -> float:
    """ms per call of ``run``, over ``steps`` calls."""
    start = time.perf_counter()
    for _ in range(steps):
        run()
    return 1e3 * (time.perf_counter() - start) / steps


def bench(name: str, params: list[torch.Tensor], rounds: int, steps: int) -> dict[str, tuple[str, float]]:
    """``{way: (strategy's class name, median ms per step)}`` for one optimizer: ``step`` alone, then ``cpu`` and
    ``device``, the step with each way's ``before``/``after`` around it, for an applied update."""
    optimizer = OPTIMIZERS[name](params)
    optimizer.step()  # the state made: the first step is decided on the host everywhere
    ways = {"cpu": withhold.withholding(optimizer)}
    with as_on_a_device():
        ways["device"] = withhold.withholding(optimizer)
    apply = torch.tensor(True)

    def around(way: withhold.Withholding) -> Callable[[], None]:
        def run() -> None:
            way.before(params, apply)
            optimizer.step()
            way.after(params, apply)

        return run

    runs = {"step": optimizer.step, **{label: around(way) for label, way in ways.items()}}
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(rounds):
        for label, run in runs.items():
            run()  # warm
            times[label].append(timed(run, steps))
    names = {"step": "", **{label: type(way).__name__ for label, way in ways.items()}}
    return {label: (names[label], statistics.median(ms)) for label, ms in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=33278, help="words: the embedding's and decoder's rows")
    parser.add_argument("--hidden", type=int, default=200, help="embedding = hidden units of each LSTM layer")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per optimizer")
    parser.add_argument("--steps", type=int, default=10, help="steps timed per way and round")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help=f"comma list of {', '.join(OPTIMIZERS)}")
    args = parser.parse_args(argv)
    chosen = args.optimizers.split(",")
    unknown = [o for o in chosen if o not in OPTIMIZERS]
    if unknown:
        known = ", ".join(OPTIMIZERS)
        parser.error(f"--optimizers: no optimizer {', '.join(map(repr, unknown))} (choose from {known})")
    for flag in ("vocab", "hidden", "rounds", "steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    params = word_lm_parameters(args.vocab, args.hidden)
    count = sum(p.numel() for p in params)
    print(f"machine: {_common.machine()}")
    print(
        f"parameters: the 2×{args.hidden} LSTM word LM at {args.vocab:,} words, {count / 1e6:.1f} M; an applied "
        f"update; median of {args.rounds} rounds × {args.steps} steps\n"
    )
    print("| optimizer | step ms | on the CPU: way | extra ms | as on a GPU: way | extra ms |")
    print("|---|---:|---|---:|---|---:|")
    for name in chosen:
        figures = bench(name, params, args.rounds, args.steps)
        step = figures["step"][1]
        (cpu_way, cpu), (device_way, device) = figures["cpu"], figures["device"]
        print(
            f"| {name} | {step:.2f} | {cpu_way} | {cpu - step:+.2f} | {device_way} | {device - step:+.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
