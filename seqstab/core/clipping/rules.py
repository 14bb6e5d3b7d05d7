"""Policies with a fixed rule: clamp each element (:class:`ValueClip`), rescale the global norm (:class:`NormClip`),
each tensor's norm (:class:`PerParameterNormClip`), or each unit's against its weight (:class:`AGC`)."""

from __future__ import annotations

import math

import torch

from seqstab import internals
from seqstab.core.clipping.norms import (
    ClipResult,
    global_norm,
    grads_of,
    norms_and_total,
    rescale_,
    scale_to,
    tensor_norms,
    unit_norms,
)
from seqstab.core.clipping.policy import ClipPolicy
from seqstab.core.errors import check_positive


class ValueClip(ClipPolicy):
    """Clamp every gradient element to ``[-clip_value, clip_value]``.

    As ``torch.nn.utils.clip_grad_value_`` and Keras ``clipvalue``. The direction of the gradient changes.

    Args:
        clip_value: Largest absolute value an element may keep.
    """

    def __init__(self, clip_value: float = 1.0):
        check_positive(clip_value=clip_value)
        self.clip_value = float(clip_value)

    def clip(self, params: list[torch.Tensor]) -> ClipResult:
        grads = grads_of(params)
        norms, norm = norms_and_total(grads)
        finite = torch.isfinite(norm)
        if not grads:
            return ClipResult(norm, norm, torch.zeros((), dtype=torch.bool))
        largest = torch.stack(tensor_norms(grads, math.inf)).max()  # max |g| over all elements
        clipped = finite & (largest > self.clip_value)
        bound = torch.where(finite, self.clip_value, math.inf).to(norm.dtype)  # inf bound: untouched
        for g in grads:
            g.clamp_(-bound, bound)
        return ClipResult(norm, global_norm(grads), clipped, tensor_norms=norms)


class NormClip(ClipPolicy):
    """Rescale the whole gradient to ``max_norm`` when its global norm exceeds it.

    As ``torch.nn.utils.clip_grad_norm_``, Keras ``global_clipnorm`` and Pascanu et al. 2013, Algorithm 1
    (the scale is exactly ``max_norm / norm``, without ``clip_grad_norm_``'s ``+1e-6``).

    Args:
        max_norm: Threshold on the global gradient norm. Only carries over between setups with the same loss
            reduction: 5 for a loss summed over time (Zaremba et al. 2014), 0.25 for a token mean.
        norm_type: The p of the p-norm (``inf`` for the largest absolute element).

    Examples:
        >>> weight = torch.nn.Parameter(torch.zeros(2))
        >>> weight.grad = torch.tensor([3.0, 4.0])  # global norm 5
        >>> result = NormClip(max_norm=1.0)([weight])
        >>> float(result.pre_norm), float(result.post_norm), bool(result.clipped)
        (5.0, 1.0, True)
        >>> weight.grad
        tensor([0.6000, 0.8000])
    """

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0):
        check_positive(max_norm=max_norm, norm_type=norm_type)
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)

    def clip(self, params: list[torch.Tensor]) -> ClipResult:
        grads = grads_of(params)
        norms, norm = norms_and_total(grads, self.norm_type)
        threshold = torch.full_like(norm, self.max_norm)  # a fill, not a host-to-device copy (which syncs)
        clipped, scale, finite = scale_to(norm, threshold)
        rescale_(grads, scale)
        return ClipResult(norm, norm * scale, clipped, threshold, norms if self.norm_type == 2 else None, finite)


class PerParameterNormClip(ClipPolicy):
    """Rescale each parameter tensor's gradient on its own to L2 norm ``max_norm`` when it exceeds it.

    As Keras ``clipnorm`` (per variable). The global direction changes; no global threshold is logged.

    Args:
        max_norm: Threshold on each parameter tensor's gradient norm.
    """

    def __init__(self, max_norm: float = 1.0):
        check_positive(max_norm=max_norm)
        self.max_norm = float(max_norm)

    def clip(self, params: list[torch.Tensor]) -> ClipResult:
        grads = grads_of(params)
        if not grads:
            norm = global_norm(grads)
            return ClipResult(norm, norm, torch.zeros((), dtype=torch.bool))
        norms = torch.stack(tensor_norms(grads))  # (P,)
        norm = torch.linalg.vector_norm(norms)
        over = torch.isfinite(norm) & (norms > self.max_norm)  # (P,)
        scales = torch.where(over, self.max_norm / norms, torch.ones_like(norms))
        internals.foreach_mul_(grads, list(scales.unbind()))
        return ClipResult(norm, torch.linalg.vector_norm(norms * scales), over.any(), tensor_norms=norms)


class AGC(ClipPolicy):
    """Unit-wise adaptive gradient clipping (Brock et al. 2021; optax ``adaptive_grad_clip``).

    Each unit's gradient norm is capped at ``clip_factor · max(‖W_unit‖, eps)``; a unit above it is rescaled to
    it. Units are rows of each parameter tensor (see :func:`unit_norms`): for a recurrent ``W_hh`` each row, i.e.
    each hidden unit of each gate; biases and other 1-d tensors count as one unit. Every trained tensor is
    clipped, the output layer included (Brock et al. leave their final classifier unclipped). No global
    threshold is logged.

    Args:
        clip_factor: Largest allowed ratio of a unit's gradient norm to its weight norm (0.01–0.16 in Brock et al.).
        eps: Floor on the weight norm, so zero-initialised units (biases) can still move.
    """

    def __init__(self, clip_factor: float = 0.01, eps: float = 1e-3):
        check_positive(clip_factor=clip_factor, eps=eps)
        self.clip_factor = float(clip_factor)
        self.eps = float(eps)

    def clip(self, params: list[torch.Tensor]) -> ClipResult:
        pairs = [(p.detach(), p.grad) for p in params if p.grad is not None]
        grads = [g for _, g in pairs]
        norms, norm = norms_and_total(grads)
        finite = torch.isfinite(norm)
        any_clipped = torch.zeros((), dtype=torch.bool, device=norm.device)
        for weight, grad in pairs:
            g_norm = unit_norms(grad)
            cap = self.clip_factor * unit_norms(weight).clamp_min(self.eps)
            over = finite & (g_norm > cap)
            grad.mul_(torch.where(over, cap / g_norm, torch.ones_like(g_norm)))
            any_clipped = any_clipped | over.any()
        return ClipResult(norm, global_norm(grads), any_clipped, tensor_norms=norms)
