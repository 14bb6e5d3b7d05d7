"""Recurrent nets without Lightning: layout, cells, initialisation."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from seqstab.core.errors import ConfigError
from seqstab.nets.recurrent import RecurrentNet, gate_blocks, spectral_radius


@pytest.mark.parametrize(
    "cell,nonlinearity", [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "linear"), ("lstm", "tanh"), ("gru", "tanh")]
)
def test_layout_and_hidden_state(cell, nonlinearity):
    net = RecurrentNet(3, hidden_size=6, num_layers=2, cell=cell, nonlinearity=nonlinearity, dropout=0.1)
    out, hidden = net(torch.randn(4, 7, 3))  # (B, L, F)
    assert out.shape == (4, 7, 6)
    assert len(hidden) == 2
    for state in hidden:
        for t in state if cell == "lstm" else (state,):
            assert t.shape == (1, 4, 6)
    out2, _ = net(torch.randn(4, 2, 3), hidden)  # continues from a carried state
    assert out2.shape == (4, 2, 6)


def test_linear_rnn_is_linear():
    net = RecurrentNet(2, hidden_size=4, cell="rnn", nonlinearity="linear")
    with torch.no_grad():
        for p in net.layers[0].parameters():
            if p.dim() == 1:
                p.zero_()
    x = torch.randn(3, 5, 2)
    a, _ = net(x)
    b, _ = net(2 * x)
    torch.testing.assert_close(b, 2 * a)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("init", ["default", "uniform", "xavier", "orthogonal", "identity"])
@pytest.mark.parametrize("rho", [0.5, 1.5])
def test_spectral_radius_is_exact(cell, init, rho):
    torch.manual_seed(0)
    net = RecurrentNet(3, hidden_size=16, num_layers=2, cell=cell, init=init, spectral_radius=rho)
    for w in net.recurrent_weights():
        blocks = gate_blocks(w)
        assert len(blocks) == {"rnn": 1, "lstm": 4, "gru": 3}[cell]
        for block in blocks:
            assert abs(spectral_radius(block) - rho) < 1e-4


def test_named_inits():
    torch.manual_seed(0)
    irnn = RecurrentNet(2, hidden_size=5, cell="rnn", nonlinearity="relu", init="identity")
    torch.testing.assert_close(irnn.layers[0].weight_hh_l0, torch.eye(5))
    assert torch.all(irnn.layers[0].bias_hh_l0 == 0)
    ortho = RecurrentNet(2, hidden_size=5, cell="lstm", init="orthogonal")
    for block in gate_blocks(ortho.layers[0].weight_hh_l0):
        torch.testing.assert_close(block @ block.T, torch.eye(5), atol=1e-5, rtol=0)
    uni = RecurrentNet(2, hidden_size=5, cell="lstm", init="uniform", init_scale=0.05)
    assert all(p.abs().max() <= 0.05 for p in uni.parameters())


def test_residual_and_layer_norm_between_layers():
    net = RecurrentNet(4, hidden_size=4, num_layers=3, cell="gru", residual=True, layer_norm=True)
    assert len(net.norms) == 2
    out, _ = net(torch.randn(2, 3, 4))
    assert out.shape == (2, 3, 4)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"hidden_size": -1}, "hidden_size=-1"),
        ({"num_layers": 0}, "num_layers=0"),
        ({"cell": "transformer"}, "cell='transformer'"),
        ({"nonlinearity": "sigmoid"}, "nonlinearity='sigmoid'"),
        ({"cell": "lstm", "nonlinearity": "relu"}, "nonlinearity='relu'"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"spectral_radius": 0.0}, "spectral_radius=0.0"),
    ],
)
def test_bad_settings_name_key_and_value(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        RecurrentNet(3, **{"cell": "rnn", **kwargs})


def test_language_model_embedding_init_as_pytorch_examples():
    """``embedding_init: 0.1``: embedding and decoder U(±0.1), decoder bias 0, the LSTM left at PyTorch's default."""
    from datamodules.base import DataSpec
    from seqstab.tasks import LanguageModel

    torch.manual_seed(0)
    spec = DataSpec(kind="lm", vocab_size=500, stateful=True)
    model = LanguageModel(
        net=partial(RecurrentNet, hidden_size=200, num_layers=2, cell="lstm"), spec=spec, embedding_init=0.1
    )
    embedding, decoder = model.encoder[0].weight, model.head[1]
    for weight in (embedding, decoder.weight):
        assert weight.abs().max() <= 0.1 and weight.abs().max() > 0.099  # U(±0.1) fills its range
        assert weight.std().item() == pytest.approx(0.1 / 3**0.5, rel=0.02)
    assert torch.count_nonzero(decoder.bias) == 0
    bound = 1 / 200**0.5  # nn.LSTM's default U(±1/sqrt(hidden_size))
    for p in model.net.parameters():
        assert p.abs().max() <= bound and p.abs().max() > 0.99 * bound

    default = LanguageModel(net=partial(RecurrentNet, hidden_size=200, cell="lstm"), spec=spec)
    assert default.encoder[0].weight.std().item() == pytest.approx(1.0, rel=0.02)  # nn.Embedding's N(0, 1)
    with pytest.raises(ConfigError, match="embedding_init=0"):
        LanguageModel(net=partial(RecurrentNet, hidden_size=8), spec=spec, embedding_init=0)


