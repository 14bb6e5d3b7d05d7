"""Time series for forecasting: any CSV file, and synthetic series that need no file.

A series is ``N`` rows of ``C`` columns, the targets first, then the extra input features. It is split in time
(train, then val, then test: no row in two splits), normalised with the train split's mean and standard
deviation, and served in one of two ways::

    windows  (stateless; train shuffled)            stream  (stateful truncated BPTT over the whole split)
    x[t] = row[s + t]              t < L            the split's rows as ``num_streams`` contiguous rows,
    y[t] = targets[s + t + 1 : s + t + 1 + H]       read in consecutive windows of L steps; the hidden
    window starts s = 0, stride, 2·stride, ...      state carries from one window to the next

``H`` is the horizon: every step predicts the next ``H`` values of the targets, ``y`` is ``(B, L, H, targets)``.
A window never reaches past its split: inputs and targets come from the same split's rows. The model reports
metrics in the original units (``DataSpec.target_scale`` = the train standard deviation of each target).

By default every step of a window carries loss and metrics. ``score_last: k`` (windows mode) adds a ``mask``
``(B, L)`` that keeps only the last ``k`` steps of each window: the first ``L - k`` steps only warm up the hidden
state, which starts from zeros in every window. ``score_last: 1`` is the usual protocol of forecasting benchmarks
(ETTh1 and co.): one forecast per window, made after reading all ``L`` inputs. The mask applies to training too,
unless ``train_on: all``: then the training batches carry no mask (every step trains) and only val and test are
scored on the last ``k`` steps.

The targets are also inputs, the first columns of ``x``: ``DataSpec.target_index`` says so, and a
``Forecaster(predict="change")`` adds its output to the last observed (normalised) target values.

What the usual forecasters add (windows mode):

* ``calendar: [hour, dayofweek, dayofyear, month]`` (CSV with a date column): a sin/cos pair per feature, appended
  to the inputs after normalisation. They are known for the horizon too: every batch carries ``known``
  ``(B, L, H, 2·features)``, the calendar of rows ``t + 1 … t + H`` (``DataSpec.known_size`` says how many).
* ``window_norm: mean | last`` (the RevIN idea): each window's value columns are shifted by a reference taken from
  the window itself (its mean, or its value, up to and including the first scored step: never from a step whose
  targets are scored before it), and the batch carries that reference of the targets as ``level`` ``(B, L, T)``;
  the targets ``y`` stay on the global scale and the ``Forecaster`` adds ``level`` to its output, so forecasts and
  metrics come back in the original units exactly. The scale stays the train split's.
* ``lookback: true``: the val and test windows may read their inputs from the rows before their split (the
  literature's borders: the first forecast's targets are the split's first row); targets never leave their split.
  With ``CSVSeries(split_rows=[8640, 11520, 14400])`` that is the ETT protocol (12/4/4 months of hourly rows).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from datamodules.base import DataSpec, SeqDataModule, StreamWindows, batchify
from datamodules.download import Remote, cache_root, fetch
from seqstab.core.errors import ConfigError, DataError, check_non_negative, check_positive

__all__ = [
    "CALENDAR",
    "CSVSeries",
    "MackeyGlass",
    "Series",
    "SumOfSines",
    "WindowDataset",
    "calendar_features",
    "parse_date",
    "window_starts",
]

Mode = Literal["windows", "stream"]
SPLITS = ("train", "val", "test")
MISSING = {"", "na", "n/a", "nan", "null", "none", "?"}
WindowNorm = Literal["none", "mean", "last"]
# calendar feature -> its phase in [0, 1) from a datetime (sin and cos of 2π · phase are the two inputs)
CALENDAR = {
    "hour": lambda d: (d.hour + d.minute / 60) / 24,
    "dayofweek": lambda d: d.weekday() / 7,
    "dayofyear": lambda d: (d.timetuple().tm_yday - 1) / 366,
    "month": lambda d: (d.month - 1) / 12,
}


def calendar_features(dates: list[datetime], names: list[str]) -> np.ndarray:
    """``(N, 2·len(names))``: ``sin, cos`` of each feature's phase (``CALENDAR``), feature by feature."""
    phase = np.array([[CALENDAR[name](d) for name in names] for d in dates]).reshape(len(dates), len(names))
    angle = 2 * np.pi * phase  # (N, F)
    return np.stack([np.sin(angle), np.cos(angle)], axis=-1).reshape(len(dates), 2 * len(names))  # (N, 2F)


def extend_dates(dates: list[datetime], steps: int) -> list[datetime]:
    """``dates`` and ``steps`` more, at the last interval (the calendar of a horizon past the data)."""
    step = dates[-1] - dates[-2] if len(dates) > 1 else None
    return dates + [dates[-1] + k * step for k in range(1, steps + 1)] if step else dates + dates[-1:] * steps


