"""Synthetic long-range tasks: layout, determinism from the seed, and the chance baselines they expose."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.synthetic import AddingProblem, CopyingMemory, TemporalOrder, _as_dict
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


# -- a planted data outlier: spike_batch / spike_scale ------------------------------------------------------------


def _fixture_batches(dm: AddingProblem, spike_batch: int, spike_scale: float, epochs: int) -> list[dict]:
    """The batches the former test fixture (tests.datamodules.spiked.SpikedAdding) made: a shuffled loader whose
    collate scaled the ``spike_batch``-th batch of the run, counted across epochs."""
    loader = DataLoader(TensorDataset(*dm.splits["train"]), batch_size=dm.batch_size, shuffle=True, collate_fn=_as_dict)
    batches = [batch for _ in range(epochs) for batch in loader]
    spiked = batches[spike_batch]
    spiked["x"], spiked["y"] = spiked["x"] * spike_scale, spiked["y"] * spike_scale
    return batches


@pytest.mark.parametrize("workers", [0, 2])
def test_a_planted_spike_makes_the_batches_the_fixture_made(workers):
    """Two epochs of 5 batches, the spike in the second epoch: every batch bitwise the fixture's, also when worker
    processes collate (each would have counted its own batches in the fixture)."""
    kwargs = {"seq_len": 20, "num_train": 160, "num_val": 8, "num_test": 8, "batch_size": 32}
    torch.manual_seed(0)
    expected = _fixture_batches(AddingProblem(**kwargs), spike_batch=7, spike_scale=1e4, epochs=2)
    dm = AddingProblem(**kwargs, spike_batch=7, spike_scale=1e4, num_workers=workers)
    torch.manual_seed(0)
    loader = dm.train_dataloader()
    got = [batch for _ in range(2) for batch in loader]
    assert len(got) == len(expected) == 10
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert all(torch.equal(a[k], b[k]) for k in ("x", "y", "mask")), i
    assert got[7]["x"].abs().max() > 1e3 and all(batch["x"].abs().max() <= 1 for j, batch in enumerate(got) if j != 7)
    torch.manual_seed(0)
    plain = [batch for _ in range(2) for batch in AddingProblem(**kwargs).train_dataloader()]
    assert all(torch.equal(a["x"], b["x"]) for j, (a, b) in enumerate(zip(got, plain, strict=True)) if j != 7)


def test_a_spike_on_a_classification_task_scales_the_inputs_not_the_classes():
    torch.manual_seed(0)
    (spiked, *_) = CopyingMemory(seq_len=5, batch_size=8, spike_batch=0, spike_scale=100.0, **SMALL).train_dataloader()
    torch.manual_seed(0)
    (plain, *_) = CopyingMemory(seq_len=5, batch_size=8, **SMALL).train_dataloader()
    assert torch.equal(spiked["x"], plain["x"] * 100) and torch.equal(spiked["y"], plain["y"])


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"spike_batch": 3}, "spike_batch is set but spike_scale is not: a planted spike needs both"),
        ({"spike_scale": 1e4}, "spike_scale is set but spike_batch is not: a planted spike needs both"),
        ({"spike_batch": -1, "spike_scale": 1e4}, "spike_batch=-1: must be an integer >= 0"),
        ({"spike_batch": 1, "spike_scale": math.inf}, "spike_scale=inf: must be finite"),
    ],
)
def test_a_half_given_spike_is_a_config_error(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        AddingProblem(**SMALL, **kwargs)
    assert needle in str(err.value)
