"""Loaders that make a resume exact: where an epoch stands (:class:`ResumableLoader`), evaluation that leaves the
training random stream alone (:class:`QuietLoader`), and stateful streams kept in order under DDP
(:func:`in_order_across_ranks`). Plain ``torch.utils.data`` (no Lightning); Lightning keeps a loader's
``state_dict`` in its checkpoint and hands it back on resume.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, SequentialSampler

from seqstab import internals
from seqstab.core.tbptt import scored_steps

__all__ = [
    "SCORED_STEPS",
    "QuietLoader",
    "ResumableLoader",
    "in_order_across_ranks",
    "make_quiet",
    "make_resumable",
    "note_scored_steps",
]

SCORED_STEPS = "scored_steps"  # what a training batch with a mask carries: which steps are scored, as host booleans


# -- position within the epoch ----------------------------------------------------------------------------------


class ResumableLoader(DataLoader):
    """A ``DataLoader`` that can continue an epoch mid-way, drawing the same batch order.

    ``state_dict()`` holds the number of batches handed out in the current epoch and the RNG states the epoch's
    order was drawn from (the global torch RNG, the loader's and its sampler's generators). After
    ``load_state_dict()``, the next ``iter()`` restores those RNGs, rebuilds the same order, skips the batches
    already trained on, and puts the RNGs back as they were: the caller's random stream is not disturbed.

    Skipping reads the skipped batches (cheap for in-memory datasets; no training happens on them). Lightning
    calls ``state_dict``/``load_state_dict`` itself for any loader with these methods.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"batches": getattr(self, "_seqstab_batches", 0), "rng": getattr(self, "_seqstab_rng", None)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._seqstab_resume = state

    def __iter__(self):
        resume, self._seqstab_resume = getattr(self, "_seqstab_resume", None), None
        rewind, self._seqstab_rewind = getattr(self, "_seqstab_rewind", None), None
        skip = int(resume["batches"]) if resume and resume.get("rng") is not None else 0
        if not 0 < skip < len(self):
            skip = 0  # nothing to skip, or the saved epoch had ended: a fresh epoch from the current RNG
        if skip:
            current = self._order_rng()
            self._set_order_rng(resume["rng"])
        elif rewind is not None and self._seqstab_batches == 0 and _same(self._order_rng(), rewind[1]):
            self._set_order_rng(rewind[0])  # iterated again with nothing read in between: the same epoch again
        self._seqstab_rng = self._order_rng()
        iterator = super().__iter__()
        for _ in range(skip):
            next(iterator)
        if skip:
            self._set_order_rng(current)
        elif resume is not None:  # Lightning may iterate a second time when it resumes at an epoch boundary
            self._seqstab_rewind = (self._seqstab_rng, self._order_rng())
        self._seqstab_batches = skip
        return self._counting(iterator)

    def _counting(self, iterator):
        for batch in iterator:
            self._seqstab_batches += 1
            yield batch

    def _generators(self) -> dict[str, torch.Generator]:
        found = {"loader": self.generator}
        sampler = self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler
        found["sampler"] = getattr(sampler, "generator", None)
        return {name: g for name, g in found.items() if isinstance(g, torch.Generator)}

    def _order_rng(self) -> dict[str, torch.Tensor]:
        state = {"torch": torch.get_rng_state()}
        state.update({name: g.get_state() for name, g in self._generators().items()})
        return state

    def _set_order_rng(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["torch"])
        for name, g in self._generators().items():
            if name in state:
                g.set_state(state[name])


class QuietLoader(DataLoader):
    """A ``DataLoader`` whose ``iter()`` leaves the global torch RNG as it found it.

    ``DataLoader.__iter__`` draws a worker base seed from the global RNG even when nothing is shuffled. For
    evaluation loaders inside ``fit`` that draw would shift the training random stream (dropout masks, the next
    epoch's order) depending on when validation runs, and Lightning iterates the validation loader without running
    it when it resumes at a batch where validation was due. seqstab's tasks make validation loaders quiet.
    """

    def __iter__(self):
        state = torch.get_rng_state()
        try:
            return super().__iter__()
        finally:
            torch.set_rng_state(state)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def make_resumable(loader: Any) -> Any:
    """Turn a plain map-style ``torch.utils.data.DataLoader`` into a :class:`ResumableLoader` (same object).

    Anything else comes back unchanged: a loader that already has ``state_dict`` (e.g. torchdata's
    ``StatefulDataLoader``, which Lightning resumes itself), a ``DataLoader`` subclass, an iterable dataset.
    """
    if type(loader) is DataLoader and not isinstance(loader.dataset, IterableDataset):
        internals.retype(loader, ResumableLoader)
    return loader


def make_quiet(loaders: Any) -> Any:
    """Turn plain ``DataLoader`` objects (one, or a list/tuple/dict of them) into :class:`QuietLoader` in place."""
    if isinstance(loaders, dict):
        values = list(loaders.values())
    else:
        values = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
    for loader in values:
        if type(loader) is DataLoader:
            internals.retype(loader, QuietLoader)
    return loaders


# -- stateful streams under DDP -----------------------------------------------------------------------------------


def in_order_across_ranks(loader: DataLoader) -> DataLoader:
    """Under DDP, the same loader with an unshuffled ``DistributedSampler``: rank ``r`` reads items ``r, r + W, ...``
    in order (Lightning would inject a shuffling one for training). Without DDP, or for a loader with a sampler or
    batch sampler of its own, the loader itself."""
    dist = torch.distributed
    if not (isinstance(loader, DataLoader) and dist.is_available() and dist.is_initialized()):
        return loader
    if dist.get_world_size() == 1:
        return loader
    custom_batches = loader.batch_size is None and loader.batch_sampler is not None
    if custom_batches or not isinstance(loader.sampler, SequentialSampler):
        return loader  # the datamodule chose its own sampling
    sampler = DistributedSampler(loader.dataset, shuffle=False, drop_last=False)
    workers = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers}
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        **(workers if loader.num_workers > 0 else {}),
    )


class NoteScoredSteps:
    """A collate function that adds to a batch with a ``mask`` which of its steps are scored (a tuple of bools,
    :data:`SCORED_STEPS`), read from the batch as the loader made it: the chunk loop then knows which windows to
    train without reading the mask back from the device. Picklable (worker processes)."""

    def __init__(self, collate: Any):
        self.collate = collate

    def __call__(self, samples: Any) -> Any:
        batch = self.collate(samples)
        if isinstance(batch, dict) and isinstance(batch.get("mask"), torch.Tensor):
            batch[SCORED_STEPS] = tuple(scored_steps(batch["mask"]).tolist())
        return batch


def note_scored_steps(loader: Any) -> Any:
    """The same loader, its batches noting their scored steps (:class:`NoteScoredSteps`); anything else unchanged."""
    if isinstance(loader, DataLoader) and not isinstance(loader.collate_fn, NoteScoredSteps):
        loader.collate_fn = NoteScoredSteps(loader.collate_fn)
    return loader
