"""ETTh1 (target OT, 24 h ahead): an LSTM and a vanilla RNN forecaster against naive and seasonal-naive baselines.

    python benchmarks/bench_etth1.py                      # ~10 min on 2 cores; --help for the knobs

The models train with the shipped config ``configs/timeseries/etth1_lstm.yaml`` through the CLI, exactly as a
user runs it (the RNN: the same config with ``--model.cell rnn``), then ``test`` on the last checkpoint. The
baselines are scored on the very same test windows and steps the Forecaster is scored on (the config's
``CSVSeries``: same split, stride, input length and horizon): every step ``t`` of every test window predicts the
next ``H`` = 24 values of OT, and MAE/RMSE average over windows, steps and horizons, in the original units (°C).

* naive: every horizon ``h`` predicts the last observed value, ``OT[t]``;
* seasonal naive (24 h): horizon ``h`` predicts the value a day before its target time, ``OT[t + h - 24]``
  (for the first steps of the split this reaches back into the validation rows, which precede it in time).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
import torch
import yaml

from datamodules.timeseries import CSVSeries, window_starts

CONFIG = _common.REPO / "configs" / "timeseries" / "etth1_lstm.yaml"
ETTH1 = _common.SHARED_DATA / "timeseries" / "ETTh1.csv"


def datamodule(path: Path | None) -> CSVSeries:
    """The config's datamodule, built from the YAML itself (so the baselines follow any change to it)."""
    data = yaml.safe_load(CONFIG.read_text())["data"]
    assert data["class_path"].endswith("CSVSeries"), data["class_path"]
    return CSVSeries(**{**data["init_args"], "path": str(path) if path else None})


def baselines(dm: CSVSeries) -> dict[str, dict[str, float]]:
    """MAE and RMSE of the naive and seasonal-naive forecasts over the test split's windows, in original units."""
    data = dm.data
    target = dm.denormalize(torch.cat([data["val"], data["test"]])[:, : dm.num_targets]).double()  # (n_val+n, T)
    offset = len(data["val"])  # test row i is row offset + i of `target`
    n, length, horizon = len(data["test"]), dm.input_length, dm.horizon
    starts = window_starts(n, length, horizon, dm.stride)  # (W,)
    now = offset + (starts[:, None] + torch.arange(length)).reshape(-1)  # (W·L,) row of each scored step
    h = torch.arange(1, horizon + 1)  # (H,)
    truth = target[now[:, None] + h]  # (W·L, H, T)
    forecasts = {
        "naive (last value)": target[now][:, None].expand_as(truth),
        "seasonal naive (24 h)": target[now[:, None] + h - 24],
    }
    if (now.min() + 1 - 24) < 0:
        raise SystemExit("seasonal naive reaches before the validation split; the test split is too close to it")
    return {
        name: {"mae": (f - truth).abs().mean().item(), "rmse": math.sqrt((f - truth).pow(2).mean().item())}
        for name, f in forecasts.items()
    }


def train_and_test(
    name: str, extra: list[str], path: Path | None, epochs: int | None, threads: int | None
) -> dict[str, float]:
    """``fit`` then ``test`` on the last checkpoint, through ``python -m seqstab.train``; returns val/test metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    common = ["-c", str(CONFIG), "--trainer.enable_progress_bar", "false", *extra]
    if path is not None:
        common += ["--data.path", str(path)]
    if epochs is not None:
        common += ["--trainer.max_epochs", str(epochs)]
    with tempfile.TemporaryDirectory() as cwd:
        start = time.perf_counter()
        fit = subprocess.run([sys.executable, "-m", "seqstab.train", "fit", *common], cwd=cwd, env=env,
                             capture_output=True, text=True)  # fmt: skip
        seconds = time.perf_counter() - start
        if fit.returncode != 0:
            raise SystemExit(f"{name}: fit failed:\n{fit.stderr[-3000:]}")
        ckpt = max(Path(cwd).rglob("*.ckpt"), key=os.path.getmtime)
        test = subprocess.run([sys.executable, "-m", "seqstab.train", "test", *common, "--ckpt_path", str(ckpt)],
                              cwd=cwd, env=env, capture_output=True, text=True)  # fmt: skip
        if test.returncode != 0:
            raise SystemExit(f"{name}: test failed:\n{test.stderr[-3000:]}")
        metrics = {"fit_seconds": seconds, "epochs": int(ckpt.name.split("epoch=")[1].split("-")[0]) + 1}
        for run in sorted(Path(cwd).glob("runs/*/version_*")):
            acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in ("val/mae", "val/rmse", "test/mae", "test/rmse"):
                if tag in acc.Tags()["scalars"]:
                    metrics[tag] = acc.Scalars(tag)[-1].value  # the last validation: the checkpoint tested
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", help="ETTh1.csv (default: ../shared/data, else the config's download)")
    parser.add_argument("--epochs", type=int, help="override the config's trainer.max_epochs")
    parser.add_argument("--models", default="lstm,rnn")
    parser.add_argument("--threads", type=int, help="torch threads of the runs (default: torch's)")
    args = parser.parse_args(argv)
    path = Path(args.path) if args.path else ETTH1 if ETTH1.is_file() else None
    print(f"machine: {_common.machine()}")
    dm = datamodule(path)
    dm.data  # noqa: B018 -- load and split
    print(f"ETTh1 {dm.file()}: {sum(len(dm.data[s]) for s in ('train', 'val', 'test')):,} rows; test rows "
          f"{dm.bounds['test'][0]}–{dm.bounds['test'][1] - 1}; input_length {dm.input_length}, horizon {dm.horizon}, "
          f"stride {dm.stride}")  # fmt: skip
    rows = []
    for name, scores in baselines(dm).items():
        rows.append(f"| {name} | – | {scores['mae']:.3f} | {scores['rmse']:.3f} | – | – |")
    variants = {
        "lstm": ("LSTM (etth1_lstm.yaml)", []),
        "rnn": ("vanilla RNN (--model.cell rnn)", ["--model.cell", "rnn"]),
    }
    for key in args.models.split(","):
        name, extra = variants[key]
        m = train_and_test(name, extra, path, args.epochs, args.threads)
        rows.append(
            f"| {name} | {m['epochs']} | {m['test/mae']:.3f} | {m['test/rmse']:.3f} "
            f"| {m['val/mae']:.3f} / {m['val/rmse']:.3f} | {m['fit_seconds']:.0f} |"
        )
        print(f"{name}: done in {m['fit_seconds']:.0f} s", flush=True)
    print("\n| forecast | epochs | test MAE (°C) | test RMSE (°C) | val MAE / RMSE | fit wall (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
