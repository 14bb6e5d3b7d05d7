"""Dates of a series: parsing a CSV's date column, and the calendar inputs (a sin/cos pair per feature)."""

from __future__ import annotations

from datetime import datetime

import numpy as np

__all__ = ["CALENDAR", "calendar_features", "extend_dates", "parse_date"]

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
