"""``predict`` on a forecaster: ``predictions.csv``, one row per forecast origin, in the data's original units.

:meth:`seqstab.tasks.Forecaster.predict_step` returns the scored steps of each batch (``forecast`` and
``observed``, ``(N, H, T)`` in normalised units, and ``row``, the step's row in the series, when the batch has
one); :class:`ForecastWriter` collects them and writes::

    origin,row,OT_t+1,...,OT_t+24,OT_t+1_observed,...,OT_t+24_observed
    2017-10-20 03:00:00,13936,12.31,...,

``origin`` is the row's date when the series has a date column (else the row index): the last observed step, the
forecast being for the ``H`` steps after it. Observed values past the end of the data are empty. Values are put
back in original units by the datamodule's ``denormalize(y)``; its ``row_labels(rows)`` names the rows and
``target_names`` the columns (``datamodules.timeseries`` has all three). A datamodule without them gets the values
as the model sees them, rows numbered from 0 and targets named ``target_0``, ...
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from seqstab.core import io as checkpoint
from seqstab.core.errors import ConfigError
from seqstab.lightning.manifest import run_dir

FILENAME = "predictions.csv"


class ForecastWriter(pl.Callback):
    """Write the forecasts of ``trainer.predict`` to ``<run directory>/predictions.csv`` and print its path."""

    def __init__(self, filename: str = FILENAME):
        self.filename = filename
        self._parts: list[dict[str, torch.Tensor]] = []
        self.path: Path | None = None

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            raise ConfigError("predict writes one predictions.csv: run it on one device (--trainer.devices 1)")
        self._parts = []

    def on_predict_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int, dataloader_idx=0):
        if isinstance(outputs, dict) and "forecast" in outputs:
            self._parts.append({k: v.detach().cpu() for k, v in outputs.items()})

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._parts:
            return
        parts = {key: torch.cat([p[key] for p in self._parts]) for key in self._parts[0]}
        self._parts = []
        datamodule = getattr(trainer, "datamodule", None)
        forecast, observed = (parts[k].double() for k in ("forecast", "observed"))  # (N, H, T)
        denormalize = getattr(datamodule, "denormalize", None)
        if callable(denormalize):
            forecast, observed = denormalize(forecast), denormalize(observed)
        rows = parts.get("row", torch.arange(len(forecast)))
        label_rows = getattr(datamodule, "row_labels", None)
        origins = label_rows(rows) if callable(label_rows) else [str(int(r)) for r in rows]
        names = list(getattr(datamodule, "target_names", None) or [f"target_{j}" for j in range(forecast.shape[2])])
        directory = run_dir(trainer) or Path(trainer.default_root_dir)
        self.path = directory / self.filename
        checkpoint.write_text(self.path, forecast_csv(origins, rows, forecast, observed, names))
        print(f"seqstab: {len(forecast)} forecasts of {forecast.shape[1]} steps written to {self.path}", flush=True)


def forecast_columns(names: list[str], horizon: int) -> tuple[list[str], list[str]]:
    """Header of the forecast and of the observed columns: ``OT_t+1 ... OT_t+H`` per target, then ``..._observed``."""
    forecast = [f"{name}_t+{h}" for name in names for h in range(1, horizon + 1)]
    return forecast, [f"{column}_observed" for column in forecast]


def forecast_csv(
    origins: list[str], rows: torch.Tensor, forecast: torch.Tensor, observed: torch.Tensor, names: list[str]
) -> str:
    """The CSV text: ``origin, row``, the forecasts ``(N, H, T)`` target by target, then what was observed."""
    n, horizon, _ = forecast.shape
    head, seen = forecast_columns(names, horizon)
    out = io.StringIO()
    out.write(",".join(["origin", "row", *head, *seen]) + "\n")
    by_target = lambda t: t.permute(0, 2, 1).reshape(n, -1).tolist()  # noqa: E731 -- (N, T * H), target-major
    for origin, row, f, o in zip(origins, rows.tolist(), by_target(forecast), by_target(observed), strict=True):
        cells = [_cell(v) for v in f] + [_cell(v) for v in o]
        out.write(",".join([_quoted(origin), str(row), *cells]) + "\n")
    return out.getvalue()


def _cell(value: float) -> str:
    return "" if value != value else f"{value:.9g}"  # NaN (nothing observed there): empty


def _quoted(text: str) -> str:
    return f'"{text}"' if "," in text or '"' in text else text
