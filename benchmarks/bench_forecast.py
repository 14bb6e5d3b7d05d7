"""ETTh1, OT 24 h ahead: seqstab's forecasters beside naive baselines and the peers a user would pick, on the very
same scored windows.

    # one system, one seed -> <out>/<system>-seed<N>.json (seqstab and the baselines: the project's venv)
    python benchmarks/bench_forecast.py --system seqstab-lstm --seed 0
    # the peers run from their own venv (not in [dev]); see "Peers" below
    .venv-peers/bin/python benchmarks/bench_forecast.py --system darts-lstm --seed 0
    # the table over every JSON in <out> (mean and range over seeds)
    python benchmarks/bench_forecast.py --report

Systems (``--system``):

* ``naive``: every horizon step predicts the last observed OT; ``seasonal-naive``: OT a day (24 h) before the target
  time (deterministic: one "seed");
* ``seqstab-lstm``, ``seqstab-rnn``: ``configs/timeseries/etth1_lstm.yaml`` / ``etth1_rnn.yaml`` as shipped, trained
  with ``python -m seqstab.train fit`` (``--seed_everything N``) and evaluated on the best-validation checkpoint;
  ``seqstab-gru``: the LSTM config with ``--model.net.cell gru``; ``seqstab-lstm-decoder``: the LSTM config with the
  encoder–decoder head (``--model.head decoder``);
* ``darts-lstm``: darts ``RNNModel(model="LSTM")`` on OT alone (input_chunk_length 96, training_length 120: trained
  on every step, rolled out over the horizon feeding its predictions back), ``--peer-epochs`` epochs;
* ``nf-lstm``, ``nf-nhits``: neuralforecast ``LSTM`` and ``NHITS`` (h 24, input_size 96, OT alone, standard scaler),
  ``--peer-steps`` training steps.

The scored windows are the config's (its ``CSVSeries``: 60/20/20 split, 96-step windows at stride 4, one forecast
per window after all 96 inputs): origin ``t`` = the last input row of each val and test window, targets rows
``t + 1 … t + 24``. Every system forecasts exactly those origins from rows up to ``t`` and is scored by the same
code: MAE and RMSE in °C, MSE and MAE on the train-normalised scale (OT's train mean and standard deviation; the
literature's ``mse``/``mae``), and MAE at horizon steps 1, 12 and 24. The peers are trained on the train split
only (the rows before the first val origin's targets), normalised with the same statistics.

Peers (benchmark-only dependencies, never in ``[dev]``), installed once into ``.venv-peers`` (git-ignored)::

    python -m venv .venv-peers && .venv-peers/bin/pip install torch==2.13.0 \\
        && .venv-peers/bin/pip install neuralforecast darts && .venv-peers/bin/pip install -e .

On the 2-core machine the runs go one at a time under the shared lock (``flock /work/heavy.lock ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
import numpy as np
import torch
import yaml

from datamodules.timeseries import CSVSeries, window_starts

CONFIGS = _common.REPO / "configs" / "timeseries"
ETTH1 = _common.SHARED_DATA / "timeseries" / "ETTh1.csv"
OUT = _common.REPO / "benchmarks" / "results" / "forecast"  # the JSONs behind benchmarks/RESULTS.md
STEPS_REPORTED = (1, 12, 24)
SEQSTAB = {
    "seqstab-lstm": ("etth1_lstm.yaml", []),
    "seqstab-rnn": ("etth1_rnn.yaml", []),
    "seqstab-gru": ("etth1_lstm.yaml", ["--model.net.cell", "gru"]),
    "seqstab-lstm-decoder": ("etth1_lstm.yaml", ["--model.head", "decoder"]),
    "seqstab-rnn-decoder": ("etth1_rnn.yaml", ["--model.head", "decoder"]),
}
PEERS = ("darts-lstm", "nf-lstm", "nf-nhits")
BASELINES = ("naive", "seasonal-naive")
NAMES = {
    "naive": "naive (last value)",
    "seasonal-naive": "seasonal naive (24 h)",
    "seqstab-lstm": "seqstab LSTM (etth1_lstm.yaml)",
    "seqstab-rnn": "seqstab RNN (etth1_rnn.yaml)",
    "seqstab-gru": "seqstab GRU (etth1_lstm.yaml, cell gru)",
    "seqstab-lstm-decoder": "seqstab LSTM, decoder head",
    "seqstab-rnn-decoder": "seqstab RNN, decoder head",
    "darts-lstm": "darts RNNModel (LSTM)",
    "nf-lstm": "neuralforecast LSTM",
    "nf-nhits": "neuralforecast NHITS",
}


# -- the scored windows ----------------------------------------------------------------------------------------------


def datamodule(path: Path | None, config: str = "etth1_lstm.yaml") -> CSVSeries:
    """The config's datamodule, built from the YAML itself."""
    data = yaml.safe_load((CONFIGS / config).read_text())["data"]
    init_args = {**data["init_args"], "path": str(path) if path else None}
    return CSVSeries(**init_args)


