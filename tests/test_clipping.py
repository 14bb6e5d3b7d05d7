"""Clipping policies on their own: property tests (hypothesis), the published rules, non-finite norms, settings,
state that travels in a checkpoint. Training runs through the loop are in ``test_clipping_runs.py``."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstab.core.clipping import (
    AGC,
    AdaGC,
    AutoClip,
    ClipPolicy,
    NoClip,
    NormClip,
    PerParameterNormClip,
    ValueClip,
    ZClip,
    global_norm,
    unit_norms,
)
from seqstab.core.errors import ConfigError

FAST = settings(max_examples=40, deadline=None)


# -- helpers ---------------------------------------------------------------------------------------------------


@st.composite
def grad_lists(draw) -> list[torch.Tensor]:
    """1 to 4 gradient tensors (1-d biases and 2-d weights) of norms from 1e-3 to 1e3, some heavy-tailed."""
    shapes = draw(st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=2), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    grads = []
    for shape in shapes:
        exponent = draw(st.floats(-3, 3))
        grads.append(torch.randn(shape, generator=gen) * 10**exponent)
    return grads


def params_with(grads: list[torch.Tensor], seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.randn(g.shape, generator=gen))
        p.grad = g.clone()
        params.append(p)
    return params


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


def grads(params) -> list[torch.Tensor]:
    return [p.grad for p in params]


def one_norm_param(norm: float) -> list[torch.nn.Parameter]:
    """A single parameter whose gradient's global norm is exactly ``norm``."""
    p = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.tensor([norm])
    return [p]


def run_norms(policy: ClipPolicy, norms) -> list:
    return [policy(one_norm_param(n)) for n in norms]


ALL_POLICIES = [
    NoClip,
    lambda: ValueClip(0.1),
    lambda: NormClip(0.1),
    lambda: PerParameterNormClip(0.1),
    lambda: AGC(0.01),
    lambda: AutoClip(10),
    lambda: ZClip(warmup_steps=2),
]


# -- NormClip ----------------------------------------------------------------------------------------------------


@FAST
@given(grad_lists(), st.floats(1e-3, 1e3))
def test_normclip_bounds_the_global_norm_and_keeps_the_direction(gs, max_norm):
    params = params_with(gs)
    result = NormClip(max_norm)(params)
    after = global_norm(grads(params))
    assert after <= max_norm * (1 + 1e-6)
    assert torch.isclose(result.post_norm, after, rtol=1e-5)
    before = torch.cat([g.flatten() for g in gs]).double()
    now = torch.cat([g.flatten() for g in grads(params)]).double()
    cosine = before @ now / (before.norm() * now.norm())
    assert cosine >= 1 - 1e-6
    assert bool(result.clipped) == bool(global_norm(gs) > max_norm)
    assert float(result.threshold) == pytest.approx(max_norm)


def test_normclip_inf_norm_type():
    params = params_with([torch.tensor([3.0, -4.0])])
    result = NormClip(1.0, norm_type=math.inf)(params)
    assert float(result.pre_norm) == 4.0 and float(result.post_norm) == pytest.approx(1.0)
    assert torch.allclose(params[0].grad, torch.tensor([0.75, -1.0]))


# -- below the threshold nothing changes, bit for bit -----------------------------------------------------------


def _generous(name: str, gs: list[torch.Tensor], params) -> ClipPolicy:
    """Each policy with a threshold at or above what ``gs`` reaches."""
    norm = float(global_norm(gs))
    if name == "value":
        return ValueClip(max(float(g.abs().max()) for g in gs) * 1.01)
    if name == "norm":
        return NormClip(norm * 1.01)
    if name == "per_parameter":
        return PerParameterNormClip(max(float(g.norm()) for g in gs) * 1.01)
    if name == "agc":
        ratio = max(
            float((unit_norms(g) / unit_norms(p.detach()).clamp_min(1e-3)).max())
            for g, p in zip(gs, params, strict=True)
        )
        return AGC(clip_factor=ratio * 1.01)
    if name == "autoclip":
        return AutoClip(percentile=100)  # the maximum of the history, current norm included: never clips
    if name == "zclip":
        return ZClip(warmup_steps=3)  # the first update is warm-up
    if name == "adagc":
        return AdaGC(max_norm=norm * 1.01, warmup_steps=1)  # warm-up: global clipping above the norm
    return NoClip()


