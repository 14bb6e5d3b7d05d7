"""seqstab: make exploding gradients in RNNs and LSTMs reproducible, visible and controllable.

The classes a user names are importable from here (``from seqstab import NormClip, ExplosionGuard``); each is
loaded on first use, so ``import seqstab`` costs nothing and imports no Lightning. The layers are folders:

==========================  =========================================================================================
``seqstab.core``            the stations without Lightning: update core, record, clipping, guard, diagnosis, monitor,
                            truncation
``seqstab.nets``            plain ``nn.Module`` recurrent nets (no Lightning)
``seqstab.data``            the data contract (``DataSpec``, ``SeqDataModule``), loaders, vocabularies
``seqstab.tasks``           the LightningModules: the chunk loop around the update core
``seqstab.lightning``       the Lightning glue: the callback, exact resume, checkpoint IO, the run manifest
``seqstab.cli``             the commands: ``train``, ``sweep``, ``replay``, ``generate``, ``score``
==========================  =========================================================================================

Module paths from before the folders (``seqstab.clipping``, ``seqstab.guard``, ``python -m seqstab.replay`` ...)
keep working: :mod:`seqstab._aliases`.
"""

from __future__ import annotations

import importlib
from typing import Any

from seqstab import _aliases

__version__ = "0.1.0"

_aliases.install()

_PUBLIC = {  # name -> the module that defines it
    # the update core and its record
    "UpdateCore": "seqstab.core.update",
    "Update": "seqstab.core.record",
    "Action": "seqstab.core.record",
    "StaticRun": "seqstab.core.record",
    # clipping policies
    "ClipPolicy": "seqstab.core.clipping",
    "ClipResult": "seqstab.core.clipping",
    "NoClip": "seqstab.core.clipping",
    "NormClip": "seqstab.core.clipping",
    "ValueClip": "seqstab.core.clipping",
    "PerParameterNormClip": "seqstab.core.clipping",
    "AGC": "seqstab.core.clipping",
    "AutoClip": "seqstab.core.clipping",
    "ZClip": "seqstab.core.clipping",
    "AdaGC": "seqstab.core.clipping",
    # guard and monitor
    "ExplosionGuard": "seqstab.core.guard",
    "GradMonitor": "seqstab.core.monitor",
    # truncation policies
    "Full": "seqstab.core.tbptt",
    "Fixed": "seqstab.core.tbptt",
    "Overlapping": "seqstab.core.tbptt",
    "VariableLength": "seqstab.core.tbptt",
    "Unbiased": "seqstab.core.tbptt",
    # nets
    "RecurrentNet": "seqstab.nets",
    # data contract
    "DataSpec": "seqstab.data",
    "SeqDataModule": "seqstab.data",
    # tasks
    "SeqTask": "seqstab.tasks",
    "LanguageModel": "seqstab.tasks",
    "Forecaster": "seqstab.tasks",
    "SequenceRegressor": "seqstab.tasks",
    "SequenceClassifier": "seqstab.tasks",
    # the callback for any LightningModule
    "GradientStability": "seqstab.lightning.callbacks",
    # errors
    "SeqstabError": "seqstab.core.errors",
    "ConfigError": "seqstab.core.errors",
    "DataError": "seqstab.core.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'seqstab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
