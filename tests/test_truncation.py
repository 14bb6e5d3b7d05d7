"""Truncation policies against hand-built cases: Overlapping(k1, k2) unrolled by hand, Fixed(k) against the golden
fixture, VariableLength across a resume, Unbiased in expectation, and the bias metric through the CLI."""

from __future__ import annotations

import copy
import os
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from seqstab.cli.train import main
from seqstab.core import tbptt
from seqstab.core.errors import ConfigError
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import SequenceRegressor
from tests.helpers import RecordingClip, TinyStream, quiet_trainer, scalars

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def regressor(dm: TinyStream, lr: float = 0.0, **kwargs) -> SequenceRegressor:
    task = SequenceRegressor(net=partial(RecurrentNet, cell="rnn", hidden_size=5), spec=dm.spec, **kwargs)
    task.configure_optimizers = lambda: torch.optim.SGD(task.parameters(), lr=lr)
    return task


def step_by_step(task, x, hidden):
    """The net run one step at a time (no window machinery): outputs ``(B, n, 1)`` and the final state."""
    outs = []
    for t in range(x.shape[1]):
        out, hidden = task(x[:, t : t + 1], hidden)
        outs.append(out)
    return torch.cat(outs, dim=1), hidden


# -- the windows each policy cuts -----------------------------------------------------------------------------


