"""Where the stations' output goes: every logger of a :class:`~seqstab.core.record.Run` (numbers), and for what is
not a number (images, text, histograms) each logger that can take it — TensorBoard writers, MLflow, W&B. The one
fan-out: the update core, the monitor, the guard and the tasks' evaluation all write through here."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import struct
import time
import weakref
from pathlib import Path
from typing import Any

import google_crc32c

from seqstab import internals
from seqstab.core.record import Run

__all__ = ["ScalarEvents", "add_histogram", "add_image", "add_text", "flush", "log_metrics", "writes"]


def writes(run: Run) -> bool:
    """Whether anything measured would be written: a logger is attached and this is rank zero."""
    return bool(run.loggers) and run.is_global_zero


def log_metrics(run: Run, metrics: dict[str, float], step: int, flushed: bool = True) -> None:
    """Write ``metrics`` at ``step`` to every logger of the run (``flushed``: readable at once; the update core
    writes a flush's updates with False, then calls :func:`flush` once).

    A TensorBoard logger's scalars go into an event file of seqstab's own beside the logger's (TensorBoard reads
    every ``events.out.tfevents.*`` file of a run directory as one run): one event per step with every tag, written
    on this thread and flushed at each :func:`flush` (:class:`ScalarEvents`). The logger's own writer would queue one
    event per tag for its writer thread, and the two threads' fight for the GIL costs more than the writing."""
    for logger in run.loggers:
        if run.is_global_zero and _is(logger, "TensorBoardLogger") and not internals.logger_prefix(logger):
            events = ScalarEvents.of(logger)
            events.write(metrics, step)
            if flushed:
                events.flush()
        else:
            logger.log_metrics(metrics, step=step)


def flush(run: Run) -> None:
    """Make what :func:`log_metrics` wrote readable (seqstab's event files flushed to the disk)."""
    for logger in run.loggers:
        events = ScalarEvents.open.get(logger)
        if events is not None:
            events.flush()


class ScalarEvents:
    """A TensorBoard event file in a logger's directory that this thread writes scalars into directly."""

    open: weakref.WeakKeyDictionary[Any, ScalarEvents] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, logger: Any) -> ScalarEvents:
        events = cls.open.get(logger)
        if events is None:
            events = cls.open[logger] = cls(Path(logger.experiment.log_dir))
        return events

    def __init__(self, log_dir: Path):
        from tensorboard.compat.proto.event_pb2 import Event

        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}.scalars"
        self._file = open(log_dir / name, "ab")  # noqa: SIM115 (kept open for the run; closed with the object)
        self._file.write(record(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()))

    def write(self, metrics: dict[str, float], step: int) -> None:
        self._file.write(record(scalar_event(metrics, step, time.time())))

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()


def scalar_event(metrics: dict[str, float], step: int, wall_time: float) -> bytes:
    """The serialized ``Event(wall_time, step, summary=Summary(value=[Value(tag, simple_value), ...]))``, the bytes
    protobuf's ``SerializeToString`` gives (``tests/test_monitor.py`` compares them), encoded here: 3.6-4.2x faster
    than building the messages (2.5-3.2 µs an update's seven tags against 8.8-12.2; ``python
    benchmarks/bench_events.py``, three runs on the 2-core VM of ``benchmarks/RESULTS.md``). A value is
    rounded to float32 as protobuf rounds it (beyond float32's range: an infinity); a zero ``step`` or
    ``wall_time`` is left out, as proto3 leaves out defaults."""
    summary = b"".join([_value_field(tag, value) for tag, value in metrics.items()])
    head = _WALL_TIME.pack(0x09, wall_time) if wall_time else b""  # field 1, double
    if step:
        head += b"\x10" + _varint(step & 0xFFFFFFFFFFFFFFFF)  # int64: a negative step as its two's complement
    return head + b"\x2a" + _varint(len(summary)) + summary  # field 5, summary


