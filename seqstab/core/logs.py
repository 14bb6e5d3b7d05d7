"""Where the stations' output goes: every logger of a :class:`~seqstab.core.record.Run` (numbers), and for what is
not a number (images, text, histograms) each logger that can take it — TensorBoard writers, MLflow, W&B. The one
fan-out: the update core, the monitor, the guard and the tasks' evaluation all write through here."""

from __future__ import annotations

from typing import Any

from seqstab import internals
from seqstab.core.record import Run

__all__ = ["add_histogram", "add_image", "add_text", "log_metrics", "writes"]


def writes(run: Run) -> bool:
    """Whether anything measured would be written: a logger is attached and this is rank zero."""
    return bool(run.loggers) and run.is_global_zero


def log_metrics(run: Run, metrics: dict[str, float], step: int) -> None:
    """Write ``metrics`` at ``step`` to every logger of the run. A TensorBoard logger gets them as one event (what
    its own ``log_metrics`` writes as one event per tag): the same scalars, a fraction of the writer's work."""
    for logger in run.loggers:
        if run.is_global_zero and _is(logger, "TensorBoardLogger") and not internals.logger_prefix(logger):
            _scalars_event(logger.experiment, metrics, step)
        else:
            logger.log_metrics(metrics, step=step)


def _scalars_event(writer: Any, metrics: dict[str, float], step: int) -> None:
    """Every scalar of ``metrics`` at ``step`` in one summary event (as ``SummaryWriter.add_scalar`` writes each)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    values = [Summary.Value(tag=tag, simple_value=float(value)) for tag, value in metrics.items()]
    internals.file_writer(writer).add_summary(Summary(value=values), step)


def add_image(run: Run, tag: str, image: Any, step: int) -> None:
    """An ``(H, W, 3)`` uint8 image to every TensorBoard writer, MLflow logger and W&B logger of the run."""
    for writer in run.writers:
        writer.add_image(tag, image, global_step=step, dataformats="HWC")
    for logger in _not_tensorboard(run):
        if _is(logger, "MLFlowLogger"):
            logger.experiment.log_image(logger.run_id, image, key=tag, step=step)
        elif _is(logger, "WandbLogger"):
            logger.log_image(key=tag, images=[image], step=step)


def add_text(run: Run, tag: str, text: str, step: int) -> None:
    """Markdown ``text`` to every TensorBoard writer, to MLflow as the artifact ``<tag>/<step>.md`` and to W&B as a
    one-row table ``<tag>`` (columns ``step``, ``text``)."""
    for writer in run.writers:
        writer.add_text(tag, text, global_step=step)
    for logger in _not_tensorboard(run):
        if _is(logger, "MLFlowLogger"):
            logger.experiment.log_text(logger.run_id, text, f"{tag}/{step}.md")
        elif _is(logger, "WandbLogger"):
            logger.log_text(key=tag, columns=["step", "text"], data=[[step, text]], step=step)


def add_histogram(run: Run, tag: str, values: Any, step: int) -> None:
    """A histogram of ``values`` (a 1-D float array) to every TensorBoard writer and W&B logger (MLflow and CSV
    have none)."""
    for writer in run.writers:
        writer.add_histogram(tag, values, global_step=step)
    for logger in _not_tensorboard(run):
        if _is(logger, "WandbLogger"):
            import wandb  # there is a W&B logger, so there is wandb

            logger.log_metrics({tag: wandb.Histogram(values)}, step=step)


def _is(logger: Any, name: str) -> bool:
    """``logger`` is a Lightning ``name`` logger, of either namespace (``pytorch_lightning``, ``lightning.pytorch``)."""
    return any(kind.__name__ == name for kind in type(logger).__mro__)


def _not_tensorboard(run: Run) -> list[Any]:
    return [logger for logger in run.loggers if not _is(logger, "TensorBoardLogger")] if run.is_global_zero else []
