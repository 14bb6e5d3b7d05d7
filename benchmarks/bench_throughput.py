"""Throughput: seqstab (LanguageModel through a Lightning Trainer) against the bare pytorch/examples word-LM loop.

    python benchmarks/bench_throughput.py                 # ~4 min on 2 cores; --help for the knobs
    python benchmarks/bench_throughput.py --device cuda --size 1500 --variants bare,seqstab,seqstab-flow,seqstab+flow
    python benchmarks/bench_throughput.py --fused --threads 2     # decoder + loss alone: unfused / fused, V = 33k, 200k
    python benchmarks/bench_throughput.py --fused --vocab 10000 --threads 2 --repeats 20   # V = 10k

Both train the same model on the same data: a 2×200 LSTM word LM (embedding 200, dropout 0.2) over the
WikiText-2 vocabulary (33,278 words, pytorch/examples tokenization), batch 20, windows of 35 tokens, stateful
(hidden state carried, detached at each window), SGD lr 20, global-norm clipping at 0.25.

* ``bare``: the classic loop written here: batchify, get_batch windows, repackage_hidden, clip_grad_norm_,
  SGD, one ``loss.item()`` per update -- pytorch/examples ``word_language_model`` (one 2-layer ``nn.LSTM``,
  sequence-first).
* ``seqstab``: ``seqstab.tasks.LanguageModel`` with ``NormClip(0.25)`` trained by ``Trainer.fit`` with the
  TensorBoard logger writing every update's loss, pre/post-clip norms, clip flag, threshold and LR;
  progress bar off (``seqstab``) and on (``seqstab+bar``, written to a file).
* ``bare+net`` (diagnostic): the bare loop driving seqstab's own ``LanguageModel`` module (batch-first, one
  ``nn.LSTM`` per layer), to separate the cost of the module from the cost of the loop and Lightning.

Runs are interleaved round by round; each run times ``--updates`` updates after ``--warmup`` untimed ones, each
update from the end of the previous one to its own end (Lightning's loop, data fetching and hooks included).
Headline: tokens/s of the median update over all rounds (robust to other processes' bursts on a shared machine),
and its ratio against ``bare``; the median over whole runs is printed beside it. On a machine shared with other
work, wall time measures the neighbours as much as the code: the tokens per CPU-second of the process (all its
threads) are printed too, and ``--threads 1`` keeps OpenMP from spinning on cores others hold.

``--device cuda`` runs both loops on the GPU (the token stream on the device, as pytorch/examples keeps it;
Lightning with ``accelerator="gpu"``) and sets the figures against a float32 ``torch.mm`` on that GPU. ``--size`` and
``--layers`` change the LSTM (``--size 1500``: the PTB-large width of Zaremba et al.). Two more variants measure
gradient flow (``GradMonitor``): ``seqstab+flow`` every update, ``seqstab-flow`` never (``seqstab`` has the
default, every 50th update). Two measure the recurrent spectra (an SVD and an eigendecomposition of each gate block of
``W_hh`` in float64 on the host, cubic in the width), every ``SPECTRA_EVERY`` updates instead of the default 500, so
that a timed run holds several: ``seqstab+spectra`` where ``GradMonitor`` puts them by default (a worker thread when
the net trains on a GPU, the training thread on the CPU), ``seqstab+spectra-on-thread`` on the training thread
everywhere. On a GPU the two show what the worker thread saves the loop; on the CPU they are the same run twice. On
the training thread the spectra are computed at the flushes (every 50 updates), so their cost falls on the updates
there: compare the per-run rates and per-round ratios, not the median update. What the worker has not finished by
the last update is waited for at the fit's end, outside the updates timed: the figures are the loop's. ``--json
FILE`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import pstats
import tempfile
import time
from functools import partial

import _common
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from datamodules.base import DataSpec, SeqDataModule, StreamWindows, batchify
from seqstab.core.clipping import NormClip
from seqstab.core.monitor import GradMonitor
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import LanguageModel, SeqTask

BATCH, BPTT, SIZE, LAYERS, DROPOUT, LR, CLIP = 20, 35, 200, 2, 0.2, 20.0, 0.25
SPECTRA_EVERY = 10  # the spectra variants' spectrum_every_n_steps
VARIANTS = ("bare", "bare+net", "seqstab", "seqstab+bar", "seqstab+flow", "seqstab-flow", "seqstab+spectra",
            "seqstab+spectra-on-thread")  # fmt: skip
DEVICE = torch.device("cpu")  # --device


def configure(size: int, layers: int, device: str) -> None:
    """Set the model's width and depth and the device both loops train on (``--size``, ``--layers``, ``--device``)."""
    global SIZE, LAYERS, DEVICE
    SIZE, LAYERS, DEVICE = size, layers, torch.device(device)


