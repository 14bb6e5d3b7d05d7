"""Clipping policies: one station of the optimization path, after backward (and AMP unscaling), before the guard.

A policy gets the parameters whose gradients it may change in place and returns a :class:`ClipResult`: the
pre-clip and post-clip global norms, whether it changed the gradient, and its threshold where it has one.
All values stay on the device (no host synchronisation here); the optimization path reads them back
together with the loss in a single transfer.

Rules every policy keeps:
  * below its threshold it leaves the gradients bitwise unchanged;
  * a non-finite norm is reported as such and the gradient is left as it is (never scaled to zeros or NaNs):
    deciding what to do with it is the explosion guard's job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seqstab.errors import check_positive


@dataclass
class ClipResult:
    """What a clipping policy did at one update. Every field is a 0-dim tensor on the gradients' device.

    Attributes:
        pre_norm: Global gradient norm before clipping (may be inf or nan).
        post_norm: Global gradient norm after clipping.
        clipped: True when the policy changed the gradient.
        threshold: The norm threshold in force at this update, or None for policies without one.
    """

    pre_norm: torch.Tensor
    post_norm: torch.Tensor
    clipped: torch.Tensor
    threshold: torch.Tensor | None = None


def grads_of(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def global_norm(grads: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """Norm of all gradients taken together, in one fused ``torch._foreach_norm`` pass (no host sync)."""
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads, norm_type)
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


class ClipPolicy:
    """Base class of clipping policies. Subclasses implement :meth:`clip`; stateful ones also
    :meth:`state_dict`/:meth:`load_state_dict`, which travel in the checkpoint."""

    def clip(self, params: list[torch.Tensor]) -> ClipResult:
        raise NotImplementedError

    def __call__(self, params: list[torch.Tensor]) -> ClipResult:
        return self.clip(params)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class NoClip(ClipPolicy):
    """Measure and log only: the gradient is never changed."""

    def clip(self, params: list[torch.Tensor]) -> ClipResult:
        norm = global_norm(grads_of(params))
        return ClipResult(norm, norm, torch.zeros((), dtype=torch.bool, device=norm.device))


class NormClip(ClipPolicy):
    """Rescale the whole gradient to ``max_norm`` when its global norm exceeds it.

    As ``torch.nn.utils.clip_grad_norm_``, Keras ``global_clipnorm`` and Pascanu et al. 2013, Algorithm 1.

    Args:
        max_norm: Threshold on the global gradient norm. Only carries over between setups with the same loss
            reduction: 5 for a loss summed over time (Zaremba et al. 2014), 0.25 for a token mean.
        norm_type: The p of the p-norm.
    """

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0):
        check_positive(max_norm=max_norm, norm_type=norm_type)
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)

    def clip(self, params: list[torch.Tensor]) -> ClipResult:
        grads = grads_of(params)
        norm = global_norm(grads, self.norm_type)
        threshold = torch.tensor(self.max_norm, device=norm.device)
        clipped = torch.isfinite(norm) & (norm > threshold)
        scale = torch.where(clipped, threshold / norm, torch.ones_like(norm))
        if grads:
            torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        return ClipResult(norm, norm * scale, clipped, threshold)
