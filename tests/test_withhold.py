"""A withheld update leaves weights and optimizer state exactly as they were — for every optimizer a config can
name, decided on the device (as on a GPU) or read on the host (on the CPU) — and a run read back only every 50
updates ends bitwise where one read back at every update (the host deciding) ends."""

from __future__ import annotations

import math

import pytest
import torch

from seqstab.core import withhold
from seqstab.core.clipping import NormClip
from seqstab.core.guard import ExplosionGuard
from seqstab.core.record import Action, StaticRun
from seqstab.core.update import UpdateCore
from seqstab.core.withhold import FoundInf, MaskGradient, ReadOnHost, Restore, withholding

OPTIMIZERS = {
    "sgd": (lambda ps: torch.optim.SGD(ps, lr=0.1), MaskGradient),
    "sgd_momentum_nesterov_wd": (
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        Restore,
    ),
    "sgd_dampening": (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.5), Restore),
    "adam": (lambda ps: torch.optim.Adam(ps, lr=0.01), Restore),
    "adamw_amsgrad": (lambda ps: torch.optim.AdamW(ps, lr=0.01, amsgrad=True), Restore),
    "adam_fused": (lambda ps: torch.optim.Adam(ps, lr=0.01, fused=True), FoundInf),
    "sgd_fused_momentum": (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, fused=True), FoundInf),
    "rmsprop_centered": (lambda ps: torch.optim.RMSprop(ps, lr=0.01, centered=True, momentum=0.5), Restore),
    "adagrad": (lambda ps: torch.optim.Adagrad(ps, lr=0.1), Restore),
    "adamax": (lambda ps: torch.optim.Adamax(ps, lr=0.01), Restore),
    "nadam": (lambda ps: torch.optim.NAdam(ps, lr=0.01), Restore),
    "radam": (lambda ps: torch.optim.RAdam(ps, lr=0.01), Restore),
    "asgd": (lambda ps: torch.optim.ASGD(ps, lr=0.01), Restore),
    "rprop": (lambda ps: torch.optim.Rprop(ps, lr=0.01), Restore),
}
NON_FINITE_AT = {0, 4, 9}  # the first update too: withheld before the optimizer ever stepped
SPIKE_AT = 7


def loop(make_optimizer, every: int, policy: str = "skip", updates: int = 12):
    """A tiny net trained through the core with planted non-finite gradients and a spike; ``every``: how often the
    core reads back (1: at every update, the host deciding before each step). The state around every update."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    params = list(net.parameters())
    optimizer = make_optimizer(params)
    core = UpdateCore(NormClip(max_norm=5.0), ExplosionGuard(policy=policy, min_history=3, snapshot=False))
    run = StaticRun(net, optimizer=optimizer, log_every_n_steps=every)
    gen = torch.Generator().manual_seed(1)
    seen = []
    for i in range(updates):
        x = torch.randn(8, 3, generator=gen)
        loss = net(x).pow(2).mean() * (1e4 if i == SPIKE_AT else 1.0)

        def backward(loss, i=i):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if i in NON_FINITE_AT:
                params[0].grad.view(-1)[0] = math.nan if i % 2 else math.inf

        before = snapshot(net, optimizer)
        update = core.update(run, params, loss, backward=backward, step=optimizer.step)
        seen.append((update, before, snapshot(net, optimizer)))
    core.flush(run)
    return seen, core, snapshot(net, optimizer)


def snapshot(net, optimizer) -> dict:
    state = {f"w.{k}": v.detach().clone() for k, v in net.state_dict().items()}
    for i, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            state[f"opt.{i}.{key}"] = value.clone() if isinstance(value, torch.Tensor) else value
    return state


def same(a: dict, b: dict) -> bool:
    def bits(v):
        return v.reshape(-1).view(torch.uint8) if isinstance(v, torch.Tensor) else v

    return a.keys() == b.keys() and all(
        torch.equal(bits(a[k]), bits(b[k])) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


@pytest.fixture
def as_on_a_device(monkeypatch):
    """The CPU taken for an accelerator: reading a value waits (``withhold.reads_wait``), so the device's ways run."""
    monkeypatch.setattr(withhold, "reads_wait", lambda device: True)