# -- the bare loop, as pytorch/examples word_language_model writes it -------------------------------------------


class WordLM(nn.Module):
    """pytorch/examples ``RNNModel`` (LSTM): embedding → dropout → nn.LSTM(num_layers) → dropout → decoder."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.drop = nn.Dropout(DROPOUT)
        self.encoder = nn.Embedding(vocab_size, SIZE)
        self.rnn = nn.LSTM(SIZE, SIZE, LAYERS, dropout=DROPOUT)
        self.decoder = nn.Linear(SIZE, vocab_size)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens, hidden):
        out, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)  # (L, B, H)
        return self.decoder(self.drop(out)), hidden  # (L, B, V)


def repackage_hidden(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)


def get_batch(source: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    seq_len = min(BPTT, len(source) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len]  # (L, B) each


def run_bare(
    columns: torch.Tensor,
    vocab_size: int,
    updates: int,
    warmup: int,
    seqstab_net: bool = False,
    phases: dict[str, list[float]] | None = None,
) -> list[tuple[float, float]]:
    """The classic loop over ``columns`` ``(N, B)``; returns ``(wall, cpu)`` seconds of each timed update.
    With ``phases``, also adds up ``(wall, cpu)`` per phase of the timed updates into it."""
    torch.manual_seed(0)
    if seqstab_net:
        model = make_language_model(vocab_size).to(DEVICE)
        hidden = None
    else:
        model = WordLM(vocab_size).to(DEVICE)
        hidden = tuple(torch.zeros(LAYERS, BATCH, SIZE, device=DEVICE) for _ in range(2))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    total_loss = 0.0
    stamps = []
    for step, i in enumerate(range(0, (updates + warmup) * BPTT, BPTT)):
        lap = Laps(phases if step >= warmup else None, stamps[-1] if stamps else stamp())
        data, targets = get_batch(columns, i)
        hidden = repackage_hidden(hidden) if hidden is not None else None
        optimizer.zero_grad(set_to_none=True)
        lap("data, repackage_hidden, zero_grad")
        if seqstab_net:
            output, hidden = model(data.T, hidden)  # batch-first (B, L, V)
            targets = targets.T
        else:
            output, hidden = model(data, hidden)
        lap("forward")
        loss = F.cross_entropy(output.reshape(-1, vocab_size), targets.reshape(-1))
        lap("loss")
        loss.backward()
        lap("backward")
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        lap("clip_grad_norm_")
        optimizer.step()
        lap("optimizer.step")
        total_loss += loss.item()
        lap("loss.item()")
        stamps.append(stamp())
        lap("rest (freeing the previous graph)", stamps[-1])
    return intervals(stamps, warmup)


class Laps:
    """Adds the ``(wall, cpu)`` time since the previous lap to ``phases[name]`` (nothing if ``phases`` is None)."""

    def __init__(self, phases: dict[str, list[float]] | None, start: tuple[float, float]):
        self.phases, self.last = phases, start

    def __call__(self, name: str, now: tuple[float, float] | None = None) -> None:
        now = now or stamp()
        if self.phases is not None:
            total = self.phases.setdefault(name, [0.0, 0.0])
            total[0] += now[0] - self.last[0]
            total[1] += now[1] - self.last[1]
        self.last = now


def stamp() -> tuple[float, float]:
    """Wall clock and this process's CPU time (all its threads: torch's, the TensorBoard writer's)."""
    return time.perf_counter(), time.process_time()