@FAST
@given(grad_lists(), st.sampled_from(["none", "value", "norm", "per_parameter", "agc", "autoclip", "zclip", "adagc"]))
def test_below_the_threshold_every_policy_leaves_gradients_bitwise_unchanged(gs, name):
    params = params_with(gs)
    result = _generous(name, gs, params)(params)
    assert all(same_bits(a, b) for a, b in zip(gs, grads(params), strict=True))
    assert not bool(result.clipped)
    assert float(result.post_norm) == float(result.pre_norm)


def test_adaptive_policies_below_their_threshold_after_warmup_leave_gradients_unchanged():
    auto, z = AutoClip(percentile=50), ZClip(warmup_steps=3, z_thresh=2.0)
    run_norms(auto, [1.0, 3.0, 5.0])
    run_norms(z, [1.0, 3.0, 5.0])
    for policy in (auto, z):
        params = params_with([torch.tensor([1.5, -0.5, 0.25])])  # norm 1.6 < median 3 and < μ + 2σ
        before = params[0].grad.clone()
        assert not bool(policy(params).clipped)
        assert same_bits(before, params[0].grad)


# -- ValueClip, PerParameterNormClip, AGC -------------------------------------------------------------------------


@FAST
@given(grad_lists(), st.floats(1e-3, 1e2))
def test_valueclip_bounds_every_element(gs, clip_value):
    params = params_with(gs)
    result = ValueClip(clip_value)(params)
    c = torch.tensor(clip_value, dtype=torch.float32)
    for before, after in zip(gs, grads(params), strict=True):
        assert (after.abs() <= c).all()
        inside = before.abs() <= c
        assert torch.equal(after[inside], before[inside])
        assert torch.equal(after[~inside], torch.sign(before[~inside]) * c)
    assert bool(result.clipped) == any(bool((g.abs() > c).any()) for g in gs)
    assert torch.isclose(result.post_norm, global_norm(grads(params)))


@FAST
@given(grad_lists(), st.floats(1e-3, 1e2))
def test_per_parameter_normclip_bounds_each_tensor(gs, max_norm):
    params = params_with(gs)
    PerParameterNormClip(max_norm)(params)
    for before, after in zip(gs, grads(params), strict=True):
        assert float(after.norm()) <= max_norm * (1 + 1e-6)
        if float(before.norm()) <= max_norm:
            assert same_bits(before, after)


@FAST
@given(grad_lists(), st.floats(1e-3, 1.0), st.floats(1e-4, 1e-1))
def test_agc_bounds_every_units_ratio(gs, clip_factor, eps):
    params = params_with(gs)
    result = AGC(clip_factor, eps)(params)
    over_any = False
    for p, before, after in zip(params, gs, grads(params), strict=True):
        cap = clip_factor * unit_norms(p.detach()).clamp_min(eps)  # broadcastable per-unit bound
        assert (unit_norms(after) <= cap * (1 + 1e-5)).all()
        over = (unit_norms(before) > cap).expand_as(before)
        assert torch.equal(after[~over], before[~over])  # units under their cap are untouched
        over_any |= bool(over.any())
    assert bool(result.clipped) == over_any


def test_agc_units_are_rows_and_a_bias_is_one_unit():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))  # row norms 5 and 1
    weight.grad = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # each row's gradient norm 1
    bias = torch.nn.Parameter(torch.tensor([0.0, 0.0]))  # norm 0: floor eps
    bias.grad = torch.tensor([0.3, 0.4])  # one unit of norm 0.5
    AGC(clip_factor=0.5, eps=0.1)([weight, bias])
    assert torch.allclose(weight.grad, torch.tensor([[1.0, 0.0], [0.5, 0.0]]))  # caps 2.5 (kept) and 0.5
    assert torch.allclose(bias.grad, torch.tensor([0.3, 0.4]) * (0.05 / 0.5))  # cap 0.5 · max(0, 0.1)


