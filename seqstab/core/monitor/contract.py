"""What a net offers the monitors: its recurrent layers for gradient flow and its ``W_hh`` for spectra (the
recurrent contract of :mod:`seqstab.nets`), or what can be found of ``nn.RNN``/``LSTM``/``GRU`` in it."""

from __future__ import annotations

import torch
from torch import nn

CELL_OF_MODE = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn", "RNN_RELU": "rnn"}  # nn.RNNBase.mode -> gate layout


def flow_layers(net: nn.Module) -> list[nn.Module]:
    """The layers gradient flow follows: ``net.recurrent_layers()`` if offered; else the net's ``nn.RNN``/``LSTM``/
    ``GRU`` submodules when each is single-layer, batch-first and unidirectional; else none."""
    offered = getattr(net, "recurrent_layers", None)
    if callable(offered):
        return list(offered())
    found = [m for m in net.modules() if isinstance(m, nn.RNNBase)]
    simple = all(m.num_layers == 1 and m.batch_first and not m.bidirectional and not m.proj_size for m in found)
    return found if simple else []


def spectral_weights(net: nn.Module) -> list[tuple[torch.Tensor, str]]:
    """``(W_hh (G * H, H), cell)`` of every recurrent layer: ``net.recurrent_weights()`` (gates named by ``net.cell``,
    default ``rnn``) if offered; else ``weight_hh_l<k>`` of each layer of the net's ``nn.RNN``/``LSTM``/``GRU``."""
    offered = getattr(net, "recurrent_weights", None)
    if callable(offered):
        cell = getattr(net, "cell", "rnn")
        return [(w, cell) for w in offered()]
    weights = []
    for module in net.modules():
        if isinstance(module, nn.RNNBase):
            cell = CELL_OF_MODE[module.mode]
            weights += [(getattr(module, f"weight_hh_l{k}"), cell) for k in range(module.num_layers)]
    return weights
