"""Dropout whose mask takes half torch's draws on the CPU, and is the same on every CPU.

``torch.nn.Dropout`` draws its mask with ``bernoulli_(1 - p)``. On the CPU that kernel draws one double-precision
uniform per element, serially (torch's MKL path is for Intel CPUs only): ~1.1 ms for the ``20 × 35 × 200``
activations of the 2×200 word LM on the 2-core AMD VM of ``benchmarks/RESULTS.md``, where an update of the
character-level LM takes ~23 ms and draws three such masks. This module draws the mask from the same generator
(torch's default CPU generator: seeded by ``seed_everything``, saved in checkpoints and replay snapshots) with fewer
draws: one 63-bit integer (``random_()`` of an ``int64`` tensor) gives two elements 31 random bits each, and an
element is kept where its bits fall below ``round((1 - p) · 2^31)``: the keep probability exact to 2^-32 (a float32
uniform, ``rand() < 1 - p``, resolves 2^-24). ~0.38 ms for the same mask on that VM (``python
benchmarks/bench_dropout.py``, 2 threads; 0.46 with one, 0.38 with torch's AVX2 kernels instead of AVX-512;
on an Intel CPU torch's MKL path may be as fast, and these masks are still the ones every other CPU draws).
What follows is torch's: the mask as 0/1 in the input's dtype, divided by ``1 - p``, times the input, so the
gradient is the incoming one times the same mask. The noise is made in one pass, the mask times ``1 / (1 - p)``
computed by that same division (the same bits), and each thread keeps the draw buffer of each mask shape with its
views: 5 operations a mask instead of 9 (0.25 ms against 0.28 for the ``20 × 35 × 200`` mask, 31 µs against 37 at
width 16, in one run of ``bench_dropout.py`` on the VM's state of 2026-12-07).

The draws go to the elements in the order they lie in memory (the layout ``torch.empty_like`` gives), so the mask
of an element does not depend on how the tensor is viewed: a batch-first view of sequence-first memory and the
sequence-first tensor itself get the same mask element for element (what lets :class:`~seqstab.nets.RecurrentNet`
run its layers sequence first with the bits of its layer-by-layer loop). The masks differ from torch's for the same
seed (another draw), and they do not depend on the CPU's vendor or the thread count (the integer draws are serial,
the rest elementwise). Off the CPU (a GPU's fused dropout kernel is already fast), in eval mode and for ``p`` of 0
or 1, :func:`dropout` is ``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Dropout", "dropout", "keep_mask"]

_BITS = 31  # random bits per element: each half of a 63-bit draw
# draw buffers kept per thread, one per mask shape and layout: a word LM has three layouts, times the shorter last
# chunk; 4 bytes an element (the 2×1,500 LM's masks: ~4 MiB each, 25 MiB for six)
_KEPT_SHAPES = 6


class _Buffers(threading.local):
    """Per thread: the ``int64`` draw buffer of each mask shape and layout, with its views (made once, filled by
    every mask: three operations a mask instead of six), and the noise's ``1 / (1 - p)`` per ``(p, dtype)``."""

    def __init__(self) -> None:
        self.draws: dict[tuple[torch.Size, tuple[int, ...]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.scales: dict[tuple[float, torch.dtype], torch.Tensor] = {}


_BUFFERS = _Buffers()


def keep_mask(like: torch.Tensor, keep: float) -> torch.Tensor:
    """A bool CPU tensor shaped and laid out as ``like``, each element True with probability ``keep`` (to 2^-32),
    drawn from torch's default CPU generator in memory order: one ``int64`` draw per two elements."""
    key = (like.shape, like.stride())
    buffers = _BUFFERS.draws.get(key)
    if buffers is None:
        buffers = _draw_buffers(like)
        if len(_BUFFERS.draws) >= _KEPT_SHAPES:
            _BUFFERS.draws.pop(next(iter(_BUFFERS.draws)))  # the oldest shape
        _BUFFERS.draws[key] = buffers
    draws, halves, shaped = buffers
    draws.random_()  # [0, 2^63): 63 random bits each
    halves.bitwise_and_(2**_BITS - 1)  # 31 random bits each
    return shaped < round(keep * 2**_BITS)


def _draw_buffers(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(draws, halves, shaped)`` for masks like ``like``: the ``int64`` draws, their ``int32`` halves (one per
    element) and those halves viewed in ``like``'s shape and memory order."""
    count = like.numel()
    with torch.inference_mode(False):  # plain tensors: filled in place in and out of inference mode
        draws = torch.empty((count + 1) // 2, dtype=torch.int64, device="cpu")
        halves = draws.view(torch.int32)
        halves = halves if count % 2 == 0 else halves[:count]
        dense = like.is_contiguous()
        shaped = halves.view(like.shape) if dense else halves.as_strided(like.shape, _dense_strides(like))
    return draws, halves, shaped


def _dense_strides(like: torch.Tensor) -> list[int]:
    """The strides of a dense tensor of ``like``'s shape whose dimensions lie in memory in ``like``'s order (its own
    strides where it is dense), as ``torch.empty_like`` lays it out."""
    strides, step = [0] * like.dim(), 1
    for dim in sorted(range(like.dim()), key=lambda d: (like.stride(d), -d)):  # innermost first
        strides[dim] = step
        step *= like.shape[dim]
    return strides


def dropout(x: torch.Tensor, p: float, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """``torch.nn.functional.dropout`` with the mask of :func:`keep_mask` on the CPU (see the module's docstring)."""
    if not training or not 0 < p < 1 or x.device.type != "cpu" or not x.is_floating_point() or x.numel() == 0:
        return F.dropout(x, p, training, inplace)
    keep = 1.0 - p
    noise = keep_mask(x, keep) * _kept_value(keep, x.dtype)  # torch's noise, 1 / (1 - p) or 0, in one pass
    return x.mul_(noise) if inplace else x * noise


def _kept_value(keep: float, dtype: torch.dtype) -> torch.Tensor:
    """0-dim ``1 / keep`` of ``dtype``, computed as torch's noise computes it (the mask as 0/1 in ``dtype``, divided
    by ``keep`` in place): the mask times it is that noise bit for bit (``1·v = v``, ``0·v = +0``), one operation
    instead of two."""
    found = _BUFFERS.scales.get((keep, dtype))
    if found is None:
        with torch.inference_mode(False):
            found = _BUFFERS.scales[(keep, dtype)] = torch.ones((), dtype=dtype).div_(keep)
    return found


class Dropout(nn.Dropout):
    """``torch.nn.Dropout`` with the mask of :func:`keep_mask` on the CPU: the same arguments, module and state."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return dropout(input, self.p, self.training, self.inplace)
