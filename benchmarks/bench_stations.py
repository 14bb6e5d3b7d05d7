"""Where an update's host time goes: seqstab's word LM trained in this process, each station timed in place, beside
the same for Lightning's floor (``benchmarks/lightning_floor.py``).

    python benchmarks/bench_stations.py                       # the floor setting (2×16 LSTM, 100 words), ~1 min
    python benchmarks/bench_stations.py --setting char --updates 300 --threads 2     # 2×200, characters, ~1 min
    python benchmarks/bench_stations.py --setting wt2-10k --updates 100 --warmup 20 --threads 2   # 10k words, ~1 min
    python benchmarks/bench_stations.py --ops                 # + the tensor operations each station dispatches
    python benchmarks/bench_stations.py --setting wt2-10k --hidden 650 --updates 100 --warmup 50 --threads 2  # ~2 min

The corpus is ``bench_peer.py``'s for the setting (same files, same vocabulary; ``--corpus tinyshakespeare`` cuts it
from tiny Shakespeare instead of WikiText-2), written into a temporary folder; ``--hidden`` replaces the setting's
width for both programs, and ``--cell`` their LSTM (``gru``, ``rnn_tanh``, ``rnn_relu``), as in ``bench_peer.py``.
seqstab runs ``python -m seqstab.train fit -c configs/lm/wikitext2_lstm.yaml`` as shipped (bar off, no validation:
what is timed is training), in this process; Lightning's floor runs its module the same way. From update
``--warmup`` on, a wrapper around each method below adds its wall time (``time.perf_counter``; the wrappers cost
~1 µs a call) and the table gives each one's ms per update, averaged over the updates timed. Nested rows hold
their children (``update`` holds ``backward`` … ``flush``; ``flush`` holds ``log`` and ``monitor.emit``), so rows do
not add up; ``loop`` is Lightning's whole batch (fetch, hooks, ``training_step``; ``monitor.step_tensors`` holds
the gradient-flow probe's re-run of each layer and the saturation tags' gate products). Work done every n-th update
(the gradient-flow probe every 50, the heatmap every 1,000, the flush every ``log_every_n_steps``) is spread over the
updates timed, as it is in a run. ``garbage collection`` is the time Python's cycle collector runs during the
updates timed (``gc.callbacks``), wherever it interrupts: the objects each program keeps across updates (seqstab's
updates awaiting their flush, with their 0-dim tensors) set how often it runs and how much it walks.

The figures are of one process on a shared machine: compare rows within a run, and runs on the same machine state.
``--ops`` adds what does not depend on the machine's state: both programs trained again, the same updates, with a
``TorchDispatchMode`` counting every tensor operation that reaches a kernel (after autograd, the backward's
included; views and in-place ones count, Python between them does not), per update and station, nested as the
times are. Each such operation costs the host ~0.5–5 µs whatever its size on the 2-core VM of ``RESULTS.md`` (a view
the least, one after a backward the most): the count is the part of the host cost that a change of code moves, and
a noisy machine does not.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

SEQSTAB_ROWS = [  # (label, module, owner, method)
    ("loop", "pytorch_lightning.loops.training_epoch_loop", "_TrainingEpochLoop", "advance"),
    ("training_step", "seqstab.tasks.base", "SeqTask", "training_step"),
    ("forward + loss", "seqstab.tasks.language_model", "LanguageModel", "chunk_loss"),
    ("update", "seqstab.core.update", "UpdateCore", "update"),
    ("backward", "seqstab.tasks.base", "SeqTask", "_backward"),
    ("monitor.step_tensors", "seqstab.core.monitor.monitor", "GradMonitor", "step_tensors"),
    ("step_tensors: flow probe", "seqstab.core.monitor.flow", "FlowProbe", "norms"),
    ("step_tensors: saturation", "seqstab.core.monitor.monitor", None, "saturation_tensors"),
    ("clip", "seqstab.core.clipping.policy", "ClipPolicy", "__call__"),
    ("guard.decide", "seqstab.core.guard.guard", "ExplosionGuard", "decide"),
    ("guard.keep", "seqstab.core.guard.guard", "ExplosionGuard", "keep"),
    ("withhold", "seqstab.core.withhold", "ReadOnHost", "before"),  # on the CPU: the decision read
    ("optimizer step", "seqstab.tasks.base", "SeqTask", "_step"),
    ("flush", "seqstab.core.update", "UpdateCore", "flush"),
    ("flush: log", "seqstab.core.update", "UpdateCore", "log"),
    ("flush: guard.settle", "seqstab.core.guard.guard", "ExplosionGuard", "settle"),
    ("flush: monitor.emit", "seqstab.core.monitor.monitor", "GradMonitor", "emit"),
    ("heatmap", "seqstab.core.monitor.monitor", "GradMonitor", "_draw_heatmap"),
]
FLOOR_ROWS = [
    ("loop", "pytorch_lightning.loops.training_epoch_loop", "_TrainingEpochLoop", "advance"),
    ("training_step", "lightning_floor", "FloorLM", "training_step"),
    ("backward", "pytorch_lightning.core.module", "LightningModule", "manual_backward"),
    ("clip", "torch.nn.utils", None, "clip_grad_norm_"),
    ("optimizer step", "pytorch_lightning.core.optimizer", "LightningOptimizer", "step"),
]


class Timer:
    """Wall time per wrapped method, counted once ``on`` is set; with ``count_ops``, the tensor operations each
    dispatches instead (:class:`OpCounter`: the wrappers keep the stack of stations running)."""

    def __init__(self, count_ops: bool = False) -> None:
        self.on = False
        self.seconds: collections.Counter = collections.Counter()
        self.ops: collections.Counter = collections.Counter()
        self.running: list[str] = []  # the stations running, outermost first (only while counting operations)
        self.counter = OpCounter(self) if count_ops else None
        self.wrapped: list[tuple[object, str, object]] = []  # (owner, name, original): what restore() puts back

    def wrap(self, label: str, module: str, owner: str | None, name: str) -> None:
        import importlib

        target = importlib.import_module(module)
        target = getattr(target, owner) if owner else target
        original = getattr(target, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if not self.on:
                return original(*args, **kwargs)
            if self.counter is not None:
                self.running.append(label)
                try:
                    return original(*args, **kwargs)
                finally:
                    self.running.pop()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start

        self.wrapped.append((target, name, original))
        setattr(target, name, timed)

    def restore(self) -> None:
        """Put every wrapped method back (a later run wraps the originals, not these wrappers)."""
        for target, name, original in reversed(self.wrapped):
            setattr(target, name, original)
        self.wrapped = []


class OpCounter(TorchDispatchMode):
    """Counts each operation once for every station running (a nested row holds its children's), and under ``all``
    every operation while the timer is on (what Lightning's loop runs outside the rows, too). A dtype view
    (``Tensor.view(torch.int32)``) reaches a dispatch mode with a ``detach`` after it that eager mode does not run
    (torch.profiler records the view alone): that ``detach`` is not counted."""

    def __init__(self, timer: Timer) -> None:
        super().__init__()
        self.timer = timer
        self._dtype_view = False  # the last operation was a dtype view

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        timer = self.timer
        echo, self._dtype_view = self._dtype_view and func is DETACH, func is DTYPE_VIEW
        if timer.on and not echo:
            timer.ops["all"] += 1
            for label in set(timer.running):
                timer.ops[label] += 1
        return func(*args, **(kwargs or {}))


DTYPE_VIEW, DETACH = torch.ops.aten.view.dtype, torch.ops.aten.detach.default
GC_ROW = "garbage collection"  # gc.callbacks: the cycle collector's passes during the updates timed, in any row


def run(program: str, rows, data: Path, work: Path, args, count_ops: bool = False) -> tuple[dict[str, float], int, int]:
    """Train ``program`` in this process with ``rows`` timed; ms per update of each row, the updates timed and the
    module's parameter count. ``count_ops``: operations per update of each row instead (and of ``all``)."""
    import contextlib

    import bench_peer
    import pytorch_lightning as pl

    timer = Timer(count_ops)
    for row in rows:
        timer.wrap(*row)
    counted = {"updates": 0, "parameters": 0}
    collecting = {"since": 0.0}

    def collector(phase: str, info: dict) -> None:  # Python's cycle collector, wherever in the update it runs
        if phase == "start":
            collecting["since"] = time.perf_counter()
        elif timer.on:
            timer.seconds[GC_ROW] += time.perf_counter() - collecting["since"]

    gc.callbacks.append(collector)

    class Window(pl.Callback):
        """On from the end of update ``warmup - 1`` to the end of the last update timed: Lightning's loop, which
        calls these hooks, is timed from the start of the first update timed (with 0, from the first hook of the
        first update), and the fit's end (the last flush and checkpoint, the final heatmap) is not an update's."""

        def on_train_start(self, trainer, module):  # the net Lightning trains, counted once, outside the updates
            counted["parameters"] = sum(p.numel() for p in module.parameters())

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            timer.on = batch_idx >= args.warmup
            counted["updates"] += timer.on

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            timer.on = args.warmup <= batch_idx + 1 < args.warmup + args.updates

    original_fit = pl.Trainer.fit

    def fit(trainer, *a, **k):
        trainer.callbacks.append(Window())
        return original_fit(trainer, *a, **k)

    pl.Trainer.fit = fit
    hidden = bench_peer.hidden_size(args, args.setting)
    last = args.warmup + args.updates
    counting = timer.counter if timer.counter is not None else contextlib.nullcontext()
    try:
        with counting:
            if program == "seqstab":
                from seqstab.cli.train import main

                main([
                    "fit", "-c", str(REPO / "configs" / "lm" / "wikitext2_lstm.yaml"), "--data.data_dir", str(data),
                    "--data.cache_dir", str(work / "cache"), "--trainer.default_root_dir", str(work / "runs"),
                    "--trainer.max_steps", str(last), "--trainer.limit_val_batches", "0",
                    "--trainer.enable_progress_bar", "false", "--model.init_args.embedding_size", str(hidden),
                    "--model.init_args.net.init_args.hidden_size", str(hidden), *bench_peer.CELLS[args.cell][1],
                ])  # fmt: skip
            else:
                import lightning_floor

                lightning_floor.main(["--data", str(data), "--emsize", str(hidden), "--nhid", str(hidden),
                                      "--every", str(10**9), "--max-steps", str(last),
                                      "--cell", args.cell])  # fmt: skip
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    finally:
        pl.Trainer.fit = original_fit
        timer.on = False
        timer.restore()
        gc.callbacks.remove(collector)
    n, parameters = max(counted["updates"], 1), counted["parameters"]
    if count_ops:
        return {label: timer.ops[label] / n for label in ["all", *(label for label, *_ in rows)]}, n, parameters
    return {label: timer.seconds[label] / n * 1000 for label in [*(label for label, *_ in rows), GC_ROW]}, n, parameters


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(BENCH))
    import bench_peer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", default="floor", choices=["floor", "char", "wt2-10k", "wt2-33k"])
    parser.add_argument("--updates", type=int, default=1000, help="updates timed")
    parser.add_argument("--warmup", type=int, default=100, help="updates before the timed ones")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--hidden", type=int, help="embedding = hidden units of each layer (default: the setting's)")
    parser.add_argument("--cell", default="lstm", choices=list(bench_peer.CELLS),
                        help="both programs' recurrent layers, as bench_peer.py's --cell")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, help="WikiText-2's folder (default: ../shared/data/wikitext-2)")
    parser.add_argument("--corpus", default="wikitext-2", choices=list(bench_peer.CORPORA),
                        help="the text the setting is cut from, as bench_peer.py's --corpus")  # fmt: skip
    parser.add_argument("--ops", action="store_true",
                        help="then train both again counting the tensor operations of each station")  # fmt: skip
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import _common
    import torch

    torch.set_num_threads(args.threads)
    source = bench_peer.CORPORA[args.corpus](args)  # the source text (a file)
    print(f"machine: {_common.machine()}; {args.threads} thread(s)")
    with tempfile.TemporaryDirectory(prefix="bench_stations_") as tmp:
        work = Path(tmp)
        data = work / "data"
        tokens = (args.warmup + args.updates + 5) * bench_peer.BATCH * bench_peer.BPTT + bench_peer.BATCH
        bench_peer.write_corpus(args.setting, source, data, tokens)
        seqstab, n, ours = run("seqstab", SEQSTAB_ROWS, data, work / "seqstab", args)
        floor, m, theirs = run("lightning-floor", FLOOR_ROWS, data, work / "floor", args)
        if args.ops:
            seqstab_ops, *_ = run("seqstab", SEQSTAB_ROWS, data, work / "seqstab-ops", args, count_ops=True)
            floor_ops, *_ = run("lightning-floor", FLOOR_ROWS, data, work / "floor-ops", args, count_ops=True)
    timed = f"{n} updates of seqstab, {m} of Lightning's floor, after {args.warmup}"
    width = bench_peer.hidden_size(args, args.setting)
    print(f"\n### {args.setting}: ms per update ({timed})\n")
    net = f"2×{width} {bench_peer.CELLS[args.cell][0]}"
    print(f"{net}: seqstab's net {ours:,} parameters, Lightning's floor's {theirs:,}\n")
    print("| station | seqstab | Lightning's floor |\n|---|---:|---:|")
    floors = dict(floor)
    for label in [*(label for label, *_ in SEQSTAB_ROWS), GC_ROW]:
        other = f"{floors[label]:.3f}" if label in floors else ""
        print(f"| {label} | {seqstab[label]:.3f} | {other} |")
    print(f"\nseqstab's loop over Lightning's floor's: {seqstab['loop'] - floor['loop']:+.3f} ms an update")
    if args.ops:
        print(f"\n### {args.setting}: tensor operations per update (the same updates, trained again)\n")
        print("| station | seqstab | Lightning's floor |\n|---|---:|---:|")
        for label in ["all", *(label for label, *_ in SEQSTAB_ROWS)]:
            other = f"{floor_ops[label]:.1f}" if label in floor_ops else ""
            print(f"| {label} | {seqstab_ops[label]:.1f} | {other} |")
        extra = seqstab_ops["all"] - floor_ops["all"]
        print(f"\nseqstab dispatches {extra:+.1f} operations an update more than Lightning's floor")


if __name__ == "__main__":
    main()
