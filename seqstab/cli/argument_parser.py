""":class:`SeqstabArgumentParser`: ``null`` on the command line is None at any depth, as in a config file.

An option two subclasses deep, ``--model.guard.spike_factor null`` (``model`` a ``SeqTask`` given by class path,
``guard`` an ``ExplosionGuard`` in it), is passed down by jsonargparse (4.53) one parser at a time: the ``model``
option loads ``null`` to None, then has the task's parser parse ``[f"--guard.spike_factor={value}"]``, which
formats the None as ``None``, a string to YAML (``null``, ``~`` are its nulls): ``Expected a <class 'float'>``. The
class parsers are of the CLI's parser class, so this one reads ``=None`` there as ``=null`` again.

``None`` typed on the command line stays a string, as jsonargparse reads it for any option (a top-level
``Optional[float]`` refuses it): a command line with a ``None`` of its own, as a value or ``--x=None``, is parsed
as jsonargparse parses it (a ``null`` two levels deep in it then fails as before).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from pytorch_lightning.cli import LightningArgumentParser

__all__ = ["SeqstabArgumentParser"]

# Inside a parse of the command line: whether a class parser's ``--a.b=None`` is a null from it. None: no parse.
_NONE_IS_NULL: ContextVar[bool | None] = ContextVar("seqstab_none_is_null", default=None)


class SeqstabArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` that keeps a command line's ``null`` None in options nested in subclasses."""

    def parse_args(self, args: Sequence[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        none_is_null = _NONE_IS_NULL.get()
        if none_is_null is None:  # the command line itself: the parses below it run inside this call
            given = sys.argv[1:] if args is None else list(args)
            typed = any(isinstance(arg, str) and (arg == "None" or arg.endswith("=None")) for arg in given)
            token = _NONE_IS_NULL.set(not typed)
            try:
                return super().parse_args(args, *rest, **kwargs)
            finally:
                _NONE_IS_NULL.reset(token)
        if none_is_null and args is not None and len(args) == 1 and isinstance(args[0], str):
            option, equals, value = args[0].partition("=")
            if equals and value == "None" and option.startswith("--") and "." in option:
                args = [f"{option}=null"]  # a class parser's option, from a null two or more levels up
        return super().parse_args(args, *rest, **kwargs)
