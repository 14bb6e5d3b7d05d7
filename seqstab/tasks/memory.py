"""Refuse, before allocating anything, a model that cannot fit in the memory free here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from seqstab.core.errors import ConfigError
from seqstab.nets.recurrent import sizing_only


def check_fits_memory(name: str, build: Callable[[], list[nn.Module]]) -> None:
    """Refuse, before allocating anything, a model whose weights and gradients exceed the free memory: its modules
    are built on the ``meta`` device (no storage, no initialisation, the RNG untouched) and their parameters counted.
    Nothing is checked where that build fails or the free memory cannot be read."""
    available = available_memory()
    if available is None:
        return
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"), sizing_only():
            modules = build()
    except Exception:  # a net that needs real values to be built: allocate as usual
        return
    count = sum(p.numel() for m in modules for p in m.parameters())
    needed = 2 * sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    if needed > available:
        raise ConfigError(
            f"model {name}: {count:.3g} parameters need {needed / 2**30:.3g} GiB for weights and gradients alone, "
            f"more than the {available / 2**30:.3g} GiB of memory free here (lower net.hidden_size or num_layers)"
        )


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation (Linux ``MemAvailable``); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