def test_agc_treats_each_row_of_a_recurrent_weight_as_a_unit():
    rnn = torch.nn.LSTM(3, 4)
    w = rnn.weight_hh_l0  # (4 gates · 4 units, 4)
    w.grad = torch.ones_like(w) * 10
    AGC(clip_factor=0.01)([w])
    ratio = unit_norms(w.grad).flatten() / unit_norms(w.detach()).flatten()
    assert ratio.shape == (16,) and torch.allclose(ratio, torch.full((16,), 0.01), rtol=1e-5)


# -- AutoClip ------------------------------------------------------------------------------------------------------


@FAST
@given(
    st.lists(st.floats(2**-10, 2**10, width=32), min_size=1, max_size=30),
    st.floats(0, 100, exclude_min=True),
    st.one_of(st.none(), st.integers(1, 8)),
)
def test_autoclip_threshold_is_numpy_percentile_of_the_history(norms, percentile, history):
    policy = AutoClip(percentile, history)
    for i, result in enumerate(run_norms(policy, norms)):
        seen = norms[: i + 1] if history is None else norms[max(0, i + 1 - history) : i + 1]
        expected = np.percentile(np.asarray(seen, dtype=np.float64), percentile)  # numpy's default: linear
        assert float(result.threshold) == pytest.approx(expected, rel=1e-5)
        assert bool(result.clipped) == (norms[i] > float(result.threshold))
        assert float(result.post_norm) == pytest.approx(min(norms[i], float(result.threshold)), rel=1e-5)


def test_autoclip_history_grows_past_its_first_buffer():
    norms = [float(i % 17 + 1) for i in range(150)]
    result = run_norms(AutoClip(25), norms)[-1]
    assert float(result.threshold) == pytest.approx(np.percentile(norms, 25), rel=1e-6)


# -- ZClip ---------------------------------------------------------------------------------------------------------


def reference_zclip(norms, alpha, z_thresh, warmup_steps, max_grad_norm=None, eps=1e-6) -> list[float]:
    """bluorion-com/ZClip ``ZClip.step`` (mode="zscore", clip_option="adaptive_scaling", clip_factor=1) transcribed
    on the norm alone, in float64: the norm each update is clipped to."""
    buffer, mean, var, out = [], None, None, []
    for g in norms:
        if mean is None:  # warm-up: collect; clip_grad_norm_(max_grad_norm) only
            buffer.append(g)
            if len(buffer) >= warmup_steps:
                mean = sum(buffer) / len(buffer)
                var = sum((x - mean) ** 2 for x in buffer) / len(buffer)
            out.append(g if max_grad_norm is None else min(g, max_grad_norm))
            continue
        std = var**0.5
        z = (g - mean) / (std + eps)
        clip_val = mean + (z_thresh * std) / (z / z_thresh) if z > z_thresh else None
        effective = clip_val if clip_val is not None else g
        if max_grad_norm is not None:
            effective = min(effective, max_grad_norm)
        out.append(min(g, effective))
        x = clip_val if clip_val is not None else g  # the EMA takes the clipped norm, before max_grad_norm
        mean = alpha * mean + (1 - alpha) * x
        var = alpha * var + (1 - alpha) * (x - mean) ** 2  # with the updated mean, as the reference
    return out


def test_zclip_matches_the_hand_computed_rule():
    # warm-up 1, 2, 3: μ = 2, σ² = 2/3.  2.5: z = 0.5/√(2/3) = 0.61 ≤ 2, kept; μ = 2.25, σ² = ½·⅔ + ½·0.25² = 0.364583.
    # 10: σ = 0.603807, z = 7.75/σ = 12.835 > 2, clipped to μ + 2σ/(z/2) = 2.25 + 4·0.603807/12.835 = 2.438172;
    #     μ = (2.25 + 2.438172)/2 = 2.344086, σ² = ½·0.364583 + ½·(2.438172 − 2.344086)² = 0.186718.
    # 2: z < 0, kept; μ = 2.172043.
    policy = ZClip(alpha=0.5, z_thresh=2.0, warmup_steps=3)
    results = run_norms(policy, [1.0, 2.0, 3.0, 2.5, 10.0, 2.0])
    assert [bool(r.clipped) for r in results] == [False, False, False, False, True, False]
    assert [r.threshold is None for r in results] == [True, True, True, False, False, False]
    assert float(results[3].threshold) == pytest.approx(2 + 2 * (math.sqrt(2 / 3) + 1e-6), rel=1e-6)
    assert float(results[4].post_norm) == pytest.approx(2.438172, abs=1e-6)
    assert float(results[4].threshold) == pytest.approx(2.25 + 2 * (0.603807 + 1e-6), abs=1e-6)
    assert float(policy._mean) == pytest.approx(2.172043, abs=1e-6)
    assert float(results[5].post_norm) == 2.0


