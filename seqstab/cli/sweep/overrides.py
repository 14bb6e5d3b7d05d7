"""A combination's overrides (dotted keys, as the sweep file writes them) as the nested mapping of a config file."""

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
