"""Lightning's ``Trainer`` settings that users type first, but that seqstab's tasks (manual optimization, one update
per chunk) do not take: each is applied through seqstab's own station, with one line saying so, or refused in one.

    --trainer.gradient_clip_val V            model.clipping: seqstab.clipping.NormClip(max_norm=V)   (the default
    --trainer.gradient_clip_algorithm norm   algorithm, as Lightning's)
    ... --trainer.gradient_clip_algorithm value   model.clipping: seqstab.clipping.ValueClip(clip_value=V)
    beside a model.clipping of one's own     refused: two thresholds for one update
    --trainer.accumulate_grad_batches N>1    refused: an update is one chunk of one batch; a larger data.batch_size
                                             is the way to larger updates

Lightning itself would end each of these in a ``MisconfigurationException`` traceback at the first update.
"""

from __future__ import annotations

import math
from typing import Any

from jsonargparse import Namespace

from seqstab.core.errors import ConfigError

__all__ = ["apply_lightning_settings"]

CLIP_POLICIES = {  # trainer.gradient_clip_algorithm -> the policy that does it, and its threshold argument
    "norm": ("seqstab.clipping.NormClip", "max_norm"),
    "value": ("seqstab.clipping.ValueClip", "clip_value"),
}


def apply_lightning_settings(config: Any, trainer: Any, clipping_given: bool) -> str | None:
    """Map ``trainer.gradient_clip_*`` onto ``model.clipping`` in ``config`` (the subcommand's namespace, so that
    ``config.yaml`` records what the run uses), or refuse them and ``accumulate_grad_batches > 1``.

    Args:
        config: The subcommand's config namespace.
        trainer: Its ``trainer`` group.
        clipping_given: The user set ``model.clipping`` (on the command line or in a config file of their own).

    Returns:
        The line that says what became of a mapped setting (printed when the run starts), or None.
    """
    _refuse_accumulation(trainer, config)
    value, algorithm = getattr(trainer, "gradient_clip_val", None), getattr(trainer, "gradient_clip_algorithm", None)
    if value is None and algorithm is None:
        return None
    if value is None:
        raise ConfigError(
            f"trainer.gradient_clip_algorithm={algorithm!r} without trainer.gradient_clip_val: nothing to clip at "
            "(give --trainer.gradient_clip_val, or a policy: --model.clipping seqstab.clipping.NormClip)"
        )
    algorithm = algorithm or "norm"
    if algorithm not in CLIP_POLICIES:
        raise ConfigError(f"trainer.gradient_clip_algorithm={algorithm!r}: must be 'norm' or 'value'")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"trainer.gradient_clip_val={value!r}: must be a number > 0")
    class_path, argument = CLIP_POLICIES[algorithm]
    if clipping_given:
        raise ConfigError(
            f"trainer.gradient_clip_val={value!r} and model.clipping are both given: seqstab clips in its own update "
            f"loop with model.clipping alone (give one: --model.clipping {class_path} --model.clipping.{argument} "
            f"{value!r} is the same)"
        )
    model_args = getattr(getattr(config, "model", None), "init_args", None)
    if model_args is None:
        raise ConfigError("trainer.gradient_clip_val: the model takes no model.clipping (use the model's own clipping)")
    model_args.clipping = Namespace(class_path=class_path, init_args=Namespace(**{argument: float(value)}))
    trainer.gradient_clip_val = None
    trainer.gradient_clip_algorithm = None
    return (
        f"seqstab: trainer.gradient_clip_val={value!r} (algorithm {algorithm!r}) runs as model.clipping "
        f"{class_path}({argument}={float(value)!r}): seqstab clips in its own update loop"
    )


def _refuse_accumulation(trainer: Any, config: Any) -> None:
    steps = getattr(trainer, "accumulate_grad_batches", 1)
    if isinstance(steps, int) and not isinstance(steps, bool) and steps > 1:
        batch = getattr(getattr(getattr(config, "data", None), "init_args", None), "batch_size", None)
        instead = f"--data.batch_size {batch * steps}" if isinstance(batch, int) else "a larger --data.batch_size"
        raise ConfigError(
            f"trainer.accumulate_grad_batches={steps}: not supported: seqstab's chunk loop makes one update per chunk "
            f"of one batch; for updates over {steps}x the sequences use {instead}"
        )
