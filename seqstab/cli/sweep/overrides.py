"""A combination's overrides (dotted keys, as the sweep file writes them) as the nested mapping of a config file, and
which settings a dotted key reaches.

jsonargparse reads a class's arguments with or without ``init_args``, so one setting has several spellings:
``data.seq_len``, ``data.init_args.seq_len`` and ``data: {seq_len: ...}`` are the same setting.
"""

from __future__ import annotations

from typing import Any

from seqstab.core.errors import ConfigError

CLASS_KEYS = ("class_path", "init_args", "dict_kwargs")


def nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys as the nested mapping of a config file: ``{"model.net.hidden_size": 8}`` -> ``{"model": {"net":
    {"hidden_size": 8}}}`` (jsonargparse reads a class's arguments there with or without ``init_args``). Under a
    class set by ``class_path`` and ``init_args`` (``optimizer: {class_path: ..., init_args: {lr: 0.1}}`` and
    ``optimizer.lr: 1``), a dotted key goes into its ``init_args``. Later keys win."""
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = tree
        for depth, part in enumerate([*parents, leaf]):
            if "class_path" in node and isinstance(node.get("init_args"), dict) and part not in CLASS_KEYS:
                node = node["init_args"]
            if depth == len(parents):
                break
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key!r}: {part!r} is set to a value and also has keys under it")
        if isinstance(node.get(leaf), dict) and isinstance(value, dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return tree


def settings(key: str, value: Any) -> set[str]:
    """The settings ``key: value`` sets, each in one spelling (dotted, without ``init_args``): ``data: {seq_len: 6}``
    and ``data.init_args.seq_len: 6`` -> ``{"data.seq_len"}``; a class block sets its ``class_path`` and its
    arguments. (Unlike :func:`seqstab.core.recipes.flatten`, an empty mapping counts: it replaces a value.)"""
    if isinstance(value, dict) and value:
        return {s for k, v in value.items() for s in settings(f"{key}.{k}", v)}
    return {plain(key)}


def plain(key: str) -> str:
    """A dotted key without its ``init_args``/``dict_kwargs`` parts: the setting it names."""
    return ".".join(part for part in key.split(".") if part not in CLASS_KEYS[1:])


def overlap(a: set[str], b: set[str]) -> bool:
    """Whether two sets of settings share one, or one holds a setting under another (``model.clipping`` and
    ``model.clipping.max_norm``)."""
    return any(x == y or x.startswith(y + ".") or y.startswith(x + ".") for x in a for y in b)