@dataclass
class Series:
    """A loaded series.

    Attributes:
        values: ``(N, C)`` float64, the ``num_targets`` target columns first, then the features.
        columns: Names of the ``C`` columns.
        num_targets: How many leading columns are predicted.
        dates: One datetime per row, or None.
        source: What to name in messages (a file path or a generator).
    """

    values: np.ndarray
    columns: list[str]
    num_targets: int
    dates: list[datetime] | None
    source: str


def window_starts(rows: int, length: int, horizon: int, stride: int) -> torch.Tensor:
    """Window starts ``s`` that fit in ``rows``: inputs ``[s, s + length)``, targets up to ``s + length + horizon``."""
    last = rows - length - horizon  # the last start whose targets stay inside the rows
    return torch.arange(0, last + 1, stride) if last >= 0 else torch.zeros(0, dtype=torch.long)


def future(targets: torch.Tensor, horizon: int) -> torch.Tensor:
    """``(n, T)`` targets -> ``(n - horizon, horizon, T)``: row ``t`` holds ``targets[t + 1 : t + 1 + horizon]``."""
    if targets.shape[0] <= horizon:
        return targets.new_zeros(0, horizon, targets.shape[1])
    return targets[1:].unfold(0, horizon, 1).permute(0, 2, 1)  # (n - horizon, horizon, T)


class WindowDataset(Dataset):
    """Windows over one split's rows; item = a list of window indices (use a ``BatchSampler``) -> a batch.

    Args:
        rows: ``(n, C)`` inputs of the split.
        targets: ``(n, T)`` targets of the split.
        length: Window length ``L``.
        horizon: Future steps predicted at each step ``H``.
        stride: Rows between consecutive window starts.
        score_last: Only the last ``score_last`` steps of each window carry loss: each batch gets a ``mask``
            ``(B, L)``; None: no mask, every step counts.
        starts: Window starts; None: every ``stride``-th start whose targets stay inside the rows.
        origin: Each batch also gets ``row`` ``(B, L)``: the step's row in the series, ``origin`` being the row of
            ``rows[0]`` (what predictions are labelled with); None: no ``row``.
        known: ``(n, K)`` inputs known for the horizon too (the calendar): each batch gets ``known``
            ``(B, L, H, K)``, their values at rows ``t + 1 … t + H``; None: no ``known``.
        window_norm: ``mean`` or ``last``: shift the first ``norm_columns`` columns of each window's ``x`` by the
            window's mean (or value) over its steps up to and including the first scored one; the batch gets
            ``level`` ``(B, L, T)``, that reference of the targets (the first ``T`` columns). ``none``: no shift.
        norm_columns: How many leading columns ``window_norm`` shifts (the values; not the calendar).
    """

    def __init__(
        self,
        rows: torch.Tensor,
        targets: torch.Tensor,
        length: int,
        horizon: int,
        stride: int,
        score_last: int | None = None,
        starts: torch.Tensor | None = None,
        origin: int | None = None,
        known: torch.Tensor | None = None,
        window_norm: WindowNorm = "none",
        norm_columns: int = 0,
    ):
        self.rows, self.future = rows, future(targets, horizon)  # (n, C), (n - H, H, T)
        self.num_targets = targets.shape[1]
        self.known = None if known is None else future(known, horizon)  # (n - H, H, K)
        self.starts = window_starts(rows.shape[0], length, horizon, stride) if starts is None else starts
        self.origin = origin
        self.offsets = torch.arange(length)
        self.scored = None if score_last is None else self.offsets >= length - score_last  # (L,) bool
        self.window_norm, self.norm_columns = window_norm, norm_columns
        self.reference_end = length - (score_last or length) + 1  # steps [0, end) give the window's reference

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        steps = self.starts[torch.as_tensor(indices)][:, None] + self.offsets  # (B, L) row of each step
        batch = {"x": self.rows[steps], "y": self.future[steps]}  # (B, L, C), (B, L, H, T)
        if self.known is not None:
            batch["known"] = self.known[steps]  # (B, L, H, K)
        if self.window_norm != "none":
            x, c = batch["x"].clone(), self.norm_columns
            seen = x[:, : self.reference_end, :c]  # (B, r, c): never past the first scored step
            reference = seen.mean(dim=1) if self.window_norm == "mean" else seen[:, -1].clone()  # (B, c)
            x[..., :c] -= reference[:, None]
            batch["x"] = x
            batch["level"] = reference[:, None, : self.num_targets].expand(-1, len(self.offsets), -1).contiguous()
        if self.scored is not None:
            batch["mask"] = self.scored.repeat(len(steps), 1)  # (B, L): the last score_last steps
        if self.origin is not None:
            batch["row"] = steps + self.origin
        return batch