def test_windows_of_each_policy():
    spans = lambda ws: [(w.start, w.score_from, w.stop) for w in ws]  # noqa: E731
    assert spans(tbptt.Full().windows(8)) == [(0, 0, 8)]
    assert spans(tbptt.Fixed(3).windows(8)) == [(0, 0, 3), (3, 3, 6), (6, 6, 8)]
    assert spans(tbptt.Overlapping(2, 4).windows(8)) == [(0, 0, 2), (0, 2, 4), (2, 4, 6), (4, 6, 8)]
    assert spans(tbptt.Overlapping(3, 3).windows(8)) == spans(tbptt.Fixed(3).windows(8))
    lengths = tbptt.VariableLength(k=10, sigma=2.0, p_half=0.5, min_len=3, seed=1).windows(100)
    assert lengths[0].start == 0 and lengths[-1].stop == 100
    assert all(a.stop == b.start for a, b in zip(lengths, lengths[1:], strict=False))
    assert all(w.stop - w.start >= 3 or w is lengths[-1] for w in lengths)
    assert all(w.lr_scale == (w.stop - w.start) / 10 for w in lengths)
    unbiased = tbptt.Unbiased(c=0.3, seed=0).windows(20)
    assert unbiased[0].start == 0 and unbiased[-1].stop == 20 and all(w.share for w in unbiased)
    for w in unbiased:  # every candidate step inside a window carries the compensation
        assert [t for t, _ in w.compensate] == list(range(w.start + 1, w.stop))
        assert all(f == pytest.approx(1 / 0.7) for _, f in w.compensate)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: tbptt.Overlapping(4, 2), "k2 must be >= k1"),
        (lambda: tbptt.Fixed(0), "k=0"),
        (lambda: tbptt.Unbiased(c=1.0), "c=1.0"),
        (lambda: tbptt.VariableLength(p_half=2.0), "p_half=2.0"),
        (lambda: tbptt.policy_of(4, tbptt.Full()), "both given"),
    ],
)
def test_bad_policies_are_one_line_config_errors(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


# -- Overlapping(2, 4) on an 8-step sequence, unrolled by hand ------------------------------------------------------


def test_overlapping_2_4_matches_a_hand_unrolled_computation():
    """4 updates (one every 2 steps), each backward reaching 4 steps back from its update (2 at the first), the loss
    of the last 2 steps only; the state entering each window recomputed online with the weights of its time. Checked
    against a copy of the model run one step at a time with SGD applied by hand: every update's gradient and the
    final weights."""
    torch.manual_seed(0)
    dm = TinyStream(window=8, stateful=False)
    lr = 0.1
    task = regressor(dm, lr=lr, truncation=tbptt.Overlapping(2, 4))
    task.clipping = clip = RecordingClip()
    hand = copy.deepcopy(task)
    batch = next(iter(dm.train_dataloader()))
    x, y = batch["x"], batch["y"]  # (3, 8, 2), (3, 8, 1)

    expected, states = [], {0: None}  # states[t]: the state before step t, as the online computation has it
    for start, score_from, stop in [(0, 0, 2), (0, 2, 4), (2, 4, 6), (4, 6, 8)]:
        with torch.no_grad():  # the state entering the window, computed once, online
            if start not in states:
                before = max(t for t in states if t < start)
                states[start] = step_by_step(hand, x[:, before:start], states[before])[1]
        out, _ = step_by_step(hand, x[:, start:stop], states[start])  # the graph reaches back to `start`
        loss = (out[:, score_from - start :] - y[:, score_from:stop]).pow(2).mean()
        grads = torch.autograd.grad(loss, list(hand.parameters()))
        expected.append(grads)
        with torch.no_grad():
            for p, g in zip(hand.parameters(), grads, strict=True):
                p -= lr * g

    quiet_trainer(max_steps=4).fit(task, dm)
    assert len(clip.grads) == 4
    for got, want in zip(clip.grads, expected, strict=True):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
    for p, q in zip(task.parameters(), hand.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_overlapping_stateful_carry_is_the_state_at_the_batch_end():
    torch.manual_seed(0)
    dm = TinyStream(length=16, window=8, stateful=True)
    task = regressor(dm, truncation=tbptt.Overlapping(3, 5))
    quiet_trainer(max_epochs=1).fit(task, dm)
    with torch.no_grad():
        _, want = task(torch.cat([b["x"] for b in dm.train_dataloader()], dim=1), None)  # lr 0: weights unchanged
    torch.testing.assert_close(task.carry["train"].state, want, atol=1e-6, rtol=1e-5)


# -- Fixed(k): today's numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lm_lstm_stateful_tbptt_zclip", "forecast_change_score_last_autoclip_skip"])
def test_fixed_reproduces_the_golden_seeded_run_bitwise(tmp_path, name):
    """The golden fixture's truncated runs, with ``tbptt_steps: k`` spelt ``truncation: Fixed(k)``: every logged
    scalar and the final weights bitwise as recorded (skipped where the recording's CPU kernels differ, as
    tests/test_golden.py is)."""
    from tests import test_golden

    expected = test_golden.golden()[name]
    args = test_golden.runs(tmp_path)[name]
    at = args.index("--model.tbptt_steps")
    args[at : at + 2] = ["--model.truncation", "seqstab.tbptt.Fixed", "--model.truncation.k", args[at + 1]]
    threads, cwd = torch.get_num_threads(), Path.cwd()
    torch.set_num_threads(1)
    try:
        os.chdir(tmp_path)
        assert main(["fit", *args, *test_golden.QUIET]) == 0
        got = test_golden.observe(tmp_path / "runs" / "seqstab" / "version_0")
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    assert got["scalars"] == expected["scalars"]
    assert got["weights"] == expected["weights"] and got["updates"] == expected["updates"]


def test_fixed_and_full_equal_their_shorthands_bitwise():
    """On any machine: ``truncation: Fixed(k)`` trains exactly as ``tbptt_steps: k``, ``Full`` as neither."""
    dm = TinyStream(length=16, window=8, stateful=True)

    def weights(**kwargs):
        torch.manual_seed(0)
        task = regressor(dm, lr=0.1, **kwargs)
        quiet_trainer(max_epochs=2).fit(task, dm)
        return [p.detach().clone() for p in task.parameters()]

    for a, b in [
        (weights(tbptt_steps=3), weights(truncation=tbptt.Fixed(3))),
        (weights(), weights(truncation=tbptt.Full())),
    ]:
        assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


# -- VariableLength: AWD-LSTM's draws, its learning rate, and the same draws after a resume --------------------------


def test_variable_length_draws_the_same_lengths_after_a_resume():
    policy = tbptt.VariableLength(k=10, sigma=3.0, p_half=0.3, seed=7)
    for _ in range(3):
        policy.windows(50)
    state = policy.state_dict()
    uninterrupted = [policy.windows(50) for _ in range(4)]
    resumed = tbptt.VariableLength(k=10, sigma=3.0, p_half=0.3, seed=123)  # another seed: the state decides
    resumed.load_state_dict(torch.load(_saved(state), weights_only=True))
    assert [resumed.windows(50) for _ in range(4)] == uninterrupted


def _saved(state: dict) -> object:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_variable_length_resumed_fit_logs_the_same_rates_as_an_uninterrupted_one(tmp_path):
    """Through the CLI and a checkpoint: ``train/lr`` is lr × length / k at every update, so equal series mean the
    resumed run cut its batches where the uninterrupted one did."""
    data = ["--data", "datamodules.timeseries.SumOfSines", "--data.length", "400", "--data.input_length", "24"]
    data += ["--data.batch_size", "4", "--data.mode", "stream"]
    model = ["--model", "seqstab.tasks.Forecaster", "--model.net.hidden_size", "4", "--optimizer", "torch.optim.SGD"]
    model += ["--optimizer.lr", "0.01", "--model.truncation", "seqstab.tbptt.VariableLength"]
    model += ["--model.truncation.k", "6", "--model.truncation.sigma", "2", "--model.truncation.p_half", "0.3"]
    model += ["--model.truncation.min_len", "2"]
    common = ["--seed_everything", "3", *data, *model, *QUIET, "--trainer.limit_val_batches", "0"]
    common += ["--trainer.limit_train_batches", "4"]

    def fit(directory: Path, *extra: str) -> None:
        cwd = Path.cwd()
        try:
            directory.mkdir(exist_ok=True)
            os.chdir(directory)
            assert main(["fit", *common, *extra]) == 0
        finally:
            os.chdir(cwd)

    fit(tmp_path / "whole", "--trainer.max_epochs", "2")
    fit(tmp_path / "parts", "--trainer.max_epochs", "1")
    ckpt = tmp_path / "parts" / "runs" / "seqstab" / "version_0" / "checkpoints" / "last.ckpt"
    fit(tmp_path / "parts", "--trainer.max_epochs", "2", "--ckpt_path", str(ckpt))
    whole = scalars(tmp_path / "whole" / "runs" / "seqstab" / "version_0")["train/lr"]
    first = scalars(tmp_path / "parts" / "runs" / "seqstab" / "version_0")["train/lr"]
    second = scalars(tmp_path / "parts" / "runs" / "seqstab" / "version_1")["train/lr"]
    rates = {step: value for step, value in first + second}
    assert len(whole) > 8 and len({v for _, v in whole}) > 2  # lengths vary
    assert [rates[step] for step, _ in whole] == [value for _, value in whole]


def test_variable_length_scales_the_rate_of_its_update_only():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.3)
    with tbptt.scaled_lr(optimizer, 0.5):
        assert optimizer.param_groups[0]["lr"] == 0.15
    assert optimizer.param_groups[0]["lr"] == 0.3
    with tbptt.scaled_lr(optimizer, 0.5):  # a scheduler stepping meanwhile (x 0.1) keeps its change
        optimizer.param_groups[0]["lr"] *= 0.1
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.03)


