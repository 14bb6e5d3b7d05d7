"""ETTh1 (target OT, 24 h ahead): an LSTM and a vanilla RNN forecaster against naive and seasonal-naive baselines.

    python benchmarks/bench_etth1.py                      # ~10 min on 2 cores; --help for the knobs

The models train with the shipped config ``configs/timeseries/etth1_lstm.yaml`` through the CLI, exactly as a
user runs it (the RNN: the same config with ``--model.cell rnn``), then ``test`` on the config's best-validation
checkpoint (``best-epoch=N.ckpt``, lowest val/mae; the newest checkpoint if there is none). The baselines are
scored on the very same test windows and steps the Forecaster is scored on (the config's ``CSVSeries``: same
split, stride, input length, horizon and ``score_last``): the scored step ``t`` of each test window (the last one
with ``score_last: 1``; every step with ``null``) predicts the next ``H`` = 24 values of OT, and MAE/RMSE average
over windows, scored steps and horizons, in the original units (°C). The naive baseline is computed a second time
from the test dataloader's own batches (``x``, ``y`` and ``mask``, as the Forecaster sees them) and must agree.

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
from seqstab.cli.run_dirs import EVAL_DIRS

CONFIG = _common.REPO / "configs" / "timeseries" / "etth1_lstm.yaml"
ETTH1 = _common.SHARED_DATA / "timeseries" / "ETTh1.csv"


def datamodule(path: Path | None, score_last: int | None | str = "config") -> CSVSeries:
    """The config's datamodule, built from the YAML itself (so the baselines follow any change to it)."""
    data = yaml.safe_load(CONFIG.read_text())["data"]
    assert data["class_path"].endswith("CSVSeries"), data["class_path"]
    init_args = {**data["init_args"], "path": str(path) if path else None}
    if score_last != "config":
        init_args["score_last"] = score_last
    return CSVSeries(**init_args)


def scored_steps(dm: CSVSeries) -> torch.Tensor:
    """Offsets within a window of the steps that carry loss and metrics: the last ``score_last``, or all."""
    length = dm.input_length
    return torch.arange(length - (dm.score_last or length), length)


def baselines(dm: CSVSeries, split: str = "test") -> dict[str, dict[str, float]]:
    """MAE and RMSE of the naive and seasonal-naive forecasts over a split's windows (``val`` or ``test``) and their
    scored steps, in original units."""
    data, before = dm.data, {"val": "train", "test": "val"}[split]  # the split and the one just before it in time
    target = dm.denormalize(torch.cat([data[before], data[split]])[:, : dm.num_targets]).double()  # (n_before+n, T)
    offset = len(data[before])  # row i of the split is row offset + i of `target`
    n, length, horizon = len(data[split]), dm.input_length, dm.horizon
    starts = window_starts(n, length, horizon, dm.stride)  # (W,)
    now = offset + (starts[:, None] + scored_steps(dm)).reshape(-1)  # (W·S,) row of each scored step
    h = torch.arange(1, horizon + 1)  # (H,)
    truth = target[now[:, None] + h]  # (W·S, H, T)
    forecasts = {
        "naive (last value)": target[now][:, None].expand_as(truth),
        "seasonal naive (24 h)": target[now[:, None] + h - 24],
    }
    if (now.min() + 1 - 24) < 0:
        raise SystemExit(f"seasonal naive reaches before the {before} split; the {split} split is too close to it")
    return {
        name: {"mae": (f - truth).abs().mean().item(), "rmse": math.sqrt((f - truth).pow(2).mean().item())}
        for name, f in forecasts.items()
    }


def naive_from_loader(dm: CSVSeries, split: str = "test") -> dict[str, float]:
    """The naive forecast scored from the split's dataloader batches, weighted by their ``mask`` as the Forecaster's
    metrics are: the cross-check that :func:`baselines` scores the same steps."""
    std = dm.data["std"][: dm.num_targets].double()
    abs_sum = sq_sum = count = 0.0
    for batch in getattr(dm, f"{split}_dataloader")():
        now = batch["x"][..., : dm.num_targets].double()  # (B, L, T) targets at step t, normalised
        if "level" in batch:  # per-window normalisation (window_norm): the window's level, back
            now = now + batch["level"].double()
        err = (now[:, :, None] - batch["y"].double()) * std  # (B, L, H, T) in °C (the mean cancels)
        weight = batch["mask"].double() if "mask" in batch else torch.ones(err.shape[:2], dtype=torch.double)
        abs_sum += (err.abs().mean(dim=(-2, -1)) * weight).sum().item()
        sq_sum += (err.pow(2).mean(dim=(-2, -1)) * weight).sum().item()
        count += weight.sum().item()
    return {"mae": abs_sum / count, "rmse": math.sqrt(sq_sum / count), "steps": count}


def tested_checkpoint(run: Path) -> Path:
    """The best-validation checkpoint the config's ModelCheckpoint keeps (``best-*.ckpt``), else the newest one."""
    best = sorted(run.rglob("best-*.ckpt"))
    if len(best) > 1:
        raise SystemExit(f"more than one best checkpoint: {[p.name for p in best]}")
    return best[0] if best else max(run.rglob("*.ckpt"), key=os.path.getmtime)


