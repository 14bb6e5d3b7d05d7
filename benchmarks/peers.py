"""The models of ``bench_callback_peers.py``, built the way each library's own docs show, and the factories replay
takes (``python -m seqstab.replay SNAPSHOT --module peers.darts_rnn_module``, run from ``benchmarks/``).

Every library is imported inside the function that needs it: importing this file costs nothing, so ``replay`` can
import a factory from it without importing the other two libraries. The task is the same for all: OT of ETTh1
(the standard train split, its first 12 months), 24 hours ahead from the 96 before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ETTH1 = Path(os.environ.get("ETTH1", SHARED / "timeseries" / "ETTh1.csv"))
TRAIN_ROWS = 12 * 30 * 24  # the standard ETTh1 split (Informer): 12/4/4 months of 30 days
H, INPUT = 24, 96
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu", "devices": 1}
SEED = 0  # the models' seed (darts random_state, neuralforecast random_seed + 1, torch's for the others); --seeds


def frame():
    import pandas as pd

    return pd.read_csv(ETTH1, parse_dates=["date"], nrows=TRAIN_ROWS)


# -- darts: RNNModel, BlockRNNModel (pl_trainer_kwargs={"callbacks": [...]}) ---------------------------------------


def darts_series():
    """OT as a darts ``TimeSeries``, min-max scaled as darts' docs do (``Scaler``), float32."""
    import numpy as np
    from darts import TimeSeries
    from darts.dataprocessing.transformers import Scaler

    series = TimeSeries.from_dataframe(frame(), "date", "OT").astype(np.float32)
    return Scaler().fit_transform(series)


def darts_model(kind: str, callbacks: list, steps: int, **kwargs: Any):
    """darts' ``RNNModel`` (``kind="rnn"``: an LSTM trained on 120-step sequences) or ``BlockRNNModel``
    (``kind="block"``: an LSTM encoder, 96 in, 24 out), 32 windows a batch, darts' defaults otherwise."""
    from darts.models import BlockRNNModel, RNNModel

    trainer = {**QUIET, "callbacks": callbacks, "max_steps": steps, **kwargs.pop("pl_trainer_kwargs", {})}
    common = dict(model="LSTM", batch_size=32, n_epochs=1000, random_state=SEED, pl_trainer_kwargs=trainer, **kwargs)
    if kind == "rnn":
        return RNNModel(input_chunk_length=INPUT, training_length=INPUT + H, **common)
    return BlockRNNModel(input_chunk_length=INPUT, output_chunk_length=H, **common)


def _darts_saved(kind: str) -> nn.Module:
    """The LightningModule of a darts model saved by the bench (``model.save``), loaded as darts loads it (its safe
    load: no ``trusted=True``)."""
    from darts.models import BlockRNNModel, RNNModel

    cls = RNNModel if kind == "rnn" else BlockRNNModel
    return cls.load(os.environ[f"PEERS_DARTS_{kind.upper()}"]).model


def darts_rnn_module() -> nn.Module:
    """Replay's factory for the RNNModel run (the model the bench saved; any RNNModel of the same settings works)."""
    return _darts_saved("rnn")


def darts_block_module() -> nn.Module:
    """Replay's factory for the BlockRNNModel run."""
    return _darts_saved("block")


# -- pytorch-forecasting: RecurrentNetwork, DeepAR (a lightning.pytorch Trainer) -----------------------------------


def pf_dataset():
    """A ``TimeSeriesDataSet`` of OT: 96 encoder steps, 24 decoder steps, one series (pytorch-forecasting's default
    target normalizer: an ``EncoderNormalizer``)."""
    import numpy as np
    from pytorch_forecasting import TimeSeriesDataSet

    data = frame().assign(time_idx=np.arange(TRAIN_ROWS), series="ETTh1")
    return TimeSeriesDataSet(
        data,
        time_idx="time_idx",
        target="OT",
        group_ids=["series"],
        max_encoder_length=INPUT,
        max_prediction_length=H,
        time_varying_unknown_reals=["OT"],
    )


PF_KWARGS = {"hidden_size": 32, "rnn_layers": 2}


def pf_model(kind: str, dataset=None):
    from pytorch_forecasting import DeepAR, RecurrentNetwork

    cls = RecurrentNetwork if kind == "rnn" else DeepAR
    return cls.from_dataset(dataset if dataset is not None else pf_dataset(), **PF_KWARGS)


def pf_rnn_module() -> nn.Module:
    """Replay's factory for the RecurrentNetwork run: the model as the run built it (``from_dataset``)."""
    return pf_model("rnn")


def pf_deepar_module() -> nn.Module:
    """Replay's factory for the DeepAR run."""
    return pf_model("deepar")


# -- neuralforecast: LSTM(..., callbacks=[...]) -------------------------------------------------------------------


def nf_frame():
    """OT in neuralforecast's long format: ``unique_id``, ``ds``, ``y``."""
    data = frame().rename(columns={"date": "ds", "OT": "y"}).assign(unique_id="ETTh1")
    return data[["unique_id", "ds", "y"]]


def nf_lstm(**trainer: Any):
    """neuralforecast's ``LSTM`` (2×128 encoder, MLP decoder, MAE, Adam 1e-3, robust scaler), 128 windows a step."""
    from neuralforecast.models import LSTM

    return LSTM(h=H, input_size=INPUT, scaler_type="robust", random_seed=SEED + 1, **{**QUIET, **trainer})


def nf_module() -> nn.Module:
    """Replay's factory for the neuralforecast run: the model as the run built it."""
    return nf_lstm(max_steps=1)


# -- a plain PyTorch loop around UpdateCore -----------------------------------------------------------------------


class Net(nn.Module):
    """An LSTM over the 96 inputs, a linear head to the 24 outputs."""

    def __init__(self, hidden_size: int = 32):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 96, 1)
        out, _ = self.lstm(x)  # (B, 96, H)
        return self.head(out[:, -1])  # (B, 24)


def loss_of(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The loop's loss of a batch ``(x, y)``: what replay's ``--loss`` names."""
    x, y = batch
    return nn.functional.mse_loss(net(x), y)


def loop_windows(batch_size: int = 32, seed: int = 0):
    """Random (x, y) windows of standardised OT: ``x`` (B, 96, 1), ``y`` (B, 24), endlessly."""
    series = torch.tensor(frame()["OT"].to_numpy(), dtype=torch.float32)
    series = (series - series.mean()) / series.std()
    g = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(series) - INPUT - H, (batch_size,), generator=g)
        idx = starts[:, None] + torch.arange(INPUT + H)  # (B, 120)
        windows = series[idx]
        yield windows[:, :INPUT, None], windows[:, INPUT:]
