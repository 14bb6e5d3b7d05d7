"""The :class:`~seqstab.record.Run` of a LightningModule on a Trainer: what the stations see of a Lightning run.

Works with Trainers of both namespaces, ``pytorch_lightning`` and ``lightning.pytorch``: it reads only public
attributes of the Trainer (and, through :mod:`seqstab.internals`, the GradScaler's current scale).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seqstab import internals
from seqstab.core.recipes import flatten, init_arg_names
from seqstab.lightning.manifest import run_dir


class TrainerRun:
    """The run around a module attached to a Trainer, read live at each use.

    Args:
        module: The LightningModule being trained.
        net: Where recurrent layers and weights are looked up (the module itself if None).
        recipe: Called on a guard event: how replay rebuilds the model (see :class:`seqstab.record.Run`).
    """

    def __init__(self, module: nn.Module, net: nn.Module | None = None, recipe: Callable[[], dict] | None = None):
        self.module = module
        self.net = net if net is not None else module
        self._recipe = recipe

    @property
    def trainer(self) -> Any:
        return self.module.trainer

    @property
    def loggers(self) -> list[Any]:
        return list(self.trainer.loggers)

    @property
    def writers(self) -> list[Any]:
        """The ``SummaryWriter`` of each TensorBoard logger (other loggers' experiments are left alone)."""
        kinds = tensorboard_logger_classes()
        return [logger.experiment for logger in self.trainer.loggers if isinstance(logger, kinds)]

    @property
    def run_dir(self) -> Path | None:
        return run_dir(self.trainer)

    @property
    def is_global_zero(self) -> bool:
        return self.trainer.is_global_zero

    @property
    def global_step(self) -> int:
        return self.trainer.global_step

    @property
    def epoch(self) -> int:
        return self.trainer.current_epoch

    @property
    def log_every_n_steps(self) -> int:
        return self.trainer.log_every_n_steps

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        optimizers = self.trainer.optimizers
        return optimizers[0] if optimizers else None

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The AMP GradScaler of 16-bit mixed precision; None otherwise (bf16, 32-bit)."""
        return getattr(self.trainer.precision_plugin, "scaler", None)

    @property
    def loss_scale(self) -> torch.Tensor | None:
        scaler = self.scaler
        return internals.loss_scale(scaler) if scaler is not None else None

    @property
    def recipe(self) -> dict[str, Any] | None:
        return self._recipe() if self._recipe is not None else None


def tensorboard_logger_classes() -> tuple[type, ...]:
    """``TensorBoardLogger`` of each Lightning namespace that is imported (importing one does not import the other)."""
    from pytorch_lightning.loggers import TensorBoardLogger

    kinds: list[type] = [TensorBoardLogger]
    if "lightning.pytorch" in sys.modules:
        kinds.append(sys.modules["lightning.pytorch"].loggers.TensorBoardLogger)
    return tuple(kinds)


def hparam_values(module: Any, stations: dict[str, Any]) -> dict[str, Any]:
    """Flat ``name -> int | float | str | bool`` of the run for TensorBoard's HPARAMS tab: the module's
    hyperparameters, the data, the stations' settings, the optimizer and the Trainer's limits."""
    values: dict[str, Any] = {"task": type(module).__name__}
    for key, value in module.hparams.items():
        if not key.startswith("_"):  # LightningCLI's _class_path, _instantiator
            _flatten(values, key, asdict(value) if is_dataclass(value) else value)
    trainer = module.trainer
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        values["data"] = type(datamodule).__name__
        for key, value in getattr(datamodule, "hparams", {}).items():
            _flatten(values, f"data.{key}", value)
    for name, station in stations.items():
        values[name] = type(station).__name__ if station is not None else "None"
        for key in init_arg_names(station) if station is not None else ():
            _flatten(values, f"{name}.{key}", getattr(station, key))
    if trainer.optimizers:
        optimizer = trainer.optimizers[0]
        values["optimizer"] = type(optimizer).__name__
        values["lr"] = optimizer.param_groups[0]["lr"]
    values["max_epochs"] = trainer.max_epochs if trainer.max_epochs is not None else -1
    values["max_steps"] = trainer.max_steps
    values["precision"] = str(trainer.precision)
    return values


def _flatten(out: dict[str, Any], key: str, value: Any) -> None:
    """``value`` under ``key`` as flat plain values (HPARAMS takes no others): a recipe as its class's name, then its
    arguments (``net`` = ``RecurrentNet``, ``net.hidden_size`` = 64); anything not plain as its ``str``."""
    for name, leaf in flatten({key: value}).items():
        if name.endswith(".class_path"):
            name, leaf = name.removesuffix(".class_path"), str(leaf).rpartition(".")[2]
        out[name] = leaf if isinstance(leaf, bool | int | float | str) else str(leaf)
