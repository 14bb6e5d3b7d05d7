"""The module paths seqstab had before its layers became folders, and where each now lives.

Configs, checkpoints, replay snapshots and users' code name classes by these paths (``seqstab.clipping.NormClip``,
``seqstab.guard.ExplosionGuard``, ``python -m seqstab.replay``); they keep working, and name the very same objects as
the new paths: importing ``seqstab.clipping`` gives the module ``seqstab.core.clipping`` itself, not a copy, so
``isinstance`` checks, pickles and jsonargparse class paths agree whichever path was used. ``python -m`` of an old
path runs the new module's code as ``__main__``.

:func:`install` puts the finder on ``sys.meta_path``; ``import seqstab`` calls it, before any old path can be asked
for. (``seqstab.tasks``, ``seqstab.nets``, ``seqstab.data`` and ``seqstab.cli`` are packages of the same name now:
they re-export what the old modules held.)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

ALIASES = {  # the path before the layout change -> the module that holds it now
    "seqstab.callbacks": "seqstab.lightning.callbacks",
    "seqstab.checkpoint": "seqstab.core.io",
    "seqstab.clipping": "seqstab.core.clipping",
    "seqstab.diagnose": "seqstab.core.diagnose",
    "seqstab.errors": "seqstab.core.errors",
    "seqstab.example_net": "seqstab.nets.example",
    "seqstab.forecast": "seqstab.nets.decoder",
    "seqstab.fused": "seqstab.nets.fused",
    "seqstab.generate": "seqstab.cli.generate",
    "seqstab.guard": "seqstab.core.guard",
    "seqstab.lm": "seqstab.cli.lm",
    "seqstab.manifest": "seqstab.lightning.manifest",
    "seqstab.monitor": "seqstab.core.monitor",
    "seqstab.predictions": "seqstab.lightning.predictions",
    "seqstab.recipes": "seqstab.core.recipes",
    "seqstab.record": "seqstab.core.record",
    "seqstab.replay": "seqstab.cli.replay",
    "seqstab.resume": "seqstab.lightning.resume",
    "seqstab.score": "seqstab.cli.score",
    "seqstab.search": "seqstab.cli.sweep.search",
    "seqstab.spectra": "seqstab.core.monitor.spectra",
    "seqstab.sweep": "seqstab.cli.sweep",
    "seqstab.tbptt": "seqstab.core.tbptt",
    "seqstab.train": "seqstab.cli.train",
    "seqstab.trainer_run": "seqstab.lightning.trainer_run",
    "seqstab.update": "seqstab.core.update",
    "seqstab.vocab": "seqstab.data.vocab",
}


def canonical(path: str) -> str:
    """A module or class path with an old module prefix replaced by its new one (``seqstab.clipping.NormClip`` ->
    ``seqstab.core.clipping.NormClip``); any other path as it is."""
    head = path
    while head:
        if head in ALIASES:
            return ALIASES[head] + path[len(head) :]
        head = head.rpartition(".")[0]
    return path


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        new = ALIASES.get(fullname)
        if new is None:
            return None
        found = importlib.util.find_spec(new)
        if found is None:
            return None
        spec = importlib.util.spec_from_loader(fullname, _AliasLoader(new), origin=found.origin)
        spec.submodule_search_locations = found.submodule_search_locations  # a package: python -m runs __main__
        return spec


class _AliasLoader(importlib.abc.Loader):
    """Loads an old path as the module of its new one (the same object); gives ``python -m`` the new one's code."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec  # the import system set the old path's spec on the shared module: put it back

    def get_code(self, fullname: str):
        spec = importlib.util.find_spec(self.target)
        return spec.loader.get_code(self.target)

    def is_package(self, fullname: str) -> bool:
        return False


def install() -> None:
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