# -- Unbiased (ARTBP): full BPTT's gradient in expectation -----------------------------------------------------------


class LinearRNN(nn.Module):
    """``h_t = W h_{t-1} + U x_t``, ``W`` at spectral radius ``rho``: the recurrent contract of seqstab.nets."""

    def __init__(self, input_size: int, hidden_size: int = 4, rho: float = 0.9):
        super().__init__()
        self.hidden_size = hidden_size
        g = torch.Generator().manual_seed(0)
        w = torch.randn(hidden_size, hidden_size, generator=g)
        self.w = nn.Parameter(w * rho / torch.linalg.eigvals(w).abs().max())
        self.u = nn.Parameter(torch.randn(hidden_size, input_size, generator=g) / input_size**0.5)

    def forward(self, x, hidden=None):
        h = torch.zeros(x.shape[0], self.hidden_size) if hidden is None else hidden
        outs = []
        for t in range(x.shape[1]):
            h = h @ self.w.T + x[:, t] @ self.u.T
            outs.append(h)
        return torch.stack(outs, dim=1), h  # (B, n, H)


def policy_gradient(task, batch, windows) -> torch.Tensor:
    """The sum of a batch's window gradients as the chunk loop takes them, at fixed weights."""
    total, hidden = 0, None
    for window in windows:
        chunk = tbptt.window_chunk(batch, window, task.reduce_loss)
        loss, new_hidden = task.chunk_loss(chunk, hidden)
        grads = torch.autograd.grad(loss, list(task.parameters()))
        total = total + torch.cat([g.reshape(-1) for g in grads])
        hidden = tbptt.detach(new_hidden)
    return total


def test_unbiased_matches_full_bptt_in_expectation_on_a_linear_rnn():
    """Mean over 3000 draws of ARTBP's batch gradient within 5% (relative L2) of the full-BPTT gradient, where
    Fixed(2), the truncation with the same mean window length, is off by more than 20%."""
    torch.manual_seed(0)
    dm = TinyStream(num_streams=4, length=10, window=10, stateful=False)
    task = SequenceRegressor(net=partial(LinearRNN, rho=0.9), spec=dm.spec)
    batch = next(iter(dm.train_dataloader()))
    full = policy_gradient(task, batch, tbptt.Full().windows(10))
    policy = tbptt.Unbiased(c=0.5, seed=0)
    gradients = {}  # a draw's gradient is a function of its windows (fixed weights): each distinct set (~500) once

    def drawn() -> torch.Tensor:
        windows = policy.windows(10)
        if tuple(windows) not in gradients:
            gradients[tuple(windows)] = policy_gradient(task, batch, windows)
        return gradients[tuple(windows)]

    mean = sum(drawn() for _ in range(3000)) / 3000  # the same sum, in the same order, as without the memo
    assert (mean - full).norm() / full.norm() < 0.05
    fixed = policy_gradient(task, batch, tbptt.Fixed(2).windows(10))
    assert (fixed - full).norm() / full.norm() > 0.2


