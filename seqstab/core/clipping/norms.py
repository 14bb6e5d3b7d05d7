"""What every policy measures and returns: :class:`ClipResult`, and the global and per-tensor gradient norms
from one fused ``torch._foreach_norm`` pass (no host synchronisation)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from seqstab import internals


@dataclass
class ClipResult:
    """What a clipping policy did at one update. Every field is a 0-dim tensor on the gradients' device.

    Attributes:
        pre_norm: Global gradient norm before clipping (may be inf or nan).
        post_norm: Global gradient norm after clipping.
        clipped: True when the policy changed the gradient.
        threshold: The global-norm threshold in force at this update (the gradient is clipped when ``pre_norm``
            exceeds it), or None for policies without one (per-element, per-tensor and per-unit rules).
        tensor_norms: ``(P,)`` L2 norm of each gradient tensor before clipping, in :func:`grads_of` order (the
            pass ``pre_norm`` came from); the guard names the largest on an event. None where not computed.
        finite: Whether ``pre_norm`` is finite (bool), where the policy tested it (:func:`scale_to`): the guard
            takes it instead of testing again. None where not computed.
    """

    pre_norm: torch.Tensor
    post_norm: torch.Tensor
    clipped: torch.Tensor
    threshold: torch.Tensor | None = None
    tensor_norms: torch.Tensor | None = None
    finite: torch.Tensor | None = None


def grads_of(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def _norm_dtype(grads: list[torch.Tensor]) -> torch.dtype:
    """Norms are accumulated in float32 at least (bf16/fp16 gradients), float64 for float64 gradients."""
    return torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32


def tensor_norms(grads: list[torch.Tensor], norm_type: float = 2.0) -> list[torch.Tensor]:
    """Each tensor's norm, in one fused ``torch._foreach_norm`` pass (no host sync)."""
    return list(internals.foreach_norm(grads, norm_type, dtype=_norm_dtype(grads)))


def global_norm(grads: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """Norm of all gradients taken together, in one fused ``torch._foreach_norm`` pass (no host sync)."""
    return norms_and_total(grads, norm_type)[1]


def norms_and_total(grads: list[torch.Tensor], norm_type: float = 2.0) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``((P,) per-tensor norms, global norm)`` from one fused pass; ``(None, 0)`` without gradients."""
    if not grads:
        return None, torch.zeros(())
    norms = torch.stack(tensor_norms(grads, norm_type))
    return norms, torch.linalg.vector_norm(norms, norm_type)


def scale_to(norm: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(clipped, scale, finite)`` for rescaling a finite ``norm`` above ``threshold`` down to it; scale is 1
    otherwise. ``finite``: whether ``norm`` (a norm: NaN or >= 0) is finite."""
    finite = norm < math.inf  # NaN fails it, and inf
    clipped = (norm > threshold) & finite
    return clipped, torch.where(clipped, threshold / norm, 1.0), finite


def rescale_(grads: list[torch.Tensor], scale: torch.Tensor) -> None:
    """Multiply every gradient by one 0-dim ``scale`` in place (exactly 1 leaves them bitwise unchanged)."""
    if grads:
        internals.foreach_mul_(grads, scale)


def unit_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each unit of ``x``, shaped to broadcast against it (float32 at least).

    A unit is a row — an output unit of ``nn.Linear`` ``(out, in)``, one unit of one gate of a recurrent
    ``W_hh`` ``(gates·H, H)``, one token of an ``nn.Embedding``; for higher-dimensional weights, everything after
    dimension 0. A 0-d or 1-d tensor (a bias, a LayerNorm gain) is one unit as a whole, as in optax's
    ``unitwise_norm``.
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x, dtype=dtype).reshape([1] * x.ndim)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True, dtype=dtype)