@FAST
@given(
    st.lists(st.floats(0.125, 128, width=32), min_size=1, max_size=30),
    st.floats(0.05, 0.99),
    st.floats(0.5, 3.0),
    st.integers(1, 6),
    st.one_of(st.none(), st.floats(0.5, 50)),
)
def test_zclip_matches_the_reference_implementation(norms, alpha, z_thresh, warmup_steps, max_grad_norm):
    results = run_norms(ZClip(alpha, z_thresh, warmup_steps, max_grad_norm), norms)
    expected = reference_zclip(norms, alpha, z_thresh, warmup_steps, max_grad_norm)
    for norm, want, result in zip(norms, expected, results, strict=True):
        assert float(result.post_norm) == pytest.approx(want, rel=1e-4)
        if abs(want - norm) > 1e-4 * norm:  # clear decisions only (float32 vs float64 at the boundary)
            assert bool(result.clipped)
        elif want == norm:
            assert not bool(result.clipped) or float(result.post_norm) == pytest.approx(norm, rel=1e-4)


# -- AdaGC ---------------------------------------------------------------------------------------------------------


def tensors_with(*values: list[float], dtype=torch.float32) -> list[torch.nn.Parameter]:
    """One parameter per list, its gradient that list."""
    params = []
    for v in values:
        p = torch.nn.Parameter(torch.zeros(len(v), dtype=dtype))
        p.grad = torch.tensor(v, dtype=dtype)
        params.append(p)
    return params


def test_adagc_matches_the_hand_computed_rule():
    """Wang et al. 2025, Algorithm 1, by hand: λ_abs (max_norm) 5, λ_rel 1.5, β 0.5, two warm-up updates."""
    policy = AdaGC(max_norm=5.0, lambda_rel=1.5, beta=0.5, warmup_steps=2)
    # warm-up 1: global norm 13 > 5, every gradient scaled by 5/13; γ starts at the clipped norms (25/13, 60/13)
    params = tensors_with([3.0, 4.0], [12.0])
    result = policy(params)
    assert float(result.pre_norm) == 13.0 and float(result.threshold) == 5.0 and bool(result.clipped)
    assert float(result.post_norm) == pytest.approx(5.0)
    assert torch.allclose(params[0].grad, torch.tensor([15 / 13, 20 / 13])) and torch.allclose(
        params[1].grad, torch.tensor([60 / 13])
    )
    assert torch.allclose(policy._gamma, torch.tensor([25 / 13, 60 / 13]))
    # warm-up 2: global norm √5 < 5, untouched; γ = min(γ, ‖ĝ_i‖) = (1, 2)
    params = tensors_with([0.6, 0.8], [2.0])
    assert not bool(policy(params).clipped)
    assert torch.equal(policy._gamma, torch.tensor([1.0, 2.0]))
    # after warm-up: each tensor against 1.5 γ_i = (1.5, 3): tensor 0 (norm 5) rescaled to 1.5, tensor 1 (norm 1)
    # untouched; no global threshold; then γ ← 0.5 γ + 0.5 ‖ĝ_i‖ = (1.25, 1.5)
    params = tensors_with([3.0, 4.0], [1.0])
    result = policy(params)
    assert result.threshold is None and bool(result.clipped)
    assert torch.allclose(params[0].grad, torch.tensor([0.9, 1.2])) and torch.equal(params[1].grad, torch.tensor([1.0]))
    assert float(result.post_norm) == pytest.approx(math.sqrt(1.5**2 + 1))
    assert torch.equal(result.tensor_norms, torch.tensor([5.0, 1.0]))  # pre-clip, as every policy reports them
    assert torch.allclose(policy._gamma, torch.tensor([1.25, 1.5]))
    # a zero gradient leaves its γ alone; tensor 1 at 10 > 1.5 · 1.5 is rescaled to 2.25 and γ_1 = 1.875
    params = tensors_with([0.0, 0.0], [10.0])
    policy(params)
    assert torch.equal(params[0].grad, torch.zeros(2)) and torch.allclose(params[1].grad, torch.tensor([2.25]))
    assert torch.allclose(policy._gamma, torch.tensor([1.25, 1.875]))


