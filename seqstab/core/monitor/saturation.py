"""Saturation of recurrent units and gates, measured on the calls the gradient-flow probe captured.

On a gradient-flow step (``grad_flow_every_n_steps``) the :class:`~seqstab.core.monitor.flow.FlowProbe` keeps each
recurrent layer's input ``x`` ``(B, k, I)``, start state and output ``h_1..h_k`` ``(B, k, H)``. The gates of an LSTM or
GRU are inside its fused kernel; they depend only on ``x_t`` and ``h_{t-1}``, so all of them are recomputed at once
from those captures on the device, the sigmoid gates only (LSTM ``i f o``, GRU ``r z``)::

    h_prev = [h_0, h_1 .. h_{k-1}]                               (B, k, H)
    gates  = x W_ih^T + h_prev W_hh^T + (b_ih + b_hh)            (B, k, G·H) for the sigmoid gates' blocks

Per layer ``<i>`` (bottom first, as ``grad_flow/.../layer_<i>``), tags under ``rnn/saturation/layer_<i>/``:

=============  ==========================================================================================
cell           tags
=============  ==========================================================================================
rnn, tanh      ``tanh``: share of units with ``|h| > 0.99`` (derivative below 0.02); ``tanh_slope``: the mean
               derivative ``1 - h²``
rnn, relu      ``dead``: share of units that were 0 at every step and row of the chunk
lstm           ``input_low`` / ``input_high``, ``forget_low`` / ``forget_high``, ``output_low`` /
               ``output_high``: share of the gate's values below 0.01 / above 0.99; ``forget_mean``
gru            ``reset_low`` / ``reset_high``, ``update_low`` / ``update_high``; ``update_mean``
=============  ==========================================================================================

A forget gate near 0 clears the cell state at every step (its gradient with it); an update gate near 0 makes a GRU
replace its state instead of carrying it. A layer without a nonlinearity (``LinearRNN``) has none to saturate.

Everything here is a 0-dim device tensor: read back with the update's loss at the flush, no host synchronisation.
"""

from __future__ import annotations

import torch
from torch import nn

from seqstab.core.monitor.contract import CELL_OF_MODE
from seqstab.core.monitor.flow import biases

__all__ = ["LOW", "HIGH", "SATURATED", "layer_kind", "saturation_tensors"]

LOW, HIGH = 0.01, 0.99  # a sigmoid gate below LOW or above HIGH is saturated (derivative below 0.0099)
SATURATED = 0.99  # |tanh| above this: derivative 1 - h² below 0.02
GATES = {"lstm": ("input", "forget", None, "output"), "gru": ("reset", "update", None)}  # None: no sigmoid


def layer_kind(layer: nn.Module) -> str | None:
    """``tanh``, ``relu``, ``lstm`` or ``gru`` for a recurrent layer; None where it has no nonlinearity seqstab knows
    (``LinearRNN``, a layer of one's own without a ``nonlinearity`` attribute)."""
    if isinstance(layer, nn.RNNBase):
        cell = CELL_OF_MODE[layer.mode]
        return layer.nonlinearity if cell == "rnn" else cell
    kind = getattr(layer, "nonlinearity", None)
    return kind if kind in ("tanh", "relu") else None


def saturation_tensors(layers: list[nn.Module], calls: list[list]) -> dict[str, torch.Tensor]:
    """``rnn/saturation/layer_<i>/...`` as 0-dim device tensors, from each layer's captured calls (``calls[i]``:
    objects with ``x``, ``hx`` and ``out`` as the flow probe keeps them)."""
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i, (layer, layer_calls) in enumerate(zip(layers, calls, strict=True)):
            kind = layer_kind(layer)
            if kind is None or not layer_calls or any(getattr(c, "out", None) is None for c in layer_calls):
                continue
            prefix = f"rnn/saturation/layer_{i}/"
            outs = [c.out.float() for c in layer_calls]  # (B, k, H) each
            if kind == "tanh":
                saturated = sum((o.abs() > SATURATED).sum() for o in outs)
                slope = sum((1 - o.square()).sum() for o in outs)
                count = sum(o.numel() for o in outs)
                tensors[prefix + "tanh"] = saturated / count
                tensors[prefix + "tanh_slope"] = slope / count
            elif kind == "relu":
                alive = torch.stack([(o != 0).flatten(0, 1).any(dim=0) for o in outs]).any(dim=0)  # (H,)
                tensors[prefix + "dead"] = 1 - alive.float().mean()
            else:
                tensors.update(_gate_tensors(layer, layer_calls, kind, prefix))
    return tensors


