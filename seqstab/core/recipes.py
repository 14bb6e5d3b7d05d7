"""Class paths and constructor arguments as plain data, and back: how a net, a clipping policy or a model is
recorded in a checkpoint or a replay snapshot (``torch.load(weights_only=True)`` reads only plain data) and rebuilt.

A *recipe* is ``{"class_path": "package.module.Class", "init_args": {...}}``, the shape of a config's
``class_path``/``init_args`` block.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from seqstab.core.errors import ConfigError
from seqstab.internals import partial_class

RECIPE_KEYS = {"class_path", "init_args", "dict_kwargs"}  # what a config's class block may hold
NetFactory = Callable[[int], nn.Module]  # input_size -> a net of the recurrent contract (seqstab.nets)


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def net_recipe(factory: NetFactory | dict | None) -> dict[str, Any] | None:
    """How ``factory`` builds its net: ``{"class_path", "init_args"}``; None when that cannot be said.

    ``factory`` is a net class, a ``functools.partial`` of one with keyword arguments (jsonargparse makes one from a
    config's ``class_path`` and ``init_args``), or such a recipe already (from a checkpoint)."""
    if isinstance(factory, dict):
        return {"class_path": str(factory["class_path"]), "init_args": dict(factory.get("init_args") or {})}
    cls, kwargs = factory, {}
    if isinstance(factory, functools.partial):
        kwargs = dict(factory.keywords)
        cls = factory.func if not factory.args else partial_class(factory)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return None
    return {"class_path": class_path(cls), "init_args": kwargs}


def net_factory(recipe: NetFactory | dict) -> NetFactory:
    """The factory a :func:`net_recipe` describes (a factory passes through)."""
    if not isinstance(recipe, dict):
        return recipe
    return functools.partial(resolve(recipe["class_path"], nn.Module, "net"), **(recipe.get("init_args") or {}))


def declared(factory: NetFactory | dict, name: str) -> Any:
    """The value ``factory`` gives its net's ``name`` argument (a keyword it binds, else the class default); None
    when that cannot be read without building the net."""
    recipe = net_recipe(factory)
    if recipe is None:
        return None
    if name in recipe["init_args"]:
        return recipe["init_args"][name]
    try:
        parameter = inspect.signature(resolve(recipe["class_path"], nn.Module, "net")).parameters.get(name)
    except (TypeError, ValueError, ConfigError):
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def object_recipe(obj: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of an object whose constructor arguments are attributes of the same name
    (seqstab's clipping policies and guard); None for None."""
    if obj is None:
        return None
    return {"class_path": class_path(type(obj)), "init_args": {k: getattr(obj, k) for k in init_arg_names(obj)}}


def init_arg_names(obj: Any) -> list[str]:
    """The constructor's argument names of ``obj``'s class that ``obj`` keeps as attributes: its configuration."""
    params = inspect.signature(type(obj).__init__).parameters.values()
    named = [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return [name for name in named if hasattr(obj, name)]


def resolve(path: str, base: type | tuple[type, ...], what: str) -> type:
    """The class at ``path`` (``package.module.Class``), which must subclass ``base``; :class:`ConfigError` if not."""
    module_name, _, name = str(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{what} class_path {path!r}: cannot import it ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        names = " or ".join(class_path(b) for b in (base if isinstance(base, tuple) else (base,)))
        raise ConfigError(f"{what} class_path {path!r}: not a {names}")
    return cls


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys in the command line's form: ``{"net": {"class_path": "...RecurrentNet",
    "init_args": {"hidden_size": 8}}}`` -> ``{"net.class_path": "...RecurrentNet", "net.hidden_size": 8}``.

    Mappings (dicts and jsonargparse namespaces) are walked; a recipe's ``init_args`` level is dropped, its
    ``class_path`` kept under ``<key>.class_path``; keys starting with ``_`` (LightningCLI's ``_class_path``,
    ``_instantiator``) are left out; anything else is a leaf.

    >>> flatten({"net": {"class_path": "a.B", "init_args": {"hidden_size": 8}}, "lr": 0.1, "_instantiator": "x"})
    {'net.class_path': 'a.B', 'net.hidden_size': 8, 'lr': 0.1}
    """
    if hasattr(values, "as_dict"):  # a jsonargparse Namespace
        values = values.as_dict()
    if not isinstance(values, dict):
        return {prefix.rstrip("."): values}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if str(key).startswith("_"):
            continue
        if hasattr(value, "as_dict"):
            value = value.as_dict()
        if isinstance(value, dict) and "class_path" in value and set(value) <= RECIPE_KEYS:
            flat[f"{prefix}{key}.class_path"] = value["class_path"]
            value = {**(value.get("init_args") or {}), **(value.get("dict_kwargs") or {})}
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