def adagc_reference(steps: list[list[float]], max_norm: float, lambda_rel: float, beta: float, warmup: int):
    """AdaGC's rule in plain floats (kozistr/pytorch_optimizer ``AdaGC.step``, transcribed without its optimizer and
    its ``+ eps`` on the global norm, warm-up counted from update 0): each update's clipped per-tensor norms."""
    gamma, out = None, []
    for t, norms in enumerate(steps):
        if t < warmup:
            h = min(max_norm / math.sqrt(sum(n * n for n in norms)), 1.0)
            kept = [n * h for n in norms]
            gamma = kept if gamma is None else [min(g, k) for g, k in zip(gamma, kept, strict=True)]
        else:
            kept = [n * min(lambda_rel * g / n, 1.0) for n, g in zip(norms, gamma, strict=True)]
            gamma = [beta * g + (1 - beta) * k for g, k in zip(gamma, kept, strict=True)]
        out.append(kept)
    return out


@FAST
@given(
    st.integers(1, 3).flatmap(
        lambda p: st.lists(st.lists(st.floats(0.1, 100.0), min_size=p, max_size=p), min_size=1, max_size=12)
    ),
    st.floats(0.5, 50.0),
    st.floats(1.0, 2.0),
    st.floats(0.5, 0.99),
    st.integers(1, 4),
)
def test_adagc_matches_the_reference_rule(steps, max_norm, lambda_rel, beta, warmup):
    policy = AdaGC(max_norm, lambda_rel, beta, warmup)
    expected = adagc_reference(steps, max_norm, lambda_rel, beta, warmup)
    for norms, want in zip(steps, expected, strict=True):
        params = tensors_with(*[[n] for n in norms], dtype=torch.float64)  # each gradient's norm is exactly n
        policy(params)
        assert [abs(float(p.grad)) for p in params] == pytest.approx(want, rel=1e-9)


def test_adagc_below_its_thresholds_after_warmup_leaves_gradients_bitwise_unchanged():
    policy = AdaGC(max_norm=100.0, warmup_steps=2)
    for _ in range(2):
        policy(tensors_with([3.0, 4.0], [2.0]))  # γ = (5, 2)
    params = tensors_with([1.5, -0.5, 0.25], [-2.1])  # 1.6 < 1.05 · 5 and 2.1 ≤ 1.05 · 2
    before = [p.grad.clone() for p in params]
    result = policy(params)
    assert not bool(result.clipped) and float(result.post_norm) == float(result.pre_norm)
    assert all(same_bits(b, p.grad) for b, p in zip(before, params, strict=True))


def test_adagc_keeps_each_tensors_gamma_when_another_has_no_gradient():
    policy = AdaGC(max_norm=100.0, warmup_steps=1)
    a, b = tensors_with([2.0], [8.0])
    policy([a, b])  # γ = (2, 8)
    a.grad = None
    policy([a, b])  # only b: its γ takes 8 again, a's stays
    assert torch.equal(policy._gamma, torch.tensor([2.0, 8.0]))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([8.0])
    policy([a, b])  # a at 3 > 1.05 · 2: clipped against its own γ, not b's
    assert float(a.grad) == pytest.approx(2.1) and float(b.grad) == 8.0
    with pytest.raises(ConfigError, match="γ for 2 tensors, the model has 3"):
        policy(tensors_with([1.0], [1.0], [1.0]))


def test_adagc_tensor_without_a_gamma_is_not_clipped_until_it_has_one():
    """A gradient that was exactly zero through warm-up gives no scale: it is left alone, then starts its γ."""
    policy = AdaGC(max_norm=100.0, warmup_steps=2)
    for _ in range(2):
        policy(tensors_with([0.0, 0.0], [1.0]))
    assert math.isnan(float(policy._gamma[0])) and float(policy._gamma[1]) == 1.0
    params = tensors_with([30.0, 40.0], [1.0])
    assert not bool(policy(params).clipped) and float(params[0].grad.norm()) == 50.0
    assert float(policy._gamma[0]) == 50.0  # its first non-zero norm, unclipped
    params = tensors_with([36.0, 48.0], [1.0])
    policy(params)
    assert float(params[0].grad.norm()) == pytest.approx(52.5)  # 60, now against 1.05 · 50