def _states(hidden) -> list[torch.Tensor]:
    return [t for layer in hidden for t in (layer if isinstance(layer, tuple) else (layer,))]


CELLS = [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "tanh"), ("rnn", "relu")]


@pytest.mark.parametrize(("cell", "nonlinearity"), CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_stack_run_sequence_first_is_the_layer_by_layer_loop_bit_for_bit(cell, nonlinearity, dtype):
    torch.manual_seed(0)
    net = RecurrentNet(5, hidden_size=6, num_layers=3, cell=cell, nonlinearity=nonlinearity, dropout=0.3).to(dtype)
    x = torch.randn(4, 9, 5, dtype=dtype, requires_grad=True)
    _, start = net(torch.randn(4, 9, 5, dtype=dtype))
    start = tuple(tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach() for s in start)
    results = []
    for hooked in (False, True):  # a hook on a layer (the flow probe's, the origin search's) gets the loop
        handle = net.layers[1].register_forward_hook(lambda *_: None) if hooked else None
        assert net._sequence_first(x) is not hooked
        for hidden in (None, start):
            torch.manual_seed(1)  # the same dropout masks
            out, new = net(x, hidden)
            loss = out.square().sum() + sum(t.sum() for t in _states(new))
            grads = torch.autograd.grad(loss, [x, *net.parameters()])
            results.append((out, out.stride(), _states(new), grads))
        if handle is not None:
            handle.remove()
    for one, loop in zip(results[:2], results[2:], strict=True):
        assert torch.equal(one[0], loop[0]) and one[1] == loop[1]
        assert all(torch.equal(a, b) and a.shape == b.shape for a, b in zip(one[2], loop[2], strict=True))
        assert all(torch.equal(a, b) for a, b in zip(one[3], loop[3], strict=True))


def test_a_net_with_residual_connections_or_layer_norms_runs_layer_by_layer():
    x = torch.randn(2, 3, 4)
    assert RecurrentNet(4, hidden_size=4, num_layers=2)._sequence_first(x)
    assert not RecurrentNet(4, hidden_size=4, num_layers=2, residual=True)._sequence_first(x)
    assert not RecurrentNet(4, hidden_size=4, num_layers=2, layer_norm=True)._sequence_first(x)
    assert not RecurrentNet(4, hidden_size=4, num_layers=2, cell="rnn", nonlinearity="linear")._sequence_first(x)
    assert not RecurrentNet(4, hidden_size=4, num_layers=1)._sequence_first(x)
    hooked = RecurrentNet(4, hidden_size=4, num_layers=2, dropout=0.5)
    handle = hooked.dropout.register_forward_hook(lambda *_: None)  # a hook between the layers: it must run
    assert not hooked._sequence_first(x)
    handle.remove()
    assert hooked.eval()._sequence_first(x)


def test_a_stack_with_a_layer_in_eval_mode_runs_sequence_first_with_the_loops_bits():
    """The one-call kernel took one train flag for all layers, so such a stack got the loop; the chain passes each
    layer its own, and gives the loop's bits under dropout. (The flag changes no number of a single-layer kernel on
    the CPU, so this cannot tell which flag a layer got: it checks the mixed stack takes the chain, exactly.)"""
    torch.manual_seed(0)
    net = RecurrentNet(5, hidden_size=6, num_layers=3, dropout=0.3)
    net.layers[1].eval()
    x = torch.randn(4, 9, 5, requires_grad=True)
    results = []
    for hooked in (False, True):
        handle = net.layers[0].register_forward_hook(lambda *_: None) if hooked else None
        assert net._sequence_first(x) is not hooked
        torch.manual_seed(1)
        out, new = net(x)
        grads = torch.autograd.grad(out.square().sum() + sum(t.sum() for t in _states(new)), [x, *net.parameters()])
        results.append((out, _states(new), grads))
        if handle is not None:
            handle.remove()
    (out, states, grads), (loop_out, loop_states, loop_grads) = results
    assert torch.equal(out, loop_out)
    assert all(torch.equal(a, b) for a, b in zip(states, loop_states, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(grads, loop_grads, strict=True))
