"""Reading users' files: the one reader of every text file a datamodule is given (corpora, CSV series).

A file that cannot be used is one :class:`~seqstab.core.errors.DataError` line naming it: missing, a directory,
unreadable, empty, not UTF-8 (with the line and the byte offset of the first bad byte), or larger than the memory
its parse would take (:func:`check_memory`). Line ends are ``\\n`` whatever the file used, and a leading byte-order
mark is dropped.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Iterator
from pathlib import Path

from seqstab.core.errors import DataError
from seqstab.core.io import available_memory
from seqstab.data.vocab import normalize

__all__ = ["check_memory", "decode_text", "read_bytes", "read_text", "size_text", "text_lines"]


def read_bytes(path: str | Path) -> tuple[str, bytes]:
    """The file's name for messages and its raw bytes."""
    path = Path(path)
    try:
        return str(path), path.read_bytes()
    except OSError as err:
        raise DataError(_unreadable(path, err)) from None


def read_text(path: str | Path) -> str:
    """A text file as ``str`` with ``\\n`` line ends; a one-line :class:`DataError` if missing, empty or not UTF-8."""
    name, raw = read_bytes(path)
    return decode_text(raw, name)


def decode_text(raw: bytes, name: str) -> str:
    """``raw`` decoded as UTF-8 with ``\\n`` line ends; ``name`` is what messages call it."""
    if not raw.strip():
        raise DataError(f"{name}: the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(_invalid_utf8(name, raw, err.start, raw.count(b"\n", 0, err.start) + 1)) from None
    return normalize(text)


def text_lines(path: str | Path, max_line: int | None = None) -> Iterator[str]:
    """The lines of a UTF-8 text file as they are read (each ends with ``\n``, but perhaps the last): memory for one
    line at a time, not the file. The same errors as :func:`read_text`, raised when the reader reaches them, and a
    line longer than ``max_line`` characters is one too (None: no limit)."""
    path = Path(path)
    try:
        binary = open(path, "rb")  # noqa: SIM115 -- closed with the text wrapper below
    except OSError as err:
        raise DataError(_unreadable(path, err)) from None
    blank, number = True, 0
    with io.TextIOWrapper(binary, encoding="utf-8-sig", newline=None) as text:  # universal newlines, no BOM
        try:
            while line := text.readline(-1 if max_line is None else max_line + 1):
                number += 1
                if max_line is not None and len(line) - line.endswith("\n") > max_line:
                    raise DataError(f"{path} line {number}: longer than {max_line:,} characters; is it a text file?")
                blank = blank and not line.strip()
                yield line
        except UnicodeDecodeError:
            raise DataError(_locate_invalid_utf8(path)) from None
    if blank:
        raise DataError(f"{path}: the file is empty")


def check_memory(path: Path, need: int, how: str = "reading it") -> None:
    """Refuse ``path`` before reading it when ``need`` bytes (an estimate of what ``how`` takes) exceed the free
    memory (:func:`seqstab.core.io.available_memory`); nothing is checked where that cannot be read."""
    free = available_memory()
    if free is not None and need > free:
        raise DataError(
            f"{path}: {size_text(path.stat().st_size)} on disk; {how} takes about {size_text(need)} of memory and "
            f"{size_text(free)} is free: give a smaller file (or free memory)"
        )


def size_text(size: float) -> str:
    """``1536`` -> ``1.5 KiB``: a size in bytes the way people read it."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    step = 0
    while size >= 1024 and step < len(units) - 1:
        size, step = size / 1024, step + 1
    return f"{size:.0f} bytes" if step == 0 else f"{size:.1f} {units[step]}"


def _unreadable(path: Path, err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        return f"{path}: no such file"
    if isinstance(err, IsADirectoryError):
        return f"{path}: is a directory, expected a text file"
    return f"{path}: cannot be read ({err.strerror or type(err).__name__})"


def _invalid_utf8(name: str, data: bytes, at: int, line: int, offset: int | None = None) -> str:
    where = at if offset is None else offset
    return f"{name} line {line}: invalid UTF-8 (byte {data[at]:#04x} at offset {where})"


def _locate_invalid_utf8(path: Path) -> str:
    """The message for the first invalid UTF-8 in ``path``, found by decoding it again block by block."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0
    with open(path, "rb") as f:
        for block in [*iter(lambda: f.read(1 << 20), b""), b""]:
            held = len(decoder.getstate()[0])  # an unfinished character from the block before (never a newline)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                line = newlines + err.object.count(b"\n", 0, err.start) + 1
                return _invalid_utf8(str(path), err.object, err.start, line, offset - held + err.start)
            offset += len(block)
            newlines += block.count(b"\n")
    return f"{path}: invalid UTF-8"
