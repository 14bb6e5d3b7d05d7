"""How ``python -m seqstab.replay`` rebuilds a snapshot's update: the model (from its class path and hyperparameters,
or from a factory you name), the batch and hidden state it trained on (unpacked), the RNG state before its forward
pass, and the loss computed as training computed it (``chunk_loss`` of a task, ``training_step`` of a
LightningModule attached to a Trainer that fits nothing, or a loop's own loss function)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from seqstab.core import io as checkpoint
from seqstab.core.errors import ConfigError
from seqstab.core.io import CheckpointError
from seqstab.core.plain import PACKED, unpack
from seqstab.core.recipes import resolve

__all__ = ["callable_at", "from_factory", "inputs_of", "loss_of", "rebuild_model", "run_rng", "source_of"]


def source_of(snapshot: dict[str, Any]) -> str:
    """Where the snapshot's update came from: ``task``, ``module`` or ``loop`` (snapshots before ``source`` have
    ``kind``, and those before that were all tasks')."""
    source = snapshot.get("source") or snapshot.get("kind") or "task"
    return source if source in ("task", "module", "loop") else "task"


def rebuild_model(snapshot: dict[str, Any], what: str = "snapshot") -> torch.nn.Module:
    """The model of the snapshot, built from its class path and hyperparameters, with its weights loaded (``what``:
    the file, for messages)."""
    from seqstab.data.module import as_spec  # (Lightning, imported only when a model is rebuilt)
    from seqstab.tasks import SeqTask

    class_path = snapshot["task_class"]
    hparams = snapshot.get("hparams")
    source = source_of(snapshot)
    if source == "loop":
        raise ConfigError(
            f"{what} model {class_path}: trained by a loop of its own, it has no hyperparameters to rebuild it from: "
            "name a factory that builds it and the loss (--module PKG.FUNC --loss PKG.FUNC)"
        )
    if not isinstance(hparams, dict):
        raise ConfigError(
            f"{what} model {class_path}: it saved no hyperparameters as plain values to rebuild it from: name a "
            "factory that builds it (--module PKG.FUNC)"
        )
    task = source == "task"
    base = SeqTask if task else _lightning_modules()
    cls = resolve(class_path, base, f"{what} model")
    hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}  # LightningCLI's _class_path, _instantiator
    try:
        if task:
            hparams["spec"] = as_spec(hparams.get("spec"))
        model = cls(**hparams)
    except TypeError as err:
        raise ConfigError(f"{what} model {class_path}: cannot rebuild it from its hyperparameters ({err})") from None
    model.load_state_dict(snapshot["state_dict"])
    return model


@contextmanager
def _in_training(model: nn.Module):
    """Within: a LightningModule as its ``training_step`` sees it during fit, attached to a Trainer of its namespace
    in the training stage (a Trainer that fits nothing: no logger, no checkpoints, CPU), its ``log`` and
    ``log_dict`` doing nothing (modules that read the Trainer's stage, as pytorch-forecasting's do, work)."""
    import logging

    import pytorch_lightning as pl

    namespace = pl
    if "lightning.pytorch" in sys.modules and isinstance(model, sys.modules["lightning.pytorch"].LightningModule):
        namespace = sys.modules["lightning.pytorch"]
    quiet = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)  # the Trainer's notes on GPUs and TPUs
    try:
        trainer = namespace.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    trainer.training = True
    model.trainer = trainer
    model.log = model.log_dict = _nothing  # what training_step logs is not replay's business
    try:
        yield
    finally:
        del model.log, model.log_dict
        model.trainer = None


def _nothing(*args: Any, **kwargs: Any) -> None:
    pass


def _lightning_modules() -> tuple[type, ...]:
    """LightningModule of each namespace that is installed (a callback snapshot may come from either)."""
    import pytorch_lightning as pl

    kinds: list[type] = [pl.LightningModule]
    try:
        import lightning.pytorch as L

        kinds.append(L.LightningModule)
    except ImportError:
        pass
    return tuple(kinds)


