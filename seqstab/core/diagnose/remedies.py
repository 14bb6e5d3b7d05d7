"""The settings to try for each mechanism, in the words of the door the run came in by.

A run comes in by one of three doors, and a remedy is only useful in the words of that door:

* ``cli``: seqstab's tasks (``python -m seqstab.train``, a config): command-line flags (``--model.tbptt_steps 12``);
* ``callback``: the ``GradientStability`` callback on a LightningModule of one's own or of a library: constructor
  arguments and Python (``GradientStability(clipping=NormClip(max_norm=1.0))``, ``torch.optim.Adam(lr=...)``), and
  the library's own knob where one is known (darts' ``optimizer_kwargs``, pytorch-forecasting's and neuralforecast's
  ``learning_rate``, the Trainer's ``gradient_clip_val``);
* ``loop``: a training loop of one's own around ``UpdateCore``: Python.

A remedy already in force is never suggested: clipping when the run clips, a guard policy that withholds when the
guard already does, a residual or layer-normalised net when it already is one.

The door and what is in force come from the arguments of :func:`remedies_for`, or, where its caller cannot know
them (the diagnosis at a guard event sees the run, not how it was built), from :func:`in_force`, which the guard
sets around the diagnosis of each event.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from seqstab.core.diagnose.tracker import learning_rate, optimizer_path

DOORS = ("cli", "callback", "loop")
WITHHOLDING = ("skip", "stop", "reset_moments")  # guard policies that already hold a flagged batch back

# Known libraries (the top-level package of the module's class): their own names for the settings remedies name.
LIBRARY_KNOBS: dict[str, dict[str, str]] = {
    "darts": {
        "lr": "optimizer_kwargs={{'lr': {lr:g}}}",
        "clip": "pl_trainer_kwargs={{'gradient_clip_val': {max_norm:g}}}",
        "window": "a shorter input_chunk_length (training_length for RNNModel), e.g. {k}",
        "depth": "fewer n_rnn_layers",
        "cell": "model='LSTM'",
    },
    "pytorch_forecasting": {
        "lr": "learning_rate={lr:g} (from_dataset)",
        "clip": "Trainer(gradient_clip_val={max_norm:g})",
        "window": "a shorter max_encoder_length (TimeSeriesDataSet), e.g. {k}",
        "depth": "fewer rnn_layers",
        "cell": "cell_type='LSTM'",
    },
    "neuralforecast": {
        "lr": "learning_rate={lr:g}",
        "clip": "gradient_clip_val={max_norm:g} (a trainer keyword of the model)",
        "window": "a shorter input_size, e.g. {k}",
        "depth": "fewer encoder_n_layers",
    },
}

_IN_FORCE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("seqstab_remedies", default=None)


@dataclass
class Remedies:
    """The settings to try for each mechanism, named only where they exist for the run's door, net and optimizer.

    Args:
        recurrent_net: The net is ``seqstab.nets.RecurrentNet`` (its ``init``, ``residual`` ... exist).
        cell: Its cell (``rnn``, ``lstm``, ``gru``); for another net, ``rnn`` when it holds a vanilla ``nn.RNN``.
        lr: The optimizer's learning rate (None: no optimizer).
        optimizer_class: Its class path (``--optimizer`` must name it for ``--optimizer.lr`` to be accepted).
        clipped: The run already clips (``NormClip`` or another policy than ``NoClip``).
        door: ``cli``, ``callback`` or ``loop`` (see the module's docstring): the words remedies are said in.
        library: The package of the module's class where it is one whose knobs are known (:data:`LIBRARY_KNOBS`).
        guard_policy: The guard's policy in force (a data remedy that holds batches back is not repeated).
        residual: The net already adds residual connections.
        layer_norm: The net already normalises between layers.
    """

    recurrent_net: bool = False
    cell: str | None = None
    lr: float | None = None
    optimizer_class: str | None = None
    clipped: bool = False
    door: str = "cli"
    library: str | None = None
    guard_policy: str | None = None
    residual: bool = False
    layer_norm: bool = False

    def _knob(self, name: str, **values: Any) -> str | None:
        knob = LIBRARY_KNOBS.get(self.library or "", {}).get(name)
        return knob.format(**values) if knob else None

    def _clip(self) -> list[str]:
        if self.clipped:
            return []
        if self.door == "cli":
            return ["--model.clipping seqstab.clipping.NormClip --model.clipping.max_norm 1"]
        if self.door == "loop":
            return ["UpdateCore(clipping=NormClip(max_norm=1.0))"]
        knob = self._knob("clip", max_norm=1.0) or "Trainer(gradient_clip_val=1.0)"
        return [f"GradientStability(clipping=NormClip(max_norm=1.0)), or {knob}"]

    def time(self, growth: float, steps: int, peak: int, ref: int) -> list[str]:
        """Truncate so that the growth stays within tenfold: ``log 10 / log growth`` steps when it grows steadily,
        else half the distance from where it peaked to the last scored step."""
        steady = math.isfinite(growth) and growth > 1
        k = max(1, min(int(math.log(10) / math.log(growth)) if steady else (ref - peak) // 2, steps - 1))
        if self.door == "cli":
            tips = [f"--model.tbptt_steps {k}", *self._clip()]
            if self.recurrent_net:
                tips.append("--model.net.init orthogonal")
                if self.cell == "rnn":
                    tips.append("--model.net.cell lstm")
            return tips
        window = self._knob("window", k=k)
        tips = [window or f"backpropagate through at most {k} steps (a shorter input window, or seqstab.tbptt)"]
        tips += self._clip()
        tips.append("orthogonal recurrent weights (torch.nn.init.orthogonal_ on each weight_hh)")
        if self.cell == "rnn":
            tips.append(self._knob("cell") or "an LSTM or GRU instead of a vanilla RNN")
        return tips

    def depth(self, layers: int) -> list[str]:
        if self.door == "cli" and self.recurrent_net:
            tips = [] if self.residual else ["--model.net.residual true"]
            tips += [] if self.layer_norm else ["--model.net.layer_norm true"]
            return [*tips, f"--model.net.num_layers {max(1, layers // 4)}", "--model.net.init xavier"]
        knob = self._knob("depth")
        generic = "fewer layers, residual connections or normalisation between layers"
        return [knob, generic] if knob else [generic]

    def optimizer(self) -> list[str]:
        if not self.lr:
            return self._clip()
        lower = self.lr / 100
        if self.door == "cli":
            if not self.optimizer_class:
                return self._clip()
            return [f"--optimizer {self.optimizer_class} --optimizer.lr {lower:g}", *self._clip()]
        name = self.optimizer_class or "torch.optim.SGD"
        if self.door == "loop":
            return [f"{name}(params, lr={lower:g})", *self._clip()]
        knob = self._knob("lr", lr=lower) or f"{name}(self.parameters(), lr={lower:g}) in configure_optimizers"
        return [knob, *self._clip()]

    def data(self) -> list[str]:
        tips = []
        if self.guard_policy not in WITHHOLDING:
            tips.append(
                {
                    "cli": "--model.guard.policy skip (hold such batches back)",
                    "callback": "GradientStability(guard=ExplosionGuard(policy='skip')) (hold such batches back)",
                    "loop": "UpdateCore(guard=ExplosionGuard(policy='skip')) (hold such batches back)",
                }[self.door]
            )
        return [*tips, "clean or normalise the data"]


def remedies_for(net: nn.Module | None, clipping: Any, optimizer: Any = None, **settings: Any) -> Remedies:
    """The :class:`Remedies` of a run with this net, clipping policy and optimizer (None: name no learning rate).

    Args:
        net: The run's net (a ``RecurrentNet`` names its own settings).
        clipping: The clipping policy in force (None: unknown here; :func:`in_force` may say).
        optimizer: The optimizer (its learning rate and class).
        **settings: ``door``, ``library``, ``guard_policy``, ``clipped``: override what :func:`in_force` set.
    """
    from seqstab.core.clipping import NoClip
    from seqstab.nets.recurrent import RecurrentNet

    context = {**(_IN_FORCE.get() or {}), **{k: v for k, v in settings.items() if v is not None}}
    clipped = (clipping is not None and not isinstance(clipping, NoClip)) or bool(context.pop("clipped", False))
    cell = getattr(net, "cell", None)
    if cell is None and net is not None and any(type(m) is nn.RNN for m in net.modules()):
        cell = "rnn"
    remedies = Remedies(
        recurrent_net=isinstance(net, RecurrentNet),
        cell=cell,
        lr=learning_rate(getattr(optimizer, "optimizer", optimizer)),
        optimizer_class=optimizer_path(optimizer),
        clipped=clipped,
        residual=bool(getattr(net, "residual", False)),
        layer_norm=getattr(net, "norms", None) is not None,
    )
    if context.get("door") not in (None, *DOORS):
        raise ValueError(f"remedies door {context['door']!r}: one of {', '.join(DOORS)}")
    return replace(remedies, **{k: v for k, v in context.items() if k in ("door", "library", "guard_policy")})


@contextmanager
def in_force(**settings: Any) -> Iterator[None]:
    """Within: :func:`remedies_for` takes ``door``, ``library``, ``guard_policy`` and ``clipped`` from here where its
    caller does not give them (the guard sets them around an event's diagnosis)."""
    token = _IN_FORCE.set({k: v for k, v in settings.items() if v is not None})
    try:
        yield
    finally:
        _IN_FORCE.reset(token)


def library_of(module: Any) -> str | None:
    """The top-level package of ``module``'s class where :data:`LIBRARY_KNOBS` knows it (``darts``, ...), else None."""
    top = type(module).__module__.split(".")[0]
    return top if top in LIBRARY_KNOBS else None
