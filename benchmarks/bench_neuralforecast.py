"""neuralforecast's ``LSTM`` on ETTh1 with :class:`seqstab.callbacks.GradientStability`: its tags, and its cost.

    python benchmarks/bench_neuralforecast.py             # ~3 min on 2 cores; --help for the knobs

neuralforecast is a dependency of this benchmark only (not of seqstab). In a fresh virtualenv::

    pip install torch==2.13.0          # the CPU wheel on these machines; elsewhere the CPU index of pytorch.org
    pip install -e . neuralforecast

The model is neuralforecast's ``LSTM`` (2×128 ``nn.LSTM`` encoder, 2×128 MLP decoder, MAE loss, Adam 1e-3,
``scaler_type="robust"``), 24 h ahead from 96 h of OT (``--exog``: and of the 6 load columns), on the standard
ETTh1 train split (the first 12 months), 128 windows per step, trained by ``NeuralForecast(freq="h").fit``. The
callback goes in through the trainer keywords ``LSTM`` forwards to ``pl.Trainer`` (``callbacks=[...]``), with
``net="hist_encoder"`` (the model's ``nn.LSTM``). Two variants, each with a TensorBoard logger:

* ``callback``: ``GradientStability(clipping=NormClip(max_norm=1.0))`` (default guard and monitor);
* ``gradient_clip_val``: no callback, Lightning's ``gradient_clip_val=1.0`` (the same global-norm clipping).

Printed: (1) the scalar tags the callback wrote, read back from its event files by TensorBoard's own
``EventAccumulator`` (points, first and last value, mean), and the other kinds of data it wrote; (2) the steps/s
of each variant, runs interleaved round by round (the order alternating each round), each step timed from the end
of the previous one to its own (``on_train_batch_end``: Lightning's loop, neuralforecast's window sampling and
every hook included), the first ``--warmup`` steps of each run discarded (and before round 1 one short untimed run of
each variant: the process's first fit is slower whichever variant it is); the headline is the median step over all
rounds, and its ratio callback / gradient_clip_val (goal ≥ 0.97). The process's CPU time per step is printed
beside the wall time: on a machine shared with other work it measures the code rather than the neighbours.

``NeuralForecast.fit`` deep-copies the models and with them their trainer keywords, so the callbacks that ran are
not the ones passed in: they are read back from ``nf.models[0].trainer_kwargs["callbacks"]``. neuralforecast
reseeds (``pl.seed_everything``) at each fit, so every run of a variant trains the same steps.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import _common
import pandas as pd
import pytorch_lightning as pl
import torch
from neuralforecast import NeuralForecast  # imports ray (~10 s): once, here
from neuralforecast.models import LSTM
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqstab.core.clipping import NormClip
from seqstab.lightning.callbacks import GradientStability

ETTH1 = _common.SHARED_DATA / "timeseries" / "ETTh1.csv"
TRAIN_ROWS = 12 * 30 * 24  # the standard ETTh1 split (Informer): 12/4/4 months of 30 days
LOADS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]
H, INPUT, CLIP = 24, 96, 1.0
VARIANTS = ("callback", "gradient_clip_val")
HEADLINE = ("grad/norm_total", "grad/norm_total_clipped", "grad/clipped", "explosion/events")


def etth1(path: Path) -> pd.DataFrame:
    """The train split in neuralforecast's long format: ``unique_id``, ``ds``, ``y`` (= OT) and the load columns."""
    raw = pd.read_csv(path, parse_dates=["date"], nrows=TRAIN_ROWS)
    return raw.rename(columns={"date": "ds", "OT": "y"}).assign(unique_id="ETTh1")[["unique_id", "ds", "y", *LOADS]]


def stamp() -> tuple[float, float]:
    """Wall clock and this process's CPU time (all its threads: torch's, the TensorBoard writer's)."""
    return time.perf_counter(), time.process_time()


class Stopwatch(pl.Callback):
    """Stamps the end of every training batch: what lies between two stamps is one whole step."""

    def __init__(self):
        self.stamps: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.stamps.append(stamp())


def fit(variant: str, df: pd.DataFrame, logdir: str, steps: int, exog: bool) -> tuple[Stopwatch, str]:
    """One ``NeuralForecast.fit`` of ``variant`` for ``steps`` steps; the Stopwatch that ran and the logger's dir."""
    extra: dict = (
        {"callbacks": [Stopwatch(), GradientStability(clipping=NormClip(max_norm=CLIP), net="hist_encoder")]}
        if variant == "callback"
        else {"callbacks": [Stopwatch()], "gradient_clip_val": CLIP}
    )
    model = LSTM(
        h=H,
        input_size=INPUT,
        hist_exog_list=LOADS if exog else None,
        scaler_type="robust",
        max_steps=steps,
        val_check_steps=steps,  # no validation set (val_size=0); the default 100 > max_steps only warns
        logger=TensorBoardLogger(logdir, name=variant),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        **extra,
    )
    nf = NeuralForecast(models=[model], freq="h")
    nf.fit(df[["unique_id", "ds", "y", *LOADS]] if exog else df[["unique_id", "ds", "y"]])
    kwargs = nf.models[0].trainer_kwargs  # the deep copies that ran
    watch = kwargs["callbacks"][0]
    if variant == "callback":
        updates = kwargs["callbacks"][1].updates
        assert updates == steps, f"the callback saw {updates} updates, expected {steps}"
    return watch, kwargs["logger"].log_dir


def intervals(stamps: list[tuple[float, float]], warmup: int) -> list[tuple[float, float]]:
    """``(wall, cpu)`` seconds between consecutive step ends, for the steps after the first ``warmup``."""
    pairs = zip(stamps[warmup - 1 : -1], stamps[warmup:], strict=True)
    return [(b[0] - a[0], b[1] - a[1]) for a, b in pairs]


