"""Synthetic long-range tasks: regression and classification at marked steps (adding, copying, temporal order)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from seqstab.core.errors import check_positive
from seqstab.tasks.base import SeqTask


class SequenceRegressor(SeqTask):
    """Regression on marked steps (e.g. the adding problem: the last step). MSE loss.

    Its arguments (the net, truncation and stations) are :class:`SeqTask`'s.
    """

    kind = "regression"

    def build_head(self, spec, hidden_size):
        check_positive(input_size=spec.input_size, output_size=spec.output_size)
        return nn.Linear(hidden_size, spec.output_size)

    def step_losses(self, out, batch):
        return {"loss": (out - batch["y"]).pow(2).mean(dim=-1)}  # (B, L)


class SequenceClassifier(SeqTask):
    """Classification on marked steps (copying memory, temporal order). Cross-entropy; reports accuracy.

    Its arguments (the net, truncation and stations) are :class:`SeqTask`'s.
    """

    kind = "classification"
    main_metric = "acc"

    def build_head(self, spec, hidden_size):
        check_positive(input_size=spec.input_size, output_size=spec.output_size)
        return nn.Linear(hidden_size, spec.output_size)

    def step_losses(self, out, batch):
        ce = F.cross_entropy(out.flatten(0, 1), batch["y"].flatten(), reduction="none").view_as(batch["y"])
        correct = (out.argmax(dim=-1) == batch["y"]).to(out.dtype)
        return {"loss": ce, "acc": correct}  # (B, L) each

    def eval_metrics(self, means):
        return {"loss": means["loss"], "acc": means["acc"]}
