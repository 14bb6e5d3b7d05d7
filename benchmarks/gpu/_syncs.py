"""Counting host synchronisations during a fit, by phase and call site: ``benchmarks/gpu/sync_check.py``'s instrument.

On CUDA, :class:`CudaSyncs` runs the block under ``torch.cuda.set_sync_debug_mode("warn")`` and catches each warning
with its Python stack. On the CPU, :class:`HostReads` counts device→host reads of what the training computed, with
``tests/host_reads.py``'s ``DeviceReads`` (it does not see blocking host→device copies of new tensors). Each sync is
kept with its phase (``startup``, ``loop``, ``flush``, ``teardown``: :class:`Phases` and :func:`counted_flushes` move it
along a fit), its call site and the update count at that moment.
"""

from __future__ import annotations

import contextlib
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import _repo
import pytorch_lightning as pl
import torch

from seqstab.core.update import UpdateCore
from tests.host_reads import DeviceReads


def frame_site(frame: traceback.FrameSummary) -> str:
    """``path:line function``, the path relative to the checkout or to site-packages."""
    path = Path(frame.filename)
    try:
        where = str(path.resolve().relative_to(_repo.REPO))
    except ValueError:
        where = frame.filename.split("site-packages/", 1)[-1]
    return f"{where}:{frame.lineno} {frame.name}"


# the counting machinery (on the CPU: a dispatch mode and the wrappers around it)
SKIP_FRAMES = ("/warnings.py", "/host_reads.py", "/torch/utils/_python_dispatch.py", "/torch/_tensor.py",
               "/torch/_dynamo/eval_frame.py", "/torch/_compile.py")  # fmt: skip


def call_sites(stack: list[traceback.FrameSummary]) -> tuple[str, str]:
    """The innermost frame that is not the counting machinery, and the nearest frame of seqstab (else of Lightning,
    else of this script) that led to it."""
    frames = [f for f in stack if not any(s in f.filename for s in SKIP_FRAMES)]
    if not frames:
        return "?", "-"
    inner = frames[-1]
    for marks in (("/seqstab/",), ("/pytorch_lightning/", "/lightning/"), ("/sync_check.py",)):
        for f in reversed(frames):
            site = frame_site(f)
            if any(m in "/" + site for m in marks) and f is not inner:
                return frame_site(inner), site
    return frame_site(inner), "-"


class Syncs:
    """Every synchronisation within the block, each with its phase, call site and the update count at that moment.
    Subclasses: :class:`CudaSyncs` (a GPU) and :class:`HostReads` (the CPU)."""

    what = ""

    def __init__(self) -> None:
        self.phase = "startup"
        self.updates: Callable[[], int | None] = lambda: None
        self.syncs: list[dict] = []
        self.flushes: list[dict] = []  # each non-empty UpdateCore.flush: its syncs, the events it settled
        self.empty_flushes = 0

    def note(self, stack: list[traceback.FrameSummary]) -> None:
        inner, caller = call_sites(stack)
        self.syncs.append({"phase": self.phase, "site": inner, "caller": caller, "update": self.updates()})

    def on_device(self, *objects) -> None:
        """Mark objects as on the device (the CPU's counting needs it; a GPU knows)."""

    def count(self, phase: str | None = None) -> int:
        return sum(1 for s in self.syncs if phase is None or s["phase"] == phase)

    def sites(self, phase: str | None = None) -> dict[str, int]:
        found = Counter(f"{s['site']} <- {s['caller']}" for s in self.syncs if phase in (None, s["phase"]))
        return dict(found.most_common())


class CudaSyncs(Syncs):
    """``torch.cuda.set_sync_debug_mode("warn")``; each warning it raises caught with its Python stack."""

    what = "CUDA synchronisations (torch.cuda.set_sync_debug_mode('warn'), each warning with its stack)"

    def _hook(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" in str(message):
            self.note(traceback.extract_stack()[:-1])

    def __enter__(self):
        torch.cuda.synchronize()
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._hook
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)
        return False


class HostReads(Syncs):
    """The CPU: device→host reads of what the training computed (``tests/host_reads.py``)."""

    what = (
        "CPU: device->host reads counted by tests/host_reads.py (blocking host->device copies of new tensors are not "
        "seen: those counts need CUDA)"
    )

    def __init__(self) -> None:
        super().__init__()
        outer = self

        class Reads(DeviceReads):
            def _read(self, what: str) -> None:
                outer.note(traceback.extract_stack()[:-1])

        self.reads = Reads()

    def on_device(self, *objects) -> None:
        self.reads.on_device(*objects)

    def __enter__(self):
        self.reads.__enter__()
        return self

    def __exit__(self, *exc):
        return self.reads.__exit__(*exc)


def counter(device: str) -> Syncs:
    return CudaSyncs() if device == "cuda" else HostReads()


class Phases(pl.Callback):
    """Moves the counter's phase along the fit; marks each batch as on the device (the CPU's counting)."""

    def __init__(self, syncs: Syncs):
        self.syncs = syncs

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.syncs.phase = "loop"
        self.syncs.on_device(batch)

    def on_train_end(self, trainer, pl_module):
        self.syncs.phase = "teardown"


@contextlib.contextmanager
def counted_flushes(syncs: Syncs):
    """``UpdateCore.flush`` wrapped: its syncs are labelled ``flush``; each non-empty one is recorded."""
    flush = UpdateCore.flush

    def counted(core: UpdateCore, run):
        phase, before = syncs.phase, len(syncs.syncs)
        events = core.guard.events if core.guard is not None else 0
        syncs.phase = "flush"
        try:
            out = flush(core, run)
        finally:
            syncs.phase = phase
        inside = len(syncs.syncs) - before
        if out:
            settled = (core.guard.events if core.guard is not None else 0) - events
            syncs.flushes.append({"after_update": out[-1].step, "updates": len(out), "syncs": inside,
                                  "events": settled})  # fmt: skip
        else:
            syncs.empty_flushes += 1
            if inside:  # an empty flush must not synchronise at all
                syncs.flushes.append({"after_update": None, "updates": 0, "syncs": inside, "events": 0})
        return out

    UpdateCore.flush = counted
    try:
        yield
    finally:
        UpdateCore.flush = flush
