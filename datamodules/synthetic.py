"""Synthetic long-range tasks: sequence length ``T`` is a dial, data is a pure function of the seed.

Every task exposes its chance baseline in ``spec.chance_loss`` so a result reads against it.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.base import DataSpec, SeqDataModule
from seqstab.errors import check_positive


class _SampledTask(SeqDataModule):
    """Train/val/test sets drawn once from ``seed``; subclasses implement :meth:`sample`."""

    def __init__(
        self,
        seq_len: int = 100,
        num_train: int = 10_000,
        num_val: int = 1_000,
        num_test: int = 1_000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        check_positive(seq_len=seq_len, num_train=num_train, num_val=num_val, num_test=num_test, batch_size=batch_size)
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
        g = torch.Generator().manual_seed(seed)  # one generator, fixed order: the data is a function of the seed
        sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.splits = {split: self.sample(n, g) for split, n in sizes.items()}  # split -> (x, y, mask)

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Return ``(x, y, mask)`` tensors for ``n`` sequences."""
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        x, y, mask = self.splits[split]
        dataset = TensorDataset(x, y, mask)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=_as_dict,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _as_dict(items: list[tuple[torch.Tensor, ...]]) -> dict[str, torch.Tensor]:
    x, y, mask = (torch.stack(t) for t in zip(*items, strict=True))
    return {"x": x, "y": y, "mask": mask}


class AddingProblem(_SampledTask):
    """The adding problem (Hochreiter & Schmidhuber 1997): sum the two marked numbers among ``seq_len``.

    ``x[:, t] = (u_t, marker_t)`` with ``u_t ~ U[0, 1]``; one marker in each half of the sequence. The target
    is the sum of the two marked values, scored at the last step only. Predicting 1 always gives
    MSE = 2/12 ≈ 0.167 (the chance baseline).

    Args:
        seq_len: Sequence length ``T``.
        num_train: Training sequences.
        num_val: Validation sequences.
        num_test: Test sequences.
        batch_size: Sequences per batch.
        seed: Seed of the data; the same seed gives the same sequences.
        num_workers: DataLoader worker processes.
    """

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        t = self.seq_len
        values = torch.rand(n, t, generator=g)
        half = max(t // 2, 1)
        first = torch.randint(0, half, (n,), generator=g)
        second = torch.randint(half, t, (n,), generator=g) if t > 1 else first
        markers = torch.zeros(n, t)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        x = torch.stack([values, markers], dim=-1)  # (N, T, 2)
        y = torch.zeros(n, t, 1)
        y[:, -1, 0] = (values * markers).sum(dim=1)  # (N, T, 1): target at the last step
        mask = torch.zeros(n, t, dtype=torch.bool)
        mask[:, -1] = True
        return x, y, mask

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="regression", input_size=2, output_size=1, chance_loss=1 / 6)
