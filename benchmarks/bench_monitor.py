"""What gradient observability costs, on the word-LM benchmark model. Printed, never asserted.

    python benchmarks/bench_monitor.py                      # WikiText-2 from ../shared/data (or --data-dir DIR)
    python benchmarks/bench_monitor.py --synthetic          # random tokens, WikiText-2's vocabulary size (33,278)
    python benchmarks/bench_monitor.py --threads 1 --cycles 5          # steadier CPU-time figures on a shared box
    python benchmarks/bench_monitor.py --spectra 200,650,1000,1500     # the spectra by hidden size, ~1 min

The model is pytorch/examples' word LM as ``configs/lm/wikitext2_lstm.yaml`` trains it: embedding 200, 2 × 200
LSTM, dropout 0.2, decoder to 33,278 words, 20 streams × 35 tokens per update, SGD (lr 1 here: no clipping is
involved, and the update must stay finite so every configuration does the same work). It trains through seqstab's
own loop (``SeqTask.training_step`` under a Lightning Trainer); only what is measured and logged changes:

    bare          no norm measured (a policy that returns constants), no logger, monitor off
    log           NoClip: global pre-clip norm every update, all per-update scalars to TensorBoard;
                  per-module grad/weight norms every log_every_n_steps (50, the default)
    log+flow/50   log + gradient flow through time every 50 updates (and, with it, the saturation tags)
    defaults      GradMonitor() as shipped: log + flow every 50 + W_hh spectra every 500 (heatmap: see below)

One training run, cut into blocks of ``--block`` updates (a multiple of 100, so every periodic measurement falls in
a block at its true rate); a callback switches the configuration (clipping policy, monitor, logger) at each block
boundary, round-robin, the order rotated each cycle. Fine interleaving on the same model in the same process, so
slow drifts of a shared machine hit every configuration alike. Reported per configuration: the median over cycles
of ms per update, and the median over cycles of its block's time over the bare block's of the same cycle (paired),
for wall time and for the process's CPU time (steadier on a shared machine; use ``--threads 1`` with it, so idle
worker threads do not spin). The heatmap image (redrawn every 1000 updates and at the end of fit) is timed alone
and shown amortised. The saturation tags (``rnn/saturation/...``, measured with each gradient-flow measurement) are
accounted on their own: the CPU time inside ``saturation_tensors`` per update, against a bare update.

``--spectra H,...`` measures only the spectra (``rnn/sigma_max/*``, ``rnn/spectral_radius/*``) of a 2-layer LSTM's
``W_hh`` at each hidden size: the time to compute them on the training thread (as the monitor does on the CPU),
against what the training thread spends where they go to the monitor's worker thread (on a GPU:
:mod:`seqstab.core.monitor.background`): handing them over at one flush and polling at the next, while the worker
computes them on one thread. Then a 200-unit LSTM layer on this thread, alone and beside the worker, busy and idle:
why the CPU keeps them on the training thread, and why the worker keeps to one thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/bench_monitor.py` from a checkout finds seqstab and datamodules
    sys.path.insert(0, str(REPO))

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from datamodules.base import DataSpec, SeqDataModule, StreamWindows, batchify  # noqa: E402
from seqstab.core.clipping import ClipPolicy, ClipResult, NoClip  # noqa: E402
from seqstab.core.guard import Action, ExplosionGuard  # noqa: E402
from seqstab.core.monitor import GradMonitor  # noqa: E402
from seqstab.core.monitor.heatmap import Heatmap  # noqa: E402
from seqstab.nets.recurrent import RecurrentNet  # noqa: E402
from seqstab.tasks import LanguageModel  # noqa: E402

WIKITEXT2 = REPO.parent / "shared" / "data" / "wikitext-2"
VOCAB = 33_278  # WikiText-2 word types


class Unmeasured(ClipPolicy):
    """The bare loop: no norm is computed (constant results), so nothing is measured at all."""

    def clip(self, params: list[torch.Tensor]) -> ClipResult:
        zero = torch.zeros((), device=params[0].device)
        return ClipResult(zero, zero, torch.zeros((), dtype=torch.bool, device=zero.device))


class Unguarded(ExplosionGuard):
    """Every configuration steps every update: the guard's own work is not what is measured here."""

    def __init__(self):
        super().__init__(policy="warn", snapshot=False)

    def check(self, task, update) -> Action:
        return Action.STEP


