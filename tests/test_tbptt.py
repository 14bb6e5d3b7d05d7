"""Truncated BPTT through the one optimization path: chunking, gradients per chunk, hidden-state carry."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from datamodules.synthetic import AddingProblem
from seqstab.core import tbptt
from seqstab.core.plain import map_tensors
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import SequenceRegressor
from tests.helpers import RecordingClip, RecordingGuard, TinyStream, quiet_trainer


def frozen_task(dm: TinyStream, cell: str, tbptt_steps: int | None, **kwargs) -> SequenceRegressor:
    """A task whose optimizer never moves the weights (SGD, lr 0), so gradients can be recomputed by hand."""
    task = SequenceRegressor(
        net=partial(RecurrentNet, cell=cell, hidden_size=5), spec=dm.spec, tbptt_steps=tbptt_steps, **kwargs
    )
    task.configure_optimizers = lambda: torch.optim.SGD(task.parameters(), lr=0.0)
    return task


def grads_by_hand(task, chunk, hidden):
    task.zero_grad(set_to_none=True)
    out, new_hidden = task(chunk["x"], hidden)
    task.reduce_loss(task.step_losses(out, chunk)["loss"], chunk.get("mask")).backward()
    return [p.grad.clone() for p in task.parameters()], tbptt.detach(new_hidden)


def test_chunks_have_length_k():
    batch = {"x": torch.zeros(2, 10, 3), "y": torch.zeros(2, 10), "mask": torch.ones(2, 10, dtype=torch.bool)}
    lengths = [c["x"].shape[1] for c in tbptt.chunks(batch, 4)]
    assert lengths == [4, 4, 2]
    assert all(c["y"].shape[1] == c["x"].shape[1] == c["mask"].shape[1] for c in tbptt.chunks(batch, 4))
    assert [c["x"].shape[1] for c in tbptt.chunks(batch, None)] == [10]
    assert [c["x"].shape[1] for c in tbptt.chunks(batch, 10)] == [10]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_k_at_least_length_equals_full_bptt(cell):
    torch.manual_seed(0)
    dm = TinyStream(window=8, stateful=False)
    task = frozen_task(dm, cell, tbptt_steps=8)
    task.clipping = clip = RecordingClip()
    batch = next(iter(dm.train_dataloader()))
    expected, _ = grads_by_hand(task, batch, None)
    quiet_trainer(max_steps=1).fit(task, dm)
    assert len(clip.grads) == 1
    for got, want in zip(clip.grads[0], expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_second_chunk_gradient_from_detached_state(cell):
    torch.manual_seed(0)
    dm = TinyStream(window=8, stateful=False)
    task = frozen_task(dm, cell, tbptt_steps=3)  # chunks of 3, 3, 2
    task.clipping = clip = RecordingClip()
    batch = next(iter(dm.train_dataloader()))
    first, second, third = tbptt.chunks(batch, 3)
    _, h1 = grads_by_hand(task, first, None)
    expected, h2 = grads_by_hand(task, second, h1)
    full, _ = grads_by_hand(task, batch, None)
    quiet_trainer(max_steps=3).fit(task, dm)
    assert len(clip.grads) == 3
    for got, want in zip(clip.grads[1], expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # and truncation really changed something: the chunk gradient is not the full-BPTT one
    assert any(not torch.allclose(g, f) for g, f in zip(clip.grads[1], full, strict=True))


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_stateful_carry_across_batches_and_reset_each_epoch(cell):
    torch.manual_seed(0)
    dm = TinyStream(length=16, window=8, stateful=True)  # 2 batches per epoch
    task = frozen_task(dm, cell, tbptt_steps=None)
    task.guard = guard = RecordingGuard()
    loader = list(dm.train_dataloader())
    _, after_first = grads_by_hand(task, loader[0], None)
    quiet_trainer(max_epochs=2).fit(task, dm)
    starts = guard.hidden_in
    assert len(starts) == 4
    assert starts[0] is None and starts[2] is None  # reset at each epoch start
    for got, want in zip(map_tensors(lambda t: t, starts[1]), after_first, strict=True):
        pair_got = got if isinstance(got, tuple) else (got,)
        pair_want = want if isinstance(want, tuple) else (want,)
        assert len(pair_got) == (2 if cell == "lstm" else 1)
        for g, w in zip(pair_got, pair_want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=0)
            assert not g.requires_grad  # the graph was cut


def test_carry_keeps_the_state_without_history():
    w = torch.ones(3, requires_grad=True)
    in_graph, plain = (w * 2,), (torch.zeros(3),)
    carry = tbptt.HiddenCarry()
    carry.put(in_graph, batch_size=1)
    assert not carry.get(1)[0].requires_grad and torch.equal(carry.get(1)[0], in_graph[0])
    carry.put(plain, batch_size=1)
    assert carry.get(1)[0] is plain[0]  # no graph: kept as it is, no detach per tensor per batch
    assert carry.get(2) is None  # another batch size starts from zeros


def test_stateless_data_starts_every_batch_from_zeros():
    dm = TinyStream(length=16, window=8, stateful=False)
    task = frozen_task(dm, "lstm", tbptt_steps=4)
    task.guard = guard = RecordingGuard()
    quiet_trainer(max_epochs=1).fit(task, dm)
    assert [h is None for h in guard.hidden_in] == [True, False, True, False]  # carried within a batch only


def test_max_steps_counts_updates_not_batches():
    dm = TinyStream(length=16, window=8, stateful=True)
    task = frozen_task(dm, "rnn", tbptt_steps=2)  # 4 updates per batch
    task.clipping = clip = RecordingClip()
    trainer = quiet_trainer(max_steps=5)
    trainer.fit(task, dm)
    assert len(clip.grads) == 5 and trainer.global_step == 5


def test_scored_flags_chunks_holding_a_scored_step():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[1, 9] = True  # one stream scored at its last step
    batch = {"x": torch.zeros(2, 10, 3), "mask": mask}
    assert tbptt.scored(batch, 4).tolist() == [False, False, True]
    assert tbptt.scored(batch, None).tolist() == [True]
    assert tbptt.scored({"x": batch["x"], "mask": torch.zeros(2, 10)}, None).tolist() == [False]
    assert tbptt.scored({"x": batch["x"]}, 4) is None  # no mask: every step is scored
    assert tbptt.scored({"x": batch["x"], "mask": mask[..., None].float()}, 5).tolist() == [False, True]  # (B, L, 1)


def test_chunks_without_loss_carry_the_state_and_make_no_update():
    """Scored at the last step only: of 4 chunks, 3 carry no loss. They are no update (Adam, whose momentum would
    move the weights even on a zero gradient, steps once per batch), and the scored chunk starts from the state the
    whole prefix leads to."""
    torch.manual_seed(0)
    data = AddingProblem(seq_len=40, num_train=16, num_val=16, num_test=16, batch_size=16)  # one batch
    task = SequenceRegressor(net=partial(RecurrentNet, cell="lstm", hidden_size=5), spec=data.spec, tbptt_steps=10)
    task.configure_optimizers = lambda: torch.optim.Adam(task.parameters(), lr=0.01, weight_decay=0.1)
    task.clipping, task.guard = clip, guard = RecordingClip(), RecordingGuard()
    data.setup("fit")
    data.train_dataloader = lambda: data._loader("train", shuffle=False)
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        _, prefix_hidden = task(batch["x"][:, :30])
    expected, _ = grads_by_hand(task, list(tbptt.chunks(batch, 10))[-1], prefix_hidden)
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(task, data)
    assert trainer.global_step == task.updates == len(clip.grads) == 1
    assert [state["step"].item() for state in trainer.optimizers[0].state.values()] == [1.0] * len(expected)
    torch.testing.assert_close(guard.hidden_in[0], prefix_hidden)
    for got, want in zip(clip.grads[0], expected, strict=True):
        torch.testing.assert_close(got, want)