_WALL_TIME = struct.Struct("<Bd")
_FLOAT = struct.Struct("<f")
_VALUE_HEADS: dict[str, bytes] = {}  # tag -> a Summary.Value's bytes up to its simple_value's four bytes


def _value_field(tag: str, value: float) -> bytes:
    head = _VALUE_HEADS.get(tag)
    if head is None:
        name = tag.encode()
        name = b"\x0a" + _varint(len(name)) + name  # Value field 1, tag
        head = _VALUE_HEADS[tag] = b"\x0a" + _varint(len(name) + 5) + name + b"\x15"  # Summary field 1; field 2, float
    value = float(value)
    try:
        return head + _FLOAT.pack(value)
    except OverflowError:  # rounds beyond float32's range: the infinity a C cast (protobuf's) gives
        return head + _FLOAT.pack(math.copysign(math.inf, value))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def record(data: bytes) -> bytes:
    """``data`` framed as one record of an event file (TFRecord): its length, the length's masked CRC-32C, the data,
    the data's masked CRC-32C — the bytes TensorBoard's ``RecordWriter`` writes, with the checksum computed in C
    (``google-crc32c``) instead of TensorBoard's pure-Python loop, ~30 µs an update's event."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data))


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def add_image(run: Run, tag: str, image: Any, step: int) -> None:
    """An ``(H, W, 3)`` uint8 image to every TensorBoard writer, MLflow logger and W&B logger of the run.

    A TensorBoard writer gets the summary its ``add_image`` writes, built from the uint8 pixels as they are:
    ``add_image`` turns them into float32 and back first (a scale factor of 1 for uint8): ~10 → ~7 ms for the
    heatmap's 630×387 image (medians of 7 calls, a scratch timing on the 2-core VM of ``benchmarks/RESULTS.md``, the
    image ``seqstab.core.monitor.heatmap`` draws since 2026-12-07; ~12 → ~8.5 for matplotlib's before). The PNG
    encoding is most of the rest."""
    writers = run.writers
    if writers:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard.summary import make_image

        summary = Summary(value=[Summary.Value(tag=tag, image=make_image(image))])
        for writer in writers:
            internals.file_writer(writer).add_summary(summary, step)
    for logger in _not_tensorboard(run):
        if _is(logger, "MLFlowLogger"):
            logger.experiment.log_image(logger.run_id, image, key=tag, step=step)
        elif _is(logger, "WandbLogger"):
            logger.log_image(key=tag, images=[image], step=step)


def add_text(run: Run, tag: str, text: str, step: int) -> None:
    """Markdown ``text`` to every TensorBoard writer, to MLflow as the artifact ``<tag>/<step>.md`` and to W&B as a
    one-row table ``<tag>`` (columns ``step``, ``text``)."""
    for writer in run.writers:
        writer.add_text(tag, text, global_step=step)
    for logger in _not_tensorboard(run):
        if _is(logger, "MLFlowLogger"):
            logger.experiment.log_text(logger.run_id, text, f"{tag}/{step}.md")
        elif _is(logger, "WandbLogger"):
            logger.log_text(key=tag, columns=["step", "text"], data=[[step, text]], step=step)


def add_histogram(run: Run, tag: str, values: Any, step: int) -> None:
    """A histogram of ``values`` (a 1-D float array) to every TensorBoard writer and W&B logger (MLflow and CSV
    have none)."""
    for writer in run.writers:
        writer.add_histogram(tag, values, global_step=step)
    for logger in _not_tensorboard(run):
        if _is(logger, "WandbLogger"):
            import wandb  # there is a W&B logger, so there is wandb

            logger.log_metrics({tag: wandb.Histogram(values)}, step=step)


def _is(logger: Any, name: str) -> bool:
    """``logger`` is a Lightning ``name`` logger, of either namespace (``pytorch_lightning``, ``lightning.pytorch``)."""
    return any(kind.__name__ == name for kind in type(logger).__mro__)


def _not_tensorboard(run: Run) -> list[Any]:
    return [logger for logger in run.loggers if not _is(logger, "TensorBoardLogger")] if run.is_global_zero else []
