"""What the optimization path measures beyond the per-update norms, and how often."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from seqstab.tasks import SeqTask, Update


class GradMonitor:
    """Measurements hung off the optimization path.

    Three hooks, called by ``SeqTask.training_step`` at every update:
      * :meth:`arm` before the forward pass (e.g. record hidden-state sequences for gradient flow);
      * :meth:`step_tensors` after clipping: device tensors to read back with the loss in the update's one sync;
      * :meth:`emit` after the step: write what is due (images, histograms, spectra) to the logger.
    """

    def arm(self, task: SeqTask, step: int) -> None:
        pass

    def step_tensors(self, task: SeqTask, step: int) -> dict[str, torch.Tensor]:
        return {}

    def emit(self, task: SeqTask, update: Update) -> None:
        pass
