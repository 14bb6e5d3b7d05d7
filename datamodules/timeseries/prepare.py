"""From a loaded series to what the model reads: the train split's statistics, the normalised float32 rows, and a
record of what they were computed from.

Every value must be finite in float32, the dtype the model reads, and so must the statistics and every normalised
value: a value past float32's range (``1e39``), or one that only overflows once normalised (the train split barely
varies, a later row is far off), would make every update non-finite. Each is refused with one line naming the file,
the line and the column.

The record (:func:`origin`) goes into the checkpoint: a resume on a file that no longer gives the same split and
statistics is refused (:func:`check_origin`), in one line naming the file and what changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import torch

from seqstab.core.errors import DataError
from seqstab.core.io import CheckpointError

__all__ = ["SPLITS", "Series", "check_origin", "normalise", "origin", "statistics"]

SPLITS = ("train", "val", "test")
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Series:
    """A loaded series.

    Attributes:
        values: ``(N, C)`` float64, the ``num_targets`` target columns first, then the features.
        columns: Names of the ``C`` columns.
        num_targets: How many leading columns are predicted.
        dates: One datetime per row, or None.
        source: What to name in messages (a file path or a generator).
        lines: ``(N,)`` the line of the file each row was read from, or None (a generated series).
    """

    values: np.ndarray
    columns: list[str]
    num_targets: int
    dates: list[datetime] | None
    source: str
    lines: np.ndarray | None = None

    def where(self, row: int) -> str:
        """``<file> line <n>`` for a row read from a file, else ``<source> row <n>``."""
        return f"{self.source} line {int(self.lines[row])}" if self.lines is not None else f"{self.source} row {row}"


def statistics(series: Series, rows: int, end: int, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """The mean and standard deviation ``(C,)`` of the first ``rows`` rows (the train split), zeros and ones without
    ``normalize``; a constant column keeps std 1. Checks that both, and the first ``end`` rows, are finite in
    float32."""
    train = series.values[:rows]
    if normalize and len(train):
        with np.errstate(over="ignore", invalid="ignore"):
            mean, std = train.mean(axis=0), train.std(axis=0)
        for name, stat in (("mean", mean), ("standard deviation", std)):
            bad = np.flatnonzero(~(np.abs(stat) <= FLOAT32_MAX))
            if len(bad):
                column = int(bad[0])
                row = int(np.abs(train[:, column]).argmax())
                raise DataError(
                    f"{series.where(row)}: column {series.columns[column]!r} value {train[row, column]:.6g} makes the "
                    f"train split's {name} overflow ({stat[column]:.6g}, not finite in float32); rescale the column"
                )
    else:
        mean, std = np.zeros(train.shape[1]), np.ones(train.shape[1])
    values = series.values[:end]
    bad = ~(np.abs(values) <= FLOAT32_MAX)  # NaN too
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{series.where(row)}: column {series.columns[column]!r} value {values[row, column]:.6g} is not finite in "
            "float32, the dtype the model reads (its largest is 3.4e+38); rescale the column"
        )
    return mean, np.where(std > 0, std, 1.0)


def normalise(series: Series, end: int, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """``(end, C)`` float32: ``(value - mean) / std`` for the first ``end`` rows, each checked finite in float32."""
    normed = series.values[:end] - mean
    normed /= std
    z = torch.from_numpy(normed).float()  # (N, C)
    if not torch.isfinite(z).all():
        row, column = (int(i) for i in torch.nonzero(~torch.isfinite(z))[0])
        raise DataError(
            f"{series.where(row)}: column {series.columns[column]!r} value {series.values[row, column]:.6g} is "
            f"{normed[row, column]:.3g} standard deviations from the train split's mean ({mean[column]:.6g}, "
            f"standard deviation {std[column]:.3g}): not finite in float32 once normalised; rescale the column"
        )
    return z


# -- what the split and the statistics came from: kept in the checkpoint ------------------------------------------


def origin(series: Series, split_at: tuple[int, int, int], mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """What the split and the normalisation were computed from, as plain data and tensors (checkpoint state): the
    source, its row count, where val and test start and the series ends, a fingerprint of each split's rows (values
    and dates), and the statistics."""
    bounds = dict(zip(SPLITS, zip((0, *split_at[:2]), split_at, strict=True), strict=True))
    return {
        "source": series.source,
        "rows": len(series.values),
        "split_at": list(split_at),
        "fingerprints": {split: _fingerprint(series, a, b) for split, (a, b) in bounds.items()},
        "mean": torch.from_numpy(np.asarray(mean, dtype=np.float64)),
        "std": torch.from_numpy(np.asarray(std, dtype=np.float64)),
    }


def check_origin(saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` naming the source and what changed when ``now`` (this data's :func:`origin`)
    differs from ``saved`` (the checkpoint's)."""
    source, advice = now["source"], "resume with the data as it was, or start a new run"
    was, got = list(saved["split_at"]), list(now["split_at"])
    if was != got:
        rows = f"{now['rows']} rows, it had {saved['rows']}" if now["rows"] != saved["rows"] else "the same rows"
        raise CheckpointError(
            f"{source}: the checkpoint's split (val from row {was[0]}, test from row {was[1]}, end {was[2]}) is not "
            f"this data's (val from row {got[0]}, test from row {got[1]}, end {got[2]}): it has {rows}; {advice}"
        )
    for split, (a, b) in zip(SPLITS, zip((0, *was[:2]), was, strict=True), strict=True):
        if saved["fingerprints"].get(split) != now["fingerprints"][split]:
            also = " (the normalisation statistics come from them)" if split == "train" else ""
            raise CheckpointError(
                f"{source}: the {split} split's rows {a}-{b - 1} are not those the checkpoint was trained on: their "
                f"values or dates changed{also}; {advice}"
            )
    for name in ("mean", "std"):
        if not torch.equal(saved[name].double(), now[name].double()):
            raise CheckpointError(
                f"{source}: the normalisation differs from the checkpoint's ({name} {saved[name].tolist()} there, "
                f"{now[name].tolist()} here: was normalize changed?); {advice}"
            )


def _fingerprint(series: Series, a: int, b: int) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(series.values[a:b]).tobytes())
    if series.dates is not None:
        digest.update(np.array(series.dates[a:b], dtype="datetime64[us]").tobytes())
    return digest.hexdigest()