class Windows:
    """The scored origins of the val and test splits, the series in °C, and the train statistics of OT."""

    def __init__(self, dm: CSVSeries):
        data = dm.data
        self.dm = dm
        self.mean, self.std = float(data["mean"][0]), float(data["std"][0])
        self.ot = dm.denormalize(data["all"][:, :1]).double()[:, 0].numpy()  # (N,) °C
        self.dates = dm.dates
        self.length, self.horizon = dm.input_length, dm.horizon
        self.train_end = dm.bounds["train"][1]
        self.origins = {}
        for split in ("val", "test"):
            a, b = dm.bounds[split]
            starts = window_starts(b - a, self.length, self.horizon, dm.stride).numpy()
            self.origins[split] = a + starts + self.length - 1  # (W,) the last input row of each window

    def truth(self, split: str) -> np.ndarray:
        """``(W, H)`` OT in °C at rows ``t + 1 … t + H`` of each origin ``t``."""
        return self.ot[self.origins[split][:, None] + np.arange(1, self.horizon + 1)]

    def score(self, split: str, forecast: np.ndarray) -> dict:
        """Every figure of one system on one split, from its forecasts ``(W, H)`` in °C."""
        truth = self.truth(split)
        if forecast.shape != truth.shape or not np.isfinite(forecast).all():
            raise SystemExit(f"{split}: forecasts {forecast.shape} (finite: {np.isfinite(forecast).all()}), "
                             f"expected {truth.shape}")  # fmt: skip
        err = forecast - truth
        return {
            "windows": len(truth),
            "mae": float(np.abs(err).mean()),
            "rmse": float(np.sqrt((err**2).mean())),
            "mse_norm": float(((err / self.std) ** 2).mean()),
            "mae_norm": float(np.abs(err / self.std).mean()),
            "mae_h": {str(h): float(np.abs(err[:, h - 1]).mean()) for h in STEPS_REPORTED},
        }


# -- the systems: each returns {split: forecasts (W, H) in °C} -----------------------------------------------------


def baseline(w: Windows, name: str) -> dict[str, np.ndarray]:
    h = np.arange(1, w.horizon + 1)
    if name == "naive":
        return {s: np.repeat(w.ot[o][:, None], w.horizon, axis=1) for s, o in w.origins.items()}
    return {s: w.ot[o[:, None] + h - 24] for s, o in w.origins.items()}  # seasonal naive, a day earlier


