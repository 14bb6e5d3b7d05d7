"""The replay snapshot of a flagged update: everything ``python -m seqstab.replay`` needs, as plain tensors and
dicts (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from seqstab.core import io as checkpoint
from seqstab.core.plain import plain_or_none, to_cpu
from seqstab.core.record import Run, Update

SNAPSHOT_FORMAT = "seqstab.snapshot/1"


def save_snapshot(
    path: Path,
    run: Run,
    update: Update,
    modules: dict[str, float],
    rng: dict[str, Any] | None,
    diagnosis: dict[str, Any] | None = None,
    state: tuple[dict[str, torch.Tensor], dict[str, Any] | None] | None = None,
) -> None:
    """Everything ``python -m seqstab.replay`` needs to recompute this update's gradient, as plain tensors/dicts:
    the model (how to rebuild it: ``run.recipe``; its weights), the optimizer state, what was trained on and the
    hidden state it started from, the RNG state before its forward pass, the clipping policy and what was logged.

    ``state``: the module's and the optimizer's state dicts as they were before the update (kept on the device by
    the guard until this flush); None takes them from the live run.

    Written atomically; loads with ``torch.load(path, weights_only=True)``.
    """
    if state is None:
        state = (run.module.state_dict(), run.optimizer.state_dict() if run.optimizer is not None else None)
    module_state, optimizer_state = state
    recipe = run.recipe or {}
    config = path.parent / "config.yaml"
    device = next((p.device for p in run.module.parameters()), torch.device("cpu"))
    snapshot = {
        "format": SNAPSHOT_FORMAT,
        "kind": recipe.get("kind", "task"),  # "task": a seqstab task's chunk; "module": a LightningModule's batch
        "update": update.step,
        "global_step": run.global_step,
        "epoch": run.epoch,
        "seed": os.environ.get("PL_GLOBAL_SEED"),
        "task_class": recipe.get("class_path") or f"{type(run.module).__module__}.{type(run.module).__qualname__}",
        "hparams": plain_or_none(recipe.get("hparams")),
        "clipping": recipe.get("clipping"),
        "batch_idx": recipe.get("batch_idx"),
        "state_dict": to_cpu(module_state),
        "optimizer": to_cpu(optimizer_state) if optimizer_state is not None else None,
        "chunk": to_cpu(update.chunk),
        "hidden_in": to_cpu(update.hidden_in),
        "rng": rng,
        "num_threads": torch.get_num_threads(),
        "device": str(device),
        "logged": {
            "grad/norm_total": update.values["grad/norm_total"],
            "grad/norm_total_clipped": update.values.get("grad/norm_total_clipped"),
            "train/loss": update.values.get("train/loss"),
            "grad_norms": modules,  # before clipping, as the policy measured them
        },
        "config_yaml": config.read_text() if config.is_file() else None,
        "diagnosis": diagnosis,  # the event's (seqstab.diagnose): replay recomputes its flow, keeps the rest
        "versions": {"torch": str(torch.__version__), "python": sys.version.split()[0]},
    }
    checkpoint.save(snapshot, path)
