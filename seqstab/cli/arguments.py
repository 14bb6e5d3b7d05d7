"""The argument parser of seqstab's own tools (``generate``, ``score``, ``replay``): argparse, but a mistake on the
command line is one line, as every other mistake is.

    $ python -m seqstab.generate --ckpt_path last.ckpt --tokens many
    seqstab.generate: error: argument --tokens: invalid int value: 'many' (python -m seqstab.generate --help)

(argparse itself prints the usage, several lines, before its error line.)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

__all__ = ["EXIT_USAGE", "ToolParser", "error_line", "one_line"]

EXIT_USAGE = 2


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
