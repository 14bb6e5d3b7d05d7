"""Where ``python -m seqstab.train`` puts its run directories, and the clean-up that leaves none behind a failed start.

    runs/<name>/version_<n>/          a fit (the default logger: TensorBoardLogger(save_dir="runs", name="seqstab"))
    <default_root_dir>/runs/...       with --trainer.default_root_dir (a logger's own save_dir is kept)
    <run>/eval, <run>/predict         validate/test and predict write beside the run whose checkpoint they evaluate

A start that fails, in any way, removes the run directories it created (and the then empty ``runs`` and experiment
directories); one that holds a checkpoint is the user's and stays.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_LOGGER",
    "DEFAULT_SAVE_DIR",
    "EVAL_DIRS",
    "existing_runs",
    "follow_default_root_dir",
    "remove_new_runs",
    "run_of",
    "run_roots",
]

DEFAULT_LOGGER = "pytorch_lightning.loggers.TensorBoardLogger"
DEFAULT_SAVE_DIR = "runs"  # the default logger's save_dir: runs/<name>/version_<n>, under default_root_dir if set
EVAL_DIRS = {"validate": "eval", "test": "eval", "predict": "predict"}  # under the evaluated checkpoint's run


def run_of(ckpt: Path) -> Path:
    """The run directory of a checkpoint: ``<run>/checkpoints/x.ckpt`` or ``<run>/x.ckpt``."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def follow_default_root_dir(trainer: Any) -> None:
    """``trainer.default_root_dir`` moves the run directory: seqstab's default logger writes under
    ``<default_root_dir>/runs`` (Lightning's own rule would leave it in ``./runs``, ignoring the setting). A logger
    given with its own ``save_dir`` keeps it."""
    root, logger = getattr(trainer, "default_root_dir", None), getattr(trainer, "logger", None)
    init_args = getattr(logger, "init_args", None)
    if root is None or init_args is None or getattr(logger, "class_path", "") != DEFAULT_LOGGER:
        return
    if getattr(init_args, "save_dir", None) == DEFAULT_SAVE_DIR:
        init_args.save_dir = str(Path(root) / DEFAULT_SAVE_DIR)


def run_roots(args: list[str]) -> list[str]:
    """Where this command's run directories go: ``runs``, or ``<default_root_dir>/runs``."""
    roots = [DEFAULT_SAVE_DIR]
    for i, arg in enumerate(args):
        if arg.startswith("--trainer.default_root_dir"):
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else None)
            if value:
                roots.append(str(Path(value) / DEFAULT_SAVE_DIR))
    return roots


def existing_runs(root: str = DEFAULT_SAVE_DIR) -> set[Path]:
    """``runs`` itself, each experiment name under it and each run (version) directory."""
    base = Path(root)
    return {base, *base.glob("*"), *base.glob("*/*")} if base.is_dir() else set()


def remove_new_runs(before: set[Path], root: str = DEFAULT_SAVE_DIR) -> None:
    """A failed start leaves nothing behind: remove run directories this invocation created (and the then empty
    experiment and ``runs`` directories it created), unless they hold a checkpoint."""
    for path in sorted(existing_runs(root) - before, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.rglob("*.ckpt")):
            shutil.rmtree(path, ignore_errors=True)
