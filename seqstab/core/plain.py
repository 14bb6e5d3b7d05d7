"""Plain values: what JSON, ``explosions.jsonl`` and ``torch.load(weights_only=True)`` take.

One home for the conversions the stations share: applying a function to every tensor of a nest
(:func:`map_tensors`: hidden states, batches, state dicts), copying such a nest to the host (:func:`to_cpu`),
hyperparameters as builtins (:func:`to_plain`), floats JSON can hold (:func:`json_safe`) and sort keys for values
that may be NaN (:func:`sortable`).

>>> json_safe({"norm": float("inf"), "ratios": [1.5, float("nan")]})
{'norm': 'inf', 'ratios': [1.5, 'nan']}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["json_safe", "map_tensors", "plain_or_none", "sortable", "to_cpu", "to_plain"]


def map_tensors(fn: Callable[[torch.Tensor], Any], nest: Any) -> Any:
    """Apply ``fn`` to every tensor of ``nest``: any nest of tuples, lists and dicts of tensors (seqstab's nets'
    hidden state: a tuple of ``h`` or ``(h, c)`` per layer; a batch; a state dict); other leaves pass through."""
    if isinstance(nest, torch.Tensor):
        return fn(nest)
    if isinstance(nest, (tuple, list)):
        return type(nest)(map_tensors(fn, value) for value in nest)
    if isinstance(nest, dict):
        return {key: map_tensors(fn, value) for key, value in nest.items()}
    return nest


def to_cpu(nest: Any) -> Any:
    """A copy of ``nest`` with every tensor detached, on the CPU and owning its storage."""
    return map_tensors(lambda t: t.detach().cpu().clone(), nest)


def to_plain(obj: Any) -> Any:
    """Hyperparameters as types ``torch.load(weights_only=True)`` accepts (dataclasses become dicts); TypeError
    naming the first value that has no plain form."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    if obj is None:
        return None
    for kind in (bool, int, float, str):  # exact builtins: subclasses (TorchVersion, enums) would pickle as globals
        if isinstance(obj, kind):
            return kind(obj)
    raise TypeError(f"hyperparameter value {obj!r} is not a plain type")


def plain_or_none(hparams: dict[str, Any] | None) -> dict[str, Any] | None:
    """Plain hyperparameters (private ``_`` keys left out), or None when one is not plain."""
    if hparams is None:
        return None
    try:
        return to_plain({k: v for k, v in hparams.items() if not str(k).startswith("_")})
    except TypeError:
        return None


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float written as the string ``"inf"``, ``"-inf"`` or ``"nan"`` (JSON has
    none of them), through dicts and lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def sortable(value: float) -> float:
    """A sort key that puts NaN above every number (a NaN norm is the worst one)."""
    return math.inf if math.isnan(value) else value
