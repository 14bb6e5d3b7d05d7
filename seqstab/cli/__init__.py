"""The commands: ``seqstab`` (:mod:`seqstab.cli.command`) dispatches to ``train``, ``sweep``, ``replay``, ``generate``
and ``score``, each also ``python -m seqstab.cli.<command>`` (and ``python -m seqstab.<command>``)."""

from seqstab.cli.command import main

__all__ = ["main"]