def _gate_tensors(layer: nn.Module, calls: list, kind: str, prefix: str) -> dict[str, torch.Tensor]:
    """The gate shares (and the mean forget / update gate) of an LSTM or GRU layer, over all its calls.

    Only the sigmoid gates are computed (an LSTM's cell gate and a GRU's new gate are not), each run of adjacent gate
    blocks as one product with the biases added in it (``addmm``), and their shares counted per block."""
    w_ih, w_hh = (getattr(layer, name).detach().float() for name in ("weight_ih_l0", "weight_hh_l0"))
    b_ih_hh = [b.detach().float() for b in biases(layer)]  # both enter the sigmoid gates; none with bias=False
    bias = b_ih_hh[0] + b_ih_hh[1] if b_ih_hh else None
    names = GATES[kind]
    hidden = w_hh.shape[1]
    mean_of = "forget" if kind == "lstm" else "update"
    low: dict[str, torch.Tensor] = {}  # name -> count of values below LOW
    high: dict[str, torch.Tensor] = {}
    mean, count = 0, 0  # the forget (LSTM) or update (GRU) gate's sum; values per gate
    for call in calls:
        out = call.out.float()  # (B, k, H)
        h0 = call.hx[0] if kind == "lstm" and call.hx is not None else call.hx
        h0 = out.new_zeros(out.shape[0], 1, hidden) if h0 is None else h0.float().transpose(0, 1)  # (B, 1, H)
        h_prev = torch.cat([h0, out[:, :-1]], dim=1).flatten(0, 1)  # (B·k, H): the state each step starts from
        x = call.x.float().flatten(0, 1)  # (B·k, I)
        for first, run in _sigmoid_runs(names):
            rows = slice(first * hidden, (first + len(run)) * hidden)
            value = x @ w_ih[rows].T if bias is None else torch.addmm(bias[rows], x, w_ih[rows].T)
            value = value.addmm_(h_prev, w_hh[rows].T).sigmoid_()
            value = value.view(-1, len(run), hidden)  # (B·k, gates of the run, H)
            below, above = (value < LOW).sum(dim=(0, 2)), (value > HIGH).sum(dim=(0, 2))  # (gates of the run,)
            for j, name in enumerate(run):
                low[name] = low[name] + below[j] if name in low else below[j]
                high[name] = high[name] + above[j] if name in high else above[j]
                if name == mean_of:
                    mean = mean + value[:, j].sum()
        count += out.numel()
    tensors = {}
    for name in low:
        tensors[f"{prefix}{name}_low"] = low[name] / count
        tensors[f"{prefix}{name}_high"] = high[name] / count
    tensors[f"{prefix}{mean_of}_mean"] = mean / count
    return tensors


def _sigmoid_runs(names: tuple[str | None, ...]) -> list[tuple[int, list[str]]]:
    """The sigmoid gates of a cell as runs of adjacent blocks: ``(first block, names)``; LSTM ``i f g o`` gives
    ``[(0, [input, forget]), (3, [output])]``, GRU ``r z n`` gives ``[(0, [reset, update])]``."""
    runs: list[tuple[int, list[str]]] = []
    for block, name in enumerate(names):
        if name is None:
            continue
        if runs and runs[-1][0] + len(runs[-1][1]) == block:
            runs[-1][1].append(name)
        else:
            runs.append((block, [name]))
    return runs