@pytest.mark.parametrize("steps_before", [0, 3], ids=["warm-up", "adaptive"])
@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_adagc_non_finite_norm_leaves_gradient_and_gamma_alone(steps_before, bad):
    policy = AdaGC(max_norm=2.0, warmup_steps=2)
    for _ in range(steps_before):
        policy(tensors_with([3.0, 4.0], [1.0]))
    gamma = None if policy._gamma is None else policy._gamma.clone()
    gs = [torch.tensor([5.0, bad]), torch.tensor([100.0])]
    params = params_with(gs)
    result = policy(params)
    assert not math.isfinite(float(result.pre_norm)) and not bool(result.clipped)
    assert all(same_bits(a, b) for a, b in zip(gs, grads(params), strict=True))
    if gamma is None:
        assert torch.isnan(policy._gamma).all()
    else:
        assert torch.equal(policy._gamma, gamma)


def test_adagc_resumes_bitwise_from_its_state():
    """state_dict -> torch.save -> a weights_only load into a fresh policy: every later gradient bit for bit."""
    gen = torch.Generator().manual_seed(3)
    scales = (1, 2, 1, 3, 50, 1, 0.3, 1)  # a spike after the cut, then a quiet update
    steps = [[torch.randn(4, 3, generator=gen) * s, torch.randn(3, generator=gen) * s] for s in scales]
    make = lambda: AdaGC(max_norm=4.0, lambda_rel=1.1, beta=0.9, warmup_steps=3)  # noqa: E731
    whole, first = make(), make()
    expected = []
    for gs in steps:
        params = params_with(gs)
        result = whole(params)
        expected.append((grads(params), result))  # the gradients as clipped
    for gs in steps[:4]:
        first(params_with(gs))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    clipped = []
    for gs, (want_grads, want) in zip(steps[4:], expected[4:], strict=True):
        params = params_with(gs)
        got = resumed(params)
        assert all(same_bits(a, b) for a, b in zip(want_grads, grads(params), strict=True))
        assert same_bits(want.post_norm, got.post_norm) and bool(want.clipped) == bool(got.clipped)
        clipped.append(bool(got.clipped))
    assert True in clipped and False in clipped  # the comparison covers both decisions
    assert torch.equal(resumed._gamma, whole._gamma)


def test_adagc_resumed_run_makes_the_same_clip_decisions(tmp_path):
    """Through the trainer: a checkpoint after one epoch carries γ; the resumed second epoch logs the same norms."""
    from tests.test_clipping_runs import SECOND_EPOCH, UPDATES_PER_EPOCH, fit_adding

    make = lambda: AdaGC(max_norm=1.0, lambda_rel=1.5, beta=0.9, warmup_steps=4)  # noqa: E731
    whole = fit_adding(make(), epochs=2)
    fit_adding(make(), epochs=1, ckpt_out=tmp_path / "epoch1.ckpt")
    resumed = fit_adding(make(), epochs=2, ckpt_in=tmp_path / "epoch1.ckpt")
    for tag in ("grad/clipped", "grad/norm_total", "grad/norm_total_clipped"):
        assert [resumed[tag][s] for s in SECOND_EPOCH] == [whole[tag][s] for s in SECOND_EPOCH], tag
    decisions = [whole["grad/clipped"][s] for s in SECOND_EPOCH]
    assert 0 < sum(decisions) < len(decisions)
    checkpoint = torch.load(tmp_path / "epoch1.ckpt", weights_only=True)
    state = checkpoint["seqstab"]["clipping"]
    assert state["steps"] == UPDATES_PER_EPOCH and state["gamma"].shape == (6,)  # one γ per trained tensor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_adagc_does_not_synchronise_with_the_host_even_with_a_gradient_missing():
    policy = AdaGC(max_norm=1.0, warmup_steps=2)
    model = torch.nn.LSTM(4, 8).cuda()
    params = list(model.parameters())
    for step in range(5):
        model.zero_grad()
        model(torch.randn(5, 2, 4, device="cuda"))[0].pow(2).sum().mul(10**step).backward()
        if step == 3:
            params[1].grad = None  # one tensor without a gradient: the gather / scatter path
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            policy(params)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert policy._gamma.device.type == "cuda" and policy.steps == 5


