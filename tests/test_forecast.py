"""Forecasting features on tiny data: calendar inputs, per-window normalisation, the encoder–decoder head, the ETT
protocol's borders, the normalised metrics, and no look-ahead (a forecast never reads a target of its own horizon)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from functools import partial

import numpy as np
import pytest
import torch

from datamodules.timeseries import CSVSeries, calendar_features
from seqstab.core.errors import ConfigError
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import Forecaster

START = datetime(2021, 3, 1, 0, 0)


def _hourly_csv(tmp_path, rows: int = 240, name: str = "s.csv", bump: int | None = None) -> str:
    """``date,a,b``: hourly rows; ``a`` a noisy daily wave (the target), ``b`` a feature; ``bump``: add 5 to row
    ``bump`` of ``a`` (and of ``b``)."""
    rng = np.random.default_rng(0)
    a = np.sin(2 * np.pi * np.arange(rows) / 24) + 0.1 * rng.standard_normal(rows)
    b = np.cos(2 * np.pi * np.arange(rows) / 12)
    if bump is not None:
        a[bump] += 5.0
        b[bump] += 5.0
    dates = [START + timedelta(hours=i) for i in range(rows)]
    lines = ["date,a,b"] + [f"{d:%Y-%m-%d %H:%M:%S},{a[i]:.6f},{b[i]:.6f}" for i, d in enumerate(dates)]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _model(dm: CSVSeries, **kwargs) -> Forecaster:
    torch.manual_seed(0)
    return Forecaster(net=partial(RecurrentNet, hidden_size=6), spec=dm.spec, **kwargs).eval()


def test_calendar_features_are_sin_cos_pairs_known_for_the_horizon(tmp_path):
    dm = CSVSeries(target="a", path=_hourly_csv(tmp_path), input_length=8, horizon=3, calendar=["hour", "dayofweek"])
    assert dm.spec.input_size == 1 + 4 and dm.spec.known_size == 4
    batch = next(iter(dm.val_dataloader()))
    assert batch["known"].shape == (*batch["x"].shape[:2], 3, 4)  # (B, L, H, K)
    val_start = dm.bounds["val"][0]
    hours = torch.tensor([(val_start + i) % 24 for i in range(8)], dtype=torch.float32)  # window 0, rows of its steps
    angle = 2 * math.pi * hours / 24
    assert torch.allclose(batch["x"][0, :, 1], torch.sin(angle), atol=1e-6)  # the calendar is not normalised
    assert torch.allclose(batch["x"][0, :, 2], torch.cos(angle), atol=1e-6)
    assert torch.equal(batch["known"][0, :-1, 0], batch["x"][0, 1:, 1:])  # known[t, h=1] is row t + 1's calendar
    assert torch.equal(batch["known"][0, 0, 2], batch["x"][0, 3, 1:])  # known[t, h=3] is row t + 3's
    # Monday 2021-03-01 is day 0 of the week; the phase of the day of the week advances by 1/7 a day
    assert calendar_features([START, START + timedelta(days=1)], ["dayofweek"])[1].tolist() == pytest.approx(
        [math.sin(2 * math.pi / 7), math.cos(2 * math.pi / 7)]
    )
    future = list(dm.predict_dataloader())[-1]["known"][-1, -1]  # the last window's horizon, past the data
    last_hour = (len(dm.data["all"]) - 1) % 24
    expect = [(last_hour + h) % 24 for h in (1, 2, 3)]
    assert torch.allclose(future[:, 0], torch.sin(2 * math.pi * torch.tensor(expect) / 24), atol=1e-6)


def test_calendar_needs_a_date_column_and_a_known_name(tmp_path):
    path = tmp_path / "nodate.csv"
    path.write_text("a\n" + "".join(f"{i % 5}\n" for i in range(100)))
    with pytest.raises(ConfigError, match="no date column"):
        CSVSeries(target="a", path=str(path), input_length=4, calendar=["hour"]).spec  # noqa: B018
    with pytest.raises(ConfigError, match="'minute' is not a calendar feature"):
        CSVSeries(target="a", path=str(path), calendar=["minute"])
    with pytest.raises(ConfigError, match="only for mode 'windows'"):
        CSVSeries(target="a", path=str(path), mode="stream", window_norm="last")


@pytest.mark.parametrize("norm", ["last", "mean"])
def test_window_norm_is_restored_exactly_at_the_output(tmp_path, norm):
    path = _hourly_csv(tmp_path)
    plain = CSVSeries(target="a", features=["b"], path=path, input_length=8, horizon=3, score_last=1)
    shifted = CSVSeries(target="a", features=["b"], path=path, input_length=8, horizon=3, score_last=1,
                        window_norm=norm)  # fmt: skip
    a, b = next(iter(plain.val_dataloader())), next(iter(shifted.val_dataloader()))
    assert torch.equal(a["y"], b["y"])  # targets stay on the global scale
    reference = a["x"].mean(dim=1) if norm == "mean" else a["x"][:, -1]  # (B, C): score_last 1 sees the window
    assert torch.allclose(b["x"], a["x"] - reference[:, None], atol=1e-6)
    assert torch.allclose(b["level"], reference[:, None, :1].expand(-1, 8, -1), atol=1e-6)  # (B, L, T)
    # the untrained change forecaster is the naive forecast, in the global units, whatever was subtracted
    for head in ("linear", "decoder"):
        model = _model(shifted, predict="change", head=head)
        with torch.no_grad():
            out, _ = model.forward_batch(b, None)
        naive = a["x"][:, -1, :1]  # (B, T) last observed value
        assert torch.allclose(out[:, -1], naive[:, None].expand(-1, 3, -1), atol=1e-6), head
        model._eval_step(b, "val")
        mae = (model._eval_sums["abs"] / model._eval_sums["_count"]).item()
        err = (naive[:, None] - a["y"][:, -1]).abs() * shifted.spec.target_scale[0]
        assert mae == pytest.approx(err.mean().item(), rel=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_decoder_head_shapes_scored_steps_and_gradient(tmp_path, cell):
    dm = CSVSeries(target="a", features=["b"], path=_hourly_csv(tmp_path), input_length=8, horizon=4, score_last=2,
                   calendar=["hour"])  # fmt: skip
    model = _model(dm, predict="level", head="decoder", decoder_cell=cell).train()
    batch = next(iter(dm.train_dataloader()))
    out, hidden = model.forward_batch(batch, None)
    assert out.shape == (batch["x"].shape[0], 8, 4, 1)  # (B, L, H, T)
    assert out[:, :6].abs().sum() == 0 and out[:, 6:].abs().sum() > 0  # the rollout runs at the scored steps only
    model.step_losses(out, batch)["loss"].mean().backward()
    assert model.head[1].cell.weight_ih.grad.abs().sum() > 0  # the rollout trains, and so does the encoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.parameters())
    assert model.head[1].cell.weight_ih.shape[1] == 1 + 2  # its previous prediction and the hour's sin/cos


@pytest.mark.parametrize("head", ["linear", "decoder"])
def test_no_forecast_reads_a_target_of_its_own_horizon(tmp_path, head):
    """Change one row of the series: every forecast made before that row (its inputs end earlier) is unchanged,
    with the calendar, per-window normalisation and both heads; a forecast made after it changes."""
    kwargs = dict(target="a", features=["b"], input_length=8, horizon=4, score_last=3, calendar=["hour"],
                  window_norm="mean", split=(0.5, 0.3))  # fmt: skip
    base = CSVSeries(path=_hourly_csv(tmp_path), **kwargs)
    val_start = base.data and base.bounds["val"][0]
    bumped_row = val_start + 20
    bumped = CSVSeries(path=_hourly_csv(tmp_path, name="b.csv", bump=bumped_row), **kwargs)
    model = _model(base, predict="change", head=head)
    for p in model.head.parameters():  # a trained head: forecasts depend on every input they read
        torch.nn.init.normal_(p, std=0.3)
    outs = []
    for dm in (base, bumped):
        loader = dm.val_dataloader()
        with torch.no_grad():
            outs.append(torch.cat([model.forward_batch(batch, None)[0] for batch in loader]))  # (W, L, H, T)
    starts = loader.dataset.starts  # (W,)
    rows = val_start + starts[:, None] + torch.arange(8)  # (W, L): the row of each step, the forecast's origin
    scored = torch.zeros(8, dtype=torch.bool)
    scored[-3:] = True
    before = (rows < bumped_row) & scored  # forecasts made before the changed row: it is in their horizon or later
    after = (rows >= bumped_row) & scored
    assert before.any() and after.any()
    assert torch.equal(outs[0][before], outs[1][before])
    assert not torch.allclose(outs[0][after], outs[1][after])


def test_lookback_gives_the_literatures_borders(tmp_path):
    path = _hourly_csv(tmp_path, rows=200)
    dm = CSVSeries(target="a", path=path, input_length=8, horizon=3, score_last=1, lookback=True,
                   split_rows=[100, 150, 190])  # fmt: skip
    assert dm.data and dm.bounds == {"train": (0, 100), "val": (92, 150), "test": (142, 190)}
    ds = dm.val_dataloader().dataset
    first = ds[[0]]
    assert torch.equal(first["y"][0, -1, :, 0], dm.data["all"][100:103, 0])  # the first forecast: rows 100-102
    assert len(ds) == 150 - 100 - 3 + 1  # every origin whose horizon lies in the split (stride 1)
    with pytest.raises(ConfigError, match="split_rows"):
        CSVSeries(target="a", path=path, split_rows=[100, 90, 190])


def test_norm_metrics_are_the_normalised_mse_and_mae(tmp_path):
    dm = CSVSeries(target="a", path=_hourly_csv(tmp_path), input_length=8, horizon=3, score_last=1)
    model = _model(dm, predict="change", norm_metrics=True)
    for batch in dm.val_dataloader():
        model._eval_step(batch, "val")
    sums = model._eval_sums
    means = {k: (v / sums["_count"]).item() for k, v in sums.items() if k != "_count"}
    metrics = model.eval_metrics(means)
    assert metrics["mse_norm"] == metrics["loss"]
    assert metrics["mae_norm"] * dm.spec.target_scale[0] == pytest.approx(metrics["mae"], rel=1e-6)