def accumulator(log_dir: str) -> EventAccumulator:
    """TensorBoard's reader over the event files of ``log_dir``, every point loaded (not its default sample)."""
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0, "images": 0, "histograms": 0})
    acc.Reload()
    return acc


def print_tags(log_dir: str, baseline_dir: str) -> None:
    """Every scalar tag in the event files of ``log_dir`` (a callback run), read by TensorBoard's own reader, marked
    ``callback`` where the run without it (``baseline_dir``) lacks it; then the other kinds of data."""
    acc = accumulator(log_dir)
    tags, theirs = acc.Tags(), set(accumulator(baseline_dir).Tags()["scalars"])
    print(f"\n## Tags in the callback's first run (EventAccumulator over {Path(log_dir).name})\n")
    print("| scalar tag | written by | points | first step | last step | first | last | mean |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for tag in sorted(tags["scalars"], key=lambda t: (t not in HEADLINE, t in theirs, t)):
        events = acc.Scalars(tag)
        values = [e.value for e in events]
        print(
            f"| {tag} | {'neuralforecast/Lightning' if tag in theirs else 'callback'} | {len(events)} "
            f"| {events[0].step} | {events[-1].step} | {values[0]:.4g} | {values[-1]:.4g} "
            f"| {sum(values) / len(values):.4g} |"
        )
    for kind in ("tensors", "histograms", "images"):
        print(f"\n{kind}: {', '.join(sorted(tags[kind])) or 'none'}")
    missing = [t for t in HEADLINE if t not in tags["scalars"]]
    print(f"headline tags missing: {', '.join(missing) or 'none'}")
    clipped = acc.Scalars("grad/clipped")
    print(f"clip rate (mean of grad/clipped): {sum(e.value for e in clipped) / len(clipped):.3f}")
    events = Path(log_dir) / "explosions.jsonl"
    print(f"explosions.jsonl: {f'{len(events.read_text().splitlines())} events' if events.is_file() else 'absent'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps per run (max_steps)")
    parser.add_argument("--warmup", type=int, default=5, help="steps of each run left out of the timing (>= 1)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (one run of each variant each)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--exog", action="store_true", help="the 6 load columns as hist_exog_list")
    parser.add_argument("--path", type=Path, default=ETTH1, help="ETTh1.csv (default: ../shared/data/timeseries)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no GPU/TPU and seed notes between runs

    df = etth1(args.path)
    print(f"machine: {_common.machine()}")
    print(
        f"model: neuralforecast LSTM (h={H}, input_size={INPUT}, 2×128 encoder, 128 windows/step, "
        f"{'OT + 6 loads' if args.exog else 'OT only'}), {len(df):,} train rows; clipping at {CLIP} by "
        f"NormClip (callback) / gradient_clip_val"
    )
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}  # every timed step, pooled
    run_rates: dict[str, list[float]] = {v: [] for v in VARIANTS}  # steps/s of each run's median step
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as logdir, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning of every run, counted below
        first_dir: dict[str, str] = {}  # variant -> its first run's log dir
        for variant in VARIANTS:  # untimed: the process's first fits pay for allocator and kernel warm-up
            fit(variant, df, logdir, args.warmup + 5, args.exog)
        for r in range(args.rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # alternate who goes first
            for variant in order:
                watch, log_dir = fit(variant, df, logdir, args.steps, args.exog)
                seconds = intervals(watch.stamps, args.warmup)
                times[variant] += seconds
                run_rates[variant].append(1 / _common.median([w for w, _ in seconds]))
                first_dir.setdefault(variant, log_dir)
            print(f"round {r + 1}: " + ", ".join(f"{v} {run_rates[v][-1]:.2f} steps/s" for v in order), flush=True)
        print_tags(first_dir["callback"], first_dir["gradient_clip_val"])
    elapsed = time.perf_counter() - start

    counts: dict[str, int] = {}
    for w in caught:
        key = f"{w.category.__name__}: {str(w.message).splitlines()[0]}"
        counts[key] = counts.get(key, 0) + 1
    print(f"\n## Warnings over all {2 * args.rounds} runs\n")
    for key, n in counts.items():
        print(f"- ×{n} {key}")

    timed = args.steps - args.warmup
    base, other = VARIANTS[1], VARIANTS[0]
    wall = {v: 1 / _common.median([w for w, _ in times[v]]) for v in VARIANTS}  # steps/s, median step
    cpu = {v: 1 / _common.median([c for _, c in times[v]]) for v in VARIANTS}  # steps per CPU-second
    print(f"\n## Throughput: {args.rounds} interleaved rounds × {timed} timed steps per run ({elapsed:.0f} s)\n")
    print(
        f"| variant | steps/s (median step) | ms per step | ratio vs {base} | steps/s per run: median (min–max) "
        f"| steps per CPU-second | CPU ratio vs {base} |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for v in VARIANTS:
        print(
            f"| {v} | {wall[v]:.2f} | {1e3 / wall[v]:.0f} | {wall[v] / wall[base]:.3f} | "
            f"{_common.median(run_rates[v]):.2f} ({min(run_rates[v]):.2f}–{max(run_rates[v]):.2f}) "
            f"| {cpu[v]:.2f} | {cpu[v] / cpu[base]:.3f} |"
        )
    paired = [c / b for c, b in zip(run_rates[other], run_rates[base], strict=True)]
    print(f"\nper-round ratios {other}/{base} (median step of each run): {', '.join(f'{p:.3f}' for p in paired)}")
    print(f"throughput ratio {other}/{base}: {wall[other] / wall[base]:.3f} (goal ≥ 0.97)")


if __name__ == "__main__":
    main()
