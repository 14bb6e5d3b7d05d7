"""Gradient and weight checks the guard shares with replay and the checkpoint hooks: per-parameter gradient norms,
and the refusal to save non-finite weights."""

from __future__ import annotations

import torch

from seqstab.core.errors import SeqstabError


class NonFiniteWeightsError(SeqstabError):
    """Refusal to save a checkpoint whose weights hold inf or nan."""


def check_finite_weights(state_dict: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first tensor of ``state_dict`` that holds inf or nan."""
    floats = [(k, v) for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not floats:
        return
    finite = torch.stack([torch.isfinite(v).all() for _, v in floats]).tolist()  # one sync
    for (name, _), ok in zip(floats, finite, strict=True):
        if not ok:
            raise NonFiniteWeightsError(f"refusing to save the {where}: {name} holds inf or nan")


def grad_norms(
    module: torch.nn.Module,
    tensor_norms: torch.Tensor | None = None,
    named: list[tuple[str, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """L2 norm of each parameter's gradient, by parameter name, in one host transfer.

    ``tensor_norms`` are norms the clipping policy took before it clipped (``ClipResult.tensor_norms``, in the
    order of the parameters that had a gradient then: ``named``, ``(name, parameter)``, default those that have one
    now); without them the gradients are measured as they are now."""
    if named is None:
        named = [(name, p) for name, p in module.named_parameters() if p.grad is not None]
    if not named:
        return {}
    if tensor_norms is not None and len(tensor_norms) == len(named):
        norms = tensor_norms.detach().float().tolist()
    else:
        named = [(name, p) for name, p in named if p.grad is not None]
        norms = torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for _, p in named]).tolist()
    return {name: norm for (name, _), norm in zip(named, norms, strict=True)}
