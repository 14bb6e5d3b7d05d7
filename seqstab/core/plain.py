"""Plain values: what JSON, ``explosions.jsonl`` and ``torch.load(weights_only=True)`` take.

One home for the conversions the stations share: applying a function to every tensor of a nest
(:func:`map_tensors`: hidden states, batches, state dicts), copying such a nest to the host (:func:`to_cpu`),
hyperparameters as builtins (:func:`to_plain`), floats JSON can hold (:func:`json_safe`), sort keys for values
that may be NaN (:func:`sortable`), and any structured batch as tensors plus a plain description of its structure
(:func:`pack`, rebuilt by :func:`unpack`: what a replay snapshot holds of the batch of anyone's library).

>>> json_safe({"norm": float("inf"), "ratios": [1.5, float("nan")]})
{'norm': 'inf', 'ratios': [1.5, 'nan']}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from seqstab.internals import namedtuple_fields

__all__ = [
    "PACKED",
    "PackError",
    "json_safe",
    "leaves",
    "map_tensors",
    "pack",
    "plain_or_none",
    "sortable",
    "to_cpu",
    "to_plain",
    "unpack",
]

PACKED = "seqstab.packed/1"  # the format tag of what pack() returns


def map_tensors(fn: Callable[[torch.Tensor], Any], nest: Any) -> Any:
    """Apply ``fn`` to every tensor of ``nest``: any nest of tuples, lists and dicts of tensors (seqstab's nets'
    hidden state: a tuple of ``h`` or ``(h, c)`` per layer; a batch; a state dict); other leaves pass through."""
    if isinstance(nest, torch.Tensor):
        return fn(nest)
    if isinstance(nest, (tuple, list)):  # a list built first: a generator costs more (the hidden state, every update)
        return type(nest)([map_tensors(fn, value) for value in nest])
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


# -- structured batches: tensors plus a plain description --------------------------------------------------------


class PackError(TypeError):
    """A value :func:`pack` has no plain form for; the message names where in the nest it is."""


def pack(nest: Any, tensor: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """``nest`` (any batch) as ``{"format", "tensors", "structure"}``: its tensors in a list, and a description of
    where each sits made only of plain values, so that the result loads with ``torch.load(weights_only=True)``.

    What it reads: tensors, numpy arrays (kept as tensors), ``None``/bool/int/float/str (numpy scalars as their
    value), lists, tuples, named tuples, dicts with plain keys, dataclasses (their ``init`` fields), pandas indexes
    (their values; a ``DatetimeIndex`` as int64 nanoseconds). A dataclass or named tuple is described by its class
    path (``{"class_path": ...}``), which :func:`unpack` needs to import: a reader applies its own trust rule to it.

    Args:
        nest: The batch.
        tensor: Applied to each tensor as it is stored (e.g. a detached CPU copy); None keeps them as they are.

    Raises:
        PackError: naming the first value with no plain form and where it is (``batch[0]['x']``).

    Examples:
        >>> import collections
        >>> Pair = collections.namedtuple("Pair", "x y")
        >>> packed = pack({"x": torch.ones(2), "meta": (Pair(torch.zeros(1), 3), None)})
        >>> packed["structure"]["dict"][0], len(packed["tensors"])
        (['x', {'t': 0}], 2)
        >>> unpack(packed, lambda path: Pair)["meta"][0].y
        3
    """
    tensors: list[torch.Tensor] = []
    structure = _describe(nest, tensors, tensor or (lambda t: t), "batch")
    return {"format": PACKED, "tensors": tensors, "structure": structure}


def unpack(packed: dict[str, Any], classes: Callable[[str], type]) -> Any:
    """The nest :func:`pack` described. ``classes`` returns the class at a class path (a dataclass's, a named
    tuple's): where a reader decides whether to import it. A pandas index comes back as a pandas index (pandas is
    imported only when the batch held one)."""
    return _build(packed["structure"], packed["tensors"], classes)


def leaves(nest: Any, prefix: str = "batch") -> list[tuple[str, torch.Tensor]]:
    """``(where, tensor)`` of every tensor in ``nest`` (the same walk as :func:`pack`: dataclasses, named tuples,
    dicts, lists, tuples), depth first, in order; ``where`` reads like Python (``batch[0]['encoder_cont']``,
    ``batch.past_target``)."""
    found: list[tuple[str, torch.Tensor]] = []
    _walk(nest, prefix, found)
    return found


def _walk(value: Any, where: str, found: list[tuple[str, torch.Tensor]]) -> None:
    if isinstance(value, torch.Tensor):
        found.append((where, value))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _walk(getattr(value, f.name), f"{where}.{f.name}", found)
    elif namedtuple_fields(value) is not None:
        for name, item in zip(namedtuple_fields(value), value, strict=True):
            _walk(item, f"{where}.{name}", found)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _walk(item, f"{where}[{i}]", found)
    elif isinstance(value, dict):
        for key, item in value.items():
            _walk(item, f"{where}[{key!r}]", found)


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain_value(value: Any) -> tuple[bool, Any]:
    """``(True, the value as an exact builtin)`` for None, bool, int, float, str and numpy scalars."""
    if value is None:
        return True, None
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return True, kind(value)
    item = getattr(value, "item", None)
    if type(value).__module__ == "numpy" and callable(item) and getattr(value, "ndim", None) == 0:
        return _plain_value(item())
    return False, None


def _describe(value: Any, tensors: list[torch.Tensor], store: Callable, where: str) -> dict[str, Any]:
    if isinstance(value, torch.Tensor):
        tensors.append(store(value))
        return {"t": len(tensors) - 1}
    plain, builtin = _plain_value(value)
    if plain:
        return {"v": builtin}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: _describe(getattr(value, f.name), tensors, store, f"{where}.{f.name}")
            for f in dataclasses.fields(value)
            if f.init
        }
        return {"dataclass": {"class_path": _class_path(type(value)), "fields": fields}}
    fields = namedtuple_fields(value)
    if fields is not None:
        items = [_describe(v, tensors, store, f"{where}.{n}") for n, v in zip(fields, value, strict=True)]
        return {"namedtuple": {"class_path": _class_path(type(value)), "items": items}}
    if isinstance(value, (list, tuple)):
        items = [_describe(v, tensors, store, f"{where}[{i}]") for i, v in enumerate(value)]
        return {"list" if isinstance(value, list) else "tuple": items}
    if isinstance(value, dict):
        pairs = []
        for key, item in value.items():
            plain_key, key_value = _plain_value(key)
            if not plain_key:
                raise PackError(f"{where} has a key {key!r} of type {_class_path(type(key))}: keys must be plain")
            pairs.append([key_value, _describe(item, tensors, store, f"{where}[{key!r}]")])
        return {"dict": pairs}
    module = type(value).__module__
    if module == "numpy" and type(value).__name__ == "ndarray":
        if value.dtype.kind not in "biuf":
            raise PackError(f"{where} is a numpy array of dtype {value.dtype}: only numbers and booleans pack")
        tensors.append(store(torch.from_numpy(value.copy())))
        return {"ndarray": len(tensors) - 1}
    if module.split(".")[0] == "pandas" and hasattr(value, "to_list") and hasattr(value, "dtype"):
        return _describe_index(value, tensors, store, where)
    raise PackError(
        f"{where} is a {_class_path(type(value))} object: a snapshot holds tensors and plain values only "
        "(tensors, numbers, strings, lists, tuples, dicts, dataclasses, named tuples, pandas indexes)"
    )


def _describe_index(index: Any, tensors: list[torch.Tensor], store: Callable, where: str) -> dict[str, Any]:
    """A pandas ``Index`` by its values (a ``DatetimeIndex`` by its int64 nanoseconds and time zone)."""
    kind = type(index).__name__
    if kind not in ("Index", "RangeIndex", "DatetimeIndex"):
        raise PackError(f"{where} is a pandas {kind}: of the pandas indexes only Index, RangeIndex, DatetimeIndex pack")
    plain_name, name = _plain_value(index.name)
    if not plain_name:
        raise PackError(f"{where} is a pandas {kind} named {index.name!r}: its name must be plain")
    if kind == "DatetimeIndex":
        tensors.append(store(torch.from_numpy(index.asi8.copy())))  # in the index's unit, UTC where it has a zone
        tz = None if index.tz is None else str(index.tz)
        return {"index": {"kind": kind, "t": len(tensors) - 1, "unit": getattr(index, "unit", "ns"), "tz": tz,
                          "name": name}}  # fmt: skip
    if kind == "RangeIndex":
        return {"index": {"kind": kind, "range": [index.start, index.stop, index.step], "name": name}}
    values = []
    for i, v in enumerate(index.to_list()):
        plain, item = _plain_value(v)
        if not plain:
            raise PackError(f"{where}[{i}] is a {_class_path(type(v))} in a pandas index: values must be plain")
        values.append(item)
    return {"index": {"kind": kind, "values": values, "dtype": str(index.dtype), "name": name}}


def _build(node: dict[str, Any], tensors: list[torch.Tensor], classes: Callable[[str], type]) -> Any:
    if "t" in node and len(node) == 1:
        return tensors[node["t"]]
    if "v" in node:
        return node["v"]
    if "list" in node:
        return [_build(n, tensors, classes) for n in node["list"]]
    if "tuple" in node:
        return tuple(_build(n, tensors, classes) for n in node["tuple"])
    if "dict" in node:
        return {key: _build(n, tensors, classes) for key, n in node["dict"]}
    if "dataclass" in node:
        spec = node["dataclass"]
        fields = {name: _build(n, tensors, classes) for name, n in spec["fields"].items()}
        return classes(spec["class_path"])(**fields)
    if "namedtuple" in node:
        spec = node["namedtuple"]
        return classes(spec["class_path"])(*(_build(n, tensors, classes) for n in spec["items"]))
    if "ndarray" in node:
        return tensors[node["ndarray"]].numpy()
    if "index" in node:
        import pandas as pd

        spec = node["index"]
        if spec["kind"] == "DatetimeIndex":
            stamps = tensors[spec["t"]].numpy().view(f"datetime64[{spec['unit']}]")
            index = pd.DatetimeIndex(stamps, name=spec["name"])
            return index.tz_localize("UTC").tz_convert(spec["tz"]) if spec["tz"] else index
        if spec["kind"] == "RangeIndex":
            return pd.RangeIndex(*spec["range"], name=spec["name"])
        try:
            return pd.Index(spec["values"], dtype=spec["dtype"], name=spec["name"])
        except (TypeError, ValueError):  # a dtype this pandas does not know (another version's): infer it
            return pd.Index(spec["values"], name=spec["name"])
    raise ValueError(f"not a packed structure node: {sorted(node)}")
