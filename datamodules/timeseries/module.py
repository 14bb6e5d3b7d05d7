"""The datamodule every series shares: split in time, normalise with the train statistics, serve windows or streams.

Subclasses say where the rows come from (:meth:`_SeriesModule.load` returns a
:class:`~datamodules.timeseries.prepare.Series`); everything else is here: the settings and their checks, the split
(:meth:`_SeriesModule.split_at`), the prepared data, the ``DataSpec``, the loaders of each split and of ``predict``,
and the checkpoint state that pins the split across a resume.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from datamodules.base import DataSpec, SeqDataModule, StreamWindows, batchify
from datamodules.timeseries.dates import CALENDAR, calendar_features, extend_dates
from datamodules.timeseries.prepare import Series, check_origin, normalise, origin, statistics
from datamodules.timeseries.windows import WindowDataset, WindowNorm, future, window_starts
from seqstab.core.errors import ConfigError, DataError, check_choice, check_non_negative, check_positive

__all__ = ["Mode", "_SeriesModule"]

Mode = Literal["windows", "stream"]


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
        check_choice("mode", mode, ("windows", "stream"))
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
        check_choice("train_on", train_on, ("scored", "all"))
        check_choice("predict_split", predict_split, ("val", "test", "all"))
        self.calendar = list(calendar or [])
        for name in self.calendar:
            if name not in CALENDAR:
                raise ConfigError(f"calendar: {name!r} is not a calendar feature ({', '.join(CALENDAR)})")
        if len(set(self.calendar)) != len(self.calendar):
            raise ConfigError(f"calendar={self.calendar}: a feature is named twice")
        check_choice("window_norm", window_norm, ("none", "mean", "last"))
        if window_norm != "none" and mode != "windows":
            raise ConfigError(f"window_norm={window_norm!r}: only for mode 'windows' (a stream has no windows)")
        self.window_norm, self.lookback = window_norm, bool(lookback)
        self.predict_split = predict_split
        train, val = split
        if not (train > 0 and val > 0 and train + val < 1):
            raise ConfigError(f"split={list(split)}: need train > 0, val > 0 and train + val < 1 (test gets the rest)")
        self.input_length, self.horizon, self.stride, self.mode = input_length, horizon, stride, mode
        self.split = (float(train), float(val))
        self.normalize, self.batch_size, self.num_streams = normalize, batch_size, num_streams
        self.num_workers, self.score_last, self.train_on = num_workers, score_last, train_on
        self._data: dict[str, torch.Tensor] | None = None
        self._origin: dict[str, Any] | None = None  # what the split and the statistics came from (checkpoint state)

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
        mean, std = statistics(series, val_at, end, self.normalize)
        normed = normalise(series, end, mean, std)  # (N, C) float32
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
        self._origin = origin(series, (val_at, test_at, end), mean, std)
        out = {**data, "all": normed, "mean": torch.from_numpy(mean), "std": torch.from_numpy(std)}
        return out if known is None else {**out, "known": known}

    # -- checkpoint: the split and the statistics a resume must find again ------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What Lightning keeps in a checkpoint under this class's name: what the split and the normalisation were
        computed from (:func:`~datamodules.timeseries.prepare.origin`: row count, split rows, a fingerprint of each
        split's rows, the statistics)."""
        self.data  # noqa: B018 -- prepares the data, which records its origin
        return {"origin": self._origin}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """On resume (and ``test``/``predict`` with ``--ckpt_path``): this data must give the split and the statistics
        the checkpoint was trained with, else a one-line :class:`~seqstab.core.io.CheckpointError` names the file and
        what changed (rows appended, values edited, another split). A checkpoint from before this record: no check."""
        saved = state.get("origin") if isinstance(state, dict) else None
        if isinstance(saved, dict):
            self.data  # noqa: B018
            check_origin(saved, self._origin)

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
