"""Where an update's host time goes: seqstab's word LM trained in this process, each station timed in place, beside
the same for Lightning's floor (``benchmarks/lightning_floor.py``).

    python benchmarks/bench_stations.py                       # the floor setting (2×16 LSTM, 100 words), ~1 min
    python benchmarks/bench_stations.py --setting char --updates 300 --threads 2     # 2×200, characters, ~1 min
    python benchmarks/bench_stations.py --setting wt2-10k --updates 100 --warmup 20 --threads 2   # 10k words, ~1 min

The corpus is ``bench_peer.py``'s for the setting (same files, same vocabulary; ``--corpus tinyshakespeare`` cuts it
from tiny Shakespeare instead of WikiText-2), written into a temporary folder.
seqstab runs ``python -m seqstab.train fit -c configs/lm/wikitext2_lstm.yaml`` as shipped (bar off, no validation:
what is timed is training), in this process; Lightning's floor runs its module the same way. From update
``--warmup`` on, a wrapper around each method below adds its wall time (``time.perf_counter``; the wrappers cost
~1 µs a call) and the table gives each one's ms per update, averaged over the updates timed. Nested rows hold
their children (``update`` holds ``backward`` … ``flush``; ``flush`` holds ``log`` and ``monitor.emit``), so rows do
not add up; ``loop`` is Lightning's whole batch (fetch, hooks, ``training_step``). Work done every n-th update (the
gradient-flow probe every 50, the heatmap every 1,000, the flush every ``log_every_n_steps``) is spread over the
updates timed, as it is in a run.

The figures are of one process on a shared machine: compare rows within a run, and runs on the same machine state.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

SEQSTAB_ROWS = [  # (label, module, owner, method)
    ("loop", "pytorch_lightning.loops.training_epoch_loop", "_TrainingEpochLoop", "advance"),
    ("training_step", "seqstab.tasks.base", "SeqTask", "training_step"),
    ("forward + loss", "seqstab.tasks.language_model", "LanguageModel", "chunk_loss"),
    ("update", "seqstab.core.update", "UpdateCore", "update"),
    ("backward", "seqstab.tasks.base", "SeqTask", "_backward"),
    ("monitor.step_tensors", "seqstab.core.monitor.monitor", "GradMonitor", "step_tensors"),
    ("clip", "seqstab.core.clipping.policy", "ClipPolicy", "__call__"),
    ("guard.decide", "seqstab.core.guard.guard", "ExplosionGuard", "decide"),
    ("guard.keep", "seqstab.core.guard.guard", "ExplosionGuard", "keep"),
    ("withhold", "seqstab.core.withhold", "MaskGradient", "before"),
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
    """Wall time per wrapped method, counted once ``on`` is set."""

    def __init__(self) -> None:
        self.on = False
        self.seconds: collections.Counter = collections.Counter()

    def wrap(self, label: str, module: str, owner: str | None, name: str) -> None:
        import importlib

        target = importlib.import_module(module)
        target = getattr(target, owner) if owner else target
        original = getattr(target, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if not self.on:
                return original(*args, **kwargs)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start

        setattr(target, name, timed)


def run(program: str, rows, data: Path, work: Path, args) -> tuple[dict[str, float], int]:
    """Train ``program`` in this process with ``rows`` timed; ms per update of each row, and the updates timed."""
    import pytorch_lightning as pl

    timer = Timer()
    for row in rows:
        timer.wrap(*row)
    counted = {"updates": 0}

    class Window(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            timer.on = batch_idx >= args.warmup
            counted["updates"] += timer.on

        def on_train_end(self, trainer, module):
            timer.on = False  # the fit's end (the last flush, the final heatmap) is not an update's

    original_fit = pl.Trainer.fit

    def fit(trainer, *a, **k):
        trainer.callbacks.append(Window())
        return original_fit(trainer, *a, **k)

    pl.Trainer.fit = fit
    hidden = 16 if args.setting == "floor" else 200
    last = args.warmup + args.updates
    try:
        if program == "seqstab":
            from seqstab.cli.train import main

            main([
                "fit", "-c", str(REPO / "configs" / "lm" / "wikitext2_lstm.yaml"), "--data.data_dir", str(data),
                "--data.cache_dir", str(work / "cache"), "--trainer.default_root_dir", str(work / "runs"),
                "--trainer.max_steps", str(last), "--trainer.limit_val_batches", "0",
                "--trainer.enable_progress_bar", "false", "--model.init_args.embedding_size", str(hidden),
                "--model.init_args.net.init_args.hidden_size", str(hidden),
            ])  # fmt: skip
        else:
            import lightning_floor

            lightning_floor.main(["--data", str(data), "--emsize", str(hidden), "--nhid", str(hidden),
                                  "--every", str(10**9), "--max-steps", str(last)])  # fmt: skip
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    finally:
        pl.Trainer.fit = original_fit
        timer.on = False
    n = max(counted["updates"], 1)
    return {label: timer.seconds[label] / n * 1000 for label, *_ in rows}, n


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(BENCH))
    import bench_peer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", default="floor", choices=["floor", "char", "wt2-10k", "wt2-33k"])
    parser.add_argument("--updates", type=int, default=1000, help="updates timed")
    parser.add_argument("--warmup", type=int, default=100, help="updates before the timed ones")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--data-dir", type=Path, help="WikiText-2's folder (default: ../shared/data/wikitext-2)")
    parser.add_argument("--corpus", default="wikitext-2", choices=list(bench_peer.CORPORA),
                        help="the text the setting is cut from, as bench_peer.py's --corpus")  # fmt: skip
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
        seqstab, n = run("seqstab", SEQSTAB_ROWS, data, work / "seqstab", args)
        floor, m = run("lightning-floor", FLOOR_ROWS, data, work / "floor", args)
    timed = f"{n} updates of seqstab, {m} of Lightning's floor, after {args.warmup}"
    print(f"\n### {args.setting}: ms per update ({timed})\n")
    print("| station | seqstab | Lightning's floor |\n|---|---:|---:|")
    floors = dict(floor)
    for label, *_ in SEQSTAB_ROWS:
        other = f"{floors[label]:.3f}" if label in floors else ""
        print(f"| {label} | {seqstab[label]:.3f} | {other} |")
    print(f"\nseqstab's loop over Lightning's floor's: {seqstab['loop'] - floor['loop']:+.3f} ms an update")


if __name__ == "__main__":
    main()