# -- non-finite norms: reported, gradient untouched, no statistic poisoned ------------------------------------------


@pytest.mark.parametrize("bad", [math.inf, math.nan])
@pytest.mark.parametrize("make", ALL_POLICIES)
def test_non_finite_norm_is_reported_and_the_gradient_left_alone(make, bad):
    policy = make()
    run_norms(policy, [1.0, 2.0, 3.0])  # past ZClip's warm-up
    gs = [torch.tensor([[5.0, bad], [1.0, -2.0]]), torch.tensor([100.0, -100.0])]
    params = params_with(gs)
    result = policy(params)
    assert not math.isfinite(float(result.pre_norm))
    assert not math.isfinite(float(result.post_norm))
    assert not bool(result.clipped)
    assert all(same_bits(a, b) for a, b in zip(gs, grads(params), strict=True))


def test_non_finite_norms_stay_out_of_the_adaptive_statistics():
    auto = AutoClip(50)
    results = run_norms(auto, [1.0, math.inf, 3.0, math.nan, 5.0])
    assert [float(r.threshold) for r in results[::2]] == [1.0, 2.0, 3.0]  # medians of 1 | 1, 3 | 1, 3, 5
    z = ZClip(alpha=0.5, z_thresh=2.0, warmup_steps=3)
    clean = run_norms(ZClip(alpha=0.5, z_thresh=2.0, warmup_steps=3), [1.0, 2.0, 3.0, 2.5, 10.0, 2.0])
    dirty = run_norms(z, [1.0, 2.0, 3.0, 2.5, math.inf, 10.0, math.nan, 2.0])
    del dirty[4], dirty[5]
    assert [float(r.post_norm) for r in dirty] == [float(r.post_norm) for r in clean]
    warm = ZClip(alpha=0.5, warmup_steps=4)
    run_norms(warm, [1.0, math.nan, 2.0, 3.0])  # a non-finite warm-up norm is left out of μ and σ²
    assert float(warm._mean) == 2.0 and float(warm._var) == pytest.approx(2 / 3)


def test_autoclip_with_no_finite_norm_yet_clips_nothing():
    result = run_norms(AutoClip(10), [math.inf])[0]
    assert math.isnan(float(result.threshold)) and not bool(result.clipped)


# -- settings -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda: NormClip(max_norm=0), "max_norm=0"),
        (lambda: NormClip(max_norm=-1.0), "max_norm=-1.0"),
        (lambda: NormClip(norm_type=0), "norm_type=0"),
        (lambda: ValueClip(clip_value=0), "clip_value=0"),
        (lambda: PerParameterNormClip(max_norm=-2), "max_norm=-2"),
        (lambda: AGC(clip_factor=0), "clip_factor=0"),
        (lambda: AGC(eps=-1e-3), "eps=-0.001"),
        (lambda: AutoClip(percentile=0), "percentile=0"),
        (lambda: AutoClip(percentile=100.5), "percentile=100.5"),
        (lambda: AutoClip(percentile=-5), "percentile=-5"),
        (lambda: AutoClip(history=0), "history=0"),
        (lambda: AutoClip(history=2.5), "history=2.5"),
        (lambda: ZClip(alpha=0), "alpha=0"),
        (lambda: ZClip(alpha=1), "alpha=1"),
        (lambda: ZClip(alpha=1.5), "alpha=1.5"),
        (lambda: ZClip(z_thresh=0), "z_thresh=0"),
        (lambda: ZClip(warmup_steps=0), "warmup_steps=0"),
        (lambda: ZClip(max_grad_norm=-1), "max_grad_norm=-1"),
        (lambda: AdaGC(max_norm=0), "max_norm=0"),
        (lambda: AdaGC(lambda_rel=-1.0), "lambda_rel=-1.0"),
        (lambda: AdaGC(beta=1), "beta=1"),
        (lambda: AdaGC(beta=0), "beta=0"),
        (lambda: AdaGC(warmup_steps=-1), "warmup_steps=-1"),
        (lambda: AdaGC(warmup_steps=2.5), "warmup_steps=2.5"),
    ],
)
def test_bad_setting_fails_at_construction_with_one_line(make, needle):
    with pytest.raises(ConfigError) as err:
        make()
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_edge_settings_are_accepted():
    AutoClip(percentile=100)
    AutoClip(percentile=1e-9, history=1)
    ZClip(alpha=0.999, warmup_steps=1, max_grad_norm=None)
    AdaGC(warmup_steps=0, beta=0.999, lambda_rel=1.0)


