"""The data contract every datamodule keeps (:class:`DataSpec`, :class:`SeqDataModule`), the loaders that make a
resume exact, and vocabularies. The datamodules themselves are the top-level package ``datamodules``."""

from seqstab.data.module import DataSpec, SeqDataModule, TaskKind, as_spec

__all__ = ["DataSpec", "SeqDataModule", "TaskKind", "as_spec"]
