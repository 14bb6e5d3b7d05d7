"""Synthetic long-range tasks: sequence length ``T`` is a dial, data is a pure function of the seed.

Every task exposes its chance baseline in ``spec.chance_loss`` so a result reads against it. Every task can plant a
data outlier: ``spike_batch`` / ``spike_scale`` scale one training batch (``configs/explode/cause_data.yaml``: the
explosion guard stops there and its diagnosis names the data), and a NaN: ``nan_batch`` / ``nan_row`` put one in a
single row of one training batch (``configs/nan/nan_input.yaml``: the event's diagnosis says where it came from).
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, TensorDataset

from datamodules.base import DataSpec, SeqDataModule
from seqstab.core.errors import ConfigError, check_count, check_non_negative, check_positive

__all__ = ["AddingProblem", "CopyingMemory", "TemporalOrder"]


class _SampledTask(SeqDataModule):
    """Train/val/test sets drawn once from ``seed``; subclasses implement :meth:`sample`."""

    min_seq_len = 1  # the shortest sequence the task is defined for

    def __init__(
        self,
        seq_len: int = 100,
        num_train: int = 10_000,
        num_val: int = 1_000,
        num_test: int = 1_000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        spike_batch: int | None = None,
        spike_scale: float | None = None,
        nan_batch: int | None = None,
        nan_row: int | None = None,
    ):
        super().__init__()
        check_positive(seq_len=seq_len, num_train=num_train, num_val=num_val, num_test=num_test, batch_size=batch_size)
        check_non_negative(num_workers=num_workers)
        if seq_len < self.min_seq_len:
            raise ConfigError(f"seq_len={seq_len}: {type(self).__name__} needs at least {self.min_seq_len} steps")
        check_count("spike_batch", spike_batch, minimum=0)
        if (spike_batch is None) != (spike_scale is None):
            given, missing = ("spike_batch", "spike_scale") if spike_scale is None else ("spike_scale", "spike_batch")
            raise ConfigError(f"{given} is set but {missing} is not: a planted spike needs both")
        if spike_scale is not None and not math.isfinite(spike_scale):
            raise ConfigError(f"spike_scale={spike_scale!r}: must be finite")
        check_count("nan_batch", nan_batch, minimum=0)
        if nan_row is not None and nan_batch is None:
            raise ConfigError("nan_row is set but nan_batch is not: a planted NaN needs the batch it goes in")
        if nan_row is not None and not (isinstance(nan_row, int) and 0 <= nan_row < batch_size):
            raise ConfigError(f"nan_row={nan_row!r}: must be an integer in [0, batch_size={batch_size})")
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
        self.spike_batch, self.spike_scale = spike_batch, spike_scale
        self.nan_batch, self.nan_row = nan_batch, nan_row
        g = torch.Generator().manual_seed(seed)  # one generator, fixed order: the data is a function of the seed
        sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.splits = {split: self.sample(n, g) for split, n in sizes.items()}  # split -> (x, y, mask)

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Return ``(x, y, mask)`` tensors for ``n`` sequences."""
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        x, y, mask = self.splits[split]
        dataset = TensorDataset(x, y, mask)
        if split == "train" and (self.spike_batch is not None or self.nan_batch is not None):
            batches = _SpikedBatches(RandomSampler(dataset), self.batch_size, self.spike_batch, self.spike_scale)
            batches.plant_nan(self.nan_batch, self.nan_row or 0, x.shape[1] // 2)
            return DataLoader(
                _Spiked(dataset), batch_sampler=batches, num_workers=self.num_workers, collate_fn=_as_dict
            )
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


class _SpikedBatches(BatchSampler):
    """The batches a shuffled ``DataLoader`` would draw (the same order, from the same random stream), each index
    paired with a scale: ``spike_scale`` in the ``spike_batch``-th batch drawn (0-based, counted across epochs), 1
    elsewhere, and with the step to make NaN in row ``nan_row`` of the ``nan_batch``-th batch (None elsewhere). It runs
    in the main process, so worker processes do not each count their own batches."""

    def __init__(self, sampler: RandomSampler, batch_size: int, spike_batch: int | None, spike_scale: float | None):
        super().__init__(sampler, batch_size, drop_last=False)
        self.spike_batch, self.spike_scale, self.drawn = spike_batch, spike_scale, 0
        self.nan_batch, self.nan_row, self.nan_step = None, 0, 0

    def plant_nan(self, batch: int | None, row: int, step: int) -> None:
        self.nan_batch, self.nan_row, self.nan_step = batch, row, step

    def __iter__(self):
        for indices in super().__iter__():
            scale = self.spike_scale if self.drawn == self.spike_batch else None
            nan_row = self.nan_row if self.drawn == self.nan_batch else None
            self.drawn += 1
            yield [(i, scale, self.nan_step if j == nan_row else None) for j, i in enumerate(indices)]


class _Spiked(Dataset):
    """A ``(x, y, mask)`` dataset read by ``(index, scale, nan_step)``: with a scale, ``x`` (and ``y`` where it holds
    values, not classes) multiplied by it; with a step, ``x`` NaN at that step."""

    def __init__(self, dataset: TensorDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, float | None, int | None]) -> tuple[torch.Tensor, ...]:
        index, scale, nan_step = item
        x, y, mask = self.dataset[index]
        if scale is not None:
            x, y = x * scale, y * scale if y.is_floating_point() else y
        if nan_step is not None:
            x = x.clone()  # (T, F): a copy, the dataset's own tensor stays clean
            x[nan_step] = math.nan
        return x, y, mask


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
        spike_batch: Plant a data outlier: this training batch (0-based, counted across the epochs of this process) has
            its inputs and targets multiplied by ``spike_scale``; None (default): no outlier.
        spike_scale: The outlier's factor (with ``spike_batch``), e.g. ``1e4``.
        nan_batch: Plant a NaN: in this training batch (0-based, counted like ``spike_batch``) one row's input is NaN
            at its middle step (``seq_len // 2``); None (default): none.
        nan_row: The row of ``nan_batch`` that gets it (in a full batch); None: row 0.
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


class CopyingMemory(_SampledTask):
    """Copying memory (Arjovsky, Shah & Bengio 2016): recall ``copy_length`` symbols after a gap of ``seq_len``.

    Input one-hot over ``num_symbols + 2`` (the symbols, blank, delimiter); length ``seq_len + 2·copy_length``::

        s_1 … s_K   blank × (T - 1)   delimiter   blank × K          (K = copy_length, T = seq_len)
        target:     blank × (T + K)                s_1 … s_K

    Every step is scored (classes: the symbols, then blank). A memoryless model that outputs blank for the first
    ``T + K`` steps and a uniform guess for the last ``K`` reaches cross-entropy ``K·log(num_symbols) / (T + 2K)``:
    the chance baseline, ``10·log(8)/(T+20)`` with the defaults.

    Args:
        seq_len: Delay ``T`` between the last symbol and the delimiter's echo.
        copy_length: Symbols to copy ``K``.
        num_symbols: Alphabet size.
        num_train: Training sequences.
        num_val: Validation sequences.
        num_test: Test sequences.
        batch_size: Sequences per batch.
        seed: Seed of the data; the same seed gives the same sequences.
        num_workers: DataLoader worker processes.
        spike_batch: Plant a data outlier: this training batch (0-based, counted across the epochs of this process) has
            its inputs multiplied by ``spike_scale`` (the targets are classes: unchanged); None (default): no outlier.
        spike_scale: The outlier's factor (with ``spike_batch``), e.g. ``1e4``.
        nan_batch: Plant a NaN: in this training batch (0-based, counted like ``spike_batch``) one row's input is NaN
            at its middle step (``seq_len // 2``); None (default): none.
        nan_row: The row of ``nan_batch`` that gets it (in a full batch); None: row 0.
    """

    def __init__(
        self,
        seq_len: int = 100,
        copy_length: int = 10,
        num_symbols: int = 8,
        num_train: int = 10_000,
        num_val: int = 1_000,
        num_test: int = 1_000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        spike_batch: int | None = None,
        spike_scale: float | None = None,
        nan_batch: int | None = None,
        nan_row: int | None = None,
    ):
        check_positive(copy_length=copy_length, num_symbols=num_symbols)
        self.copy_length, self.num_symbols = copy_length, num_symbols
        super().__init__(
            seq_len,
            num_train,
            num_val,
            num_test,
            batch_size,
            seed,
            num_workers,
            spike_batch,
            spike_scale,
            nan_batch,
            nan_row,
        )

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        t, k, blank = self.seq_len, self.copy_length, self.num_symbols
        length = t + 2 * k
        symbols = torch.randint(0, self.num_symbols, (n, k), generator=g)  # (N, K)
        tokens = torch.full((n, length), blank)  # (N, T + 2K)
        tokens[:, :k] = symbols
        tokens[:, t + k - 1] = blank + 1  # the delimiter
        x = torch.nn.functional.one_hot(tokens, self.num_symbols + 2).float()  # (N, T + 2K, S + 2)
        y = torch.full((n, length), blank)  # (N, T + 2K) class ids
        y[:, -k:] = symbols
        return x, y, torch.ones(n, length, dtype=torch.bool)

    @property
    def spec(self) -> DataSpec:
        chance = self.copy_length * math.log(self.num_symbols) / (self.seq_len + 2 * self.copy_length)
        return DataSpec(
            kind="classification", input_size=self.num_symbols + 2, output_size=self.num_symbols + 1, chance_loss=chance
        )


class TemporalOrder(_SampledTask):
    """Temporal order (Hochreiter & Schmidhuber 1997, experiment 6a), as Pascanu et al. (2013) generate it.

    Each of ``seq_len`` steps is one of 6 symbols, one-hot: ``A``, ``B`` (relevant) and ``c``-``f``
    (distractors). One relevant symbol sits at a random step in ``[T/10, 2T/10)``, another in ``[5T/10, 6T/10)``;
    every other step is a random distractor. At the last step the model names their order, one of 4 classes
    (``AA``, ``BA``, ``AB``, ``BB`` = first + 2·second). Chance: cross-entropy ``log 4`` ≈ 1.386, accuracy 25%.

    Args:
        seq_len: Sequence length ``T`` (at least 10).
        num_train: Training sequences.
        num_val: Validation sequences.
        num_test: Test sequences.
        batch_size: Sequences per batch.
        seed: Seed of the data; the same seed gives the same sequences.
        num_workers: DataLoader worker processes.
        spike_batch: Plant a data outlier: this training batch (0-based, counted across the epochs of this process) has
            its inputs multiplied by ``spike_scale`` (the targets are classes: unchanged); None (default): no outlier.
        spike_scale: The outlier's factor (with ``spike_batch``), e.g. ``1e4``.
        nan_batch: Plant a NaN: in this training batch (0-based, counted like ``spike_batch``) one row's input is NaN
            at its middle step (``seq_len // 2``); None (default): none.
        nan_row: The row of ``nan_batch`` that gets it (in a full batch); None: row 0.
    """

    min_seq_len = 10

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        t = self.seq_len
        span = t // 10
        tokens = torch.randint(2, 6, (n, t), generator=g)  # (N, T) distractors c..f
        first_at = torch.randint(span, 2 * span, (n,), generator=g)
        second_at = torch.randint(5 * span, 6 * span, (n,), generator=g)
        first = torch.randint(0, 2, (n,), generator=g)  # A = 0, B = 1
        second = torch.randint(0, 2, (n,), generator=g)
        rows = torch.arange(n)
        tokens[rows, first_at] = first
        tokens[rows, second_at] = second
        x = torch.nn.functional.one_hot(tokens, 6).float()  # (N, T, 6)
        y = torch.zeros(n, t, dtype=torch.long)
        y[:, -1] = first + 2 * second  # (N, T): the class at the last step
        mask = torch.zeros(n, t, dtype=torch.bool)
        mask[:, -1] = True
        return x, y, mask

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="classification", input_size=6, output_size=4, chance_loss=math.log(4))