def inputs_of(snapshot: dict[str, Any]) -> tuple[Any, Any]:
    """``(chunk, hidden_in)`` as training passed them: unpacked (classes as :func:`check_trusted` allowed them), or
    as a snapshot from before packing stored them."""
    return _unpacked(snapshot.get("chunk")), _unpacked(snapshot.get("hidden_in"))


def _unpacked(value: Any) -> Any:
    if isinstance(value, dict) and value.get("format") == PACKED:
        return unpack(value, _import_class)
    return value


def _import_class(path: str) -> type:
    """The class at ``path`` (already allowed by :func:`check_trusted`)."""
    module_name, _, attr = path.rpartition(".")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"snapshot batch class {path!r}: cannot import it ({err})") from None
    if not isinstance(obj, type):
        raise ConfigError(f"snapshot batch class {path!r}: not a class")
    return obj


def callable_at(path: str, flag: str) -> Callable:
    """The callable at a dotted path the user named (``mypkg.build_model``; ``mypkg:build_model`` also reads)."""
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    if not module_name or not all(part.isidentifier() for part in path.replace(":", ".").split(".")):
        raise ConfigError(f"{flag} {path!r}: not a dotted path to a callable (PKG.FUNC)")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except ImportError as err:
        raise ConfigError(f"{flag} {path!r}: cannot import {module_name} ({err})") from None
    except AttributeError:
        raise ConfigError(f"{flag} {path!r}: {module_name} has no {attr}") from None
    if not callable(obj):
        raise ConfigError(f"{flag} {path!r}: not callable")
    return obj


def from_factory(factory: nn.Module | Callable[[], nn.Module], snapshot: dict[str, Any], name: str) -> nn.Module:
    """The factory's module with the snapshot's weights; a module that does not fit them is a one-line error."""
    what = getattr(factory, "__qualname__", type(factory).__name__)
    model = factory if isinstance(factory, nn.Module) else factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{name}: the factory {what} returned a {type(model).__name__}, not a torch nn.Module")
    try:
        checkpoint.check_shapes(model.state_dict(), snapshot["state_dict"])
    except CheckpointError as err:
        raise ConfigError(f"{name}: the factory's module does not fit the snapshot's weights: {err}") from None
    model.load_state_dict(snapshot["state_dict"])
    return model


@contextmanager
def run_rng(state: dict[str, Any]):
    """Inside: a function that sets the RNG states the run had before its forward pass (torch, numpy, Python's:
    dropout masks and sampled windows); after: the caller's states back."""
    from seqstab.core.io import rng_state, set_rng_state

    mine = rng_state()

    def to_run() -> None:
        if "numpy" in state and "python" in state:
            set_rng_state({**state, "cuda": None})
        elif "torch" in state:
            torch.set_rng_state(state["torch"])

    try:
        yield to_run
    finally:
        set_rng_state({**mine, "cuda": None})


def loss_of(model: nn.Module, snapshot: dict[str, Any], chunk: Any, hidden_in: Any, loss_fn: Callable | None):
    """The training loss of the snapshot's update, computed as training computed it."""
    source = source_of(snapshot)
    if loss_fn is not None:
        loss = loss_fn(model, chunk)
    elif source == "task":
        return model.chunk_loss(chunk, hidden_in)[0]
    elif not hasattr(model, "training_step"):
        raise ConfigError(
            f"snapshot model {snapshot['task_class']}: a plain module has no training_step: name the loss of a "
            "batch (--loss PKG.FUNC, called as FUNC(module, batch))"
        )
    else:
        with _in_training(model):
            out = model.training_step(chunk, snapshot.get("batch_idx") or 0)
        loss = out["loss"] if isinstance(out, dict) else out
    if not isinstance(loss, torch.Tensor):
        what = "the loss function" if loss_fn is not None else "training_step"
        raise ConfigError(f"snapshot model {snapshot['task_class']}: {what} returned no loss tensor")
    return loss
