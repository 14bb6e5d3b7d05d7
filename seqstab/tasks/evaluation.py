"""Evaluation of a task: validation, test and predict passes over whole batches."""

from __future__ import annotations

from typing import Any

import torch

from seqstab.core.logs import log_metrics


class Evaluation:
    """Validation, test and predict for :class:`~seqstab.tasks.base.SeqTask` (a mixin): whole batches, the hidden
    state carried within the pass when the data is stateful, the task's per-step terms averaged over the scored
    steps of every process, and the metrics logged at the update index."""

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str) -> None:
        carry = self.carry[split]
        batch_size = batch["x"].shape[0]
        hidden = carry.get(batch_size) if self.spec.stateful else None
        out, hidden = self.forward_batch(batch, hidden)
        if self.spec.stateful:
            carry.put(hidden, batch_size)
        terms = self.step_losses(out, batch)
        mask = batch.get("mask")
        weight = torch.ones_like(terms["loss"]) if mask is None else mask.to(terms["loss"].dtype)
        for name, value in terms.items():
            self._eval_sums[name] = self._eval_sums.get(name, 0) + (value.detach() * weight).sum().double()
        self._eval_sums["_count"] = self._eval_sums.get("_count", 0) + weight.sum().double()

    def _eval_epoch_end(self, split: str) -> dict[str, float]:
        sums = {k: self.trainer.strategy.reduce(v, reduce_op="sum") for k, v in self._eval_sums.items()}
        self._eval_sums = {}
        if not sums:
            return {}
        count = sums.pop("_count").clamp(min=1)
        means = {name: (value / count).item() for name, value in sums.items()}
        metrics = {f"{split}/{name}": value for name, value in self.eval_metrics(means).items()}
        if self.trainer.sanity_checking:
            return metrics
        for name, value in metrics.items():
            self.log(name, value, logger=False, prog_bar=name == f"{split}/{self.main_metric}")
        log_metrics(self.run, metrics, self.updates)
        return metrics

    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking:
            self.core.flush(self.run)  # the updates before validation reach the loggers before its metrics
        self.carry["val"].reset()
        self._eval_sums = {}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        metrics = self._eval_epoch_end("val")
        if not self.trainer.sanity_checking:
            self._step_scheduler("validation", metrics)

    def on_test_epoch_start(self) -> None:
        self.carry["test"].reset()
        self._eval_sums = {}

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_predict_epoch_start(self) -> None:
        self.carry["predict"].reset()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
        """The network's output ``(B, L, ...)``, the hidden state carried from batch to batch as in evaluation."""
        return self._predict(batch)[0]

    def _predict(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output of every step and the ``(B, L)`` mask of the scored ones (None: all)."""
        carry, batch_size = self.carry["predict"], batch["x"].shape[0]
        hidden = carry.get(batch_size) if self.spec.stateful else None
        out, hidden = self.forward_batch(batch, hidden)
        if self.spec.stateful:
            carry.put(hidden, batch_size)
        return out, batch.get("mask")
