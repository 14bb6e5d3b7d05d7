"""Any CSV file as a series to forecast: :class:`CSVSeries`, local or downloaded into the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from datamodules.download import Remote, cache_root, fetch
from datamodules.timeseries.csv_reader import read_csv
from datamodules.timeseries.dates import parse_date
from datamodules.timeseries.module import Mode, _SeriesModule
from datamodules.timeseries.prepare import Series
from datamodules.timeseries.windows import WindowNorm
from seqstab.core.errors import ConfigError, DataError, check_choice

__all__ = ["CSVSeries"]


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
        check_choice("missing", missing, ("error", "ffill"))
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
        series = read_csv(self.file(), self.targets, self.features, self.date_column, self.missing)
        if self.split_dates is not None and series.dates is None:
            raise ConfigError(f"split_dates is set but {series.source} has no date column (set date_column)")
        return series

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
