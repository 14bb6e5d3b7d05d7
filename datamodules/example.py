"""A complete custom datamodule: copy this file, replace the data, keep the three parts.

1. ``__init__`` takes typed arguments (they become ``--data.*`` options and YAML keys) and builds the data.
2. ``spec`` says what the batches are for and their sizes; the CLI hands it to the model.
3. The dataloaders yield batches as dicts: ``x``, ``y`` and an optional ``mask``, time on dim 1
   (the contract in :mod:`datamodules.base`).

Train it from anywhere this module is importable::

    python -m seqstab.train fit --model seqstab.tasks.SequenceRegressor --data mymodule.DelayedEcho --data.delay 10
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.base import DataSpec, SeqDataModule
from seqstab.core.errors import ConfigError


class DelayedEcho(SeqDataModule):
    """Repeat the input ``delay`` steps later: ``y[t] = x[t - delay]``; the first ``delay`` steps carry no loss.

    Args:
        seq_len: Steps per sequence.
        delay: How far back the target lies; the memory the model needs.
        num_sequences: Sequences in all; a fifth go to validation.
        batch_size: Sequences per batch.
        seed: Seed of the data.
    """

    def __init__(
        self, seq_len: int = 50, delay: int = 5, num_sequences: int = 1000, batch_size: int = 32, seed: int = 0
    ):
        super().__init__()
        if not 0 < delay < seq_len:
            raise ConfigError(f"delay={delay}: must be between 1 and seq_len - 1")  # the CLI prints it as one line
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(num_sequences, seq_len, 1, generator=g)  # (N, L, 1)
        y = torch.zeros_like(x)  # (N, L, 1)
        y[:, delay:] = x[:, : seq_len - delay]
        mask = torch.arange(seq_len).expand(num_sequences, seq_len) >= delay  # (N, L)
        n_val = num_sequences // 5
        self.train_set = TensorDataset(x[n_val:], y[n_val:], mask[n_val:])
        self.val_set = TensorDataset(x[:n_val], y[:n_val], mask[:n_val])
        self.batch_size = batch_size

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="regression", input_size=1, output_size=1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=to_batch)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=to_batch)


def to_batch(items: list[tuple[torch.Tensor, ...]]) -> dict[str, torch.Tensor]:
    """Stack ``(x, y, mask)`` samples into the batch dict the tasks consume."""
    x, y, mask = (torch.stack(column) for column in zip(*items, strict=True))
    return {"x": x, "y": y, "mask": mask}  # (B, L, 1), (B, L, 1), (B, L)