def test_bad_clipping_setting_from_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    from seqstab.cli.train import main

    monkeypatch.chdir(tmp_path)
    args = ["fit", "--model.clipping", "seqstab.clipping.AutoClip", "--model.clipping.percentile", "0"]
    assert main([*args, "--trainer.enable_progress_bar", "false"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("seqstab.train: error:") and "percentile=0" in errors[0]


# -- state: plain tensors and ints, loadable with weights_only=True -------------------------------------------------


@pytest.mark.parametrize(
    "make,cut",
    [
        (lambda: AutoClip(30), 5),
        (lambda: AutoClip(30), 70),  # past the first buffer
        (lambda: AutoClip(70, history=4), 9),  # the ring has wrapped
        (lambda: ZClip(alpha=0.6, z_thresh=1.0, warmup_steps=4), 2),  # mid warm-up
        (lambda: ZClip(alpha=0.6, z_thresh=1.0, warmup_steps=4, max_grad_norm=8.0), 7),
        (lambda: AdaGC(max_norm=3.0, lambda_rel=1.2, beta=0.6, warmup_steps=4), 2),  # mid warm-up
        (lambda: AdaGC(max_norm=3.0, lambda_rel=1.2, beta=0.6, warmup_steps=4), 7),
    ],
)
def test_state_round_trips_through_a_weights_only_load(make, cut):
    gen = torch.Generator().manual_seed(1)
    norms = (torch.rand(cut + 20, generator=gen) * 4 + 1).tolist()
    norms[cut + 3] = 40.0  # a spike after the cut
    whole, first = make(), make()
    expected = run_norms(whole, norms)
    run_norms(first, norms[:cut])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    got = run_norms(resumed, norms[cut:])
    for want, have in zip(expected[cut:], got, strict=True):
        assert bool(want.clipped) == bool(have.clipped)
        assert float(want.post_norm) == float(have.post_norm)
        assert (want.threshold is None) == (have.threshold is None)
        if want.threshold is not None:
            assert float(want.threshold) == float(have.threshold)
    assert any(bool(r.clipped) for r in got)  # the comparison covers clip decisions, not only pass-throughs


def test_stateless_policies_have_empty_state():
    for make in ALL_POLICIES[:5]:
        assert make().state_dict() == {}


# -- no host synchronisation (needs CUDA's sync debug mode) -------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("make", ALL_POLICIES)
def test_policies_do_not_synchronise_with_the_host(make):
    policy = make()
    model = torch.nn.LSTM(4, 8).cuda()
    for step in range(4):
        model.zero_grad()
        model(torch.randn(5, 2, 4, device="cuda"))[0].pow(2).sum().mul(10**step).backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            policy(list(model.parameters()))
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_a_norm_clip_reports_whether_the_norm_was_finite_for_the_guard_to_take():
    from seqstab.core.clipping.norms import scale_to

    norms = torch.tensor([0.0, 0.5, 2.0, math.inf, math.nan])
    threshold = torch.tensor(1.0)
    results = [scale_to(norm, threshold) for norm in norms]
    assert [bool(finite) for _, _, finite in results] == [True, True, True, False, False]
    assert [bool(clipped) for clipped, _, _ in results] == [False, False, True, False, False]
    assert [float(scale) for _, scale, _ in results] == [1.0, 1.0, 0.5, 1.0, 1.0]
    weight = torch.nn.Parameter(torch.zeros(2))
    for grad, finite in (([3.0, 4.0], True), ([math.inf, 0.0], False), ([math.nan, 1.0], False)):
        weight.grad = torch.tensor(grad)
        assert bool(NormClip(max_norm=1.0)([weight]).finite) is finite