class _SeriesModule(SeqDataModule):
    """Split, normalise and window a :class:`Series`; subclasses implement :meth:`load`."""

    def __init__(
        self,
        input_length: int = 48,
        horizon: int = 1,
        stride: int = 1,
        mode: Mode = "windows",
        split: tuple[float, float] = (0.7, 0.1),
        normalize: bool = True,
        batch_size: int = 32,
        num_streams: int = 1,
        num_workers: int = 0,
        score_last: int | None = None,
        train_on: Literal["scored", "all"] = "scored",
        predict_split: Literal["val", "test", "all"] = "test",
        calendar: list[str] | None = None,
        window_norm: WindowNorm = "none",
        lookback: bool = False,
    ):
        super().__init__()
        check_positive(
            input_length=input_length, horizon=horizon, stride=stride, batch_size=batch_size, num_streams=num_streams
        )
        check_non_negative(num_workers=num_workers)
        if mode not in ("windows", "stream"):
            raise ConfigError(f"mode={mode!r}: must be 'windows' or 'stream'")
        if score_last is not None:
            if mode != "windows":
                raise ConfigError(
                    f"score_last={score_last!r}: only for mode 'windows'; in mode {mode!r} the hidden state carries "
                    "from window to window, so no window starts cold (set score_last: null)"
                )
            if isinstance(score_last, bool) or not 1 <= score_last <= input_length:
                raise ConfigError(
                    f"score_last={score_last!r}: must be between 1 and input_length={input_length} "
                    "(or null to score every step)"
                )
        if train_on not in ("scored", "all"):
            raise ConfigError(f"train_on={train_on!r}: must be 'scored' or 'all'")
        if predict_split not in ("val", "test", "all"):
            raise ConfigError(f"predict_split={predict_split!r}: must be 'val', 'test' or 'all'")
        self.calendar = list(calendar or [])
        for name in self.calendar:
            if name not in CALENDAR:
                raise ConfigError(f"calendar: {name!r} is not a calendar feature ({', '.join(CALENDAR)})")
        if len(set(self.calendar)) != len(self.calendar):
            raise ConfigError(f"calendar={self.calendar}: a feature is named twice")
        if window_norm not in ("none", "mean", "last"):
            raise ConfigError(f"window_norm={window_norm!r}: must be 'none', 'mean' or 'last'")
        if window_norm != "none" and mode != "windows":
            raise ConfigError(f"window_norm={window_norm!r}: only for mode 'windows' (a stream has no windows)")
        self.window_norm, self.lookback = window_norm, bool(lookback)
        self.predict_split = predict_split
        train, val = split
        if not (train > 0 and val > 0 and train + val < 1):
            raise ConfigError(f"split={list(split)}: need train > 0, val > 0 and train + val < 1 (test gets the rest)")
        self.input_length, self.horizon, self.stride, self.mode = input_length, horizon, stride, mode
        self.split = (float(train), float(val))
        self.normalize, self.batch_size, self.num_streams, self.num_workers = (
            normalize,
            batch_size,
            num_streams,
            num_workers,
        )
        self.score_last, self.train_on = score_last, train_on
        self._data: dict[str, torch.Tensor] | None = None

    def load(self) -> Series:
        raise NotImplementedError

    def split_at(self, series: Series) -> tuple[int, int, int]:
        """First row of val, first row of test, and the end of test (rows after it are not used)."""
        n = len(series.values)
        return round(n * self.split[0]), round(n * (self.split[0] + self.split[1])), n

    @property
    def lookback_rows(self) -> int:
        """Rows before val and test their windows read with ``lookback`` (so the first forecast's targets start at
        the split's first row); 0 without."""
        return self.input_length - (self.score_last or self.input_length) + 1 if self.lookback else 0

    # -- prepared data ---------------------------------------------------------------------------------------------

    @property
    def data(self) -> dict[str, torch.Tensor]:
        """Normalised float32 rows per split (``train``/``val``/``test``) plus ``mean`` and ``std``."""
        if self._data is None:
            self._data = self._prepare()
        return self._data

    def _prepare(self) -> dict[str, torch.Tensor]:
        series = self.load()
        values, source = series.values, series.source
        need = self.input_length + self.horizon
        if len(values) < need:
            raise DataError(f"{source}: the series has {len(values)} rows, fewer than input_length + horizon = {need}")
        val_at, test_at, end = self.split_at(series)
        back = self.lookback_rows
        bounds = {"train": (0, val_at), "val": (max(val_at - back, 0), test_at), "test": (test_at - back, end)}
        train = values[:val_at]
        mean = train.mean(axis=0) if self.normalize and len(train) else np.zeros(values.shape[1])
        std = train.std(axis=0) if self.normalize and len(train) else np.ones(values.shape[1])
        std = np.where(std > 0, std, 1.0)  # a constant column stays as it is, shifted
        normed = torch.from_numpy((values[:end] - mean) / std).float()  # (N, C)
        known = None
        if self.calendar:
            if series.dates is None:
                raise ConfigError(f"calendar={self.calendar}: {source} has no date column (set date_column)")
            dates = extend_dates(series.dates[:end], self.horizon)  # a horizon past the end: predict's future
            known = torch.from_numpy(calendar_features(dates, self.calendar)).float()  # (N + H, K)
            normed = torch.cat([normed, known[:end]], dim=1)  # (N, C + K): the calendar, as it is, last
        data = {split: normed[a:b] for split, (a, b) in bounds.items()}
        for split, (a, b) in bounds.items():
            self._check_split(split, data[split], series, a, b)
        self.num_targets, self.num_values, self.num_columns = series.num_targets, values.shape[1], normed.shape[1]
        self.bounds = bounds
        self.target_names, self.dates = series.columns[: series.num_targets], series.dates
        out = {**data, "all": normed, "mean": torch.from_numpy(mean), "std": torch.from_numpy(std)}
        return out if known is None else {**out, "known": known}

    def _check_split(self, split: str, rows: torch.Tensor, series: Series, a: int, b: int) -> None:
        where = f"rows {a}-{b - 1}" if b > a else "no rows"
        if series.dates is not None and b > a:
            where += f", {series.dates[a]:%Y-%m-%d %H:%M} to {series.dates[b - 1]:%Y-%m-%d %H:%M}"
        if self.mode == "windows":
            if len(window_starts(len(rows), self.input_length, self.horizon, self.stride)) == 0:
                raise DataError(
                    f"{series.source}: the {split} split ({where}) has zero windows of input_length "
                    f"{self.input_length} + horizon {self.horizon}; shorten them or enlarge the split"
                )
        else:
            streams = self.num_streams if split == "train" else 1
            if len(rows) - self.horizon < streams:
                raise DataError(
                    f"{series.source}: the {split} split ({where}) is too short for {streams} stream(s) "
                    f"with horizon {self.horizon}"
                )

    @property
    def spec(self) -> DataSpec:
        data = self.data
        scale = tuple(float(s) for s in data["std"][: self.num_targets]) if self.normalize else None
        return DataSpec(
            kind="forecast",
            input_size=self.num_columns,
            output_size=self.num_targets,
            horizon=self.horizon,
            stateful=self.mode == "stream",
            target_scale=scale,
            target_index=tuple(range(self.num_targets)),  # the targets are the first input columns
            known_size=self.num_columns - self.num_values if self.mode == "windows" else 0,
        )

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        """Targets ``(..., T)`` in normalised units back to the original units."""
        mean, std = (self.data[k][: self.num_targets].to(y) for k in ("mean", "std"))
        return y * std + mean

    def row_labels(self, rows: torch.Tensor) -> list[str]:
        """What to call rows of the series in predictions: their dates (ISO 8601) when it has any, else the index."""
        self.data  # noqa: B018 -- loads the series (and its dates)
        if self.dates is None:
            return [str(int(r)) for r in rows]
        return [self.dates[int(r)].isoformat(sep=" ") for r in rows]

    # -- loaders ---------------------------------------------------------------------------------------------------

    def _loader(self, split: str) -> DataLoader:
        rows = self.data[split]  # (n, C)
        targets = rows[:, : self.num_targets]  # (n, T)
        if self.mode == "stream":
            streams = self.num_streams if split == "train" else 1
            x = batchify(rows[: len(rows) - self.horizon], streams)  # (B, n', C)
            y = batchify(future(targets, self.horizon), streams)  # (B, n', H, T)
            return DataLoader(StreamWindows(x, y, self.input_length), batch_size=None)
        score_last = None if split == "train" and self.train_on == "all" else self.score_last
        a, b = self.bounds[split]
        dataset = WindowDataset(
            rows, targets, self.input_length, self.horizon, self.stride, score_last, **self._window_options(a, b)
        )
        order = RandomSampler(dataset) if split == "train" else SequentialSampler(dataset)
        sampler = BatchSampler(order, self.batch_size, drop_last=False)
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=self.num_workers)

    def _window_options(self, a: int, b: int) -> dict:
        """The known inputs of rows ``[a, b)`` and the per-window normalisation, for :class:`WindowDataset`."""
        known = self.data.get("known")
        return {
            "known": None if known is None else known[a:b],
            "window_norm": self.window_norm,
            "norm_columns": self.num_values,
        }

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The ``predict_split`` rows, every batch with ``row``: the windows (or stream) that split is evaluated
        on, plus those whose horizon runs past the last row (their targets are NaN), so the last rows forecast
        into the unknown future too."""
        split = self.predict_split
        rows = self.data[split]  # (n, C)
        n, origin = len(rows), self.bounds[split][0] if split in self.bounds else 0  # "all" starts at row 0
        unknown = rows.new_full((self.horizon, rows.shape[1]), math.nan)
        padded = torch.cat([rows, unknown])  # (n + H, C): a horizon past the end, NaN
        targets = padded[:, : self.num_targets]
        if self.mode == "stream":
            x = rows[None]  # (1, n, C): one stream, read to its last row
            y = future(targets, self.horizon)[None]  # (1, n, H, T)
            index = torch.arange(origin, origin + n)[None]
            return DataLoader(StreamWindows(x, y, self.input_length, row=index), batch_size=None)
        starts = torch.arange(0, n - self.input_length + 1, self.stride)
        if len(starts) and starts[-1] != n - self.input_length:  # the window that ends at the last row
            starts = torch.cat([starts, torch.tensor([n - self.input_length])])
        a, b = self.bounds.get(split, (0, n))
        dataset = WindowDataset(
            padded,
            targets,
            self.input_length,
            self.horizon,
            self.stride,
            self.score_last,
            starts,
            origin,
            **self._window_options(a, b + self.horizon),
        )
        sampler = BatchSampler(SequentialSampler(dataset), self.batch_size, drop_last=False)
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=self.num_workers)


# -- CSV --------------------------------------------------------------------------------------------------------


_DATE_FORMATS = ("%Y-%m", "%Y/%m/%d", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%d.%m.%Y", "%m/%d/%Y", "%Y")


def parse_date(text: str) -> datetime | None:
    """ISO 8601 (``2016-07-01 00:00:00``, ``1949-01``) and a few common layouts; None if it is not a date."""
    text = text.strip()
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    for layout in _DATE_FORMATS:
        try:
            return datetime.strptime(text, layout)
        except ValueError:
            continue
    return None


class CSVSeries(_SeriesModule):
    """Forecast the target column(s) of a CSV file, univariate or multivariate.

    The file has a header row. Rows are in chronological order; a datetime column is parsed when present.
    Inputs at each step are the targets and the ``features`` columns; outputs are the next ``horizon`` values of
    the targets. Statistics for normalisation come from the train split only.

    Args:
        target: Column(s) to predict.
        path: The CSV file. If it does not exist and ``url`` is set, ``url`` is downloaded to it first.
        features: Further input columns, not predicted.
        date_column: The datetime column; None detects one: the first other column whose first value is a date.
        missing: An empty or NA cell is an ``error`` naming its line, or is filled with the value above (``ffill``).
        url: Where to download the file from when ``path`` is None or missing (``path`` None: into the cache).
        sha256: SHA-256 the download must have; None skips the check.
        split_dates: First date of val and first date of test (e.g. ``["1958-01", "1959-01"]``); replaces ``split``.
        input_length: Window length ``L`` (in ``stream`` mode: steps per batch).
        horizon: Future steps predicted at each step.
        stride: Rows between window starts (``windows`` mode).
        mode: ``windows`` (stateless, shuffled) or ``stream`` (one long stream per split, stateful truncated BPTT).
        split: Fractions of the rows for train and val; test gets the rest.
        normalize: Standardise every column with the train split's mean and standard deviation.
        batch_size: Windows per batch (``windows`` mode).
        num_streams: Contiguous pieces the train split is cut into (``stream`` mode); val and test use one.
        num_workers: DataLoader worker processes (``windows`` mode).
        cache_dir: Where a download goes when ``path`` is None; None uses ``$SEQSTAB_CACHE`` or ``~/.cache/seqstab``.
        score_last: ``windows`` mode: only the last ``score_last`` steps of each window carry loss and val/test
            metrics (batches get a ``mask``); the earlier steps warm up the hidden state. 1 scores one forecast per
            window, made after the whole window (the usual ETTh1 protocol). None (default): every step is scored,
            including the first ones, where the state has seen almost nothing. 1 to ``input_length``; ``stream``
            mode rejects it. With truncated BPTT (``model.tbptt_steps`` < ``input_length``) the chunks before the
            scored steps carry no loss: they only warm up the state, and the gradient reaches back ``tbptt_steps``
            steps at most.
        train_on: With ``score_last``: ``scored`` (default) trains on the scored steps only; ``all`` trains on every
            step of each window (the training batches carry no mask) while val and test stay scored on the last
            ``score_last`` steps. More supervision per window, from states that have seen fewer inputs.
        predict_split: The rows ``predict`` forecasts: ``val``, ``test`` (default) or ``all`` (the whole series);
            every origin the split is scored on, plus the last rows', whose horizon runs past the data.
        calendar: Calendar inputs from the date column, each a sin/cos pair: ``hour``, ``dayofweek``,
            ``dayofyear``, ``month``. Appended to the inputs (not normalised); in ``windows`` mode their values over
            the horizon come with every batch as ``known`` (a ``Forecaster(head="decoder")`` reads them).
        window_norm: Per-window normalisation (``windows`` mode; the RevIN idea): ``mean`` or ``last`` shifts each
            window's value columns by their mean (or value) over the steps up to the first scored one; the
            ``Forecaster`` adds that level back to its output, so metrics stay in the original units. ``none``
            (default): the global train-statistics normalisation only.
        lookback: The val and test windows may read inputs from the rows before their split, so their first
            forecast's targets are the split's first row (the ETT literature's borders). Targets stay in the split.
        split_rows: ``[val start, test start, end]`` as row indices; rows from ``end`` on are not used. Replaces
            ``split`` (the ETT protocol on ETTh1: ``[8640, 11520, 14400]``, 12/4/4 months).
    """

    def __init__(
        self,
        target: str | list[str],
        path: str | None = None,
        features: list[str] | None = None,
        date_column: str | None = None,
        missing: Literal["error", "ffill"] = "error",
        url: str | None = None,
        sha256: str | None = None,
        split_dates: tuple[str, str] | None = None,
        input_length: int = 48,
        horizon: int = 1,
        stride: int = 1,
        mode: Mode = "windows",
        split: tuple[float, float] = (0.7, 0.1),
        normalize: bool = True,
        batch_size: int = 32,
        num_streams: int = 1,
        num_workers: int = 0,
        cache_dir: str | None = None,
        score_last: int | None = None,
        train_on: Literal["scored", "all"] = "scored",
        predict_split: Literal["val", "test", "all"] = "test",
        calendar: list[str] | None = None,
        window_norm: WindowNorm = "none",
        lookback: bool = False,
        split_rows: tuple[int, int, int] | None = None,
    ):
        super().__init__(
            input_length,
            horizon,
            stride,
            mode,
            split,
            normalize,
            batch_size,
            num_streams,
            num_workers,
            score_last,
            train_on,
            predict_split,
            calendar,
            window_norm,
            lookback,
        )
        if split_rows is not None:
            rows = list(split_rows)
            if len(rows) != 3 or not all(isinstance(r, int) for r in rows) or not 0 < rows[0] < rows[1] < rows[2]:
                raise ConfigError(f"split_rows={rows}: need three increasing row indices (val start, test start, end)")
            if split_dates is not None:
                raise ConfigError("split_rows and split_dates are both set: give one")
        self.split_rows = None if split_rows is None else tuple(split_rows)
        self.targets = [target] if isinstance(target, str) else list(target)
        if not self.targets or not all(self.targets):
            raise ConfigError(f"target={target!r}: name at least one column to predict")
        self.features = list(features or [])
        if path is None and url is None:
            raise ConfigError("path and url are both unset: give the CSV file (path) or where to download it (url)")
        if missing not in ("error", "ffill"):
            raise ConfigError(f"missing={missing!r}: must be 'error' or 'ffill'")
        self.path, self.url, self.sha256, self.cache_dir = path, url, sha256, cache_dir
        self.date_column, self.missing = date_column, missing
        self.split_dates = None
        if split_dates is not None:
            parsed = [parse_date(d) for d in split_dates]
            if None in parsed or len(parsed) != 2 or parsed[0] >= parsed[1]:
                raise ConfigError(f"split_dates={list(split_dates)}: need two increasing dates (val start, test start)")
            self.split_dates = tuple(parsed)

    def file(self) -> Path:
        """The CSV file, downloaded and verified first if it is missing and ``url`` is set."""
        if self.path is not None and (Path(self.path).is_file() or self.url is None):
            return Path(self.path)
        remote = Remote(self.url, self.sha256)
        dest = Path(self.path) if self.path is not None else cache_root(self.cache_dir) / "series" / remote.filename
        return fetch(remote, dest)

    def prepare_data(self) -> None:
        self.file()

    def load(self) -> Series:
        path = self.file()
        from datamodules.text import read_text  # one reader for every text file: empty, missing, bad UTF-8

        rows = csv.reader(io.StringIO(read_text(path)))
        header = [name.strip() for name in next(rows)]
        wanted = self.targets + self.features
        for name in wanted + ([self.date_column] if self.date_column else []):
            if name not in header:
                raise DataError(f"{path}: no column {name!r} (columns: {', '.join(header)})")
        if len(set(wanted)) != len(wanted):
            raise ConfigError(f"target + features = {wanted}: a column is named twice")
        records = [(rows.line_num, row) for row in rows if row]
        if not records:
            raise DataError(f"{path}: no data rows after the header")
        width = len(header)
        for line, row in records:
            if len(row) != width:
                raise DataError(f"{path} line {line}: {len(row)} fields, the header has {width}")
        date_index = self._date_index(header, wanted, records)
        dates = None
        if date_index is not None:
            dates = [self._date(path, line, row[date_index], header[date_index]) for line, row in records]
            for (line, _), before, after in zip(records[1:], dates, dates[1:], strict=False):
                if after < before:
                    raise DataError(f"{path} line {line}: date {after} is earlier than the row above; sort the file")
        columns = [self._column(path, header, name, records) for name in wanted]
        if self.split_dates is not None and dates is None:
            raise ConfigError(f"split_dates is set but {path} has no date column (set date_column)")
        return Series(np.stack(columns, axis=1), wanted, len(self.targets), dates, str(path))

    def _date_index(self, header, wanted, records) -> int | None:
        if self.date_column:
            return header.index(self.date_column)
        first = records[0][1]
        for i, name in enumerate(header):
            if name not in wanted and parse_date(first[i]) is not None:
                return i
        return None

    @staticmethod
    def _date(path, line, text, column) -> datetime:
        date = parse_date(text)
        if date is None:
            raise DataError(f"{path} line {line}: column {column!r} value {text!r} is not a date")
        return date

    def _column(self, path, header, name, records) -> np.ndarray:
        i = header.index(name)
        try:  # fast path: every cell a finite number
            out = np.array([row[i] for _, row in records], dtype=np.float64)
            if np.isfinite(out).all():
                return out
        except ValueError:
            pass
        out = np.empty(len(records))  # slow path: find the line to name, or forward-fill
        last = math.nan
        for k, (line, row) in enumerate(records):
            text = row[i].strip()
            if text.lower() in MISSING:
                if self.missing == "error":
                    raise DataError(
                        f"{path} line {line}: column {name!r} is missing a value ({text!r}); set missing: ffill "
                        "to forward-fill"
                    )
                if math.isnan(last):
                    raise DataError(f"{path} line {line}: column {name!r} is missing a value and none precedes it")
                out[k] = last
                continue
            try:
                last = out[k] = float(text)
            except ValueError:
                raise DataError(f"{path} line {line}: column {name!r} value {text!r} is not a number") from None
            if not math.isfinite(last):
                raise DataError(f"{path} line {line}: column {name!r} value {text!r} is not finite")
        return out

    def split_at(self, series: Series) -> tuple[int, int, int]:
        if self.split_rows is not None:
            val_at, test_at, end = self.split_rows
            if end > len(series.values):
                raise DataError(f"{series.source}: split_rows ends at row {end}, the series has {len(series.values)}")
            return val_at, test_at, end
        if self.split_dates is None:
            return super().split_at(series)
        val_start, test_start = self.split_dates
        val_at = sum(d < val_start for d in series.dates)
        test_at = sum(d < test_start for d in series.dates)
        return val_at, test_at, len(series.values)


# -- synthetic series -------------------------------------------------------------------------------------------


class SumOfSines(_SeriesModule):
    """A sum of sines with Gaussian noise: ``x_t = Σ_k sin(2π t / p_k + φ_k) + noise · ε_t``, phases from ``seed``.

    Args:
        length: Rows ``N``.
        periods: The periods ``p_k`` in steps.
        noise: Standard deviation of the added noise.
        seed: Seed of the phases and the noise.
        input_length: Window length ``L`` (in ``stream`` mode: steps per batch).
        horizon: Future steps predicted at each step.
        stride: Rows between window starts (``windows`` mode).
        mode: ``windows`` (stateless, shuffled) or ``stream`` (stateful truncated BPTT over each split).
        split: Fractions of the rows for train and val; test gets the rest.
        normalize: Standardise with the train split's mean and standard deviation.
        batch_size: Windows per batch (``windows`` mode).
        num_streams: Contiguous pieces the train split is cut into (``stream`` mode).
        num_workers: DataLoader worker processes (``windows`` mode).
        predict_split: The rows ``predict`` forecasts: ``val``, ``test`` (default) or ``all`` (the whole series);
            every origin the split is scored on, plus the last rows', whose horizon runs past the data.
    """

    def __init__(
        self,
        length: int = 4000,
        periods: tuple[float, ...] = (17.0, 31.0, 67.0),
        noise: float = 0.1,
        seed: int = 0,
        input_length: int = 48,
        horizon: int = 1,
        stride: int = 1,
        mode: Mode = "windows",
        split: tuple[float, float] = (0.7, 0.1),
        normalize: bool = True,
        batch_size: int = 32,
        num_streams: int = 1,
        num_workers: int = 0,
        predict_split: Literal["val", "test", "all"] = "test",
    ):
        super().__init__(
            input_length,
            horizon,
            stride,
            mode,
            split,
            normalize,
            batch_size,
            num_streams,
            num_workers,
            predict_split=predict_split,
        )
        check_positive(length=length, **{f"periods[{i}]": p for i, p in enumerate(periods)})
        if noise < 0:
            raise ConfigError(f"noise={noise}: must be >= 0")
        self.length, self.periods, self.noise, self.seed = length, [float(p) for p in periods], float(noise), seed

    def load(self) -> Series:
        rng = np.random.default_rng(self.seed)
        t = np.arange(self.length)[:, None]  # (N, 1)
        phases = rng.uniform(0, 2 * np.pi, size=len(self.periods))  # (K,)
        x = np.sin(2 * np.pi * t / np.asarray(self.periods) + phases).sum(axis=1)  # (N,)
        x = x + self.noise * rng.standard_normal(self.length)
        return Series(x[:, None], ["x"], 1, None, f"SumOfSines(seed={self.seed})")


def mackey_glass(length: int, tau: float = 17.0, a: float = 0.2, b: float = 0.1, n: float = 10.0, x0: float = 1.2,
                 dt: float = 0.1, sample_every: float = 1.0, discard: int = 500) -> np.ndarray:  # fmt: skip
    """Mackey–Glass ``dx/dt = a·x(t-τ) / (1 + x(t-τ)^n) - b·x(t)``, history ``x0`` for ``t <= 0``, integrated
    with 4th-order Runge–Kutta at step ``dt`` (delayed values linearly interpolated), sampled every
    ``sample_every`` time units after dropping ``discard`` samples of transient. Returns ``(length,)``."""
    lag = round(tau / dt)
    per_sample = round(sample_every / dt)
    if not (math.isclose(lag * dt, tau) and math.isclose(per_sample * dt, sample_every)):
        raise ConfigError(f"tau={tau} and sample_every={sample_every} must be multiples of dt={dt}")
    steps = (length + discard) * per_sample
    x = np.empty(lag + steps + 1)
    x[: lag + 1] = x0  # history: x(t) = x0 for t in [-tau, 0]

    def f(now: float, delayed: float) -> float:
        return a * delayed / (1.0 + delayed**n) - b * now

    for i in range(lag, lag + steps):
        d0, d1 = x[i - lag], x[i - lag + 1]
        dh = 0.5 * (d0 + d1)
        xi = x[i]
        k1 = f(xi, d0)
        k2 = f(xi + 0.5 * dt * k1, dh)
        k3 = f(xi + 0.5 * dt * k2, dh)
        k4 = f(xi + dt * k3, d1)
        x[i + 1] = xi + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x[lag::per_sample][discard : discard + length]


class MackeyGlass(_SeriesModule):
    """The Mackey–Glass delay equation (a=0.2, b=0.1, n=10, τ=17: chaotic), sampled once per time unit.

    Args:
        length: Rows ``N``.
        tau: Delay τ.
        a: Production rate.
        b: Decay rate.
        n: Exponent.
        x0: Constant history for ``t <= 0``.
        noise: Standard deviation of Gaussian noise added to the samples (seeded).
        seed: Seed of the noise.
        input_length: Window length ``L`` (in ``stream`` mode: steps per batch).
        horizon: Future steps predicted at each step.
        stride: Rows between window starts (``windows`` mode).
        mode: ``windows`` (stateless, shuffled) or ``stream`` (stateful truncated BPTT over each split).
        split: Fractions of the rows for train and val; test gets the rest.
        normalize: Standardise with the train split's mean and standard deviation.
        batch_size: Windows per batch (``windows`` mode).
        num_streams: Contiguous pieces the train split is cut into (``stream`` mode).
        num_workers: DataLoader worker processes (``windows`` mode).
        predict_split: The rows ``predict`` forecasts: ``val``, ``test`` (default) or ``all`` (the whole series);
            every origin the split is scored on, plus the last rows', whose horizon runs past the data.
    """

    def __init__(
        self,
        length: int = 4000,
        tau: float = 17.0,
        a: float = 0.2,
        b: float = 0.1,
        n: float = 10.0,
        x0: float = 1.2,
        noise: float = 0.0,
        seed: int = 0,
        input_length: int = 48,
        horizon: int = 1,
        stride: int = 1,
        mode: Mode = "windows",
        split: tuple[float, float] = (0.7, 0.1),
        normalize: bool = True,
        batch_size: int = 32,
        num_streams: int = 1,
        num_workers: int = 0,
        predict_split: Literal["val", "test", "all"] = "test",
    ):
        super().__init__(
            input_length,
            horizon,
            stride,
            mode,
            split,
            normalize,
            batch_size,
            num_streams,
            num_workers,
            predict_split=predict_split,
        )
        check_positive(length=length, tau=tau)
        if noise < 0:
            raise ConfigError(f"noise={noise}: must be >= 0")
        self.length, self.tau, self.a, self.b, self.n, self.x0 = length, tau, a, b, n, x0
        self.noise, self.seed = float(noise), seed

    def load(self) -> Series:
        x = mackey_glass(self.length, self.tau, self.a, self.b, self.n, self.x0)
        if self.noise:
            x = x + self.noise * np.random.default_rng(self.seed).standard_normal(self.length)
        return Series(x[:, None], ["x"], 1, None, f"MackeyGlass(tau={self.tau})")
