"""The bench's helper callbacks, importable by name (darts pickles the callbacks it is given): one noting the
Trainer that fits, one planting a spike, and the stability callback with its hooks timed."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as L
import pytorch_lightning as pl
import torch

from seqstab.lightning.callbacks import GradientStability

TRAINERS: list[Any] = []  # every Trainer a fit ran with (libraries copy callbacks: the live ones are its)
HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_before_optimizer_step",
    "_after_step",
    "on_validation_start",
    "on_save_checkpoint",
)


class _Recorder:
    def on_fit_start(self, trainer, pl_module):
        TRAINERS.append(trainer)


class PLRecorder(_Recorder, pl.Callback):
    """Notes the (``pytorch_lightning``) Trainer that fits."""


class LRecorder(_Recorder, L.Callback):
    """Notes the (``lightning.pytorch``) Trainer that fits."""


def scale_darts(batch) -> None:
    """Every floating-point tensor of darts' ``TorchTrainingBatch`` ×10^4 (past and future target)."""
    for name in ("past_target", "future_target", "past_covariates", "future_covariates"):
        value = getattr(batch, name)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            setattr(batch, name, value * 1e4)


def scale_pf(batch, keep_scale: bool = False) -> None:
    """Every floating-point tensor of pytorch-forecasting's ``(x, (y, weight))`` ×10^4: x's encoder and decoder
    inputs and targets, its ``target_scale`` (unless ``keep_scale``), and y."""
    x, (y, weight) = batch
    for key, value in x.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not (keep_scale and key == "target_scale"):
            x[key] = value * 1e4
    y.mul_(1e4)


def scale_pf_deepar(batch) -> None:
    """As :func:`scale_pf` but the ``target_scale`` the dataset's normaliser fitted: DeepAR divides by it, so scaling
    it too would leave the model's normalised view of the batch unchanged."""
    scale_pf(batch, keep_scale=True)


def scale_nf(batch) -> None:
    """The target on alternate days ×10^4 (the batch is the whole series; its windows are robust-scaled one by
    one, which would undo a factor applied to all of it)."""
    temporal = batch["temporal"].clone()  # (1, channels, T)
    days = (torch.arange(temporal.shape[-1]) // 24) % 2 == 1
    temporal[:, batch["y_idx"], days] *= 1e4
    batch["temporal"] = temporal


PLANTS = {"darts": scale_darts, "pf_rnn": scale_pf, "pf_deepar": scale_pf_deepar, "nf": scale_nf}


class _Planter:
    """Plants a spike before the forward pass of update ``at`` (put before the stability callback in the list: what
    it plants is what the update trains on)."""

    def __init__(self, at: int, library: str):
        self.at, self.library, self.seen = at, library, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen == self.at:
            PLANTS[self.library](batch)
        self.seen += 1


class PLPlanter(_Planter, pl.Callback):
    pass


class LPlanter(_Planter, L.Callback):
    pass


CLOCK = time.thread_time  # CPU time of this thread: what the hooks cost, whoever else shares the machine


def _timed(name: str):
    def hook(self, *args, **kwargs):
        start = CLOCK()
        try:
            return getattr(GradientStability, name)(self, *args, **kwargs)
        finally:
            self.seconds.setdefault(name, []).append(CLOCK() - start)

    hook.__name__ = name
    return hook


def _station(owner: Any, attr: str, seconds: dict, label: str, core: Any, warmup: int) -> None:
    """Time ``owner.attr`` (a bound method) into ``seconds[label]``, summed over the updates from ``warmup`` on."""
    original = getattr(owner, attr)

    def timed(*args, **kwargs):
        start = CLOCK()
        try:
            return original(*args, **kwargs)
        finally:
            if core.updates > warmup:
                seconds[label] = seconds.get(label, 0.0) + CLOCK() - start

    setattr(owner, attr, timed)


class TimedStability(GradientStability):
    """``GradientStability`` with each per-update hook timed (thread CPU time) into ``self.seconds``, each step's end
    stamped (wall clock), and the update core's stations timed into ``self.stations`` (summed)."""

    warmup = 20  # updates left out of the stations' sums (the bench sets it)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds: dict[str, list[float]] = {}
        self.stations: dict[str, float] = {}

    def on_fit_start(self, trainer, pl_module):
        super().on_fit_start(trainer, pl_module)
        core, w = self.core, self.warmup
        _station(core, "flush", self.stations, "flush (read-back, events, logging)", core, w)
        if core.monitor is not None:
            _station(core.monitor, "step_tensors", self.stations, "monitor", core, w)
        _station(core.clipping, "clip", self.stations, "clipping", core, w)
        if core.guard is not None:
            _station(core.guard, "decide", self.stations, "guard decide", core, w)
            _station(core.guard, "keep", self.stations, "guard keep (snapshot copy)", core, w)
            _station(core.guard, "arm", self.stations, "guard arm (RNG state)", core, w)
            _station(core.guard, "after_step", self.stations, "guard after_step", core, w)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        start = CLOCK()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.seconds.setdefault("on_train_batch_end", []).append(CLOCK() - start)
        self.seconds.setdefault("step_ends", []).append(time.perf_counter())


for _name in HOOKS:
    if hasattr(GradientStability, _name):
        setattr(TimedStability, _name, _timed(_name))


try:  # the bench's own callbacks, like any a user adds, go into darts' pickled model: allowed for its safe load
    from darts.utils.serialization import add_safe_globals

    add_safe_globals([PLRecorder, PLPlanter])
except ImportError:
    pass
