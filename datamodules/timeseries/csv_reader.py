"""Reading a CSV file into a :class:`~datamodules.timeseries.prepare.Series`, in bounded memory.

The file is read line by line (:func:`datamodules.files.text_lines`) and only the wanted columns are kept, as float64
arrays: memory grows with the rows times the wanted columns, not with the file. A file whose parse would not fit in
the free memory is refused before it is read (:func:`parse_memory`), and so is a line longer than ``MAX_LINE``
characters (not a CSV file, or not one this reader can take apart). Every problem is one
:class:`~seqstab.core.errors.DataError` line naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import math
from array import array
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

from datamodules.files import check_memory, text_lines
from datamodules.timeseries.dates import parse_date
from datamodules.timeseries.prepare import Series
from seqstab.core.errors import ConfigError, DataError

__all__ = ["MAX_LINE", "MISSING", "parse_memory", "read_csv"]

MISSING = {"", "na", "n/a", "nan", "null", "none", "?"}
MAX_LINE = 1 << 20  # characters: a longer line is not a row of a series
BYTES_PER_VALUE = 40  # a value while parsed (8) and stacked (8), normalised in float64 (8) and float32 (4), checks
BYTES_PER_ROW = 96  # its line number (8), its date (a datetime and its pointer: 56), the date's fingerprint (8), slack


def parse_memory(path: Path, columns: int) -> int:
    """Bytes that reading ``columns`` columns of ``path`` and preparing them take, estimated from the file's size and
    the length of its first lines (their first 64 KiB)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    rows = size / (len(head) / max(head.count(b"\n"), 1)) if head else 0
    return int(rows * (columns * BYTES_PER_VALUE + BYTES_PER_ROW))


def read_csv(
    path: Path,
    targets: list[str],
    features: list[str],
    date_column: str | None = None,
    missing: Literal["error", "ffill"] = "error",
) -> Series:
    """The ``targets`` and ``features`` columns of the CSV file ``path`` (a header row, then one row per step, in
    chronological order), and its dates: ``date_column``, or the first other column whose first value is a date.
    A missing value (an empty cell, ``NA``, ``nan`` ...) is an error, or with ``missing="ffill"`` the value above."""
    wanted = targets + features
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"target + features = {wanted}: a column is named twice")
    if path.is_file():
        check_memory(path, parse_memory(path, len(wanted)), "parsing it")
    rows = csv.reader(text_lines(path, max_line=MAX_LINE))
    try:
        return _read_rows(path, rows, wanted, len(targets), date_column, missing)
    except csv.Error as err:
        raise DataError(f"{path} line {rows.line_num}: not a CSV row ({err})") from None


def _read_rows(path, rows, wanted, num_targets, date_column, missing) -> Series:
    header = next((row for row in rows if any(cell.strip() for cell in row)), None)
    header = [name.strip() for name in header or []]
    for name in wanted + ([date_column] if date_column else []):
        if name not in header:
            raise DataError(f"{path}: no column {name!r} (columns: {', '.join(header)})")
    width, index = len(header), [header.index(name) for name in wanted]
    columns, lines = [array("d") for _ in wanted], array("q")
    last = [math.nan] * len(wanted)  # the value above, per column (missing="ffill")
    date_index, dates = (header.index(date_column) if date_column else None), None
    for row in rows:
        if not row:
            continue  # a blank line
        line = rows.line_num
        if len(row) != width:
            raise DataError(f"{path} line {line}: {len(row)} fields, the header has {width}")
        if not lines:  # the first row: find the date column if none was named
            date_index = date_index if date_column else _find_dates(header, wanted, row)
            dates = None if date_index is None else []
        if dates is not None:
            date = _date(path, line, row[date_index], header[date_index])
            if dates and date < dates[-1]:
                raise DataError(f"{path} line {line}: date {date} is earlier than the row above; sort the file")
            dates.append(date)
        for k, i in enumerate(index):
            last[k] = _value(path, line, row[i], wanted[k], last[k], missing)
            columns[k].append(last[k])
        lines.append(line)
    if not lines:
        raise DataError(f"{path}: no data rows after the header")
    values = np.stack([np.frombuffer(column, dtype=np.float64) for column in columns], axis=1)  # (N, C)
    return Series(values, wanted, num_targets, dates, str(path), np.frombuffer(lines, dtype=np.int64))


def _find_dates(header: list[str], wanted: list[str], first: list[str]) -> int | None:
    return next((i for i, name in enumerate(header) if name not in wanted and parse_date(first[i]) is not None), None)


def _date(path: Path, line: int, text: str, column: str) -> datetime:
    date = parse_date(text)
    if date is None:
        raise DataError(f"{path} line {line}: column {column!r} value {text!r} is not a date")
    return date


def _value(path: Path, line: int, text: str, name: str, above: float, missing: str) -> float:
    """The number in a cell; a missing one is an error or (``ffill``) ``above``."""
    try:
        value = float(text)
        if math.isfinite(value):
            return value
    except ValueError:
        pass
    text = text.strip()
    if text.lower() in MISSING:
        if missing == "error":
            raise DataError(
                f"{path} line {line}: column {name!r} is missing a value ({text!r}); set missing: ffill to forward-fill"
            )
        if math.isnan(above):
            raise DataError(f"{path} line {line}: column {name!r} is missing a value and none precedes it")
        return above
    try:
        float(text)
    except ValueError:
        raise DataError(f"{path} line {line}: column {name!r} value {text!r} is not a number") from None
    raise DataError(f"{path} line {line}: column {name!r} value {text!r} is not finite")
