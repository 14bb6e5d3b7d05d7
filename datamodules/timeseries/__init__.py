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

One job per file::

    timeseries/module.py       the datamodule every series shares: settings, split, spec, loaders, checkpoint state
    timeseries/prepare.py      the loaded series -> train statistics and normalised rows, each checked finite
    timeseries/windows.py      where windows start, their targets a horizon ahead, the batches they make
    timeseries/dates.py        parsing dates, the calendar inputs
    timeseries/csv_reader.py   a CSV file -> a series, line by line, in bounded memory
    timeseries/csv_series.py   CSVSeries
    timeseries/synthetic.py    SumOfSines, MackeyGlass
"""

from datamodules.timeseries.csv_reader import MISSING, read_csv
from datamodules.timeseries.csv_series import CSVSeries
from datamodules.timeseries.dates import CALENDAR, calendar_features, extend_dates, parse_date
from datamodules.timeseries.module import Mode, _SeriesModule
from datamodules.timeseries.prepare import SPLITS, Series
from datamodules.timeseries.synthetic import MackeyGlass, SumOfSines, mackey_glass
from datamodules.timeseries.windows import WindowDataset, WindowNorm, future, window_starts

__all__ = [
    "CALENDAR",
    "MISSING",
    "SPLITS",
    "CSVSeries",
    "MackeyGlass",
    "Mode",
    "Series",
    "SumOfSines",
    "WindowDataset",
    "WindowNorm",
    "_SeriesModule",
    "calendar_features",
    "extend_dates",
    "future",
    "mackey_glass",
    "parse_date",
    "read_csv",
    "window_starts",
]