def seqstab_system(w: Windows, name: str, seed: int, path: Path | None, info: dict) -> dict[str, np.ndarray]:
    """Fit through the CLI as a user does, then forecast the val and test windows from the best checkpoint."""
    from seqstab.tasks import Forecaster

    config, extra = SEQSTAB[name]
    args = ["-c", str(CONFIGS / config), "--trainer.enable_progress_bar", "false", "--seed_everything", str(seed),
            *extra, *(["--data.path", str(path)] if path else [])]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as cwd:
        start = time.perf_counter()
        fit = subprocess.run([sys.executable, "-m", "seqstab.train", "fit", *args], cwd=cwd, env=env,
                             capture_output=True, text=True)  # fmt: skip
        info["fit_seconds"] = time.perf_counter() - start
        if fit.returncode != 0:
            raise SystemExit(f"{name}: fit failed:\n{fit.stderr[-3000:]}")
        (ckpt,) = Path(cwd).rglob("best-*.ckpt")
        (last,) = Path(cwd).rglob("last.ckpt")
        info["best_epoch"] = int(ckpt.stem.split("epoch=")[1]) + 1  # counted from 1
        info["epochs"] = torch.load(last, map_location="cpu", weights_only=False)["epoch"] + 1
        info["command"] = "python -m seqstab.train fit " + " ".join(args)
        model = Forecaster.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False).eval()
    dm = datamodule(path, config)
    out = {}
    for split in ("val", "test"):
        forecasts = []
        with torch.no_grad():
            for batch in getattr(dm, f"{split}_dataloader")():
                forecast, _ = model.forward_batch(batch, None)  # (B, L, H, 1) normalised
                forecasts.append(forecast[batch["mask"]][..., 0])  # (B, H): the scored (last) step
        out[split] = dm.denormalize(torch.cat(forecasts)[..., None]).double()[..., 0].numpy()
    return out


def train_frame(w: Windows):
    """The train rows as neuralforecast's long frame (``unique_id``, ``ds``, ``y`` normalised)."""
    import pandas as pd

    y = (w.ot[: w.train_end] - w.mean) / w.std
    return pd.DataFrame({"unique_id": "OT", "ds": pd.to_datetime(w.dates[: w.train_end]), "y": y})


def history_frame(w: Windows, split: str, rows: int):
    """One series per origin: its last ``rows`` rows up to and including the origin (normalised)."""
    import pandas as pd

    origins = w.origins[split]
    index = origins[:, None] + np.arange(-rows + 1, 1)  # (W, rows)
    dates = np.asarray(w.dates, dtype="datetime64[ns]")
    return pd.DataFrame({
        "unique_id": np.repeat(np.arange(len(origins)), rows),
        "ds": dates[index].reshape(-1),
        "y": ((w.ot[index] - w.mean) / w.std).reshape(-1),
    })  # fmt: skip


def neuralforecast_system(w: Windows, name: str, seed: int, steps: int, info: dict) -> dict[str, np.ndarray]:
    from neuralforecast import NeuralForecast
    from neuralforecast.models import LSTM, NHITS

    kind = {"nf-lstm": LSTM, "nf-nhits": NHITS}[name]
    model = kind(h=w.horizon, input_size=w.length, max_steps=steps, random_seed=seed, scaler_type="standard",
                 enable_progress_bar=False, enable_model_summary=False, logger=False, accelerator="cpu",
                 devices=1)  # fmt: skip
    nf = NeuralForecast(models=[model], freq="h")
    start = time.perf_counter()
    nf.fit(train_frame(w))
    info["fit_seconds"] = time.perf_counter() - start
    info["max_steps"] = steps
    out = {}
    for split in ("val", "test"):
        pred = nf.predict(df=history_frame(w, split, w.length))
        column = [c for c in pred.columns if c not in ("unique_id", "ds", "cutoff")][0]
        pred = pred.sort_values(["unique_id", "ds"])
        out[split] = pred[column].to_numpy().reshape(-1, w.horizon) * w.std + w.mean
    return out


def darts_system(w: Windows, seed: int, epochs: int, info: dict) -> dict[str, np.ndarray]:
    from darts import TimeSeries
    from darts.models import RNNModel

    model = RNNModel(model="LSTM", input_chunk_length=w.length, training_length=w.length + w.horizon, n_epochs=epochs,
                     random_state=seed, pl_trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False,
                                                           "enable_model_summary": False, "logger": False})  # fmt: skip
    train = TimeSeries.from_values(((w.ot[: w.train_end] - w.mean) / w.std).astype(np.float32))
    start = time.perf_counter()
    model.fit(train, verbose=False)
    info["fit_seconds"] = time.perf_counter() - start
    info["epochs"] = epochs
    out = {}
    for split in ("val", "test"):
        index = w.origins[split][:, None] + np.arange(-w.length + 1, 1)  # (W, L)
        series = [TimeSeries.from_values(((w.ot[i] - w.mean) / w.std).astype(np.float32)) for i in index]
        preds = model.predict(n=w.horizon, series=series, verbose=False, batch_size=256)
        out[split] = np.stack([p.values()[:, 0] for p in preds]).astype(np.float64) * w.std + w.mean
    return out


