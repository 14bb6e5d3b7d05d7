"""``manifest.json`` in every run directory: what ran, where, with which versions and seed.

Written by :class:`ManifestCallback` (registered by ``python -m seqstab.train``) when a run starts, next to the
``config.yaml`` LightningCLI saves: together they say how to run it again.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from seqstab.core.errors import SeqstabError
from seqstab.core.io import write_text

MANIFEST_FILE = "manifest.json"


def run_dir(trainer: pl.Trainer) -> Path | None:
    """The run directory (the logger's ``log_dir``) on rank 0 of a run with a logger; None elsewhere.

    Not ``trainer.log_dir``: that broadcasts from rank 0, a collective every rank would have to enter, and the
    callers here run on rank 0 alone."""
    if not trainer.is_global_zero or not trainer.loggers:
        return None
    log_dir = getattr(trainer.logger, "log_dir", None)
    return Path(log_dir) if log_dir else None


class ManifestCallback(pl.Callback):
    """Write ``manifest.json`` to the run directory on rank 0 when fit, validate, test or predict starts."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        directory = run_dir(trainer)
        if directory is None:
            return
        path = directory / MANIFEST_FILE
        try:
            write_text(path, json.dumps(manifest(trainer, pl_module, stage), indent=2) + "\n")
        except OSError as err:  # a full disk: one line naming the file (written atomically: no half of it stays)
            raise SeqstabError(f"{path}: cannot write it: {err.strerror or err}") from None


def manifest(trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> dict[str, Any]:
    """The manifest as a dict: versions, git commit, platform, device, threads, seed, determinism settings."""
    spec = getattr(module, "spec", None)
    device = trainer.strategy.root_device
    return {
        "stage": stage,
        "command": list(getattr(sys, "orig_argv", sys.argv)),
        "seed": _seed(),
        "versions": {
            "seqstab": _version("seqstab"),
            "torch": str(torch.__version__),
            "pytorch_lightning": pl.__version__,
            "numpy": _version("numpy"),
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        },
        "git": git_commit(),
        "platform": {
            "system": platform.platform(),
            "machine": platform.machine(),
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
        },
        "device": {
            "type": device.type,
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "accelerator": type(trainer.accelerator).__name__,
            "num_devices": trainer.num_devices,
            "world_size": trainer.world_size,
            "precision": str(trainer.precision),
        },
        "threads": {"torch": torch.get_num_threads(), "interop": torch.get_num_interop_threads()},
        "determinism": {
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        },
        "task": {
            "class_path": f"{type(module).__module__}.{type(module).__qualname__}",
            "chance_loss": getattr(spec, "chance_loss", None),
        },
    }


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _seed() -> int | None:
    seed = os.environ.get("PL_GLOBAL_SEED")  # set by seed_everything (LightningCLI's `seed_everything` key)
    return int(seed) if seed is not None else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> dict[str, Any] | None:
    """The commit of the seqstab checkout (and whether it has local changes), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}
