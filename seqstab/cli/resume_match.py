"""Which checkpoint resumes this experiment, and refusing one that does not: ``--ckpt_path last`` and ``FILE``.

A resumed run continues its checkpoint's experiment: the weights, the optimizer's state (its learning rate and
moments), the scheduler's, the clipping policy's and the loader's position come from the checkpoint. A setting of
the experiment (``model``, ``data``, ``optimizer``, ``lr_scheduler``) given differently beside ``--ckpt_path`` would
be ignored (the optimizer's lr lives in its saved state) or half-applied (a new batch size under a saved position
in the epoch), and ``config.yaml`` would record a run that never happened. So both forms refuse it, naming the key,
its value in the checkpoint and here:

    --ckpt_path last    the newest checkpoint of this experiment (by the ``config.yaml`` of each run directory);
                        when there are checkpoints and none is of this experiment, the newest is named
    --ckpt_path FILE    (fit) compared with the ``config.yaml`` of its run directory; without one (a copied file),
                        with what the checkpoint holds: the model's hyperparameters, the optimizer's and the
                        scheduler's settings in their saved state

``trainer`` settings (more steps, another logger) and what changes no update (``data.num_workers``,
``data.predict_split``) may differ.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from seqstab import _aliases
from seqstab.cli.run_dirs import run_of
from seqstab.core.io import CheckpointError
from seqstab.core.recipes import flatten

__all__ = ["EXPERIMENT_KEYS", "NOT_EXPERIMENT", "check_resumes_experiment", "find_last"]

EXPERIMENT_KEYS = ("model", "data", "optimizer", "lr_scheduler")  # what makes two runs one experiment
# ...except what changes no update's numbers (each key with everything under it): the data's predict split and worker
# count; what only watches and writes (the monitor; the guard's snapshot, diagnosis, spike score and vanishing
# watch); when the guard ends a run that skips too much (max_consecutive_skips: a run made before its default of 50
# resumes under it)
NOT_EXPERIMENT = {"data.predict_split", "data.num_workers", "model.monitor"}
NOT_EXPERIMENT |= {f"model.guard.{key}" for key in ("snapshot", "diagnose", "log_spike_score", "vanishing")}
NOT_EXPERIMENT |= {"model.guard.max_consecutive_skips"}
OPTIMIZER_STATE_SKIP = {"params", "initial_lr"}  # a param group's keys that are not the optimizer's settings
SCHEDULER_STATE_SKIP = {"base_lrs", "last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step"}
Difference = tuple[str, Any, Any]  # (key, value in the checkpoint, value here)


def find_last(trainer, experiment: dict | None = None) -> Path | None:
    """The checkpoint ``--ckpt_path last`` means: the newest ``last*.ckpt`` of this experiment, else its newest
    ``*.ckpt`` (searched in every version directory under the logger's root, which Lightning does not, and in any
    ``ModelCheckpoint(dirpath=...)``). With ``experiment`` (this command's resolved config), only checkpoints whose
    run directory's ``config.yaml`` has the same model, data, optimizer and scheduler count; when there are
    checkpoints but none of them does, :class:`CheckpointError` names the newest and the first key that differs."""
    dirs = []
    for logger in trainer.loggers[:1]:
        if getattr(logger, "root_dir", None):
            dirs += Path(logger.root_dir).glob("*/checkpoints")
    dirs += [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    near_miss: tuple[Path, str] | None = None
    for pattern in ("last*.ckpt", "*.ckpt"):
        found = [p for d in dict.fromkeys(dirs) if d.is_dir() for p in d.glob(pattern) if p.is_file()]
        for path in sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True):
            differs = None if experiment is None else _run_differs(experiment, path)
            if differs is None:
                return path
            near_miss = near_miss or (path, differs)
    if near_miss is not None:
        path, differs = near_miss
        raise CheckpointError(
            f"--ckpt_path last: no checkpoint of this experiment; the newest, {path}, is of a run whose {differs} "
            "(to resume it, give its path without the changed setting; without --ckpt_path, a new run starts)"
        )
    return None


def check_resumes_experiment(experiment: dict, path: Path, saved: dict[str, Any]) -> None:
    """Refuse ``fit --ckpt_path FILE`` with an experiment setting that differs from the checkpoint's (see the module).

    ``saved`` is the loaded checkpoint (its ``hyper_parameters``, ``optimizer_states``, ``lr_schedulers``)."""
    config = run_of(path) / "config.yaml"
    theirs = _read_config(config)
    if theirs is not None:
        difference, source = _first_difference(experiment, theirs), f"its run's {config}"
    else:
        difference, source = _state_difference(experiment, saved), "the checkpoint's saved state"
    if difference is not None:
        key, in_checkpoint, here = difference
        raise CheckpointError(
            f"--ckpt_path {path}: {key} is {in_checkpoint!r} in the checkpoint ({source}) but {here!r} here; a "
            "resumed run continues the checkpoint's experiment, so the change would not apply: drop it to resume, "
            "or start a new run without --ckpt_path"
        )


def _run_differs(experiment: dict, path: Path) -> str | None:
    """The first experiment key in which the run that saved ``path`` differs from ``experiment``; None if none."""
    config = run_of(path) / "config.yaml"
    theirs = _read_config(config)
    if theirs is None:
        return f"config.yaml is missing or unreadable ({config})"
    difference = _first_difference(experiment, theirs)
    if difference is None:
        return None
    key, in_checkpoint, here = difference
    return f"{key} is {in_checkpoint!r} (here {here!r})"


def _read_config(path: Path) -> dict | None:
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return saved if isinstance(saved, dict) else None


def _first_difference(experiment: dict, saved: dict) -> Difference | None:
    mine, theirs = _canonical(flatten(experiment)), _canonical(flatten(saved))
    for key in sorted(set(mine) | set(theirs)):
        if _is_experiment(key) and _plain(mine.get(key)) != _plain(theirs.get(key)):
            return key, theirs.get(key), mine.get(key)
    return None


def _state_difference(experiment: dict, saved: dict[str, Any]) -> Difference | None:
    """The first experiment setting that differs from what a checkpoint without its ``config.yaml`` holds: the
    model's hyperparameters, the optimizer's settings in its param groups, the scheduler's in its state."""
    mine = _canonical(flatten(experiment))
    theirs: dict[str, Any] = {}
    hparams = saved.get("hyper_parameters") or {}
    if isinstance(hparams, dict):
        theirs.update({f"model.{k}": v for k, v in flatten(hparams).items() if not k.startswith("spec.")})
        if hparams.get("_class_path"):
            theirs["model.class_path"] = hparams["_class_path"]
    groups = [s.get("param_groups") or [{}] for s in saved.get("optimizer_states") or [] if isinstance(s, dict)]
    if groups:
        group = groups[0][0]
        theirs.update({f"optimizer.{k}": v for k, v in group.items() if k not in OPTIMIZER_STATE_SKIP})
        if "initial_lr" in group:  # under a scheduler: the rate it started from is the configured one
            theirs["optimizer.lr"] = group["initial_lr"]
    schedulers = [s for s in saved.get("lr_schedulers") or [] if isinstance(s, dict)]
    if schedulers:
        theirs.update({f"lr_scheduler.{k}": v for k, v in schedulers[0].items() if k not in SCHEDULER_STATE_SKIP})
    theirs = _canonical(theirs)
    for key in sorted(set(mine) & set(theirs)):  # what the checkpoint does not hold cannot be compared
        if _is_experiment(key) and _plain(mine[key]) != _plain(theirs[key]):
            return key, theirs[key], mine[key]
    return None


def _is_experiment(key: str) -> bool:
    return key.split(".")[0] in EXPERIMENT_KEYS and not any(
        key == other or key.startswith(f"{other}.") for other in NOT_EXPERIMENT
    )


def _plain(value: Any) -> Any:
    """Lists and tuples alike (YAML has no tuple: ``betas`` is a list in config.yaml, a tuple in the state)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _canonical(flat: dict[str, Any]) -> dict[str, Any]:
    """Each class path as the class's own (``seqstab.clipping.NormClip``, a path from before the layout change, and
    ``seqstab.NormClip``, the public surface's, both name ``seqstab.core.clipping.NormClip``): runs that name one
    class by two paths are the same experiment."""
    return {key: _class_of(value) if key.endswith("class_path") else value for key, value in flat.items()}


def _class_of(path: Any) -> Any:
    if not isinstance(path, str):
        return path
    module, _, name = _aliases.canonical(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return path
    return f"{cls.__module__}.{cls.__qualname__}"
