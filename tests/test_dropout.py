"""seqstab's dropout (``seqstab.nets.dropout``): torch's formula, its mask drawn faster on the CPU in memory order."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqstab.data.module import DataSpec
from seqstab.nets import RecurrentNet
from seqstab.nets.dropout import Dropout, dropout, keep_mask
from seqstab.tasks import Forecaster, LanguageModel


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.8, 0.99])
def test_each_element_is_kept_with_the_keep_probability_independently_of_its_neighbour(keep):
    torch.manual_seed(0)
    mask = keep_mask(torch.empty(999, 1001), keep)  # an odd count: the last draw is half used
    n = mask.numel()
    assert abs(mask.float().mean().item() - keep) < 5 * math.sqrt(keep * (1 - keep) / n)
    pairs = mask.flatten()[: n - 1].view(-1, 2)  # the two halves of one 63-bit draw (the last element alone)
    both = (pairs[:, 0] & pairs[:, 1]).float().mean().item()
    assert abs(both - keep * keep) < 5 * math.sqrt(keep * keep * (1 - keep * keep) / len(pairs))
    rows = mask.float().mean(dim=1)  # no drift along memory
    assert rows.std().item() < 2 * math.sqrt(keep * (1 - keep) / mask.shape[1]) + 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_the_output_and_the_gradient_are_torchs_formula_with_the_mask(dtype):
    torch.manual_seed(1)
    x = torch.randn(3, 5, 7).to(dtype).requires_grad_(True)
    out = dropout(x, 0.3)
    kept = out != 0
    noise = kept.to(dtype).div_(0.7)  # torch's noise: the mask in the input's dtype, divided by 1 - p
    assert torch.equal(out, x.detach() * noise)
    assert 0 < kept.sum() < kept.numel()
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad, noise)


def test_the_mask_comes_from_the_default_generator_and_its_state_repeats_it():
    x = torch.ones(4, 50)
    torch.manual_seed(3)
    first = dropout(x, 0.5)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5), first)  # seeded: the same mask
    assert torch.equal(torch.rand(3), after)  # and the generator moved on the same way
    state = torch.get_rng_state()  # what checkpoints and replay snapshots keep
    one = dropout(x, 0.5)
    torch.set_rng_state(state)
    assert torch.equal(dropout(x, 0.5), one)
    assert not torch.equal(dropout(x, 0.5), one)  # the next call draws anew


def test_the_mask_follows_memory_not_the_view():
    sequence_first = torch.randn(6, 4, 5)  # (L, B, H), as the kernels lay it out
    batch_first = sequence_first.transpose(0, 1)  # (B, L, H): the same memory
    torch.manual_seed(4)
    a = dropout(sequence_first, 0.4)
    torch.manual_seed(4)
    b = dropout(batch_first, 0.4)
    assert torch.equal(a.transpose(0, 1), b)
    assert b.stride() == batch_first.stride()  # the output keeps the input's layout, as torch's does
    sliced = torch.randn(6, 10)[:, ::2]  # not dense: laid out as its own shape
    assert dropout(sliced, 0.4).shape == sliced.shape


def test_where_it_is_torchs_dropout():
    x = torch.randn(4, 6)
    assert torch.equal(dropout(x, 0.5, training=False), x)
    assert torch.equal(dropout(x, 0.0), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    meta = dropout(torch.empty(4, 6, device="meta"), 0.5)  # off the CPU: F.dropout
    assert meta.device.type == "meta" and meta.shape == (4, 6)
    assert dropout(torch.empty(0, 3), 0.5).shape == (0, 3)


def test_inplace_and_the_module():
    x = torch.randn(8, 9)
    torch.manual_seed(5)
    expected = dropout(x.clone(), 0.25)
    y = x.clone()
    torch.manual_seed(5)
    assert dropout(y, 0.25, inplace=True) is y and torch.equal(y, expected)
    module = Dropout(0.25)
    assert isinstance(module, nn.Dropout) and repr(module) == repr(nn.Dropout(0.25))
    torch.manual_seed(5)
    assert torch.equal(module(x), expected)
    assert torch.equal(module.eval()(x), x)


def test_seqstabs_nets_and_tasks_use_it():
    spec = DataSpec(kind="lm", vocab_size=20, stateful=True)
    lm = LanguageModel(net=partial(RecurrentNet, hidden_size=8, num_layers=2, dropout=0.2), spec=spec, dropout=0.2)
    forecaster = Forecaster(
        net=partial(RecurrentNet, hidden_size=8, num_layers=2, dropout=0.2),
        spec=DataSpec(kind="forecast", input_size=2, output_size=1, horizon=1),
        dropout=0.2,
    )
    for task in (lm, forecaster):
        dropouts = [m for m in task.modules() if isinstance(m, nn.Dropout)]
        assert len(dropouts) >= 2 and all(type(m) is Dropout for m in dropouts)


def test_one_int64_draw_serves_two_elements_where_bernoulli_draws_one_each():
    """What makes it cheaper, counted (benchmarks/bench_dropout.py times it): one int64 draw per two elements,
    where torch's bernoulli_ draws one double per element."""
    x = torch.randn(10, 11)
    from torch.utils._python_dispatch import TorchDispatchMode

    class Names(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls.append((func.__name__, [getattr(a, "numel", lambda: None)() for a in args]))
            return func(*args, **(kwargs or {}))

    with Names() as names:
        dropout(x, 0.5)
    draws = [numels for name, numels in names.calls if name.startswith("random_")]
    assert draws == [[55]]  # 110 elements, 55 draws
    assert not any(name.startswith("bernoulli") for name, _ in names.calls)
    with Names() as names:
        F.dropout(x, 0.5)
    assert any(name.startswith("bernoulli") for name, _ in names.calls)


def test_masks_of_a_kept_buffer_are_new_tensors_in_and_out_of_inference_mode_and_on_each_thread():
    import threading

    from seqstab.nets import dropout as module

    torch.manual_seed(2)
    like = torch.empty(4, 7)  # an even count here, odd ones below (n = 1, 3, ...): each reuses its buffer
    first, second = keep_mask(like, 0.5), keep_mask(like, 0.5)
    assert first.data_ptr() != second.data_ptr() and not torch.equal(first, second)  # the buffer refilled, not them
    torch.manual_seed(2)
    assert torch.equal(keep_mask(like, 0.5), first)  # the same draws from the same generator state
    with torch.inference_mode():
        inside = dropout(torch.ones(3, 5), 0.5)  # the buffers made here are plain tensors
    outside = dropout(torch.ones(3, 5, requires_grad=True), 0.5)
    outside.sum().backward()
    assert inside.is_inference() and not outside.is_inference()
    masks = {}

    def draw(name):
        torch.manual_seed(3)  # one generator: each thread in turn (joined below)
        masks[name] = keep_mask(like, 0.5)

    for name in ("a", "b"):
        thread = threading.Thread(target=draw, args=(name,))
        thread.start()
        thread.join()
    assert torch.equal(masks["a"], masks["b"])  # each thread its own buffers, the same draws
    for n in range(1, 3 * module._KEPT_SHAPES):
        keep_mask(torch.empty(n), 0.5)
    assert len(module._BUFFERS.draws) <= module._KEPT_SHAPES  # the oldest shapes let go
