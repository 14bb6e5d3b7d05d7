"""Describing the non-finite part of a tensor for :mod:`seqstab.core.diagnose.origin`: which rows and steps hold it,
what it is (``nan``, ``inf``), the largest finite magnitude beside it and what made it (``overflow``, ``0/0`` ...)."""

from __future__ import annotations

import math
from typing import Any

import torch

SHOWN_ROWS = 8  # rows listed by index (the count is always given)
OVERFLOW = math.sqrt(torch.finfo(torch.float32).max)  # ≈ 1.8e19: a product of two such values is inf in float32


def finite(tensor: torch.Tensor) -> torch.Tensor:
    """Whether every value of ``tensor`` is finite, as a 0-dim bool on its device: one reduction (``aminmax``: a nan
    reaches both ends, an inf one of them), no tensor of flags the size of ``tensor``."""
    if not tensor.numel():
        return torch.ones((), dtype=torch.bool, device=tensor.device)
    low, high = torch.aminmax(tensor.detach())
    return torch.isfinite(low) & torch.isfinite(high)


def read_flags(flags: list[torch.Tensor]) -> list[bool]:
    """Every flag (0-dim bool tensors) in one host read."""
    if not flags:
        return []
    device = flags[0].device
    return [bool(v) for v in torch.stack([f.to(device) for f in flags]).tolist()]


def where_bad(tensor: torch.Tensor, time: bool, last: bool = False) -> dict[str, Any]:
    """What is non-finite, the rows (dim 0) holding it and, for a ``(B, k, ...)`` tensor, its first (or ``last``)
    step."""
    bad = ~torch.isfinite(tensor.detach())
    out: dict[str, Any] = {"values": values_of([tensor])}
    if tensor.dim() == 0:
        return out
    per_row = bad.reshape(bad.shape[0], -1)
    if time and tensor.dim() >= 2:
        per_step = bad.reshape(bad.shape[0], bad.shape[1], -1).any(dim=2)  # (B, k)
        steps = per_step.any(dim=0).nonzero().flatten().tolist()
        if steps:
            step = steps[-1] if last else steps[0]
            out.update(values=values_of([tensor[:, step]]), step=step + 1, steps=tensor.shape[1])
            per_row = per_step[:, step : step + 1]
    rows = per_row.any(dim=1).nonzero().flatten().tolist()
    out.update(rows=rows[:SHOWN_ROWS], rows_bad=len(rows), rows_total=tensor.shape[0])
    return out


def where_text(where: dict[str, Any]) -> str:
    parts = []
    if where.get("step") is not None:
        parts.append(f"step {where['step']} of {where['steps']}")
    if where.get("rows_total") is not None:
        rows = where["rows"]
        shown = ", ".join(str(r) for r in rows) + (", ..." if where["rows_bad"] > len(rows) else "")
        every = " (all)" if where["rows_bad"] == where["rows_total"] else ""
        parts.append(f"{where['rows_bad']} of {where['rows_total']} rows{every}: {shown}")
    return ", ".join(parts) or "its value"


def values_of(tensors: list[torch.Tensor]) -> str:
    """``nan``, ``inf``, ``-inf`` (or several, joined by ``and``): what is non-finite in ``tensors``."""
    checks = [(kind, test(t).any()) for t in tensors for kind, test in (
        ("nan", torch.isnan), ("inf", torch.isposinf), ("-inf", torch.isneginf))]  # fmt: skip
    flags = read_flags([flag for _, flag in checks])
    kinds = dict.fromkeys(kind for (kind, _), flag in zip(checks, flags, strict=True) if flag)
    return " and ".join(kinds) or "finite"


def largest_finite(tensors: list[torch.Tensor]) -> float:
    """The largest finite ``|value|`` of ``tensors`` (0 when there is none)."""
    found = [t.detach().float().abs().nan_to_num(nan=0.0, posinf=0.0).amax() for t in tensors if t.numel()]
    if not found:
        return 0.0
    return max(torch.stack([t.to(found[0].device) for t in found]).tolist())


def kind_of(values: str, largest: float, elementwise: list[tuple[torch.Tensor, torch.Tensor]] = ()) -> str:
    """What made the values non-finite, from the largest finite magnitude before and, for an elementwise op, its
    inputs where its output went non-finite."""
    for x, y in elementwise:
        bad = ~torch.isfinite(y)
        at = x.detach()[bad]
        positive_inf = bool(torch.isposinf(y[bad]).any())
        if at.numel() and bool(torch.isfinite(at).all()) and bool((at <= 0).all()) and not positive_inf:
            return "log of a non-positive" if bool((at < 0).any()) or "-inf" in values else "0/0"
    if math.isfinite(largest) and largest >= OVERFLOW:
        return "overflow"
    return "division by zero" if "inf" in values else "0/0"


def shape_of(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(str(n) for n in tensor.shape) + ")"
