"""Synthetic long-range tasks: layout, determinism from the seed, and the chance baselines they expose."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules.synthetic import AddingProblem, CopyingMemory, TemporalOrder
from seqstab.core.errors import ConfigError

SMALL = {"num_train": 64, "num_val": 16, "num_test": 16}


@pytest.mark.parametrize("task", [AddingProblem, CopyingMemory, TemporalOrder])
def test_data_is_a_function_of_the_seed(task):
    a, b, c = task(seq_len=30, seed=3, **SMALL), task(seq_len=30, seed=3, **SMALL), task(seq_len=30, seed=4, **SMALL)
    for split in ("train", "val", "test"):
        assert all(torch.equal(u, v) for u, v in zip(a.splits[split], b.splits[split], strict=True))
    assert not torch.equal(a.splits["train"][0], c.splits["train"][0])


def test_adding_problem_target_and_chance():
    dm = AddingProblem(seq_len=50, num_train=20_000, num_val=10, num_test=10)
    x, y, mask = dm.splits["train"]
    assert torch.equal(x[..., 1].sum(dim=1), torch.full((20_000,), 2.0))  # two markers
    torch.testing.assert_close(y[:, -1, 0], (x[..., 0] * x[..., 1]).sum(dim=1))
    assert mask[:, -1].all() and not mask[:, :-1].any()
    assert ((y[:, -1, 0] - 1) ** 2).mean().item() == pytest.approx(dm.spec.chance_loss, abs=0.01)  # predict 1: 1/6


def test_copying_memory_layout_and_chance():
    t, k = 25, 10
    dm = CopyingMemory(seq_len=t, seed=1, **SMALL)
    x, y, mask = dm.splits["train"]
    assert x.shape == (64, t + 2 * k, 10) and y.shape == (64, t + 2 * k) and y.dtype == torch.int64 and mask.all()
    tokens = x.argmax(dim=-1)  # (N, T + 2K): 0..7 symbols, 8 blank, 9 delimiter
    assert (tokens[:, :k] < 8).all() and (tokens[:, k : t + k - 1] == 8).all()
    assert (tokens[:, t + k - 1] == 9).all() and (tokens[:, t + k :] == 8).all()
    assert torch.equal(y[:, -k:], tokens[:, :k]) and (y[:, : t + k] == 8).all()
    # the memoryless baseline: blank with certainty, then a uniform guess over the 8 symbols
    log_p = torch.full((t + 2 * k, 9), -math.inf)
    log_p[: t + k, 8] = 0.0
    log_p[t + k :, :8] = -math.log(8)
    nll = -log_p.expand(64, -1, -1).gather(-1, y[..., None]).squeeze(-1)  # (N, T + 2K)
    assert nll.mean().item() == pytest.approx(dm.spec.chance_loss)
    assert dm.spec.chance_loss == pytest.approx(10 * math.log(8) / (t + 20))
    assert (dm.spec.kind, dm.spec.input_size, dm.spec.output_size) == ("classification", 10, 9)


def test_temporal_order_layout_classes_and_chance():
    t = 60
    dm = TemporalOrder(seq_len=t, num_train=4000, num_val=10, num_test=10)
    x, y, mask = dm.splits["train"]
    tokens = x.argmax(dim=-1)  # (N, T): 0 = A, 1 = B, 2..5 distractors
    relevant = tokens < 2
    assert (relevant.sum(dim=1) == 2).all()
    assert relevant[:, 6:12].sum(dim=1).eq(1).all() and relevant[:, 30:36].sum(dim=1).eq(1).all()
    first = tokens[:, 6:12].min(dim=1).values
    second = tokens[:, 30:36].min(dim=1).values
    assert torch.equal(y[:, -1], first + 2 * second) and mask[:, -1].all() and not mask[:, :-1].any()
    shares = torch.bincount(y[:, -1], minlength=4) / 4000
    assert ((shares - 0.25).abs() < 0.03).all()  # balanced classes: log 4 is the chance loss
    assert dm.spec.chance_loss == pytest.approx(math.log(4)) and dm.spec.output_size == 4
    with pytest.raises(ConfigError, match="seq_len=9"):
        TemporalOrder(seq_len=9)


def test_batches_follow_the_contract():
    batch = next(iter(CopyingMemory(seq_len=5, batch_size=8, **SMALL).train_dataloader()))
    assert batch["x"].shape == (8, 25, 10) and batch["x"].dtype == torch.float32
    assert batch["y"].shape == (8, 25) and batch["mask"].dtype == torch.bool
