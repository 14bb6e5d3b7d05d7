"""Spectra of the recurrent weights: σ_max(W_hh) and the spectral radius, per layer and per gate block.

Pascanu, Mikolov & Bengio (2013): for ``h_t = f(W_hh h_{t-1} + ...)`` with ``|f'| ≤ γ``, the gradient can only
explode if ``σ_max(W_hh) > 1/γ`` (γ = 1 for tanh, relu and linear; 1/4 for sigmoid); ``σ_max < 1/γ`` makes it
vanish. The spectral radius ρ (largest |eigenvalue|) is the long-run growth rate of a linear RNN: its gradient
through k steps scales as ρ^k. For LSTM and GRU each gate's square block of ``W_hh`` is reported on its own.

Tags (values computed on the host in float64, from a snapshot of the weights taken before the update; where the net
trains on a GPU on the monitor's worker thread, written at their own step at a later flush:
:mod:`seqstab.core.monitor.background`)::

    rnn/sigma_max/layer_<i>                 vanilla RNN
    rnn/spectral_radius/layer_<i>
    rnn/pascanu_bound                       1/γ = 1 (vanilla tanh, relu, linear): explosion needs σ_max above it
    rnn/sigma_max/layer_<i>/gate_<g>        LSTM gates i, f, g, o; GRU gates r, z, n (PyTorch's block order)
    rnn/spectral_radius/layer_<i>/gate_<g>
"""

from __future__ import annotations

import torch

from seqstab.nets.recurrent import gate_blocks

GATE_NAMES = {"rnn": ("",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}  # blocks of W_hh, top to bottom


def spectrum_tags(layer: int, cell: str) -> list[tuple[str, str]]:
    """``(sigma_max tag, spectral_radius tag)`` for each gate block of one layer's ``W_hh``."""
    suffixes = [f"layer_{layer}" if cell == "rnn" else f"layer_{layer}/gate_{g}" for g in GATE_NAMES[cell]]
    return [(f"rnn/sigma_max/{s}", f"rnn/spectral_radius/{s}") for s in suffixes]


def recurrent_spectra(weights_hh: list[torch.Tensor], cell: str | list[str]) -> dict[str, float]:
    """σ_max and spectral radius of every gate block of every layer's ``W_hh`` ``(G * H, H)``, as tagged scalars.

    ``cell`` names the gate layout of every layer, or of each (a list, one per layer). A block with non-finite entries
    (after an explosion reached the weights) is left out.
    """
    cells = [cell] * len(weights_hh) if isinstance(cell, str) else list(cell)
    metrics: dict[str, float] = {}
    for i, (weight, layer_cell) in enumerate(zip(weights_hh, cells, strict=True)):
        blocks = torch.stack(gate_blocks(weight.detach().cpu().double()))  # (G, H, H)
        finite = torch.isfinite(blocks).flatten(1).all(dim=1)  # (G,)
        sigma = torch.linalg.matrix_norm(blocks[finite], ord=2)  # (G',) largest singular values
        radius = torch.linalg.eigvals(blocks[finite]).abs().amax(dim=-1)  # (G',)
        kept = [tags for tags, ok in zip(spectrum_tags(i, layer_cell), finite.tolist(), strict=True) if ok]
        for (sigma_tag, radius_tag), s, r in zip(kept, sigma.tolist(), radius.tolist(), strict=True):
            metrics[sigma_tag] = s
            metrics[radius_tag] = r
    if "rnn" in cells:
        metrics["rnn/pascanu_bound"] = 1.0  # 1/γ with γ = 1: tanh, relu and linear all have |f'| ≤ 1
    return metrics