def configurations() -> dict[str, dict]:
    off = dict(grad_flow_every_n_steps=None, spectrum_every_n_steps=None, heatmap_every_n_steps=None)
    return {
        "bare": dict(clipping=Unmeasured(), monitor=GradMonitor(**off, per_module=False, dashboard=False), log=False),
        "log": dict(clipping=NoClip(), monitor=GradMonitor(**off), log=True),
        "log+flow/50": dict(clipping=NoClip(), monitor=GradMonitor(spectrum_every_n_steps=None), log=True),
        "defaults": dict(clipping=NoClip(), monitor=GradMonitor(heatmap_every_n_steps=None), log=True),
    }


class SGDLanguageModel(LanguageModel):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


class Stream(SeqDataModule):
    """A token stream cut into 20 rows, read 35 tokens at a time (pytorch/examples' batchify + get_batch)."""

    def __init__(self, ids: torch.Tensor, vocab_size: int, batch_size: int = 20, bptt: int = 35):
        super().__init__()
        rows = batchify(ids, batch_size)  # (B, n)
        self.windows = StreamWindows(rows[:, :-1], rows[:, 1:], bptt)
        self.vocab_size = vocab_size

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="lm", vocab_size=self.vocab_size, stateful=True)

    def train_dataloader(self):
        return DataLoader(self.windows, batch_size=None)


def wikitext2_stream(data_dir: Path) -> tuple[torch.Tensor, int, str]:
    """Train ids of WikiText-2 through seqstab's own datamodule; falls back to a plain word split if absent."""
    try:
        from datamodules.text import WikiText2

        data = WikiText2(data_dir=str(data_dir))
        return data.corpus.streams["train"], data.spec.vocab_size, "WikiText-2 (datamodules.text.WikiText2)"
    except ImportError:
        index: dict[str, int] = {}
        with open(data_dir / "train.txt", encoding="utf8") as f:
            ids = [index.setdefault(w, len(index)) for line in f for w in line.split() + ["<eos>"]]
        return torch.tensor(ids), VOCAB, "WikiText-2 train.txt (whitespace split; vocabulary size 33,278)"


def synthetic_stream(tokens: int) -> tuple[torch.Tensor, int, str]:
    ids = torch.randint(0, VOCAB, (tokens,), generator=torch.Generator().manual_seed(0))
    return ids, VOCAB, f"synthetic token stream, vocabulary {VOCAB:,} (WikiText-2's)"


class Accounts:
    """CPU time spent inside seqstab's measurement code, per configuration: the monitor's three stations, the
    clipping policy (the global norm pass) and the logger's writes. Direct accounting, unlike the A/B block times,
    is barely touched by other processes' load. CPU only: on a GPU these calls return before the work is done."""

    def __init__(self):
        self.current: str | None = None  # the configuration of the block being timed; None: not counted
        self.cpu: dict[str, float] = {}
        self.saturation: dict[str, tuple[float, int]] = {}  # configuration -> (CPU s, calls) in saturation_tensors
        self._depth = 0  # emit calls log_metrics: count the outermost call only

    def wrap(self, obj, name: str) -> None:
        method = getattr(obj, name)

        def timed(*args, **kwargs):
            self._depth += 1
            start = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0 and self.current is not None:
                    self.cpu[self.current] = self.cpu.get(self.current, 0.0) + time.process_time() - start

        setattr(obj, name, timed)

    def wrap_saturation(self) -> None:
        """Count the CPU time inside the saturation measurement (called from the monitor's step_tensors)."""
        import seqstab.core.monitor.monitor as station

        measure = station.saturation_tensors

        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                return measure(*args, **kwargs)
            finally:
                if self.current is not None:
                    spent, calls = self.saturation.get(self.current, (0.0, 0))
                    self.saturation[self.current] = (spent + time.process_time() - start, calls + 1)

        station.saturation_tensors = timed


