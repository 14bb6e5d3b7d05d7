"""The fused, chunked decoder + cross-entropy (seqstab.fused) against F.cross_entropy on the same logits.

Tolerance: float32 rounding. The fused loss sums the same terms in another order (chunk by chunk, each weighted
before the sum) and its weight gradient adds the chunks' GEMMs one after the other: absolute 1e-5 on the loss and the
gradients of these tiny models (rtol 1e-4), where the values are O(1) and their rounding O(1e-7).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from datamodules.base import DataSpec
from seqstab.cli.train import main
from seqstab.core.errors import ConfigError
from seqstab.nets.fused import IGNORE_INDEX, chunk_rows_for, linear_cross_entropy
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import FUSED_MIN_VOCAB, LanguageModel
from tests.helpers import scalars
from tests.test_resume import write_text

TOL = dict(rtol=1e-4, atol=1e-5)
CHAR, WORD = 65, 5003  # tinyshakespeare's characters; a word vocabulary (odd sizes: no lucky alignment)


def reference(hidden, weight, bias, target, row_weight):
    logits = F.linear(hidden, weight, bias)  # (N, V)
    return (F.cross_entropy(logits, target, reduction="none") * row_weight).sum()


def grads(loss_fn, *leaves):
    for leaf in leaves:
        leaf.grad = None
    loss = loss_fn()
    loss.backward()
    return loss.detach(), [leaf.grad.clone() for leaf in leaves]


@pytest.mark.parametrize("vocab", [CHAR, WORD])
@pytest.mark.parametrize("weights", ["mean", "mask", "sum_over_time"])
@pytest.mark.parametrize("chunk_rows", [7, 64])  # several chunks, the last one short; one chunk
def test_loss_and_gradients_match_cross_entropy(vocab, weights, chunk_rows):
    g = torch.Generator().manual_seed(vocab)
    batch, steps, size = 4, 9, 16
    n = batch * steps
    hidden = torch.randn(n, size, generator=g, requires_grad=True)
    weight = (torch.randn(vocab, size, generator=g) * 0.3).requires_grad_()
    bias = (torch.randn(vocab, generator=g) * 0.1).requires_grad_()
    target = torch.randint(vocab, (n,), generator=g)
    mask = (torch.rand(n, generator=g) > 0.3).float()
    row_weight = {"mean": torch.full((n,), 1 / n), "mask": mask / mask.sum(), "sum_over_time": mask / batch}[weights]
    leaves = (hidden, weight, bias)
    expected, expected_grads = grads(lambda: reference(hidden, weight, bias, target, row_weight), *leaves)
    got, got_grads = grads(lambda: linear_cross_entropy(hidden, weight, bias, target, row_weight, chunk_rows), *leaves)
    torch.testing.assert_close(got, expected, **TOL)
    for name, a, b in zip(("hidden", "weight", "bias"), got_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_no_bias_ignore_index_and_scaled_backward():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(10, 8, generator=g, requires_grad=True)
    weight = torch.randn(CHAR, 8, generator=g, requires_grad=True)
    target = torch.randint(CHAR, (10,), generator=g)
    target[[2, 5]] = IGNORE_INDEX  # F.cross_entropy scores these 0
    row_weight = torch.full((10,), 0.1)

    def scaled(fn):  # a non-unit incoming gradient: backward scales the saved gradients
        return lambda: 3.0 * fn()

    leaves = (hidden, weight)
    expected, expected_grads = grads(scaled(lambda: reference(hidden, weight, None, target, row_weight)), *leaves)
    got, got_grads = grads(scaled(lambda: linear_cross_entropy(hidden, weight, None, target, row_weight, 3)), *leaves)
    torch.testing.assert_close(got, expected, **TOL)
    for a, b in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_chunk_rows_and_shape_errors():
    assert chunk_rows_for(700, 65) == 700  # a small vocabulary: one chunk
    assert chunk_rows_for(700, 33_278) == 234 and 234 * 33_278 * 4 < 32 * 2**20  # 3 chunks under the mmap threshold
    assert chunk_rows_for(700, 200_000) == 234  # no more than MAX_CHUNKS: W and dW re-read 3 times, not 35
    assert chunk_rows_for(100, 33_278) == 100 and chunk_rows_for(1, 10**9) == 1
    with pytest.raises(ValueError, match="expected"):
        target = torch.zeros(3, dtype=torch.long)
        linear_cross_entropy(torch.zeros(3, 4), torch.zeros(5, 3), None, target, torch.ones(3))


def language_model(vocab, fused, tie, reduction):
    torch.manual_seed(0)
    return LanguageModel(
        net=partial(RecurrentNet, hidden_size=12, num_layers=2, dropout=0.2),
        spec=DataSpec(kind="lm", vocab_size=vocab, stateful=True),
        tie_weights=tie,
        loss_reduction=reduction,
        dropout=0.2,
        embedding_init=0.1,
        fused_loss=fused,
    )


@pytest.mark.parametrize("vocab", [CHAR, WORD])
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("reduction,masked", [("token_mean", False), ("token_mean", True), ("sum_over_time", True)])
def test_language_model_chunk_loss_fused_equals_unfused(vocab, tie, reduction, masked):
    g = torch.Generator().manual_seed(2)
    chunk = {"x": torch.randint(vocab, (3, 6), generator=g), "y": torch.randint(vocab, (3, 6), generator=g)}
    if masked:
        chunk["mask"] = (torch.rand(3, 6, generator=g) > 0.4).float()
    results = []
    for fused in (False, True):
        model = language_model(vocab, fused, tie, reduction)
        assert model._fused(chunk["x"]) is fused
        torch.manual_seed(3)  # the same dropout masks in both
        loss, hidden = model.chunk_loss(chunk, None)
        loss.backward()
        results.append((loss.detach(), hidden, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, hidden_a, grads_a), (loss_b, hidden_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, **TOL)
    torch.testing.assert_close(hidden_b, hidden_a, rtol=0, atol=0)  # the net's forward is the same
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], **TOL, msg=lambda m, n=name: f"grad of {n}: {m}")


def test_auto_follows_vocabulary_and_logits_size_and_bad_value_is_one_line():
    x = torch.zeros(20, 35, dtype=torch.long)  # 700 positions a chunk
    assert not language_model(CHAR, "auto", False, "token_mean")._fused(x)
    assert not language_model(10_000, "auto", False, "token_mean")._fused(x)  # 28 MB of logits: the heap serves them
    assert language_model(33_278, "auto", False, "token_mean")._fused(x)  # 93 MB: mapped afresh at every update
    assert language_model(FUSED_MIN_VOCAB, "auto", False, "token_mean")._fused(torch.zeros(40, 64, dtype=torch.long))
    assert not language_model(FUSED_MIN_VOCAB - 1, "auto", False, "token_mean")._fused(torch.zeros(400, 400))
    with pytest.raises(ConfigError, match="fused_loss='yes'"):
        language_model(CHAR, "yes", False, "token_mean")


@pytest.mark.parametrize(
    "truncation",
    [
        ["--model.tbptt_steps", "4"],
        # the policy's loss weights and gradient factors reach the fused loss too (no dropout: the unfused loss runs
        # the head piece by piece between the compensation steps, so it draws its dropout masks in another order)
        [
            *["--model.truncation", "seqstab.tbptt.Unbiased", "--model.truncation.c", "0.3"],
            *["--model.truncation.seed", "0", "--model.dropout", "0.0"],
        ],
    ],
    ids=["fixed", "unbiased"],
)
def test_cli_fused_and_unfused_runs_log_the_same_losses(tmp_path, monkeypatch, truncation):
    """``--model.fused_loss true`` and ``false`` from the command line: the same seeded run, the same losses, pre-clip
    norms and final weights within float32 rounding (a tied, sum_over_time, truncated LM on a tiny text)."""
    write_text(tmp_path / "train.txt", 60, seed=0)
    write_text(tmp_path / "valid.txt", 10, seed=1)
    args = [
        *["--model", "seqstab.tasks.LanguageModel", "--model.net.hidden_size", "8", "--model.tie_weights", "true"],
        *["--model.loss_reduction", "sum_over_time", "--model.dropout", "0.1", *truncation],
        *["--data", "datamodules.text.TextFiles", "--data.train", str(tmp_path / "train.txt")],
        *["--data.valid", str(tmp_path / "valid.txt"), "--data.batch_size", "3", "--data.seq_len", "8"],
        *["--trainer.max_steps", "6", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"],
    ]
    seen = {}
    for fused in ("true", "false"):
        (tmp_path / fused).mkdir()
        monkeypatch.chdir(tmp_path / fused)
        assert main(["fit", *args, "--model.fused_loss", fused, "--data.cache_dir", str(tmp_path / "cache")]) == 0
        run = Path.cwd() / "runs" / "seqstab" / "version_0"
        weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        seen[fused] = (scalars(run), weights)
    (fused_tags, fused_weights), (plain_tags, plain_weights) = seen["true"], seen["false"]
    for tag in ("train/loss", "grad/norm_total"):
        assert [s for s, _ in fused_tags[tag]] == [s for s, _ in plain_tags[tag]]
        values = torch.tensor([v for _, v in fused_tags[tag]]), torch.tensor([v for _, v in plain_tags[tag]])
        torch.testing.assert_close(*values, **TOL)
    for name in plain_weights:
        torch.testing.assert_close(fused_weights[name], plain_weights[name], **TOL)


# -- the unfused decoder ------------------------------------------------------------------------------------------


class _Ops(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("hidden", [16, 200])
def test_decoder_on_the_nets_transposed_output_is_one_addmm_with_nn_linears_gradients(hidden):
    from seqstab.tasks.language_model import Decoder

    torch.manual_seed(0)
    out = torch.randn(7, 3, hidden).transpose(0, 1)  # (B, L, H) as a batch-first kernel returns it: a view
    linear = torch.nn.Linear(hidden, 11)
    decoder = Decoder(hidden, 11)
    decoder.load_state_dict(linear.state_dict())  # the same parameter names: checkpoints load either way
    results = []
    for module in (linear, decoder):
        x = out.detach().requires_grad_(True)
        with _Ops() as ops:
            logits = module(x)
        logits.backward(torch.randn(3, 7, 11, generator=torch.Generator().manual_seed(1)))
        results.append((logits.detach(), x.grad, module.weight.grad, module.bias.grad, ops.names))
    (want, *want_grads, linear_ops), (got, *got_grads, decoder_ops) = results
    assert "add" in linear_ops and "addmm" not in linear_ops  # nn.Linear: a product, then the bias: a second pass
    assert "addmm" in decoder_ops and not {"add", "add_"} & set(decoder_ops)  # the bias inside the product
    assert all(torch.equal(g, w) for g, w in zip(got_grads, want_grads, strict=True))
    if hidden <= 32:  # the seeded fixtures' sizes: the logits bitwise too
        assert torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