def intervals(stamps: list[tuple[float, float]], warmup: int) -> list[tuple[float, float]]:
    """``(wall, cpu)`` seconds between consecutive update ends, for the updates after the first ``warmup``."""
    pairs = zip(stamps[warmup - 1 : -1], stamps[warmup:], strict=True)
    return [(b[0] - a[0], b[1] - a[1]) for a, b in pairs]


# -- seqstab: LanguageModel through Trainer.fit -------------------------------------------------------------------


class SGDLanguageModel(LanguageModel):
    """LanguageModel with the optimizer a config's ``optimizer: torch.optim.SGD`` would give it."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def make_language_model(vocab_size: int, **kwargs) -> SGDLanguageModel:
    spec = DataSpec(kind="lm", vocab_size=vocab_size, stateful=True)
    return SGDLanguageModel(
        net=partial(RecurrentNet, hidden_size=SIZE, num_layers=LAYERS, dropout=DROPOUT, init="uniform", init_scale=0.1),
        spec=spec,
        dropout=DROPOUT,
        embedding_init=0.1,
        decoder_bias="uniform",
        clipping=NormClip(CLIP),
        **kwargs,
    )


class Rows(SeqDataModule):
    """The same token stream as the bare loop, cut into ``B`` rows and read in windows of ``BPTT`` (stateful)."""

    def __init__(self, rows: torch.Tensor, vocab_size: int):
        super().__init__()
        self.rows, self.vocab_size = rows, vocab_size  # (B, N)

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="lm", vocab_size=self.vocab_size, stateful=True)

    def train_dataloader(self):
        return DataLoader(StreamWindows(self.rows[:, :-1], self.rows[:, 1:], BPTT), batch_size=None)


class Stopwatch(pl.Callback):
    """Stamps the end of every training batch: what lies between two stamps is one whole update, Lightning's
    loop, data fetching and hooks included. On a GPU each stamp waits for the device first (seqstab's update path
    does not, so without it a stamp would time work queued rather than done; the bare loop waits at its
    ``loss.item()``)."""

    def __init__(self):
        self.stamps: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        self.stamps.append(stamp())


def fit_timed(
    model: pl.LightningModule, data: pl.LightningDataModule, updates: int, warmup: int, **trainer
) -> list[tuple[float, float]]:
    """``Trainer.fit`` for ``warmup + updates`` updates, TensorBoard logger on; ``(wall, cpu)`` s per timed update."""
    watch = Stopwatch()
    with tempfile.TemporaryDirectory() as logdir, open(f"{logdir}/stdout.txt", "w") as sink:
        options = dict(
            accelerator="gpu" if DEVICE.type == "cuda" else "cpu",
            devices=1,
            max_steps=updates + warmup,
            max_epochs=1,
            logger=pl.loggers.TensorBoardLogger(logdir, name="bench"),
            callbacks=[watch],
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        options["callbacks"] = [watch, *trainer.pop("callbacks", [])]
        trainer = pl.Trainer(**{**options, **trainer})
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):  # progress bar, Lightning's notes
            trainer.fit(model, data)
    assert model.updates == updates + warmup, f"{model.updates} updates, expected {updates + warmup}"
    return intervals(watch.stamps, warmup)


def run_seqstab(
    rows, vocab_size: int, updates: int, warmup: int, progress_bar: bool, monitor: GradMonitor | None = None
) -> list[tuple[float, float]]:
    torch.manual_seed(0)
    model = make_language_model(vocab_size, monitor=monitor)
    return fit_timed(model, Rows(rows, vocab_size), updates, warmup, enable_progress_bar=progress_bar)


# -- FLOPs ----------------------------------------------------------------------------------------------------------


def flops_per_token(vocab_size: int) -> float:
    """Training FLOPs per token: 3 × forward (backward ≈ 2 × forward: gradients w.r.t. inputs and weights).

    Forward per token: each LSTM layer 2·4H·(I + H) multiply-adds for the gate pre-activations (elementwise gate
    work, ~30H, is < 5% and left out); the decoder 2·H·V; the embedding is a lookup (0). Softmax/cross-entropy
    (~5V), clipping and the SGD update (a few FLOPs per parameter per update, /700 tokens) are left out (< 2%).
    """
    lstm = LAYERS * 2 * 4 * SIZE * (SIZE + SIZE)
    decoder = 2 * SIZE * vocab_size
    return 3 * (lstm + decoder)


class Stations(pl.Callback):
    """Wall and CPU time spent in each station of ``SeqTask.training_step`` (the methods it calls, wrapped on the
    instance), in the whole ``training_step``, and per batch (end to end); the rest is Lightning's loop."""

    NAMES = ("forward", "step_losses", "reduce_loss", "manual_backward", "training_step")

    def __init__(self, model: SeqTask, warmup: int):
        self.warmup, self.batch = warmup, 0
        self.totals: dict[str, list[float]] = {}
        for name in self.NAMES:
            setattr(model, name, self.wrap(name, getattr(model, name)))
        model.core.update = self.wrap("core.update (measure, clip, guard, step, log)", model.core.update)
        model.core.flush = self.wrap("core.flush (read-back, loggers, monitor.emit)", model.core.flush)
        model.guard.decide = self.wrap("guard.decide", model.guard.decide)
        model.clipping.clip = self.wrap("clipping (NormClip.clip)", model.clipping.clip)
        for hook in ("arm", "step_tensors"):
            setattr(model.monitor, hook, self.wrap(f"monitor.{hook}", getattr(model.monitor, hook)))
        self.last: tuple[float, float] | None = None

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            if self.batch < self.warmup:
                return fn(*args, **kwargs)
            a = stamp()
            try:
                return fn(*args, **kwargs)
            finally:
                b = stamp()
                total = self.totals.setdefault(name, [0.0, 0.0])
                total[0] += b[0] - a[0]
                total[1] += b[1] - a[1]

        return timed

    def on_train_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        optimizer.step = self.wrap("optimizer.step", optimizer.step)
        optimizer.zero_grad = self.wrap("optimizer.zero_grad", optimizer.zero_grad)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = stamp()
        if self.batch >= self.warmup and self.last is not None:
            total = self.totals.setdefault("whole update (batch end to batch end)", [0.0, 0.0])
            total[0] += now[0] - self.last[0]
            total[1] += now[1] - self.last[1]
        self.last, self.batch = now, self.batch + 1