def train_and_test(
    name: str, extra: list[str], path: Path | None, epochs: int | None, threads: int | None
) -> dict[str, float]:
    """``fit`` then ``test`` on the best-validation checkpoint, through ``python -m seqstab.train``; returns the
    val metrics of that checkpoint's epoch, its test metrics and the epochs run."""
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
        ckpt = tested_checkpoint(Path(cwd))
        test = subprocess.run([sys.executable, "-m", "seqstab.train", "test", *common, "--ckpt_path", str(ckpt)],
                              cwd=cwd, env=env, capture_output=True, text=True)  # fmt: skip
        if test.returncode != 0:
            raise SystemExit(f"{name}: test failed:\n{test.stderr[-3000:]}")
        metrics = {"fit_seconds": seconds, "ckpt": ckpt.name}
        scalars: dict[str, list[float]] = {}
        fitted = sorted(Path(cwd).glob("runs/*/version_*"))
        for run in [*fitted, *(r / EVAL_DIRS["test"] for r in fitted)]:  # the fit's events, then the test's under it
            acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in ("val/mae", "val/rmse", "test/mae", "test/rmse"):
                if tag in acc.Tags()["scalars"]:
                    scalars[tag] = [e.value for e in acc.Scalars(tag)]  # one value per validation (epoch)
    val_mae = scalars["val/mae"]
    tested = len(val_mae) - 1  # the newest checkpoint: the last validation
    if ckpt.name.startswith("best-"):
        tested = int(ckpt.stem.split("epoch=")[1])  # best-epoch=N.ckpt, N counted from 0
        if val_mae[tested] != min(val_mae):
            raise SystemExit(f"{name}: {ckpt.name} is not the epoch of the lowest val/mae {val_mae}")
    metrics.update(epochs=len(val_mae), tested_epoch=tested + 1)
    metrics.update({"val/mae": val_mae[tested], "val/rmse": scalars["val/rmse"][tested]})
    metrics.update({"test/mae": scalars["test/mae"][-1], "test/rmse": scalars["test/rmse"][-1]})
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", help="ETTh1.csv (default: ../shared/data, else the config's download)")
    parser.add_argument("--epochs", type=int, help="override the config's trainer.max_epochs")
    parser.add_argument("--models", default="lstm,rnn")
    parser.add_argument("--threads", type=int, help="torch threads of the runs (default: torch's)")
    parser.add_argument(
        "--score-last", default="config", help="override the config's data.score_last: an int, or null (every step)"
    )
    parser.add_argument(
        "--predict", default="config", choices=["config", "level", "change"], help="override the config's model.predict"
    )
    parser.add_argument("--seed", type=int, help="override the CLI's seed_everything (default 0)")
    parser.add_argument(
        "--train-on", default="config", choices=["config", "scored", "all"], help="override the config's data.train_on"
    )
    args = parser.parse_args(argv)
    path = Path(args.path) if args.path else ETTH1 if ETTH1.is_file() else None
    score_last = args.score_last if args.score_last == "config" else yaml.safe_load(args.score_last)
    print(f"machine: {_common.machine()}")
    dm = datamodule(path, score_last)
    dm.data  # noqa: B018 -- load and split
    print(f"ETTh1 {dm.file()}: {sum(len(dm.data[s]) for s in ('train', 'val', 'test')):,} rows; test rows "
          f"{dm.bounds['test'][0]}–{dm.bounds['test'][1] - 1}; input_length {dm.input_length}, horizon {dm.horizon}, "
          f"stride {dm.stride}, score_last {dm.score_last}")  # fmt: skip
    scores = {split: baselines(dm, split) for split in ("val", "test")}
    for split in ("val", "test"):
        check, naive = naive_from_loader(dm, split), scores[split]["naive (last value)"]
        print(f"{split}: {check['steps']:.0f} scored steps; naive from the {split} loader's batches: MAE "
              f"{check['mae']:.4f}, RMSE {check['rmse']:.4f} "
              f"(baselines(): {naive['mae']:.4f}, {naive['rmse']:.4f})")  # fmt: skip
        if not all(math.isclose(check[k], naive[k], rel_tol=1e-6) for k in ("mae", "rmse")):
            raise SystemExit(f"the naive baseline disagrees with the {split} dataloader: not scored on the same steps")
    rows = []
    for name, s in scores["test"].items():
        v = scores["val"][name]
        rows.append(f"| {name} | – | {s['mae']:.3f} | {s['rmse']:.3f} | {v['mae']:.3f} / {v['rmse']:.3f} | – |")
    extra_all = [] if score_last == "config" else ["--data.score_last", str(args.score_last)]
    if args.predict != "config":
        extra_all += ["--model.predict", args.predict]
    if args.train_on != "config":
        extra_all += ["--data.train_on", args.train_on]
    if args.seed is not None:
        extra_all += ["--seed_everything", str(args.seed)]
    print(f"overrides of the config: {' '.join(extra_all) or 'none'}")
    variants = {
        "lstm": ("LSTM (etth1_lstm.yaml)", []),
        "rnn": ("vanilla RNN (--model.cell rnn)", ["--model.net.cell", "rnn"]),
    }
    for key in args.models.split(","):
        name, extra = variants[key]
        m = train_and_test(name, extra + extra_all, path, args.epochs, args.threads)
        rows.append(
            f"| {name} | {m['tested_epoch']} of {m['epochs']} | {m['test/mae']:.3f} | {m['test/rmse']:.3f} "
            f"| {m['val/mae']:.3f} / {m['val/rmse']:.3f} | {m['fit_seconds']:.0f} |"
        )
        print(f"{name}: done in {m['fit_seconds']:.0f} s; tested {m['ckpt']}", flush=True)
    print("\n| forecast | epoch tested | test MAE (°C) | test RMSE (°C) | val MAE / RMSE (°C) | fit wall (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
