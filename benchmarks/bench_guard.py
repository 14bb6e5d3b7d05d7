"""Overhead of the explosion guard: the same training step with ``guard: ExplosionGuard`` and without.

    python benchmarks/bench_guard.py                      # ~3 min on 2 cores; --help for the knobs
    python benchmarks/bench_guard.py --workloads none     # only decide() alone and in place, ~30 s

Two workloads, each through ``Trainer.fit`` with the TensorBoard logger and ``NormClip``:

* ``lm``: the throughput benchmark's WikiText-2 word LM (2×200 LSTM, batch 20, bptt 35): the guard's cost
  against a realistic update (~0.4 s on 2 cores);
* ``small``: a vanilla tanh RNN (64 units, W_hh at spectral radius 1.5, adding problem T = 100, batch 50):
  an update of a few milliseconds, where any per-update Python cost shows.

"Without" is what a task runs with ``guard: null``: the watch-only ``ExplosionGuard(policy="warn", snapshot=False)``
that keeps a non-finite update from being applied; "with" is ``ExplosionGuard()`` (skip, snapshot armed). The
guard's own work on the update path (``arm``, ``decide``, ``keep``, ``after_step``, and ``settle`` at each flush)
is also timed directly (µs per update), which no machine noise hides, and ``decide`` alone when nothing happens,
warm (in a loop of its own) and in place (right after a 2×200 LSTM's forward and backward, as in a training step).
Runs alternate guard / no guard round by round; the figure is the ratio of the median update's speed
(over all rounds) with and without the guard, in wall time and in the process's CPU time; the ratio of per-run
medians is printed beside it.
(The gradient-flow monitor's overhead is measured by ``bench_monitor.py``.)
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from functools import partial

import _common
import torch
from bench_throughput import BATCH, Rows, fit_timed, make_language_model

from datamodules.base import batchify
from datamodules.synthetic import AddingProblem
from seqstab.core.clipping import NormClip
from seqstab.core.guard import ExplosionGuard
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import SequenceRegressor


def lm_run(rows, vocab_size, updates, warmup, guard) -> list[tuple[float, float]]:
    torch.manual_seed(0)
    model = make_language_model(vocab_size, guard=ExplosionGuard() if guard else None)
    return fit_timed(model, Rows(rows, vocab_size), updates, warmup)


class TimedGuard(ExplosionGuard):
    """ExplosionGuard that adds up the wall time of its own work on the update path."""

    STATIONS = ("arm", "decide", "keep", "after_step", "settle")

    def __init__(self):
        super().__init__()
        self.seconds, self.calls = 0.0, 0
        for name in self.STATIONS:
            setattr(self, name, self._timed(getattr(self, name), count=name == "decide"))

    def _timed(self, method, count: bool):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += count

        return timed


def small_run(updates, warmup, guard) -> list[tuple[float, float]]:
    torch.manual_seed(0)
    data = AddingProblem(seq_len=100, num_train=(updates + warmup) * 50, num_val=50, num_test=50, batch_size=50)
    model = SequenceRegressor(
        net=partial(RecurrentNet, cell="rnn", hidden_size=64, spectral_radius=1.5),
        spec=data.spec,
        clipping=NormClip(1.0),
        guard=guard if isinstance(guard, ExplosionGuard) else ExplosionGuard() if guard else None,
    )
    return fit_timed(model, data, updates, warmup)


def idle_decide_us(diagnose: bool, calls: int = 2000, repeats: int = 5) -> float:
    """µs per ``ExplosionGuard.decide`` when nothing happens (no event), best of ``repeats``: the guard's verdict on
    the device (no host read), with or without the diagnosis's running statistics (``diagnose``)."""
    from seqstab.core.clipping import ClipResult
    from seqstab.core.update import Update

    guard, best = ExplosionGuard(diagnose=diagnose, snapshot=False), math.inf
    norms = [torch.tensor(1.0 + (i % 7) / 100) for i in range(7)]
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            norm = norms[i % 7]
            guard.decide(None, Update(i, None, None, ClipResult(norm, norm, torch.tensor(False)), {}))
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    assert guard.events == 0
    return best


