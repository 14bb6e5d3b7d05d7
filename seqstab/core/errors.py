"""The errors seqstab reports to users as one line, without a traceback, and the checks that raise them.

Every check names the setting and the value it got, so the one line says what is wrong and where::

    >>> check_choice("cell", "lstn", ("rnn", "lstm", "gru"))
    Traceback (most recent call last):
    ...
    seqstab.core.errors.ConfigError: cell='lstn': must be 'rnn', 'lstm' or 'gru'
"""

from __future__ import annotations

from collections.abc import Iterable


class SeqstabError(Exception):
    """Base of the errors the CLI prints as ``error: <message>`` and exits non-zero on."""


class ConfigError(SeqstabError, ValueError):
    """A setting out of range or inconsistent with another; the message names the key and the value."""


class DataError(SeqstabError, ValueError):
    """Bad data: a missing or malformed file, a split too short; the message names the file, column or row."""


class SettingError(ConfigError, SystemExit):
    """A setting found wrong inside someone else's loop (the ``GradientStability`` callback's checks when a
    ``Trainer`` starts to fit): a :class:`ConfigError` to code that catches it; uncaught, Python prints its one line
    (``seqstab: error: <message>``) and exits 1 without a traceback, as it does for ``sys.exit(message)``."""

    def __init__(self, message: str):
        super().__init__(message)
        self.code = f"seqstab: error: {message}"


def check_positive(**values: float | int | None) -> None:
    """Raise :class:`ConfigError` naming the first value that is not ``> 0`` (``None`` passes)."""
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ConfigError(f"{name}={value!r}: must be > 0")


def check_non_negative(**values: float | int | None) -> None:
    """Raise :class:`ConfigError` naming the first value that is ``< 0`` (``None`` passes)."""
    for name, value in values.items():
        if value is not None and value < 0:
            raise ConfigError(f"{name}={value!r}: must be >= 0")


def check_count(name: str, value: int | None, minimum: int = 1) -> None:
    """``value`` is an integer ``>= minimum`` (a bool is not; ``None`` passes)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ConfigError(f"{name}={value!r}: must be an integer >= {minimum}")


def check_fraction(name: str, value: float, low_inclusive: bool = False) -> None:
    """``value`` is in ``(0, 1)`` (``[0, 1)`` with ``low_inclusive``: a dropout rate)."""
    inside = (0 <= value < 1) if low_inclusive else (0 < value < 1)
    if not inside:
        raise ConfigError(f"{name}={value!r}: must be in {'[' if low_inclusive else '('}0, 1)")


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    """``value`` is one of ``choices``; the message lists them."""
    options = list(choices)
    if value not in options:
        raise ConfigError(f"{name}={value!r}: must be {either(options)}")


def either(options: Iterable[object]) -> str:
    """``'a'``, ``'a' or 'b'``, ``'a', 'b' or 'c'``."""
    quoted = [repr(o) if isinstance(o, str) else str(o).lower() if isinstance(o, bool) else str(o) for o in options]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