class Blocks(pl.Callback):
    """Switch the task's clipping policy, monitor and logger every ``block`` updates; time each block.

    Args:
        schedule: The configuration of each block, in order.
        block: Updates per block.
        warmup: Untimed updates first (in the first configuration).
    """

    def __init__(self, schedule: list[str], block: int, warmup: int):
        self.schedule, self.block, self.warmup = schedule, block, warmup
        self.configs = configurations()
        self.accounts = Accounts()
        for config in self.configs.values():
            for name in ("arm", "step_tensors", "emit"):
                self.accounts.wrap(config["monitor"], name)
            self.accounts.wrap(config["clipping"], "clip")
        self.accounts.wrap_saturation()
        self.logger = None
        self.started: tuple[float, float] | None = None
        self.times: list[tuple[str, float, float]] = []  # (configuration, wall ms/update, CPU ms/update)

    def on_train_start(self, trainer, pl_module):
        self.logger = trainer.logger
        self.accounts.wrap(self.logger, "log_metrics")
        self._apply(trainer, pl_module, self.schedule[0])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        offset = batch_idx - self.warmup
        if offset < 0 or offset % self.block:
            return
        now = self._now(pl_module)
        if self.started is not None:
            self._close(now)
        index = offset // self.block
        if index < len(self.schedule):
            self._apply(trainer, pl_module, self.schedule[index])
            self.accounts.current = self.schedule[index]
            self.started = now
        else:
            self.accounts.current, self.started = None, None
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module):
        if self.started is not None:
            self._close(self._now(pl_module))
        self.accounts.current = None

    def _close(self, now: tuple[float, float]) -> None:
        name = self.schedule[len(self.times)]
        wall, cpu = ((end - start) / self.block * 1e3 for start, end in zip(self.started, now, strict=True))
        self.times.append((name, wall, cpu))
        print(f"  block {len(self.times):>2} {name:<12} {wall:8.1f} ms wall {cpu:8.1f} ms CPU per update", flush=True)

    def _apply(self, trainer, pl_module, name: str) -> None:
        config = self.configs[name]
        pl_module.clipping, pl_module.monitor = config["clipping"], config["monitor"]
        trainer.logger = self.logger if config["log"] else None

    @staticmethod
    def _now(module) -> tuple[float, float]:
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()


def run_blocks(data: Stream, schedule: list[str], block: int, warmup: int, workdir: str) -> Blocks:
    pl.seed_everything(0, verbose=False)
    model = SGDLanguageModel(
        net=partial(RecurrentNet, hidden_size=200, num_layers=2, dropout=0.2),
        spec=data.spec,
        dropout=0.2,
        guard=Unguarded(),
    )
    blocks = Blocks(schedule, block, warmup)
    trainer = pl.Trainer(
        max_steps=warmup + block * len(schedule) + 1,
        logger=TensorBoardLogger(workdir, name="bench_monitor", default_hp_metric=False),
        callbacks=[blocks],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
    )
    trainer.fit(model, data)
    assert len(blocks.times) == len(schedule), f"timed {len(blocks.times)} blocks of {len(schedule)}"
    return blocks


def heatmap_ms(repeats: int = 3) -> tuple[float, float]:
    """A fresh :class:`Heatmap`'s draw of grad_flow/heatmap for a run 1000 updates in (20 columns, 2 layers × 35
    steps: it loads the fonts and rasterizes every label) and the monitor's kept one's redraw with a column more (the
    labels that did not change are reused), both in ms (medians of ``repeats``)."""
    rng = np.random.default_rng(0)
    history = [(50 * c, np.exp(rng.normal(size=(2, 35)))) for c in range(20)]
    fresh, kept, heatmap = [], [], Heatmap()
    heatmap.render(history)
    for i in range(repeats):
        start = time.perf_counter()
        Heatmap().render(history)
        fresh.append((time.perf_counter() - start) * 1e3)
        history.append((50 * (20 + i), np.exp(rng.normal(size=(2, 35)))))
        start = time.perf_counter()
        heatmap.render(history)
        kept.append((time.perf_counter() - start) * 1e3)
    return statistics.median(fresh), statistics.median(kept)


