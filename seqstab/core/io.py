"""Checkpoints that survive a kill, load without running pickle code, and resume exactly where the run stopped.

What makes a resume bitwise exact, and where each piece lives::

    model, optimizer, LR scheduler, loop counters    Lightning's checkpoint
    clipping-policy state, guard state, updates      UpdateCore.state_dict    -> checkpoint["seqstab"]
    carried hidden state of stateful streams, RNGs   seqstab.resume.ExactResume -> checkpoint["seqstab"]["ranks"][r]
    position within the epoch (+ the RNG state its   ResumableLoader.state_dict  -> checkpoint["loops"] (Lightning
      batch order was drawn from)                                                   stores stateful loaders there)

This module holds the pieces that need no Lightning: atomic writes (:func:`atomic_file`, and :func:`save`,
:func:`write_text` through it), the safe loader (:func:`load`), the one RNG-state capture (:func:`rng_state`), the
shape check and the free-memory reader (:func:`available_memory`). The Lightning side (``AtomicCheckpointIO``, the
resume callback) is :mod:`seqstab.resume`.

* :func:`save` writes to a temporary file in the target's directory, fsyncs it and ``os.replace``-s it over the
  target: a kill during a save leaves the previous file whole. :func:`load` is ``torch.load(weights_only=True)``
  and turns a truncated, corrupt or code-carrying file into one :class:`CheckpointError` line.
* :class:`ResumableLoader` is a ``DataLoader`` that knows how many batches of the current epoch it has handed out.
  Lightning 2.6 keeps the state of such a loader in the checkpoint and hands it back on resume (its ``_Stateful``
  protocol); a plain ``DataLoader`` would restart the epoch's batch order from the top while Lightning's counters
  continue mid-epoch. :func:`make_resumable` turns a plain ``DataLoader`` into one without copying it.
"""

from __future__ import annotations

import glob
import os
import pickle
import random
import re
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from seqstab.core.errors import SeqstabError

__all__ = [
    "CheckpointError",
    "atomic_file",
    "available_memory",
    "check_shapes",
    "load",
    "rng_state",
    "save",
    "set_rng_state",
    "write_text",
]


class CheckpointError(SeqstabError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, holding code, or made for another model."""


# -- files ------------------------------------------------------------------------------------------------------


def save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically: a temporary file beside it, fsync, then ``os.replace``.

    Readers see the old file or the new one, never a part; a kill mid-write leaves at most a hidden
    ``.<name>.*.part`` file behind.
    """
    with atomic_file(path) as f:
        torch.save(obj, f)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`save` does."""
    with atomic_file(path) as f:
        f.write(text.encode())


@contextmanager
def atomic_file(path: str | os.PathLike, sweep: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temporary ``.<name>.*.part`` file beside it that gets ``path``'s
    name (fsynced, then ``os.replace``) only when the ``with`` block ends without an exception; on an exception it is
    removed and ``path`` is untouched. The file gets the mode a plain ``open`` would give it (``0o666`` less the
    umask, not ``mkstemp``'s ``0o600``). The one atomic writer of seqstab: checkpoints, snapshots, text files, token
    caches, downloads.

    Args:
        path: The file to write.
        sweep: After the rename, remove the ``.part`` files a killed write of ``path`` left. False where several
            processes may write ``path`` at once (a cache every rank fills, a download): one would remove another's
            file while it is being written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    if sweep:
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.part"):  # from a write that was killed
            leftover.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get: Linux ``MemAvailable``, or what a container's memory limit (cgroup
    v2) leaves when that is less; None where neither can be read. The page cache the kernel can drop counts as
    free in both."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
            used = int((cgroup / "memory.current").read_text()) - int(stat.get("inactive_file", 0))
            left = max(int(limit) - used, 0)
            free = left if free is None else min(free, left)
    except (OSError, ValueError):
        pass
    return free


def load(path: str | os.PathLike, map_location: Any = "cpu", kind: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, never pickled code. The one safe loader
    of seqstab: checkpoints, replay snapshots, token caches.

    Raises:
        CheckpointError: one line naming the file and what is wrong with it (the refused global, if that is it; never
            the advice to load with ``weights_only=False``).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such {kind} file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a {kind} file") from None
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err) or "Unsupported operand" in str(err):  # not a pickle at all
            raise CheckpointError(f"{path}: not a readable {kind} (truncated or corrupt?): {_first(err)}") from None
        found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)", _plain_text(str(err)))
        what = f"it holds a {found.group(1)} object" if found else "it holds objects other than tensors and plain data"
        raise CheckpointError(f"{path}: refused to load: {what} ({kind}s load with weights_only=True)") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError, IndexError, struct.error) as err:
        raise CheckpointError(f"{path}: not a readable {kind} (truncated or corrupt?): {_first(err)}") from None


def _first(err: BaseException) -> str:
    """The first sentence of an error (terminal escapes removed), or its type when it has no message."""
    text = _plain_text(str(err)).strip()
    return text.split(". ")[0].splitlines()[0][:120] if text else type(err).__name__


def _plain_text(text: str) -> str:
    """``text`` without ANSI terminal escapes (torch colours parts of its unpickling errors)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


# -- random number generators -----------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every global RNG state (torch, CUDA, numpy, Python) as tensors and plain data (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos},
        "numpy_gauss": (has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA only where the device count matches)."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# -- model shape ------------------------------------------------------------------------------------------------


def check_shapes(model_state: dict[str, torch.Tensor], saved_state: dict[str, torch.Tensor], path: str = "") -> None:
    """Raise :class:`CheckpointError` naming the first parameter whose shape (or presence) differs."""
    where = f"{path}: " if path else "checkpoint: "
    for name, tensor in model_state.items():
        if name not in saved_state:
            raise CheckpointError(f"{where}made for another model: it has no {name!r} (this model does)")
        saved = saved_state[name]
        if tuple(saved.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{where}made for another model shape: {name} is {tuple(saved.shape)} in the checkpoint, "
                f"{tuple(tensor.shape)} in this model"
            )
    extra = sorted(set(saved_state) - set(model_state))
    if extra:
        raise CheckpointError(f"{where}made for another model: it has {extra[0]!r}, which this model does not")
