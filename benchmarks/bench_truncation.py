"""Truncation policies side by side: WikiText-2 with fixed k = 35 against AWD-LSTM's variable length, and the explode
sweep's truncation rows.

    python benchmarks/bench_truncation.py --fraction 0.25 --sweep   # WikiText-2 from ../shared/data, or --data-dir

1. ``configs/lm/wikitext2_lstm.yaml`` (fixed k = 35: 35-token batches, one update each) and
   ``configs/lm/wikitext2_lstm_awd_bptt.yaml`` (140-token batches cut by ``VariableLength(70, 5, 0.05)``, lr × length
   / 70), the same 2×200 LSTM, each for one epoch cut to ``--fraction`` of its batches (the same tokens: 35 × 4 =
   140), then the full validation split. Printed: updates, tokens, val ppl, training tokens/s (tokens over the wall
   time from the run's first TensorBoard event to its last ``train/loss``) and the whole fit's wall time.
2. ``--sweep``: the explode sweep (``configs/sweeps/explode.yaml``) restricted to its truncation rows (full BPTT
   ``noclip``, ``tbptt20``, ``overlap20_40``, ``varlen20``), its report.md printed.

3. ``--bias``: the bias each policy costs, through the CLI's ``truncation_bias_every_n_steps``: a linear RNN
   (8 units, spectral radius 1.1) forecasting a sum of sines over windows of 100 steps, one update from the same
   seed under each policy: ``grad/truncation_cosine``, ``grad/truncation_norm_ratio`` and the bytes saved for
   backward. And ``Unbiased``'s mean gradient over n draws against full BPTT's (relative L2 error) on a linear RNN at
   spectral radius 0.9, 12 steps, for n = 1 … 3000, beside ``Fixed(k)`` at the same mean window length.

Everything goes under ``--out`` (default ``runs/bench_truncation``); a figure is printed as each part ends, and
``results.md`` there collects them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import _common
import yaml

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "fixed k=35": ("configs/lm/wikitext2_lstm.yaml", 35),
    "VariableLength(70, 5, 0.05)": ("configs/lm/wikitext2_lstm_awd_bptt.yaml", 140),
}
SWEEP_ROWS = ["noclip", "tbptt20", "overlap20_40", "varlen20"]


def events(run_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def first_wall(run_dir: Path) -> float:
    """Wall time of the run's first event (fit start, before the first batch)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    paths = run_dir.glob("events.out.tfevents.*")  # the logger's and seqstab's scalars: the earliest event of all
    return min(next(iter(EventFileLoader(str(path)).Load())).wall_time for path in paths)