def test_unbiased_trains_the_windows_it_draws():
    """The chunk loop takes the windows, weights and compensation a twin policy (same seed) draws."""
    torch.manual_seed(0)
    dm = TinyStream(num_streams=4, length=10, window=10, stateful=False)
    task = SequenceRegressor(net=partial(LinearRNN, rho=0.9), spec=dm.spec, truncation=tbptt.Unbiased(0.4, seed=5))
    task.configure_optimizers = lambda: torch.optim.SGD(task.parameters(), lr=0.0)
    task.clipping = clip = RecordingClip()
    batch = next(iter(dm.train_dataloader()))
    windows = tbptt.Unbiased(0.4, seed=5).windows(10)
    quiet_trainer(max_epochs=1).fit(task, dm)
    got = sum(torch.cat([g.reshape(-1) for g in grads]) for grads in clip.grads)
    assert len(clip.grads) == len(windows)
    torch.testing.assert_close(got, policy_gradient(task, batch, windows))


# -- the bias each policy costs, through the CLI --------------------------------------------------------------------


def test_truncation_cosine_is_one_for_full_and_falls_as_k_shrinks(tmp_path):
    """A linear RNN at spectral radius 1.1 forecasting a sum of sines, one update from the same seed under each
    policy: grad/truncation_cosine is 1 for Full and falls with k; the bytes saved for backward fall with k too."""
    base = ["--seed_everything", "0", "--model", "seqstab.tasks.Forecaster", "--model.net.cell", "rnn"]
    base += ["--model.net.nonlinearity", "linear", "--model.net.spectral_radius", "1.1", "--model.net.hidden_size"]
    base += ["8", "--model.truncation_bias_every_n_steps", "1", "--data", "datamodules.timeseries.SumOfSines"]
    base += ["--data.length", "600", "--data.input_length", "40", "--data.batch_size", "8"]
    base += ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", *QUIET]
    policies = {
        "full": ["--model.truncation", "seqstab.tbptt.Full"],
        "k20": ["--model.truncation", "seqstab.tbptt.Fixed", "--model.truncation.k", "20"],
        "k5": ["--model.truncation", "seqstab.tbptt.Fixed", "--model.truncation.k", "5"],
    }
    cosine, saved = {}, {}
    cwd = Path.cwd()
    try:
        for name, args in policies.items():
            (tmp_path / name).mkdir()
            os.chdir(tmp_path / name)
            assert main(["fit", *base, *args]) == 0
            series = scalars(tmp_path / name / "runs" / "seqstab" / "version_0")
            [(step, cosine[name])] = series["grad/truncation_cosine"]
            assert step == 0 and "grad/truncation_norm_ratio" in series
            saved[name] = series["truncation/saved_bytes_per_update"][0][1]
    finally:
        os.chdir(cwd)
    assert cosine["full"] == pytest.approx(1.0, abs=1e-6)
    assert cosine["full"] > cosine["k20"] > cosine["k5"]
    assert saved["full"] > saved["k20"] > saved["k5"]


@pytest.mark.parametrize(
    "policy",
    [
        tbptt.Full(),
        tbptt.Fixed(4),
        tbptt.Overlapping(4, 6),
        tbptt.VariableLength(k=4, sigma=1.0, p_half=0.2, min_len=2, seed=0),
        tbptt.Unbiased(c=0.3, seed=0),
    ],
    ids=lambda p: type(p).__name__,
)
def test_every_policy_trains_a_task_scored_at_its_last_step(policy):
    """A mask (the adding problem: the last step only): windows without a scored step are carried, not updates;
    the one scored window per batch is the only update; the guard sees its starting state."""
    from datamodules.synthetic import AddingProblem
    from tests.helpers import RecordingGuard

    torch.manual_seed(0)
    data = AddingProblem(seq_len=16, num_train=16, num_val=8, num_test=8, batch_size=8)  # 2 batches
    task = SequenceRegressor(net=partial(RecurrentNet, cell="lstm", hidden_size=4), spec=data.spec, truncation=policy)
    task.guard = guard = RecordingGuard()
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(task, data)
    assert task.updates == trainer.global_step == 2
    if not isinstance(policy, tbptt.Full):
        assert all(h is not None for h in guard.hidden_in)  # the scored window starts from the carried prefix