def profile_seqstab(rows, vocab_size, updates, warmup, top: int) -> None:
    """Where a seqstab update's time goes: the stations of ``training_step`` against the whole update, then the top
    of a cProfile of a second run by cumulative time."""
    torch.manual_seed(0)
    model = make_language_model(vocab_size)
    stations = Stations(model, warmup)
    fit_timed(model, Rows(rows, vocab_size), updates, warmup, callbacks=[stations])
    whole = stations.totals["whole update (batch end to batch end)"]
    inner = (
        "forward",
        "step_losses",
        "reduce_loss",
        "manual_backward",
        "clipping (NormClip.clip)",
        "guard.decide",
        "core.flush (read-back, loggers, monitor.emit)",
        "monitor.arm",
        "monitor.step_tensors",
    )
    print(f"seqstab stations over {updates} updates (ms per update, % of the whole update; wall / CPU):")
    print("| station | wall ms | wall % | CPU ms | CPU % |")
    print("|---|---:|---:|---:|---:|")
    rows_out = [(name, stations.totals.get(name, [0.0, 0.0])) for name in (*inner, "training_step")]
    step = stations.totals["training_step"]
    listed = [sum(stations.totals.get(n, [0.0, 0.0])[i] for n in inner) for i in (0, 1)]
    rows_out.append(("training_step minus the stations above", [step[0] - listed[0], step[1] - listed[1]]))
    rows_out.append(("Lightning outside training_step (loop, hooks, data)", [whole[0] - step[0], whole[1] - step[1]]))
    rows_out.append(("whole update", whole))
    for name, (wall, cpu) in rows_out:
        print(
            f"| {name} | {1e3 * wall / updates:.1f} | {100 * wall / whole[0]:.1f}% "
            f"| {1e3 * cpu / updates:.1f} | {100 * cpu / whole[1]:.1f}% |"
        )
    phases: dict[str, list[float]] = {}
    seconds = run_bare(rows.T.contiguous(), vocab_size, updates, warmup, phases=phases)
    whole = [sum(w for w, _ in seconds), sum(c for _, c in seconds)]
    print(f"\nbare loop phases over {updates} updates, same process, right after:")
    print("| phase | wall ms | wall % | CPU ms | CPU % |")
    print("|---|---:|---:|---:|---:|")
    for name, (wall, cpu) in [*phases.items(), ("whole update", whole)]:
        print(
            f"| {name} | {1e3 * wall / updates:.1f} | {100 * wall / whole[0]:.1f}% "
            f"| {1e3 * cpu / updates:.1f} | {100 * cpu / whole[1]:.1f}% |"
        )
    profiler = cProfile.Profile()
    profiler.enable()
    run_seqstab(rows, vocab_size, updates, warmup, progress_bar=False)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    print(out.getvalue())


