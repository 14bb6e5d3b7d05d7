"""The sweep file's rules across its parts, checked when it is read (before anything is written):

- every key is a dotted config key (``data.seq_len``, without the leading ``--``);
- a setting is swept once: two grid keys, or a grid key and a variant's key, that reach the same setting under two
  spellings (``data.seq_len`` and ``data: {seq_len: 6}``) are refused; a variant may pin a grid key under the
  grid's own spelling (``data.seq_len: [200, 400]``: only these values);
- one folder per combination: two combinations whose run ids come out the same (a class named by its class name
  alone, characters a folder name cannot hold made ``_``, a name that differs in case only) are refused;
- each combination's overrides make one config file (no key set to a value and also given keys under it).
"""

from __future__ import annotations

import re
from typing import Any

from seqstab.cli.sweep.combination import RUN_ID_CHARS, Combination
from seqstab.cli.sweep.overrides import nested, overlap, settings
from seqstab.core.errors import ConfigError

CONFIG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def check_keys(where: str, part: str, keys: list[Any]) -> None:
    """Each of ``keys`` (of the sweep file's ``part``) is a dotted config key."""
    for key in keys:
        if not isinstance(key, str) or not CONFIG_KEY.fullmatch(key):
            raise ConfigError(f"{where}: {part}: key {key!r}: must be a dotted config key such as data.seq_len")


def check_swept_once(where: str, grid: dict[str, list[Any]], variants: dict[str, dict[str, Any]]) -> None:
    """No setting is reached by two grid keys, nor by a grid key and a variant's key of another spelling."""
    reached = {key: set().union(*(settings(key, v) for v in values)) for key, values in grid.items()}
    keys = list(grid)
    for i, key in enumerate(keys):
        for other in keys[i + 1 :]:
            if overlap(reached[key], reached[other]):
                raise ConfigError(f"{where}: grid keys {key!r} and {other!r} set the same setting")
    for name, overrides in variants.items():
        for own, value in overrides.items():
            for key in (k for k in grid if k != own and overlap(reached[k], settings(own, value))):
                raise ConfigError(
                    f"{where}: variant {name!r} sets {own!r} and the grid sweeps {key!r}: the same setting, and the "
                    f"run would be named after the grid's value; to pin a grid key, give it in the variant as {key!r}"
                )


def check_one_folder_each(where: str, combinations: list[Combination]) -> None:
    """No two combinations run in the same folder (on a file system that ignores case, too); the same combination
    twice (a grid value listed twice) is one run."""
    seen: dict[str, Combination] = {}
    for combination in combinations:
        first = seen.setdefault(combination.id.casefold(), combination)
        if first.id != combination.id or first.overrides != combination.overrides:
            why = (
                "on a file system that ignores case"
                if first.id != combination.id
                else f"(a run id names a class by its class name alone, and has '_' for characters other than "
                f"{RUN_ID_CHARS})"
            )
            raise ConfigError(
                f"{where}: {_described(first)} and {_described(combination)} would run in the same folder "
                f"{combination.id!r} {why}; make their variant names or values differ"
            )


def check_config_files(where: str, combinations: list[Combination], search_key: str | None) -> None:
    """Each combination's overrides (with the searched key set) make one config file."""
    for combination in combinations:
        overrides = combination.overrides if search_key is None else {**combination.overrides, search_key: 0.0}
        try:
            nested(overrides)
        except ConfigError as err:
            raise ConfigError(f"{where}: {_described(combination)}: {err}") from None


def _described(combination: Combination) -> str:
    values = ", ".join(f"{k}={v!r}" for k, v in combination.values.items())
    variant = f"variant {combination.variant!r}" if combination.variant else "the combination"
    return f"{variant} ({values})" if values else variant
