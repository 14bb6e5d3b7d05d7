"""Time series: CSV parsing, chronological splits, train-only normalisation, windows and streams, bad files."""

from __future__ import annotations

import csv
import hashlib
from datetime import datetime
from functools import partial

import numpy as np
import pytest
import torch

from datamodules.timeseries import CSVSeries, MackeyGlass, SumOfSines, mackey_glass
from seqstab.core.errors import ConfigError, DataError
from seqstab.nets.recurrent import RecurrentNet
from tests.data_paths import SHARED_DATA

SERIES = SHARED_DATA / "timeseries"
ETTH1 = SERIES / "ETTh1.csv"
LOADS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]


def _etth1_columns() -> np.ndarray:
    with open(ETTH1, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r[c]) for c in ["OT", *LOADS]] for r in rows])  # (N, 7), target first


def test_etth1_normalisation_statistics_come_from_the_train_split_only():
    dm = CSVSeries(target="OT", features=LOADS, path=str(ETTH1), input_length=24, horizon=6, split=(0.6, 0.2))
    raw = _etth1_columns()
    n_train = round(len(raw) * 0.6)
    data = dm.data  # loads, splits and normalises
    assert dm.bounds["train"] == (0, n_train) and dm.bounds["test"][1] == len(raw) == 17_420
    np.testing.assert_allclose(data["mean"].numpy(), raw[:n_train].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(data["std"].numpy(), raw[:n_train].std(axis=0), rtol=1e-12)
    assert not np.allclose(dm.data["mean"].numpy(), raw.mean(axis=0), rtol=1e-3)  # not the whole file's mean
    spec = dm.spec
    assert spec.kind == "forecast" and spec.input_size == 7 and spec.output_size == 1 and spec.horizon == 6
    assert spec.target_scale == pytest.approx((raw[:n_train, 0].std(),)) and not spec.stateful
    val = dm.data["val"].double()
    np.testing.assert_allclose(dm.denormalize(val[:, :1]).numpy(), raw[n_train : n_train + len(val), :1], atol=1e-4)


def test_etth1_no_window_crosses_a_split_and_targets_are_aligned():
    dm = CSVSeries(target="OT", features=LOADS, path=str(ETTH1), input_length=24, horizon=6, stride=5, batch_size=64)
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        rows = dm.data[split]  # the split's normalised rows alone
        starts = iter(range(0, len(rows), 5))
        seen = 0
        for batch in loader:
            assert batch["x"].shape[1:] == (24, 7) and batch["y"].shape[1:] == (24, 6, 1)
            for x, y in zip(batch["x"], batch["y"], strict=True):
                s = next(starts)
                assert torch.equal(x, rows[s : s + 24])
                assert torch.equal(y[-1, :, 0], rows[s + 24 : s + 30, 0])  # the last step's 6 next values
                seen += 1
        assert seen == (len(rows) - 30) // 5 + 1, split  # every window that fits, none that does not
    train = next(iter(dm.train_dataloader()))
    assert train["x"].shape == (64, 24, 7)


@pytest.mark.parametrize(
    "name,column,rows,first,last",
    [
        ("airline-passengers.csv", "Passengers", 144, datetime(1949, 1, 1), datetime(1960, 12, 1)),
        ("monthly-sunspots.csv", "Sunspots", 2820, datetime(1749, 1, 1), datetime(1983, 12, 1)),
    ],
)
def test_jbrownlee_series_load_with_their_date_columns(name, column, rows, first, last):
    series = CSVSeries(target=column, path=str(SERIES / name)).load()  # CRLF, quoted header, no final newline
    assert series.values.shape == (rows, 1) and series.columns == [column]
    assert series.dates[0] == first and series.dates[-1] == last


def test_airline_split_by_date():
    path = str(SERIES / "airline-passengers.csv")
    dm = CSVSeries(target="Passengers", path=path, split_dates=("1957-01", "1959-01"), input_length=12)
    _ = dm.data  # loads, splits and normalises
    assert dm.bounds == {"train": (0, 96), "val": (96, 120), "test": (120, 144)}
    assert dm.data["val"].shape == (24, 1)
    assert float(dm.denormalize(dm.data["val"][:1])) == pytest.approx(315.0)  # January 1957


def test_stream_mode_is_stateful_and_reads_each_split_in_order():
    dm = CSVSeries(target="Sunspots", path=str(SERIES / "monthly-sunspots.csv"), mode="stream", input_length=100)
    assert dm.spec.stateful
    batches = list(dm.train_dataloader())
    x = torch.cat([b["x"] for b in batches], dim=1)  # (1, n - 1, 1)
    y = torch.cat([b["y"] for b in batches], dim=1)  # (1, n - 1, 1, 1)
    train = dm.data["train"]
    assert torch.equal(x[0], train[:-1]) and torch.equal(y[0, :, 0], train[1:])
    assert [b["x"].shape[1] for b in batches[:-1]] == [100] * (len(batches) - 1)
    dm2 = CSVSeries(target="Sunspots", path=str(SERIES / "monthly-sunspots.csv"), mode="stream", num_streams=4)
    assert next(iter(dm2.train_dataloader()))["x"].shape == (4, 48, 1)
    assert next(iter(dm2.val_dataloader()))["x"].shape == (1, 48, 1)


def test_multivariate_targets(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("t,a,b,c\n" + "".join(f"{i},{i},{2 * i},{i % 3}\n" for i in range(120)))
    dm = CSVSeries(target=["a", "b"], features=["c"], path=str(path), input_length=5, horizon=3, split=(0.5, 0.25))
    spec = dm.spec
    assert (spec.input_size, spec.output_size, spec.horizon) == (3, 2, 3) and len(spec.target_scale) == 2
    batch = dm.val_dataloader().dataset[[0]]
    assert batch["y"].shape == (1, 5, 3, 2)
    assert dm.load().dates is None  # column t holds plain numbers, not dates


def _csv(tmp_path, text, name="s.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "content,kwargs,needle",
    [
        (None, {}, "s.csv: no such file"),
        ("", {}, "s.csv: the file is empty"),
        ("date,v\n", {}, "s.csv: no data rows"),
        ("date,v\n2020-01-01,1\n2020-01-02,abc\n", {}, "s.csv line 3: column 'v' value 'abc' is not a number"),
        ("date,v\n2020-01-01,1\n2020-01-02,\n", {}, "s.csv line 3: column 'v' is missing a value"),
        (
            "date,v\n2020-01-01,NA\n2020-01-02,1\n",
            {"missing": "ffill"},
            "line 2: column 'v' is missing a value and none",
        ),
        ("date,v\n2020-01-01,1\n2020-01-02,2,3\n", {}, "s.csv line 3: 3 fields, the header has 2"),
        ("date,w\n2020-01-01,1\n", {}, "s.csv: no column 'v' (columns: date, w)"),
        ("date,v\n2020-01-02,1\n2020-01-01,2\n", {}, "s.csv line 3: date 2020-01-01 00:00:00 is earlier"),
        ("date,v\n2020-01-01,1\nsoon,2\n", {"date_column": "date"}, "line 3: column 'date' value 'soon' is not a date"),
        ("v\n" + "1\n" * 5, {"input_length": 5}, "s.csv: the series has 5 rows, fewer than input_length + horizon = 6"),
        ("v\n" + "1\n" * 40, {"input_length": 5}, "the val split (rows 28-31) has zero windows of input_length 5"),
    ],
)
def test_bad_csv_is_one_line_data_error(tmp_path, content, kwargs, needle):
    path = str(tmp_path / "s.csv") if content is None else _csv(tmp_path, content)
    with pytest.raises(DataError) as err:
        _ = CSVSeries(target="v", path=path, **{"split": (0.7, 0.1), **kwargs}).spec
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_invalid_utf8_csv_names_the_line(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(b"v\n1\n\xfe\n")
    with pytest.raises(DataError, match=r"s.csv line 3: invalid UTF-8"):
        _ = CSVSeries(target="v", path=str(path)).spec


def test_a_byte_order_mark_and_old_mac_line_ends_read_as_any_csv(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes("\ufeffv,w\r".encode() + b"".join(f"{i},{i % 3}\r".encode() for i in range(30)))
    series = CSVSeries(target="v", features=["w"], path=str(path)).load()
    assert series.columns == ["v", "w"] and series.values[:, 0].tolist() == list(range(30))
    assert series.lines.tolist() == list(range(2, 32))  # the line each row came from, for messages


def test_forward_fill(tmp_path):
    path = _csv(tmp_path, "v\n1\n\n2\nnan\n\n5\n")  # blank lines are skipped, 'nan' is a missing value
    assert CSVSeries(target="v", path=path, missing="ffill").load().values[:, 0].tolist() == [1, 2, 2, 5]


def test_csv_downloaded_into_the_cache_by_url(tmp_path):
    source = tmp_path / "remote.csv"
    source.write_text("v\n" + "".join(f"{i}\n" for i in range(50)))
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    dm = CSVSeries(target="v", url=source.as_uri(), sha256=sha, cache_dir=str(tmp_path / "cache"), input_length=4)
    assert dm.spec.input_size == 1
    assert (tmp_path / "cache" / "series" / "remote.csv").read_bytes() == source.read_bytes()


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="target="):
        CSVSeries(target=[], path="x.csv")
    with pytest.raises(ConfigError, match="path and url are both unset"):
        CSVSeries(target="v")
    with pytest.raises(ConfigError, match="mode='batches'"):
        CSVSeries(target="v", path="x.csv", mode="batches")
    with pytest.raises(ConfigError, match="split="):
        CSVSeries(target="v", path="x.csv", split=(0.8, 0.3))
    with pytest.raises(ConfigError, match="split_dates="):
        CSVSeries(target="v", path="x.csv", split_dates=("2020-02", "2020-01"))
    with pytest.raises(ConfigError, match="horizon=0"):
        SumOfSines(horizon=0)


def _ramp(tmp_path, rows=100) -> str:
    return _csv(tmp_path, "t,v,w\n" + "".join(f"{i},{i},{i % 5}\n" for i in range(rows)))


def test_score_last_masks_all_but_the_last_steps_of_each_window(tmp_path):
    path = _ramp(tmp_path)
    kwargs = {"target": "v", "features": ["w"], "path": path, "input_length": 6, "horizon": 2, "batch_size": 4}
    every, last2 = CSVSeries(**kwargs), CSVSeries(**kwargs, score_last=2)
    assert every.score_last is None and "mask" not in next(iter(every.train_dataloader()))  # default: every step
    for split in ("train", "val", "test"):
        plain, masked = (list(getattr(dm, f"{split}_dataloader")()) for dm in (every, last2))
        assert sum(len(b["x"]) for b in masked) == len(getattr(last2, f"{split}_dataloader")().dataset)
        for a, b in zip(plain, masked, strict=True):
            if split != "train":  # train is shuffled
                assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])  # the mask is the only change
            assert b["mask"].dtype == torch.bool and b["mask"].shape == b["x"].shape[:2]
            assert b["mask"].tolist() == [[False] * 4 + [True] * 2] * len(b["x"])
    whole = CSVSeries(**kwargs, score_last=6)
    assert next(iter(whole.val_dataloader()))["mask"].all()  # score_last = input_length: every step, explicitly


def test_score_last_reaches_the_forecasters_loss_and_metrics(tmp_path):
    from seqstab.tasks import Forecaster

    dm = CSVSeries(target="v", features=["w"], path=_ramp(tmp_path), input_length=6, horizon=2, score_last=1)
    torch.manual_seed(0)
    model = Forecaster(net=partial(RecurrentNet, hidden_size=4), spec=dm.spec).eval()
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        out, _ = model(batch["x"])  # (B, L, H, T)
        terms = model.step_losses(out, batch)
        loss = model.reduce_loss(terms["loss"], batch["mask"])
        model._eval_step(batch, "val")
    last = out[:, -1] - batch["y"][:, -1]  # (B, H, T): the only scored step
    assert loss.item() == pytest.approx(last.pow(2).mean().item(), rel=1e-5)  # training loss: last step only
    mae = (model._eval_sums["abs"] / model._eval_sums["_count"]).item()
    assert model._eval_sums["_count"].item() == len(batch["x"])  # one scored step per window
    assert mae == pytest.approx((last.abs() * dm.spec.target_scale[0]).mean().item(), rel=1e-5)


def test_train_on_all_trains_every_step_and_scores_the_last(tmp_path):
    kwargs = {"target": "v", "features": ["w"], "path": _ramp(tmp_path), "input_length": 6, "horizon": 2}
    dm = CSVSeries(**kwargs, score_last=1, train_on="all")
    assert all("mask" not in batch for batch in dm.train_dataloader())  # every step carries loss
    for split in ("val", "test"):
        (batch, *_) = getattr(dm, f"{split}_dataloader")()
        assert batch["mask"].tolist() == [[False] * 5 + [True]] * len(batch["x"])
    assert "mask" in next(iter(CSVSeries(**kwargs, score_last=1).train_dataloader()))  # default: train_on scored
    with pytest.raises(ConfigError, match="train_on='every': must be 'scored' or 'all'"):
        CSVSeries(**kwargs, train_on="every")


def test_target_index_names_the_targets_among_the_inputs(tmp_path):
    path = _csv(tmp_path, "t,a,b,c\n" + "".join(f"{i},{i},{-i},{i % 3}\n" for i in range(120)))
    dm = CSVSeries(target=["a", "b"], features=["c"], path=path, input_length=5, horizon=2)
    assert dm.spec.target_index == (0, 1)
    batch = next(iter(dm.val_dataloader()))
    now = batch["x"][..., list(dm.spec.target_index)]  # (B, L, T): the targets at step t
    assert torch.allclose(batch["y"][:, :-1, 0], now[:, 1:])  # y[t, h = 1] is the target at t + 1
    assert SumOfSines(length=200, input_length=8).spec.target_index == (0,)
    assert MackeyGlass(length=600, input_length=8).spec.target_index == (0,)


def test_forecaster_predict_change_starts_at_the_naive_forecast(tmp_path):
    from seqstab.tasks import Forecaster

    path = _csv(tmp_path, "t,a,b,c\n" + "".join(f"{i},{i % 7},{-i},{i % 3}\n" for i in range(160)))
    dm = CSVSeries(target=["a", "b"], features=["c"], path=path, input_length=6, horizon=3, score_last=1)
    torch.manual_seed(0)
    change = Forecaster(net=partial(RecurrentNet, hidden_size=4), spec=dm.spec, predict="change").eval()
    batch = next(iter(dm.val_dataloader()))
    naive = batch["x"][..., :2, None].transpose(-2, -1).expand(-1, -1, 3, -1)  # (B, L, H, T): last value repeated
    with torch.no_grad():
        out, _ = change(batch["x"])
        assert torch.equal(out, naive)  # zero-initialised output layer: exactly the naive forecast
        change._eval_step(batch, "val")
        mae = (change._eval_sums["abs"] / change._eval_sums["_count"]).item()
        err = (naive[:, -1] - batch["y"][:, -1]) * torch.tensor(dm.spec.target_scale)
        assert mae == pytest.approx(err.abs().mean().item(), rel=1e-5)  # its metric is the naive forecast's
        for p in change.head.parameters():
            p.uniform_(-0.5, 0.5)  # a trained head: the change is added to the last value
        level = Forecaster(net=partial(RecurrentNet, hidden_size=4), spec=dm.spec).eval()
        level.load_state_dict(change.state_dict())
        assert torch.allclose(change(batch["x"])[0], level(batch["x"])[0] + naive, atol=1e-6)
    change.step_losses(change(batch["x"])[0], batch)["loss"].mean().backward()
    assert change.head[1].weight.grad.abs().sum() > 0  # the zero output layer still learns


def test_forecaster_predict_change_needs_the_targets_among_the_inputs():
    from datamodules.base import DataSpec
    from seqstab.tasks import Forecaster

    spec = DataSpec(kind="forecast", input_size=3, output_size=1, horizon=2)  # no target_index
    with pytest.raises(ConfigError) as err:
        Forecaster(net=partial(RecurrentNet, hidden_size=4), spec=spec, predict="change")
    assert "predict='change' needs the targets among the inputs" in str(err.value) and "\n" not in str(err.value)
    Forecaster(net=partial(RecurrentNet, hidden_size=4), spec=spec)  # level needs nothing
    with pytest.raises(ConfigError, match="predict='delta': must be 'level' or 'change'"):
        Forecaster(net=partial(RecurrentNet, hidden_size=4), spec=spec, predict="delta")


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"score_last": 0}, "score_last=0: must be between 1 and input_length=6"),
        ({"score_last": -3}, "score_last=-3: must be between 1 and input_length=6"),
        ({"score_last": 7}, "score_last=7: must be between 1 and input_length=6"),
        ({"score_last": 1, "mode": "stream"}, "score_last=1: only for mode 'windows'"),
    ],
)
def test_bad_score_last_is_a_one_line_config_error(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        CSVSeries(target="v", path="x.csv", input_length=6, **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_sum_of_sines_is_a_function_of_the_seed():
    a, b, c = SumOfSines(seed=1).load(), SumOfSines(seed=1).load(), SumOfSines(seed=2).load()
    assert np.array_equal(a.values, b.values) and not np.array_equal(a.values, c.values)
    clean = SumOfSines(noise=0.0, periods=(10.0,), length=100).load().values[:, 0]
    np.testing.assert_allclose(clean[10:], clean[:-10], atol=1e-9)  # period 10


def test_mackey_glass_solves_its_delay_equation():
    x = mackey_glass(1500)
    dx = (x[2:] - x[:-2]) / 2  # central difference at t = 1 .. N-2

    def residual(tau):
        t = np.arange(max(tau, 1), len(x) - 1)
        rhs = 0.2 * x[t - tau] / (1 + x[t - tau] ** 10) - 0.1 * x[t]
        return np.abs(dx[t - 1] - rhs).max()

    assert residual(17) < 0.005 < residual(16)  # tau = 17, a = 0.2, b = 0.1, n = 10
    assert x.min() > 0.3 and x.max() < 1.5 and x.std() > 0.15  # the chaotic attractor, not a fixed point
    dm = MackeyGlass(length=600, input_length=20, horizon=5)
    assert dm.spec.horizon == 5 and len(dm.train_dataloader()) > 0