@pytest.fixture(params=["device", "cpu"])
def where(request, monkeypatch) -> str:
    """Each test twice: the device's ways (the CPU taken for an accelerator), and the CPU's (the decision read)."""
    if request.param == "device":
        monkeypatch.setattr(withhold, "reads_wait", lambda device: True)
    return request.param


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_withheld_between_read_backs_is_bitwise_the_host_decision(name, where):
    make, strategy = OPTIMIZERS[name]
    strategy = strategy if where == "device" else ReadOnHost
    assert type(withholding(make([torch.nn.Parameter(torch.zeros(2))]))) is strategy
    device, device_core, device_end = loop(make, every=1000)  # read back at update 0 and at the end only
    host, host_core, host_end = loop(make, every=1)  # read back at every update, before its step
    actions = [update.action for update, *_ in device]
    assert actions == [update.action for update, *_ in host]
    assert [i for i, a in enumerate(actions) if a is not Action.STEP] == sorted(NON_FINITE_AT | {SPIKE_AT})
    for update, before, after in device:
        if update.action is not Action.STEP:  # nothing moved: weights, moments, step counts, and no state created
            assert same(before, after), f"update {update.step} was withheld but changed the state"
    assert same(device_end, host_end)
    assert all(torch.isfinite(v).all() for k, v in device_end.items() if k.startswith("w."))
    assert device_core.applied == host_core.applied == 12 - len(NON_FINITE_AT) - 1


def test_under_warn_a_finite_spike_is_applied_and_a_non_finite_update_never(where):
    make = OPTIMIZERS["adam"][0]
    seen, core, _ = loop(make, every=1000, policy="warn")
    withheld = [update.step for update, *_ in seen if update.action is not Action.STEP]
    assert withheld == sorted(NON_FINITE_AT)
    spike, before, after = seen[SPIKE_AT]
    assert not same(before, after) and core.guard.events == len(NON_FINITE_AT) + 1


def test_the_stop_policy_withholds_everything_after_the_stop(where):
    make = OPTIMIZERS["sgd"][0]
    seen, core, end = loop(make, every=1000, policy="stop")
    assert core.stop_requested
    stop = next(u.step for u, *_ in seen if u.action is Action.STOP)
    assert stop == min(NON_FINITE_AT)  # the first event is the non-finite update 0
    assert all(same(before, after) for u, before, after in seen if u.step >= stop)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_mask_gradient_keeps_every_bit_of_an_applied_gradient_and_zeroes_a_withheld_one(dtype, as_on_a_device):
    odd = [1.5, -2.0, -0.0, math.nan, math.inf, -math.inf, 1e-40 if dtype != torch.float16 else 1e-7]
    params = [torch.nn.Parameter(torch.zeros(len(odd), dtype=dtype)), torch.nn.Parameter(torch.zeros(3, 2))]
    params[0].grad = torch.tensor(odd, dtype=dtype)
    params[1].grad = torch.randn(2, 3).t()  # a transposed view: its integer view is one too
    strategy = withholding(torch.optim.SGD(params, lr=0.1))
    assert type(strategy) is MaskGradient
    kept = [p.grad.clone() for p in params]
    strategy.before(params, torch.tensor(True))
    assert all(torch.equal(bits(p.grad), bits(k)) for p, k in zip(params, kept, strict=True))
    strategy.before(params, torch.tensor(False))
    for p in params:  # +0.0 everywhere, whatever was there: NaN, infinities and -0.0 too
        assert not bits(p.grad).any()


def test_mask_gradient_keeps_an_applied_sparse_gradient_and_zeroes_a_withheld_one(as_on_a_device):
    embedding = torch.nn.Embedding(5, 2, sparse=True)
    embedding(torch.tensor([[1, 3]])).sum().backward()
    strategy = withholding(torch.optim.SGD(embedding.parameters(), lr=0.1))
    kept = embedding.weight.grad.to_dense()
    strategy.before([embedding.weight], torch.tensor(True))
    assert torch.equal(bits(embedding.weight.grad.to_dense()), bits(kept))  # applied: every bit as it was
    embedding.weight.grad = embedding.weight.grad * math.inf  # non-finite values in a sparse gradient
    strategy.before([embedding.weight], torch.tensor(False))
    assert torch.equal(embedding.weight.grad.to_dense(), torch.zeros(5, 2))


def test_mask_gradient_zeroes_a_complex_gradient_in_two_passes(as_on_a_device):
    param = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    param.grad = torch.tensor([1 + 2j, complex(math.inf, 1), complex(math.nan, -1)], dtype=torch.complex64)
    withholding(torch.optim.SGD([param], lr=0.1)).before([param], torch.tensor(False))
    assert torch.equal(param.grad, torch.zeros(3, dtype=torch.complex64))


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)
