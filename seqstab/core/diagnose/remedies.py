"""The settings to try for each mechanism, in the words of the door the run came in by."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from seqstab.core.diagnose.tracker import learning_rate, optimizer_path


@dataclass
class Remedies:
    """The settings to try for each mechanism, named only where they exist for the run's net and optimizer.

    Args:
        recurrent_net: The net is ``seqstab.nets.RecurrentNet`` (its ``init``, ``residual`` ... exist).
        cell: Its cell (``rnn``, ``lstm``, ``gru``).
        lr: The optimizer's learning rate (None: no optimizer).
        optimizer_class: Its class path (``--optimizer`` must name it for ``--optimizer.lr`` to be accepted).
        clipped: The run already clips (``NormClip`` or another policy than ``NoClip``).
    """

    recurrent_net: bool = False
    cell: str | None = None
    lr: float | None = None
    optimizer_class: str | None = None
    clipped: bool = False

    def _clip(self) -> list[str]:
        return [] if self.clipped else ["--model.clipping seqstab.clipping.NormClip --model.clipping.max_norm 1"]

    def time(self, growth: float, steps: int, peak: int, ref: int) -> list[str]:
        """Truncate so that the growth stays within tenfold: ``log 10 / log growth`` steps when it grows steadily,
        else half the distance from where it peaked to the last scored step."""
        steady = math.isfinite(growth) and growth > 1
        k = int(math.log(10) / math.log(growth)) if steady else (ref - peak) // 2
        tips = [f"--model.tbptt_steps {max(1, min(k, steps - 1))}", *self._clip()]
        if self.recurrent_net:
            tips.append("--model.net.init orthogonal")
            if self.cell == "rnn":
                tips.append("--model.net.cell lstm")
        return tips

    def depth(self, layers: int) -> list[str]:
        if not self.recurrent_net:
            return ["fewer layers, residual connections or normalisation between layers"]
        return [
            "--model.net.residual true",
            "--model.net.layer_norm true",
            f"--model.net.num_layers {max(1, layers // 4)}",
            "--model.net.init xavier",
        ]

    def optimizer(self) -> list[str]:
        if not (self.lr and self.optimizer_class):
            return self._clip()
        return [f"--optimizer {self.optimizer_class} --optimizer.lr {self.lr / 100:g}", *self._clip()]

    def data(self) -> list[str]:
        return ["--model.guard.policy skip (hold such batches back)", "clean or normalise the data"]


def remedies_for(net: nn.Module | None, clipping: Any, optimizer: Any = None) -> Remedies:
    """The :class:`Remedies` of a run with this net, clipping policy and optimizer (None: name no learning rate)."""
    from seqstab.core.clipping import NoClip
    from seqstab.nets.recurrent import RecurrentNet

    return Remedies(
        recurrent_net=isinstance(net, RecurrentNet),
        cell=getattr(net, "cell", None),
        lr=learning_rate(getattr(optimizer, "optimizer", optimizer)),
        optimizer_class=optimizer_path(optimizer),
        clipped=clipping is not None and not isinstance(clipping, NoClip),
    )
