"""A combination of a sweep (one ``seqstab.train fit`` run) and what it is called: its run id, the folder it runs in.

A run id is the variant's name followed by ``<key>=<value>`` for each grid key (the key's last dotted part, unless
two keys share it)::

    normclip-seq_len=200        variant normclip, data.seq_len = 200
    seq_len=50-hidden_size=8    no variants, two grid keys
    lstm                        a variant, no grid
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

RUN_ID_CHARS = "A-Za-z0-9_.=+-"  # anything else in a run id becomes "_"


@dataclass
class Combination:
    """One combination of a sweep: its run id, the swept values and the full override list.

    A search sweep's runs are combinations too: their combination's values with the searched key's value added.
    """

    id: str
    variant: str | None
    values: dict[str, Any]  # swept key -> value (the grid keys; a search's run adds the searched key)
    overrides: dict[str, Any] = field(default_factory=dict)  # every dotted key this run sets, args first
    parent: str | None = None  # a search's run: the id of the combination whose bisection it is part of


def run_id(variant: str | None, values: dict[str, Any]) -> str:
    """The folder name of a combination: the variant, then ``<short key>=<value>`` per swept key; ``run`` for none."""
    parts = [variant] if variant else []
    short = short_names(list(values))
    parts += [f"{short[k]}={format_value(v)}" for k, v in values.items()]
    return re.sub(f"[^{RUN_ID_CHARS}]", "_", "-".join(parts)) or "run"


def short_names(keys: list[str]) -> dict[str, str]:
    """Last component of each dotted key, unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def format_value(value: Any) -> str:
    """A swept value as text: a class block by its class name, ``null``, ``true``/``false``, JSON for a list."""
    if isinstance(value, dict) and "class_path" in value:
        return str(value["class_path"]).rsplit(".", 1)[-1]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def labelled(values: dict[str, Any]) -> str:
    """``seq_len=50, clipping=NormClip``: the swept values with the keys' last parts (a plot's legend)."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={format_value(v)}" for k, v in values.items())


def search_run(combination: Combination, key: str, value: float) -> Combination:
    """The run of a search's ``combination`` at one value of the searched ``key``."""
    values = {**combination.values, key: value}
    return Combination(
        run_id(combination.variant, values),
        combination.variant,
        values,
        {**combination.overrides, key: value},
        parent=combination.id,
    )