def decide_in_place_us(calls: int = 300) -> tuple[float, float]:
    """Median µs of ``decide`` (as in :func:`idle_decide_us`, diagnosis on) right after the forward and backward of
    a 2×200 LSTM on a 20 × 35 batch, as in a training step, and right after another ``decide``: what its ~45 small
    operations cost when the big kernels before them have left the caches cold, against warm."""
    from seqstab.core.clipping import ClipResult
    from seqstab.core.update import Update

    guard = ExplosionGuard(snapshot=False)
    lstm, x = torch.nn.LSTM(200, 200, num_layers=2), torch.randn(35, 20, 200)
    norms = [torch.tensor(1.0 + (i % 7) / 100) for i in range(7)]
    after_backward, after_decide = [], []
    for i in range(calls):
        lstm(x)[0].sum().backward()
        for times in (after_backward, after_decide):
            norm = norms[i % 7]
            update = Update(i, None, None, ClipResult(norm, norm, torch.tensor(False)), {})
            start = time.perf_counter()
            guard.decide(None, update)
            times.append((time.perf_counter() - start) * 1e6)
    assert guard.events == 0
    return statistics.median(after_backward), statistics.median(after_decide)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lm-updates", type=int, default=10, help="timed updates per lm run")
    parser.add_argument("--small-updates", type=int, default=300, help="timed updates per small run")
    parser.add_argument("--workloads", default="lm,small")
    parser.add_argument("--data-dir", help="WikiText-2 train/valid/test.txt (default: ../shared/data or download)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, = cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    print(f"machine: {_common.machine()}")

    runners = {}
    if "lm" in args.workloads:
        ids, vocab_size = _common.wikitext2_ids(args.data_dir)
        rows = batchify(ids, BATCH)[:, : (args.lm_updates + 3) * 35 + 1].contiguous()
        runners["lm"] = lambda guard: lm_run(rows, vocab_size, args.lm_updates, 3, guard)
    if "small" in args.workloads:
        runners["small"] = lambda guard: small_run(args.small_updates, 20, guard)

    print("| workload | updates/s without guard | with guard | ratio | CPU-time ratio | ratio of run medians |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, run in runners.items():
        times = {False: [], True: []}  # (wall, cpu) of every timed update, pooled over rounds
        runs = {False: [], True: []}  # wall updates/s of each whole run
        for r in range(args.rounds):
            for guard in (bool(r % 2), not r % 2):  # alternate who goes first
                seconds = run(guard)
                times[guard] += seconds
                runs[guard].append(len(seconds) / sum(w for w, _ in seconds))
        wall = {g: 1 / _common.median([w for w, _ in times[g]]) for g in times}
        cpu = {g: 1 / _common.median([c for _, c in times[g]]) for g in times}
        print(
            f"| {name} | {wall[False]:,.2f} | {wall[True]:,.2f} | {wall[True] / wall[False]:.3f} "
            f"| {cpu[True] / cpu[False]:.3f} | {_common.median(runs[True]) / _common.median(runs[False]):.3f} |",
            flush=True,
        )
    idle = {d: idle_decide_us(d) for d in (False, True)}
    print(
        f"\nExplosionGuard.decide when nothing happens: {idle[True]:.1f} µs per update with the diagnosis's running "
        f"statistics (diagnose=true, the default), {idle[False]:.1f} µs without"
    )
    cold, warm = decide_in_place_us()
    print(
        f"ExplosionGuard.decide right after a 2×200 LSTM's forward and backward (20 × 35): {cold:.1f} µs, median; "
        f"right after another decide: {warm:.1f} µs"
    )
    if "small" not in args.workloads:
        return
    timed = TimedGuard()
    seconds = small_run(args.small_updates, 20, timed)
    per_update = sum(w for w, _ in seconds) / len(seconds)
    guard_us = 1e6 * timed.seconds / timed.calls
    print(
        f"\nThe guard's own work (small workload, {timed.calls} updates: {', '.join(TimedGuard.STATIONS)}): "
        f"{guard_us:.1f} µs per update"
        f" = {100 * timed.seconds / timed.calls / per_update:.3f}% of a {1e3 * per_update:.1f} ms update"
    )


if __name__ == "__main__":
    main()
