"""What every seqstab command prints besides its output: one line per mistake, warning or interruption.

    $ python -m seqstab.generate --ckpt_path last.ckpt --tokens many
    seqstab.generate: error: argument --tokens: invalid int value: 'many' (python -m seqstab.generate --help)
    $ python -m seqstab.train                    # the default experiment, with a warning
    seqstab: warning: clip threshold 1 is 5841x below the first gradient norm 5841.46: ...

* :class:`ToolParser`: argparse for ``generate``, ``score``, ``replay`` (argparse itself prints the usage, several
  lines, before its error line);
* :func:`error_line`: ``seqstab.<tool>: error: ...``, one line whatever the error quotes of a file;
* :func:`warnings_as_lines`: a Python warning as ``seqstab: warning: <message>``, no source path, no category;
* :func:`tool_main`: the above for a tool's ``main``, and Ctrl-C as one line and exit 130, not a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence

__all__ = [
    "EXIT_NOTHING_APPLIED",
    "EXIT_USAGE",
    "ToolParser",
    "error_line",
    "one_line",
    "tool_main",
    "warnings_as_lines",
]

EXIT_USAGE = 2
EXIT_NOTHING_APPLIED = 3  # fit ran, but the guard let no update through, or stopped it for skipping too many in a row
EXIT_INTERRUPTED = 128 + signal.SIGINT  # a shell's code for a command Ctrl-C ended
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # the disk (or a quota) is full: not a bug of anyone's


class ToolParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` for ``python -m seqstab.<tool>``: errors are ``seqstab.<tool>: error: ...``.

    Args:
        tool: The tool's name (``generate``); its program name is ``python -m seqstab.<tool>``.
        **kwargs: As for ``argparse.ArgumentParser`` (``description``...).
    """

    def __init__(self, tool: str, **kwargs):
        super().__init__(prog=f"python -m seqstab.{tool}", **kwargs)
        self.tool = tool

    def error(self, message: str) -> None:
        """One line on stderr, then ``SystemExit(2)``."""
        self.exit(EXIT_USAGE, f"seqstab.{self.tool}: error: {one_line(message)} ({self.prog} --help)\n")

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace | int:
        """The parsed arguments, or the exit code where parsing ended the command (a mistake: 2; ``--help``: 0)."""
        try:
            return self.parse_args(sys.argv[1:] if argv is None else list(argv))
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else 0


def one_line(message: str) -> str:
    """``message`` on one line: every run of whitespace, line and record separators included, one space."""
    return re.sub(r"\s+", " ", message).strip()


def error_line(tool: str, err: BaseException) -> int:
    """Print ``seqstab.<tool>: error: <err>`` (one line, whatever the error quotes of a file) and return the exit
    code of a mistake."""
    print(f"seqstab.{tool}: error: {one_line(str(err))}", file=sys.stderr)
    return EXIT_USAGE


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Within the block, a Python warning that reaches the user prints as ``seqstab: warning: <message>`` (one
    line), and a full disk in a writer thread (TensorBoard's) prints nothing: the thread's writer raises it again
    in the main thread, where it becomes the command's one error line."""
    format_before, hook_before = warnings.formatwarning, threading.excepthook

    def one_warning_line(message, category, filename, lineno, line=None) -> str:
        return f"seqstab: warning: {one_line(str(message))}\n"

    def thread_error(args) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in DISK_FULL):
            hook_before(args)

    warnings.formatwarning, threading.excepthook = one_warning_line, thread_error
    try:
        yield
    finally:
        warnings.formatwarning, threading.excepthook = format_before, hook_before


def tool_main(tool: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a tool's ``main(argv) -> int``: warnings as lines, and Ctrl-C one line and exit 130."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            with warnings_as_lines():
                try:
                    return main(argv)
                except KeyboardInterrupt:
                    print(f"seqstab.{tool}: stopped by SIGINT", file=sys.stderr)
                    return EXIT_INTERRUPTED

        return run

    return decorate
