"""Forecasting: real-valued features in; the next ``horizon`` values of the targets out at every step."""

from __future__ import annotations

import math
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import nn

from seqstab.core.errors import ConfigError, check_choice, check_fraction, check_positive
from seqstab.data.module import DataSpec
from seqstab.lightning.predictions import ForecastWriter
from seqstab.nets.dropout import Dropout
from seqstab.tasks.base import SeqTask


class Forecaster(SeqTask):
    """Real-valued features in; at every step, the next ``horizon`` values of the targets out. MSE loss.

    Reports ``val/mae`` and ``val/rmse`` in the data's original units (the datamodule's normalisation undone), and
    with ``norm_metrics`` also ``val/mse_norm`` and ``val/mae_norm`` (``test/...`` likewise): on the train-normalised
    scale, averaged over every horizon step and target, as the forecasting literature reports them. A batch's
    ``level`` (per-window normalisation, ``CSVSeries(window_norm=...)``) is added to the output, so forecasts and
    metrics are on the global scale whatever the datamodule subtracted.

    Args:
        predict: ``level`` (default): the head's output is the forecast. ``change``: the forecast of every horizon
            step is the last observed value of each target (read from ``x`` at the current step, at the data's
            ``DataSpec.target_index``) plus the head's output, and the head's output layer starts at zero, so the
            untrained model makes the naive last-value forecast and learns a correction to it. Needs data whose
            inputs hold the targets (the time-series datamodules do).
        dropout: Dropout on the net's output before the head (the net's own, between its layers, is
            ``net.init_args.dropout``).
        head: ``linear`` (default): one linear map from the net's output at step ``t`` to all ``horizon`` forecasts.
            ``decoder``: the encoder–decoder head (:class:`seqstab.forecast.RolloutDecoder`): a cell started from
            the net's output, unrolled over the horizon, fed the horizon's known inputs (``DataSpec.known_size``,
            the batch's ``known``) and its own previous prediction. It runs only at the scored steps.
        decoder_cell: The decoder's cell: ``lstm``, ``gru`` or ``rnn``.
        norm_metrics: Also log ``val/mse_norm`` and ``val/mae_norm`` (and ``test/``) on the normalised scale.
        **kwargs: The net, truncation and stations: see :class:`SeqTask`.
    """

    kind = "forecast"
    main_metric = "mae"

    def __init__(
        self,
        predict: Literal["level", "change"] = "level",
        dropout: float = 0.0,
        head: Literal["linear", "decoder"] = "linear",
        decoder_cell: Literal["lstm", "gru", "rnn"] = "lstm",
        norm_metrics: bool = False,
        **kwargs,
    ):
        check_choice("predict", predict, ("level", "change"))
        check_choice("head", head, ("linear", "decoder"))
        check_fraction("dropout", dropout, low_inclusive=True)
        self.predict, self.dropout, self.head_kind, self.decoder_cell = predict, dropout, head, decoder_cell
        self.norm_metrics = norm_metrics
        super().__init__(**kwargs)

    def build_head(self, spec, hidden_size):
        check_positive(input_size=spec.input_size, output_size=spec.output_size, horizon=spec.horizon)
        if self.head_kind == "decoder":
            from seqstab.nets.decoder import RolloutDecoder

            self._target_index(spec, needed=self.predict == "change")
            residual = self.predict == "change"
            decoder = RolloutDecoder(
                hidden_size, spec.output_size, spec.known_size, spec.horizon, self.decoder_cell, residual
            )
            return nn.Sequential(Dropout(self.dropout), decoder)
        linear = nn.Linear(hidden_size, spec.horizon * spec.output_size)
        if self.predict == "change":
            self._target_index(spec, needed=True)
            nn.init.zeros_(linear.weight)  # the untrained model is the naive forecast
            nn.init.zeros_(linear.bias)
        return nn.Sequential(Dropout(self.dropout), linear)

    def _target_index(self, spec: DataSpec, needed: bool) -> None:
        """The ``target_index`` buffer (where the targets sit among the inputs), if the data has one."""
        index = spec.target_index
        if index is None or len(index) != spec.output_size or not all(0 <= i < spec.input_size for i in index):
            if needed:
                raise ConfigError(
                    f"predict='change' needs the targets among the inputs, but the data's target_index is {index!r} "
                    f"(output_size {spec.output_size}, input_size {spec.input_size}); use predict: level"
                )
            return
        self.register_buffer("target_index", torch.tensor(index, dtype=torch.long), persistent=False)

    def forward(self, x, hidden=None):
        if self.head_kind == "decoder":
            return self._rollout(x, hidden, None, None)
        out, hidden = super().forward(x, hidden)
        out = out.unflatten(-1, (self.spec.horizon, self.spec.output_size))  # (B, L, horizon, C)
        if self.predict == "change":
            out = out + x.index_select(-1, self.target_index).unsqueeze(-2)  # + last value (B, L, 1, C)
        return out, hidden

    def forward_batch(self, batch, hidden):
        """:meth:`forward`, the decoder fed the batch's ``known`` inputs at its scored steps, plus ``level``."""
        if self.head_kind == "decoder":
            out, hidden = self._rollout(batch["x"], hidden, batch.get("known"), batch.get("mask"))
        else:
            out, hidden = self(batch["x"], hidden)
        if "level" in batch:
            out = out + batch["level"].unsqueeze(-2)  # (B, L, 1, C): the window's level, back
        return out, hidden

    def _rollout(self, x, hidden, known, mask):
        """The decoder head at the scored steps ``S`` (zeros elsewhere: they carry no loss)."""
        from seqstab.nets.decoder import scored_steps

        encoded, hidden = self.net(self.encoder(x), hidden)  # (B, L, hidden)
        batch, length = encoded.shape[:2]
        steps = scored_steps(mask, length, x.device)  # (S,)
        state = self.head[0](encoded.index_select(1, steps)).flatten(0, 1)  # (B·S, hidden)
        seen = x.index_select(1, steps)  # (B, S, input_size)
        if hasattr(self, "target_index"):
            last = seen.index_select(-1, self.target_index).flatten(0, 1)  # (B·S, C) the last observed targets
        else:
            last = seen.new_zeros(batch * len(steps), self.spec.output_size)
        ahead = None if known is None else known.index_select(1, steps).flatten(0, 1)  # (B·S, horizon, K)
        forecast = self.head[1](state, last, ahead).unflatten(0, (batch, len(steps)))  # (B, S, horizon, C)
        shape = (batch, length, self.spec.horizon, self.spec.output_size)
        return forecast.new_zeros(shape).index_copy(1, steps, forecast), hidden

    def configure_callbacks(self) -> list[pl.Callback]:
        return [*super().configure_callbacks(), ForecastWriter()]

    def predict_step(self, batch, batch_idx):
        """The forecasts of the scored steps, with what was observed (NaN past the data) and, when the batch has
        ``row``, each step's row: what :class:`seqstab.predictions.ForecastWriter` writes to ``predictions.csv``."""
        out, mask = self._predict(batch)
        keep = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device) if mask is None else mask.bool()
        result = {"forecast": out[keep], "observed": batch["y"][keep]}  # (N, horizon, C) normalised units
        if "row" in batch:
            result["row"] = batch["row"][keep]
        return result

    def step_losses(self, out, batch):
        err = out - batch["y"]  # (B, L, horizon, C), normalised units
        scale = torch.as_tensor(self.spec.target_scale or 1.0, dtype=err.dtype, device=err.device)
        terms = {
            "loss": err.pow(2).mean(dim=(-2, -1)),
            "abs": (err * scale).abs().mean(dim=(-2, -1)),
            "sq": (err * scale).pow(2).mean(dim=(-2, -1)),
        }
        if self.norm_metrics:
            terms["abs_norm"] = err.abs().mean(dim=(-2, -1))  # (B, L); the squared one is "loss"
        return terms

    def eval_metrics(self, means):
        metrics = {"loss": means["loss"], "mae": means["abs"], "rmse": math.sqrt(means["sq"])}
        if self.norm_metrics:
            metrics.update(mse_norm=means["loss"], mae_norm=means["abs_norm"])
        return metrics
