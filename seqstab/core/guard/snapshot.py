"""The replay snapshot of a flagged update: everything ``python -m seqstab.replay`` needs, as plain tensors and
dicts (``torch.load(weights_only=True)``), whoever's batch it was.

What was trained on is stored packed (:func:`seqstab.core.plain.pack`): its tensors and a plain description of
their structure (a darts dataclass batch, pytorch-forecasting's ``(x dict, (y, weight))``, neuralforecast's dict with
a pandas index, seqstab's chunk), rebuilt at replay. Where the update came from is its ``source``:

* ``task``: a seqstab task's chunk (replay rebuilds the task from its hyperparameters, loss ``chunk_loss``);
* ``module``: a LightningModule's batch under the ``GradientStability`` callback (rebuilt as ``cls(**hparams)``
  where they are plain values, else by a factory given to replay; loss ``training_step(batch, batch_idx)``);
* ``loop``: a loop of one's own around ``UpdateCore`` (a factory and a loss function given to replay).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from seqstab.core import io as checkpoint
from seqstab.core.plain import PackError, pack, plain_or_none, to_cpu
from seqstab.core.record import Run, Update

SNAPSHOT_FORMAT = "seqstab.snapshot/2"
READABLE_FORMATS = ("seqstab.snapshot/1", SNAPSHOT_FORMAT)  # /1: the chunk stored as it was (seqstab's tasks only)
SOURCES = ("task", "module", "loop")  # where a snapshot's update came from (its "source")


def save_snapshot(
    path: Path,
    run: Run,
    update: Update,
    modules: dict[str, float],
    rng: dict[str, Any] | None,
    diagnosis: dict[str, Any] | None = None,
    state: tuple[dict[str, torch.Tensor], dict[str, Any] | None] | None = None,
) -> str:
    """Everything ``python -m seqstab.replay`` needs to recompute this update's gradient, as plain tensors/dicts:
    the model (how to rebuild it: ``run.recipe``; its weights), the optimizer state, what was trained on and the
    hidden state it started from, the RNG state before its forward pass, the clipping policy and what was logged.

    ``state``: the module's and the optimizer's state dicts as they were before the update (kept on the device by
    the guard until this flush); None takes them from the live run.

    Written atomically; loads with ``torch.load(path, weights_only=True)``. Returns what ``python -m seqstab.replay``
    needs besides the path: ``""``, or the factory (``--module``) a module without plain hyperparameters needs, and
    the loss (``--loss``) a loop's needs.
    """
    if state is None:
        state = (run.module.state_dict(), run.optimizer.state_dict() if run.optimizer is not None else None)
    module_state, optimizer_state = state
    recipe = run.recipe or {}
    config = path.parent / "config.yaml"
    device = next((p.device for p in run.module.parameters()), torch.device("cpu"))
    chunk, hidden_in, unreplayable = _packed_inputs(update)
    snapshot = {
        "format": SNAPSHOT_FORMAT,
        "source": recipe.get("source") or recipe.get("kind") or "loop",  # see SOURCES; a run without a recipe: loop
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
        "chunk": chunk,  # packed (seqstab.core.plain.pack); None where it held what has no plain form
        "hidden_in": hidden_in,
        "unreplayable": unreplayable,  # why the update cannot be recomputed, or None
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
    if snapshot["source"] == "loop":
        return " --module PKG.FUNC --loss PKG.FUNC"
    return " --module PKG.FUNC" if snapshot["source"] == "module" and snapshot["hparams"] is None else ""


def _packed_inputs(update: Update) -> tuple[dict | None, dict | None, str | None]:
    """The loss closure's inputs, packed as CPU copies: ``(chunk, hidden_in, why not)``."""

    def cpu(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu().clone()

    try:
        chunk = pack(update.chunk, cpu)
        hidden = pack(update.hidden_in, cpu) if update.hidden_in is not None else None
    except PackError as err:
        return None, None, f"the batch cannot be stored: {err}"
    return chunk, hidden, None