def lm_run(name: str, config: str, seq_len: int, args: argparse.Namespace, out: Path) -> str:
    where = out / name.split("(")[0].replace(" ", "_").replace("=", "")
    where.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "seqstab.train", "fit", "-c", str(REPO / config), "--data.data_dir", args.data_dir]
    cmd += ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(args.fraction)]
    cmd += ["--trainer.enable_progress_bar", "false", "--seed_everything", "0"]
    if args.limit_val is not None:
        cmd += ["--trainer.limit_val_batches", str(args.limit_val)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=where, env={**os.environ, "PYTHONWARNINGS": "ignore"}, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return f"| {name} | failed (exit {done.returncode}) | | | | |"
    run_dir = sorted((where / "runs" / "seqstab").glob("version_*"))[-1]
    series = events(run_dir)
    losses = series["train/loss"]
    batches = int(args.fraction * {35: 2984, 140: 746}[seq_len])  # 2,088,628 train tokens / 20 streams
    tokens = batches * 20 * seq_len
    train_wall = losses[-1].wall_time - first_wall(run_dir)
    ppl = series["val/ppl"][-1].value
    return f"| {name} | {len(losses)} | {tokens:,} | **{ppl:.1f}** | {tokens / train_wall:,.0f} | {wall / 60:.1f} min |"


def sweep(out: Path) -> str:
    spec = yaml.safe_load((REPO / "configs" / "sweeps" / "explode.yaml").read_text())
    spec["base"] = str(REPO / "configs" / "explode" / "adding_rnn.yaml")
    spec["variants"] = {name: spec["variants"][name] for name in SWEEP_ROWS}
    path = out / "explode_truncation.yaml"
    path.write_text("# python benchmarks/bench_truncation.py --sweep\n" + yaml.safe_dump(spec, sort_keys=False))
    cmd = [sys.executable, "-m", "seqstab.sweep", "--config", str(path), "--out", str(out / "sweeps")]
    subprocess.run(cmd, cwd=out, env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=True)
    return (out / "sweeps" / "explode_truncation" / "report.md").read_text()


BIAS_POLICIES = {
    "Full": ["--model.truncation", "seqstab.tbptt.Full"],
    "Fixed(50)": ["--model.truncation", "seqstab.tbptt.Fixed", "--model.truncation.k", "50"],
    "Fixed(20)": ["--model.truncation", "seqstab.tbptt.Fixed", "--model.truncation.k", "20"],
    "Fixed(5)": ["--model.truncation", "seqstab.tbptt.Fixed", "--model.truncation.k", "5"],
    "Overlapping(5, 20)": ["--model.truncation", "seqstab.tbptt.Overlapping", "--model.truncation.k1", "5"]
    + ["--model.truncation.k2", "20"],
    "VariableLength(20, 5, 0.05)": ["--model.truncation", "seqstab.tbptt.VariableLength", "--model.truncation.k"]
    + ["20", "--model.truncation.min_len", "5"],
    "Unbiased(c=0.05)": ["--model.truncation", "seqstab.tbptt.Unbiased", "--model.truncation.c", "0.05"],
}


def bias(out: Path) -> str:
    """grad/truncation_cosine, norm ratio and saved bytes per policy (CLI), and Unbiased's mean converging."""
    from seqstab.cli.train import main as train

    base = ["fit", "--seed_everything", "0", "--model", "seqstab.tasks.Forecaster", "--model.net.cell", "rnn"]
    base += ["--model.net.nonlinearity", "linear", "--model.net.spectral_radius", "1.1"]
    base += ["--model.net.hidden_size", "8", "--model.truncation_bias_every_n_steps", "1"]
    base += ["--data", "datamodules.timeseries.SumOfSines", "--data.length", "1200", "--data.input_length", "100"]
    base += ["--data.batch_size", "8", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]
    base += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    lines = ["| policy | grad/truncation_cosine | grad/truncation_norm_ratio | saved bytes per update (full BPTT) |"]
    lines.append("|---|---:|---:|---:|")
    cwd = Path.cwd()
    for name, args in BIAS_POLICIES.items():
        where = out / "bias" / name.replace(" ", "").replace(",", "_").replace("(", "_").strip(")")
        where.mkdir(parents=True, exist_ok=True)
        try:
            os.chdir(where)
            assert train([*base, *args]) == 0, name
        finally:
            os.chdir(cwd)
        series = events(sorted((where / "runs" / "seqstab").glob("version_*"))[-1])
        value = {tag: series[tag][0].value for tag in series if "trunc" in tag}
        lines.append(
            f"| {name} | {value['grad/truncation_cosine']:.4f} | {value['grad/truncation_norm_ratio']:.3f} | "
            f"{value['truncation/saved_bytes_per_update']:,.0f} ({value['truncation/saved_bytes_full_bptt']:,.0f}) |"
        )
    return "\n".join(lines) + "\n\n" + unbiased_convergence()


def unbiased_convergence() -> str:
    import torch

    from seqstab.core import tbptt
    from seqstab.data.module import DataSpec
    from seqstab.nets.recurrent import RecurrentNet
    from seqstab.tasks import SequenceRegressor

    torch.manual_seed(0)
    spec = DataSpec(kind="regression", input_size=2, output_size=1, stateful=False)
    net = {"class_path": "seqstab.nets.RecurrentNet", "init_args": {"cell": "rnn", "nonlinearity": "linear"}}
    net["init_args"].update(hidden_size=4, spectral_radius=0.9)
    task = SequenceRegressor(spec=spec, net=net)
    assert isinstance(task.net, RecurrentNet)
    batch = {"x": torch.randn(4, 12, 2), "y": torch.randn(4, 12, 1)}  # (B, L, F)

    def gradient(windows) -> torch.Tensor:
        total, hidden = 0, None
        for window in windows:
            chunk = tbptt.window_chunk(batch, window, task.reduce_loss)
            loss, new_hidden = task.chunk_loss(chunk, hidden)
            grads = torch.autograd.grad(loss, list(task.parameters()), allow_unused=True)
            total = total + torch.cat([g.reshape(-1) for g in grads if g is not None])
            hidden = tbptt.detach(new_hidden)
        return total

    full = gradient(tbptt.Full().windows(12))
    error = lambda g: ((g - full).norm() / full.norm()).item()  # noqa: E731
    lines = ["| draws n | Unbiased(c=0.25): relative L2 error of the mean gradient |", "|---:|---:|"]
    policy, running, done = tbptt.Unbiased(c=0.25, seed=0), 0, 0
    for n in (1, 10, 100, 1000, 3000):
        while done < n:
            running, done = running + gradient(policy.windows(12)), done + 1
        lines.append(f"| {n} | {error(running / n):.4f} |")
    shared = [dataclasses.replace(w, share=True) for w in tbptt.Fixed(4).windows(12)]  # weighted as Unbiased's
    lines.append(f"| Fixed(4) (c = 0.25's mean window), deterministic | {error(gradient(shared)):.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="WikiText-2 (train.txt, valid.txt, test.txt; default: ../shared/data)")
    parser.add_argument("--fraction", type=float, default=1.0, help="of an epoch's batches (1: a full epoch)")
    parser.add_argument("--sweep", action="store_true", help="also run the explode sweep's truncation rows")
    parser.add_argument("--limit-val", type=int, default=None, help="validation batches (smoke tests; default all)")
    parser.add_argument("--bias", action="store_true", help="only the bias table (light: seconds, no data needed)")
    parser.add_argument("--skip-lm", action="store_true", help="only the sweep")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_truncation"))
    args = parser.parse_args()
    if not args.bias:  # the bias table needs no data
        args.data_dir = str(_common.wikitext2_dir(args.data_dir).resolve())
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.md"
    lines = [
        f"WikiText-2, 2x200 LSTM, one epoch cut to {args.fraction:g} of its batches, then the full validation split",
        "",
        "| truncation | updates | tokens | val ppl | train tokens/s | fit wall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    if args.bias:
        report = bias(out)
        (out / "bias.md").write_text(report)
        print(report, flush=True)
        return
    if not args.skip_lm:
        for name, (config, seq_len) in RUNS.items():
            lines.append(lm_run(name, config, seq_len, args, out))
            results.write_text("\n".join(lines) + "\n")
            print("\n".join(lines), flush=True)
    if args.sweep:
        report = sweep(out)
        results.write_text("\n".join(lines) + "\n\n" + report)
        print(report, flush=True)


if __name__ == "__main__":
    main()