# -- the report --------------------------------------------------------------------------------------------------


def _spread(values: list[float], digits: int = 3) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def report(out: Path) -> str:
    runs: dict[str, list[dict]] = {}
    for file in sorted(out.glob("*.json")):
        result = json.loads(file.read_text())
        runs.setdefault(result["system"], []).append(result)
    order = [s for s in (*BASELINES, *SEQSTAB, *PEERS) if s in runs]
    best_naive = {
        split: min(runs[b][0][split]["mae"] for b in BASELINES if b in runs) for split in ("val", "test")
    } if all(b in runs for b in BASELINES) else None  # fmt: skip
    lines = [
        "| forecast | seeds | val MAE (°C) | test MAE (°C) | test RMSE (°C) | test MSE / MAE (norm.) "
        "| test MAE h=1 / 12 / 24 | vs best naive: val / test | fit (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in order:
        rs = runs[system]
        val, test = [r["val"]["mae"] for r in rs], [r["test"]["mae"] for r in rs]
        rmse = [r["test"]["rmse"] for r in rs]
        mse_n, mae_n = (statistics.fmean(r["test"][k] for r in rs) for k in ("mse_norm", "mae_norm"))
        per_h = " / ".join(f"{statistics.fmean(r['test']['mae_h'][str(h)] for r in rs):.3f}" for h in STEPS_REPORTED)
        versus = "–"
        if best_naive and system not in BASELINES:
            dv = 100 * (statistics.fmean(val) / best_naive["val"] - 1)
            dt = 100 * (statistics.fmean(test) / best_naive["test"] - 1)
            versus = f"{dv:+.1f} % / {dt:+.1f} %"
        fit = [r["fit_seconds"] for r in rs if r.get("fit_seconds")]
        lines.append(
            f"| {NAMES.get(system, system)} | {len(rs)} | {_spread(val)} | {_spread(test)} | {_spread(rmse)} "
            f"| {mse_n:.3f} / {mae_n:.3f} | {per_h} | {versus} | {f'{statistics.fmean(fit):.0f}' if fit else '–'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", choices=[*BASELINES, *SEQSTAB, *PEERS])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="print the table over every JSON in --out")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the JSONs go (default {OUT})")
    parser.add_argument("--path", type=Path, help="ETTh1.csv (default: ../shared/data, else the config's download)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared 2-core machine)")
    parser.add_argument("--peer-epochs", type=int, default=15, help="darts RNNModel's n_epochs")
    parser.add_argument("--peer-steps", type=int, default=1000, help="neuralforecast's max_steps")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.out))
        return
    if args.system is None:
        parser.error("give --system (or --report)")
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    path = args.path or (ETTH1 if ETTH1.is_file() else None)
    w = Windows(datamodule(path))
    info: dict = {"system": args.system, "seed": args.seed, "machine": _common.machine()}
    if args.system in BASELINES:
        forecasts = baseline(w, args.system)
    elif args.system in SEQSTAB:
        forecasts = seqstab_system(w, args.system, args.seed, path, info)
    elif args.system == "darts-lstm":
        forecasts = darts_system(w, args.seed, args.peer_epochs, info)
    else:
        forecasts = neuralforecast_system(w, args.system, args.seed, args.peer_steps, info)
    result = {**info, **{split: w.score(split, forecasts[split]) for split in ("val", "test")}}
    args.out.mkdir(parents=True, exist_ok=True)
    file = args.out / f"{args.system}-seed{args.seed}.json"
    file.write_text(json.dumps(result, indent=1) + "\n")
    v, t = result["val"], result["test"]
    print(f"{args.system} seed {args.seed}: val MAE {v['mae']:.3f}, test MAE {t['mae']:.3f} RMSE {t['rmse']:.3f} "
          f"MSE/MAE norm {t['mse_norm']:.3f}/{t['mae_norm']:.3f} ({v['windows']}/{t['windows']} windows)")  # fmt: skip
    print(f"-> {file}")


if __name__ == "__main__":
    main()
