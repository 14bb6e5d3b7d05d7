"""The errors seqstab reports to users as one line, without a traceback."""


class SeqstabError(Exception):
    """Base of the errors the CLI prints as ``error: <message>`` and exits non-zero on."""


class ConfigError(SeqstabError, ValueError):
    """A setting out of range or inconsistent with another; the message names the key and the value."""


class DataError(SeqstabError, ValueError):
    """Bad data: a missing or malformed file, a split too short; the message names the file, column or row."""


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
