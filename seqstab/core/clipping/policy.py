"""The base of every clipping policy, and :class:`NoClip` (measure only)."""

from __future__ import annotations

import torch

from seqstab.core.clipping.norms import ClipResult, grads_of, norms_and_total


class ClipPolicy:
    """Base class of clipping policies. Subclasses implement :meth:`clip`; stateful ones also
    :meth:`state_dict`/:meth:`load_state_dict`, which travel in the checkpoint."""

    def clip(self, params: list[torch.Tensor]) -> ClipResult:
        raise NotImplementedError

    @torch.no_grad()
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
        norms, norm = norms_and_total(grads_of(params))
        return ClipResult(norm, norm, torch.zeros((), dtype=torch.bool, device=norm.device), tensor_norms=norms)