# -- the fused decoder + cross-entropy (seqstab.fused) against the unfused one ----------------------------------------


def decoder_loss(variant: str, vocab_size: int, rows: int = BATCH * BPTT, seed: int = 0):
    """A closure running one forward + backward of the decoder and token-mean cross-entropy of ``rows`` positions
    (``(rows, SIZE)`` hidden, a ``(V, SIZE)`` decoder): ``unfused`` as ``LanguageModel.step_losses`` computes it
    (``F.linear`` then ``F.cross_entropy``, on a contiguous input as ``language_model.Decoder`` makes it),
    ``unfused-view`` the same on the net's batch-first output as it comes, a transposed view (``nn.Linear`` then runs
    a product and adds the bias in a second pass: the language model before ``Decoder``), ``fused`` by
    :func:`seqstab.fused.linear_cross_entropy`."""
    from seqstab.nets.fused import linear_cross_entropy

    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, SIZE, generator=g).requires_grad_()
    weight = (torch.rand(vocab_size, SIZE, generator=g) * 0.2 - 0.1).requires_grad_()
    bias = torch.zeros(vocab_size, requires_grad=True)
    target = torch.randint(vocab_size, (rows,), generator=g)
    row_weight = torch.full((rows,), 1.0 / rows)
    view = torch.randn(rows // BATCH, BATCH, SIZE, generator=g).transpose(0, 1).requires_grad_()  # (B, L, H), last

    def run() -> None:
        hidden.grad = view.grad = weight.grad = bias.grad = None
        if variant == "fused":
            loss = linear_cross_entropy(hidden, weight, bias, target, row_weight)
        elif variant == "unfused-view":
            loss = F.cross_entropy(F.linear(view, weight, bias).flatten(0, 1), target)
        else:
            loss = F.cross_entropy(F.linear(hidden, weight, bias), target)
        loss.backward()

    return run


def peak_memory_mib(variant: str, vocab_size: int) -> float:
    """Peak resident memory one decoder + loss update adds to a fresh process (``VmHWM`` after it, less ``VmRSS``
    before it, inputs and their gradients allocated), in MiB."""
    import subprocess
    import sys

    code = (
        "import torch, bench_throughput as b\n"
        "def kb(key):\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key))\n"
        f"run = b.decoder_loss({variant!r}, {vocab_size})\n"
        "run(); import gc; gc.collect()\n"  # gradients allocated, allocator warm
        "before = kb('VmRSS:')\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"  # reset VmHWM to the current RSS
        "run()\n"
        "print((kb('VmHWM:') - before) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(_common.REPO / "benchmarks"))  # fmt: skip
    return float(out.stdout.split()[-1])


def bench_fused(vocab_sizes: list[int], repeats: int) -> None:
    """Decoder + loss alone, unfused and fused, interleaved ``repeats`` times per vocabulary: median ms, effective
    GFLOP/s (3 GEMMs of 2·N·H·V FLOPs) and share of the matmul peak; peak memory in a fresh process each."""
    peak = _common.matmul_gflops()
    rows = BATCH * BPTT
    print(f"matmul peak (float32 2048² torch.mm, best of 10, {torch.get_num_threads()} threads): {peak:,.0f} GFLOP/s")
    print(f"decoder + token-mean cross-entropy, forward + backward, {rows} rows × {SIZE} → V; median of {repeats}")
    print("| V | variant | ms (median, min–max) | effective GFLOP/s | % of matmul peak | peak memory MiB |")
    print("|---:|---|---:|---:|---:|---:|")
    for vocab_size in vocab_sizes:
        runs = {v: decoder_loss(v, vocab_size) for v in ("unfused-view", "unfused", "fused")}
        times: dict[str, list[float]] = {v: [] for v in runs}
        for run in runs.values():
            run()  # warm-up
        for _ in range(repeats):
            for v, run in runs.items():
                start = time.perf_counter()
                run()
                times[v].append(1e3 * (time.perf_counter() - start))
        del runs
        for v, ms in times.items():
            gflops = 3 * 2 * rows * SIZE * vocab_size / _common.median(ms) / 1e6
            print(
                f"| {vocab_size:,} | {v} | {_common.spread(ms)} | {gflops:.1f} | {100 * gflops / peak:.0f}% "
                f"| {peak_memory_mib(v, vocab_size):,.0f} |",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20, help="timed updates per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates before timing")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one run of each variant each)")
    parser.add_argument("--variants", default="bare,seqstab,seqstab+bar,bare+net",
                        help=f"comma list, the first the base of the ratios: {', '.join(VARIANTS)}")  # fmt: skip
    parser.add_argument("--data-dir", help="WikiText-2 train/valid/test.txt (default: ../shared/data or download)")
    parser.add_argument("--profile", action="store_true", help="cProfile one seqstab run instead of timing")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, = cores)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both loops train")
    parser.add_argument("--size", type=int, default=SIZE, help="LSTM width (embedding and hidden)")
    parser.add_argument("--layers", type=int, default=LAYERS, help="LSTM layers")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--fused", action="store_true", help="time the decoder + loss alone, unfused and fused")
    parser.add_argument("--vocab", default="33278,200000", help="vocabulary sizes for --fused")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved repeats for --fused")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: no variant {', '.join(map(repr, unknown))} (choose from {', '.join(VARIANTS)})")
    if args.threads:
        torch.set_num_threads(args.threads)
    configure(args.size, args.layers, args.device)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # no GPU/TPU notes between rounds
    if args.fused:
        print(f"machine: {_common.machine()}")
        bench_fused([int(v) for v in args.vocab.split(",")], args.repeats)
        return

    ids, vocab_size = _common.wikitext2_ids(args.data_dir)
    need = (args.updates + args.warmup) * BPTT + 1
    rows = batchify(ids, BATCH)[:, :need].contiguous().to(DEVICE)  # (B, N): row b is stream b
    columns = rows.T.contiguous()  # (N, B): pytorch/examples layout
    print(f"machine: {_common.machine()}")
    print(
        f"model: {LAYERS}×{SIZE} LSTM, vocab {vocab_size:,}, batch {BATCH}, bptt {BPTT}, NormClip {CLIP}, SGD lr {LR}"
    )
    if args.profile:
        profile_seqstab(rows, vocab_size, args.updates, args.warmup, top=25)
        return

    runners = {
        "bare": lambda: run_bare(columns, vocab_size, args.updates, args.warmup),
        "bare+net": lambda: run_bare(columns, vocab_size, args.updates, args.warmup, seqstab_net=True),
        "seqstab": lambda: run_seqstab(rows, vocab_size, args.updates, args.warmup, progress_bar=False),
        "seqstab+bar": lambda: run_seqstab(rows, vocab_size, args.updates, args.warmup, progress_bar=True),
        "seqstab+flow": lambda: run_seqstab(
            rows, vocab_size, args.updates, args.warmup, False, GradMonitor(grad_flow_every_n_steps=1)
        ),
        "seqstab-flow": lambda: run_seqstab(
            rows, vocab_size, args.updates, args.warmup, False, GradMonitor(grad_flow_every_n_steps=None)
        ),
        "seqstab+spectra": lambda: run_seqstab(
            rows, vocab_size, args.updates, args.warmup, False, GradMonitor(spectrum_every_n_steps=SPECTRA_EVERY)
        ),
        "seqstab+spectra-on-thread": lambda: run_seqstab(
            rows,
            vocab_size,
            args.updates,
            args.warmup,
            False,
            GradMonitor(spectrum_every_n_steps=SPECTRA_EVERY, spectra_off_thread=False),
        ),
    }
    assert set(runners) == set(VARIANTS)
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}  # every timed update, pooled
    run_rates: dict[str, list[float]] = {v: [] for v in variants}  # wall tokens/s of each whole run
    tokens = BATCH * BPTT
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]  # rotate who goes first
        for variant in order:
            seconds = runners[variant]()
            times[variant] += seconds
            run_rates[variant].append(len(seconds) * tokens / sum(wall for wall, _ in seconds))
        print(f"round {r + 1}: " + ", ".join(f"{v} {run_rates[v][-1]:,.0f}" for v in variants), flush=True)

    peak = _common.matmul_gflops() if DEVICE.type == "cpu" else _common.cuda_matmul_gflops()
    flops = flops_per_token(vocab_size)
    base = variants[0]
    wall = {v: tokens / _common.median([w for w, _ in times[v]]) for v in variants}  # tokens/s, median update
    cpu = {v: tokens / _common.median([c for _, c in times[v]]) for v in variants}  # tokens per CPU-second
    if DEVICE.type == "cpu":
        threads = torch.get_num_threads()
        print(f"\nmatmul peak (float32 2048² torch.mm, best of 10, {threads} threads): {peak:,.0f} GFLOP/s")
    else:
        print(
            f"\nmatmul peak (float32 8192² torch.mm on {torch.cuda.get_device_name()}, TF32 for matmul "
            f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}, best of 10): {peak:,.0f} GFLOP/s; "
            f"cuDNN TF32 (the LSTM) {'on' if torch.backends.cudnn.allow_tf32 else 'off'}"
        )
    print(f"training FLOPs per token (3 × forward, see flops_per_token): {flops / 1e6:.1f} MFLOP")
    print(f"{args.rounds} interleaved rounds × {args.updates} timed updates ({args.updates * tokens:,} tokens) per run")
    print(
        f"| variant | tokens/s (median update) | ratio vs {base} | tokens/s per run: median (min–max) "
        f"| tokens per CPU-second (median update) | CPU ratio vs {base} | effective GFLOP/s | % of matmul peak |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for v in variants:
        gflops = wall[v] * flops / 1e9
        print(
            f"| {v} | {wall[v]:,.0f} | {wall[v] / wall[base]:.3f} | {_common.spread(run_rates[v])} "
            f"| {cpu[v]:,.0f} | {cpu[v] / cpu[base]:.3f} | {gflops:.1f} | {100 * gflops / peak:.0f}% |"
        )
    paired = {}
    for v in variants[1:]:
        paired[v] = sorted(s / b for s, b in zip(run_rates[v], run_rates[base], strict=True))
        print(f"per-round wall ratios {v}/{base}: {', '.join(f'{p:.3f}' for p in paired[v])}")
    if args.json:
        figures = {
            "machine": _common.machine(),
            "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
            "model": {"layers": LAYERS, "size": SIZE, "vocab": vocab_size, "batch": BATCH, "bptt": BPTT},
            "rounds": args.rounds,
            "updates": args.updates,
            "warmup": args.warmup,
            "tokens_per_update": tokens,
            "flops_per_token": flops,
            "matmul_peak_gflops": peak,
            "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
            "base": base,
            "variants": {
                v: {
                    "tokens_per_s": wall[v],
                    "ratio": wall[v] / wall[base],
                    "run_tokens_per_s": run_rates[v],
                    "round_ratios": paired.get(v),
                    "tokens_per_cpu_s": cpu[v],
                    "effective_gflops": wall[v] * flops / 1e9,
                    "median_update_ms": 1e3 * tokens / wall[v],
                }
                for v in variants
            },
        }
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
