"""The lines a fit ends with, on rank 0: where to look, what it reached, what its gradients did.

    View it in TensorBoard:
      tensorboard --logdir runs/seqstab/version_0

    best checkpoint (val/loss 0.0471): runs/seqstab/version_0/checkpoints/epoch=2-step=240.ckpt

    last validation:
    val/loss  0.0471
    seqstab: peak pre-clip gradient norm 1.5e+06 (update 1) against the clip threshold 1 ...
    seqstab: val/loss 0.0471 vs the chance loss 0.167: 3.55x below chance
    seqstab: 240 of 240 updates applied

A fit stopped by a signal prints the same, then one line: where its state is and how to resume it.
"""

from __future__ import annotations

from typing import Any

from seqstab.lightning.manifest import run_dir
from seqstab.lightning.signals import StoppedBySignal

__all__ = ["print_closing", "print_metrics", "print_stopped"]


def print_closing(trainer: Any, model: Any, stopped: bool = False) -> None:
    """The TensorBoard command, the best checkpoint, the last validation, the control lines and the update count
    (``stopped``: by a signal; its saved state is named by :func:`print_stopped`, not as the last checkpoint)."""
    if not trainer.is_global_zero:
        return
    log_dir = run_dir(trainer)
    if log_dir is not None:
        print(f"\nView it in TensorBoard:\n  tensorboard --logdir {log_dir}\n")
    _print_best(trainer, monitored_only=stopped)
    print_metrics(trainer, "val", "last validation")
    core = getattr(model, "core", None)
    if core is not None:
        _print_control(trainer, model, core)
        print(f"seqstab: {core.summary()}", flush=True)


def print_stopped(stop: StoppedBySignal, trainer: Any | None) -> None:
    """The line a fit stopped by a signal ends with: after which update, and where its state is."""
    if trainer is not None and not trainer.is_global_zero:
        return
    where = f" after update {stop.update}" if stop.update is not None else ""
    print(f"seqstab: stopped by {stop.name}{where}; {stop.reason}", flush=True)


def print_metrics(trainer: Any, split: str, title: str | None = None) -> None:
    """The split's metrics, one per line (in the data's units: ``mae``, ``ppl``...). The tasks write them to the
    logger at their own update step, so Lightning's results table (built from ``self.log(..., logger=True)``
    only) would be empty."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{split}/")}
    if metrics and trainer.is_global_zero:
        width = max(map(len, metrics))
        lines = [f"{name:<{width}}  {value:.6g}" for name, value in sorted(metrics.items())]
        print("\n" + "\n".join([f"{title}:"] * bool(title) + lines))


def _print_best(trainer: Any, monitored_only: bool = False) -> None:
    """Where the run's best checkpoint is, and its monitored value (or the last checkpoint, without a monitor)."""
    callback = trainer.checkpoint_callback
    if callback is None:
        return
    if callback.monitor and callback.best_model_path and callback.best_model_score is not None:
        score = float(callback.best_model_score)
        print(f"best checkpoint ({callback.monitor} {score:.6g}): {callback.best_model_path}")
    elif (callback.last_model_path or callback.best_model_path) and not monitored_only:
        print(f"last checkpoint: {callback.last_model_path or callback.best_model_path}")


def _print_control(trainer: Any, model: Any, core: Any) -> None:
    """Plain words on what the run's gradients did and what the model learned: the peak pre-clip norm against the
    clip threshold, and the last val/loss against the data's chance loss."""
    peak = core.guard.closing(core.clipping) if core.guard is not None else None
    if peak:
        print(f"seqstab: {peak}")
    loss, chance = trainer.callback_metrics.get("val/loss"), getattr(model.spec, "chance_loss", None)
    if loss is not None and chance:
        loss = float(loss)
        verdict = f"{chance / loss:.3g}x below chance" if loss < chance else "not below chance"
        print(f"seqstab: val/loss {loss:.4g} vs the chance loss {chance:.4g}: {verdict}")
