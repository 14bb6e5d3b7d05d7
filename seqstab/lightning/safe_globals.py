"""What lets other people's libraries save and load the ``GradientStability`` callback the way they save and load
everything else, without trusting code.

Libraries keep the callbacks they were given: darts pickles its model object with ``pl_trainer_kwargs`` into
``_model.pth.tar`` and loads it back with its own restricted unpickler; neuralforecast saves its constructor
arguments (the Trainer's callbacks among them) as the LightningModule's hyperparameters, so they land in every
checkpoint (``torch.save``) and in the logger's ``hparams.yaml`` (``yaml.dump``). The callback pickles as plain data
(its settings, as class paths and constructor arguments: :meth:`GradientStability.__getstate__`), so that one global
is all a loader must allow, and :func:`register` allows it:

* ``torch.serialization.add_safe_globals``: ``torch.load(weights_only=True)`` of such a checkpoint (Lightning's own
  ``load_from_checkpoint``, darts' ``.ckpt`` loading, which asks torch which globals a file holds beyond those);
* darts' own allow-list (``darts.utils.serialization.add_safe_globals``), consulted by its restricted unpickler of
  the model object, when darts is imported (now, or later: an import hook waits for it; darts itself is never
  imported here);
* a YAML representer: ``yaml.dump`` writes the callback as a plain mapping (``class_path``, ``init_args``) instead of
  a ``!!python/object`` tag.

Unpickling runs :meth:`GradientStability.__setstate__`, which builds the callback's policy, guard and monitor from
their class paths only where seqstab itself or an already imported module holds them, and refuses anything else.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

__all__ = ["register", "when_imported"]


def register(cls: type, plain: Callable[[Any], dict[str, Any]]) -> None:
    """Allow ``cls`` for ``weights_only`` loading (torch's list, darts' where darts is or gets imported) and teach
    ``yaml.dump`` to write its instances as ``plain(instance)``."""
    torch.serialization.add_safe_globals([cls])
    when_imported("darts", lambda _: _allow_in_darts(cls))
    try:
        import yaml
    except ImportError:  # (Lightning requires PyYAML; a loop of one's own may not have it)
        return
    for dumper in (yaml.Dumper, yaml.SafeDumper):
        dumper.add_multi_representer(cls, lambda d, obj: d.represent_dict(plain(obj)))


def _allow_in_darts(cls: type) -> None:
    try:
        from darts.utils.serialization import add_safe_globals
    except ImportError:  # a darts without its allow-list (before 0.35): it loads with full pickle anyway
        return
    add_safe_globals([cls])


def when_imported(name: str, then: Callable[[ModuleType], None]) -> None:
    """Call ``then(module)`` once module ``name`` is imported: now if it is, else right after its import finishes
    (a finder on ``sys.meta_path`` that wraps that one module's loader, and removes itself once it ran)."""
    if name in sys.modules:
        then(sys.modules[name])
        return
    sys.meta_path.insert(0, _AfterImport(name, then))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for module ``name`` it asks the other finders and wraps the loader they return."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]):
        self.name, self.then, self._asking = name, then, False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name or self._asking:
            return None
        self._asking = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._asking = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ThenLoader(spec.loader, self)
        return spec

    def ran(self, module: ModuleType) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.then(module)


class _ThenLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, hook: _AfterImport):
        self._loader, self._hook = loader, hook

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._loader
        self._loader.exec_module(module)
        self._hook.ran(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package ...: the real loader's
        return getattr(self._loader, name)