def print_saturation(accounts: Accounts, times: dict, names: list[str], block: int, bare_cpu: float) -> None:
    """The saturation tags' share of an update, for each configuration that measures them (with the flow)."""
    print("\nsaturation tags (rnn/saturation/*, with each gradient-flow measurement), CPU time inside them:")
    for name in names:
        spent, calls = accounts.saturation.get(name, (0.0, 0))
        if not calls:
            continue
        per_update = spent * 1e3 / (len(times[name]) * block)
        print(
            f"  {name:<14} {spent * 1e3 / calls:7.2f} ms per measurement ({calls} measured), {per_update:.4f} ms per "
            f"update = {per_update / bare_cpu * 100:.3f}% of a bare update ({bare_cpu:.1f} ms CPU)"
        )


def spectra_table(sizes: list[int]) -> None:
    """The spectra of a 2-layer LSTM's ``W_hh`` at each hidden size: on this thread, and handed to the worker; then
    what a worker beside it does to this thread's own parallel work."""
    from concurrent.futures import ThreadPoolExecutor

    from seqstab.core.monitor.background import Background
    from seqstab.core.monitor.spectra import recurrent_spectra

    def lstm(hidden: int):
        g = torch.Generator().manual_seed(hidden)
        return [torch.randn(4 * hidden, hidden, generator=g) / hidden**0.5 for _ in range(2)]

    print(
        f"\nspectra of a 2-layer LSTM's W_hh; this thread runs {torch.get_num_threads()} torch thread(s), the worker 1"
    )
    print("| hidden | computed on this thread, s | handed to the worker, ms | a later flush's poll, ms "
          "| worker's time, s | largest relative difference |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    worker = Background()  # one for the run, as a monitor keeps one for its fit
    worker.submit(None, recurrent_spectra, [torch.eye(8)], "rnn")  # its thread started and warm
    worker.results(wait=True)
    for hidden in sizes:
        weights = lstm(hidden)
        start = time.perf_counter()
        inline = recurrent_spectra(weights, "lstm")
        inline_s = time.perf_counter() - start
        start = time.perf_counter()
        worker.submit(hidden, recurrent_spectra, weights, "lstm")
        handed = time.perf_counter() - start
        start = time.perf_counter()
        worker.results()  # what a flush while the worker is busy costs the training thread
        polled = time.perf_counter() - start
        ((_, background),) = worker.results(wait=True)
        total = time.perf_counter() - start + handed
        diff = max(abs(background[k] - v) / max(abs(v), 1e-300) for k, v in inline.items())
        print(f"| {hidden} | {inline_s:.2f} | {handed * 1e3:.2f} | {polled * 1e3:.3f} | {total:.2f} | {diff:.1e} |")

    layer = torch.nn.LSTM(200, 200, batch_first=True)
    x = torch.randn(20, 35, 200)

    def layer_ms(calls: int = 20) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            layer(x)[0].sum().backward()
        return (time.perf_counter() - start) / calls * 1e3

    layer_ms(5)
    alone = statistics.median(layer_ms() for _ in range(3))
    worker.submit("busy", recurrent_spectra, lstm(max(sizes)), "lstm")
    beside = []
    while len(beside) < 5 and not worker.results():  # until the worker is done, at most 5 laps
        beside.append(layer_ms(5))
    worker.results(wait=True)
    worker.close()
    threads = torch.get_num_threads()

    def team_job() -> None:  # what a worker keeping the training thread's count would run
        torch.set_num_threads(threads)
        recurrent_spectra(lstm(200), "lstm")

    team = ThreadPoolExecutor(max_workers=1)
    team.submit(team_job).result()
    kept = statistics.median(layer_ms() for _ in range(3))  # the worker idle, alive, its team kept
    team.shutdown()
    print(f"\nthis thread's 1-layer 200-unit LSTM forward + backward (20 × 35 × 200, {threads} thread(s)), ms:")
    print(f"  alone {alone:.2f}")
    if beside:
        print(f"  beside the worker computing {max(sizes)} units on one thread: {statistics.median(beside):.2f}")
    print(f"  beside an idle worker that ran {threads} threads: {kept:.2f}")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Lightning {pl.__version__}{load}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=WIKITEXT2, help="WikiText-2 train/valid/test.txt")
    parser.add_argument("--synthetic", action="store_true", help="random tokens with WikiText-2's vocabulary size")
    parser.add_argument("--block", type=int, default=100, help="updates per block (a multiple of 100)")
    parser.add_argument("--cycles", type=int, default=3, help="blocks of each configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed updates first")
    parser.add_argument("--only", nargs="*", help="configurations to run (bare is always included)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--spectra", help="only the spectra, at these hidden sizes (comma list, e.g. 200,1500)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.spectra:
        try:
            sizes = [int(h) for h in args.spectra.split(",")]
        except ValueError:
            parser.error(f"--spectra {args.spectra!r}: a comma list of hidden sizes, e.g. 200,1500")
        print(f"machine: {machine()}")
        spectra_table(sizes)
        return

    names = ["bare", *[n for n in configurations() if n != "bare" and (not args.only or n in args.only)]]
    schedule = [name for c in range(args.cycles) for name in names[c % len(names) :] + names[: c % len(names)]]
    needed = (args.warmup + args.block * len(schedule) + 2) * 20 * 35 + 1
    if args.synthetic or not (args.data_dir / "train.txt").is_file():
        ids, vocab, source = synthetic_stream(needed)
    else:
        ids, vocab, source = wikitext2_stream(args.data_dir)
    if ids.numel() < needed:
        sys.exit(f"{source}: {ids.numel():,} tokens, {needed:,} needed; lower --block or --cycles")
    data = Stream(ids[:needed], vocab)
    print(f"machine: {machine()}")
    print(
        f"data: {source}; 2 x 200 LSTM, batch 20, bptt 35; {args.cycles} cycles of {len(names)} blocks x {args.block}"
    )

    with tempfile.TemporaryDirectory() as workdir:
        blocks = run_blocks(data, schedule, args.block, args.warmup, workdir)
    times = {name: [(wall, cpu) for n, wall, cpu in blocks.times if n == name] for name in names}
    bare_cpu = statistics.median(t[1] for t in times["bare"])

    print("\nA/B: block time per update (median over cycles) and over bare's in the same cycle (median of ratios);")
    print("accounted: CPU time inside the measurement code (monitor stations, norm pass, logger) per update.")
    header = f"{'configuration':<14} {'wall ms':>9} {'CPU ms':>9} {'wall vs bare':>13} {'CPU vs bare':>12}"
    print(f"{header} {'accounted ms':>13} {'of bare':>8}")
    for name in names:
        cells = []
        for k in (0, 1):  # paired: this configuration's block over the bare block of the same cycle
            ratios = [t[k] / b[k] for t, b in zip(times[name], times["bare"], strict=True)]
            cells.append((statistics.median(ratios) - 1) * 100)
        wall, cpu = (statistics.median(t[k] for t in times[name]) for k in (0, 1))
        accounted = blocks.accounts.cpu.get(name, 0.0) * 1e3 / (len(times[name]) * args.block)
        row = f"{name:<14} {wall:>9.1f} {cpu:>9.1f} {cells[0]:>+12.1f}% {cells[1]:>+11.1f}%"
        print(f"{row} {accounted:>13.2f} {accounted / bare_cpu * 100:>7.2f}%")
    print_saturation(blocks.accounts, times, names, args.block, bare_cpu)
    fresh, draw = heatmap_ms()
    per_step = statistics.median(t[0] for t in times["bare"])
    print(
        f"\ngrad_flow/heatmap redraw: {draw:.1f} ms (a fresh Heatmap's first draw {fresh:.1f}), every 1000 updates "
        f"by default -> {draw / (1000 * per_step) * 100:.3f}% of a bare update amortised"
    )


if __name__ == "__main__":
    main()
