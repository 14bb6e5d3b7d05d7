"""Recurrent nets as plain ``nn.Module`` (no Lightning): the recurrent contract, and seqstab's own net.

The recurrent contract
----------------------
A task's ``net`` (``model.net`` in a config: a class path and its ``init_args``) is any ``nn.Module`` built as
``net_class(input_size, **init_args)`` (the task supplies ``input_size``: the data's features, or the embedding
width of a language model) that offers:

* ``forward(x, hidden) -> (out, hidden)``: ``x`` is ``(B, L, input_size)``, batch first; ``out`` is
  ``(B, L, hidden_size)``; ``hidden`` is None (start from zeros) or what the previous call returned: any nest of
  tuples, lists and dicts of tensors. The task carries it across chunks (detached) and, for stateful data, across
  batches, and checkpoints it;
* ``hidden_size``: the width ``H`` of ``out`` (the task sizes its head by it).

That is enough for the update core: norms, clipping, the guard, replay and exact resume. For the monitors a net may
also offer:

* ``recurrent_layers() -> list[nn.Module]``: the single-layer recurrent modules it runs one after the other, each
  called as ``layer(x (B, k, I), hx) -> (out (B, k, H), state)`` and either an ``nn.RNN``/``nn.LSTM``/``nn.GRU``
  (``batch_first=True``; with or without biases) or a module with their parameter names (``weight_ih_l0``,
  ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``). Gradient flow through time (``grad_flow/*``) hooks them;
  per-module norms split each into its ``.ih`` and ``.hh`` weights. Without the method, seqstab uses the net's
  ``nn.RNN``/``nn.LSTM``/``nn.GRU`` submodules when each is such a single-layer, batch-first, unidirectional module;
* ``recurrent_weights() -> list[Tensor]``: each layer's ``W_hh`` ``(G * H, H)``, with ``cell`` (``rnn``, ``lstm`` or
  ``gru``; default ``rnn``) naming its ``G`` gate blocks: spectra (``rnn/sigma_max/...``). Without it, seqstab reads
  ``weight_hh_l<k>`` of the net's ``nn.RNN``/``nn.LSTM``/``nn.GRU`` submodules.

A monitor that finds nothing to measure says so once, at fit start, and the rest of the run goes on.
:mod:`seqstab.example_net` is a complete net of the contract (an IndRNN, 40 lines) to copy.

seqstab's own net
-----------------
:class:`RecurrentNet`: tensor layout batch first; the hidden state is a tuple with one entry per layer: ``h`` of
shape ``(1, B, hidden_size)`` for ``rnn``/``gru``, the pair ``(h, c)`` for ``lstm``. A stacked net is one fused
single-layer module per layer (``nn.RNN``/``nn.LSTM``/``nn.GRU``), so each layer's hidden-state sequence is a tensor
the gradient-flow monitor can hook, and residual connections and layer normalisation can sit between layers. On the
CPU, while nothing hooks a layer, a plain stack runs through the layers' kernels sequence first instead, transposing
its input and output once rather than at every layer (the same kernels and dropout masks, so the same bits). Dropout
is seqstab's (:mod:`seqstab.nets.dropout`: half the draws of torch's mask on the CPU). The ``linear`` vanilla RNN (no
nonlinearity, for theory experiments) has no fused kernel and loops over time in Python.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from seqstab import internals
from seqstab.core.errors import ConfigError, check_choice, check_fraction, check_positive
from seqstab.nets.dropout import Dropout

Cell = Literal["rnn", "lstm", "gru"]
Nonlinearity = Literal["tanh", "relu", "linear"]
Init = Literal["default", "uniform", "xavier", "orthogonal", "identity"]
LayerState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
Hidden = tuple[LayerState, ...]

GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # recurrent blocks stacked in weight_hh: W_hh is (GATES * H, H)
KERNELS = {
    "GRU": torch.gru,
    "RNN_TANH": torch.rnn_tanh,
    "RNN_RELU": torch.rnn_relu,
}  # by nn.RNNBase.mode (LSTM: torch.lstm)


class LinearRNN(nn.Module):
    """One vanilla RNN layer without nonlinearity: ``h_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh``.

    Parameter names match ``nn.RNN`` (``weight_hh_l0`` ...) so initialisation and monitoring treat both alike.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(hidden_size))
        bound = 1 / math.sqrt(hidden_size)  # nn.RNN's default
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.new_zeros(x.shape[0], self.hidden_size) if h0 is None else h0[0]  # (B, H)
        drive = x @ self.weight_ih_l0.T + (self.bias_ih_l0 + self.bias_hh_l0)  # (B, L, H)
        outputs = []
        for t in range(x.shape[1]):
            h = drive[:, t] + h @ self.weight_hh_l0.T
            outputs.append(h)
        return torch.stack(outputs, dim=1), h.unsqueeze(0)  # (B, L, H), (1, B, H)


class RecurrentNet(nn.Module):
    """A stack of recurrent layers: vanilla RNN, LSTM or GRU.

    Args:
        input_size: Features per time step of the input.
        hidden_size: Units per layer.
        num_layers: Stacked layers.
        cell: ``rnn`` (vanilla), ``lstm`` or ``gru``.
        nonlinearity: For ``cell: rnn``: ``tanh``, ``relu`` or ``linear`` (identity, for theory experiments).
        dropout: Dropout on the output of every layer but the last (as ``nn.LSTM``).
        init: Recurrent initialisation: ``default`` (PyTorch's), ``uniform`` (every weight U(±init_scale), as
            Zaremba et al. 2014), ``xavier``, ``orthogonal``, ``identity`` (IRNN, Le et al. 2015). Applied to
            each gate's block of ``W_hh`` separately; ``xavier``/``orthogonal``/``identity`` zero the biases.
        init_scale: The ``a`` of ``uniform`` initialisation.
        spectral_radius: If set, rescale each gate's block of ``W_hh`` after initialisation so its spectral
            radius is exactly this value: the dial that makes an explosion reproducible.
        residual: Add each layer's input to its output where sizes match (every layer after the first).
        layer_norm: Layer-normalise the output of every layer but the last.
        forget_bias: For ``cell: lstm``: after initialisation, the forget gate's bias of every layer is this value
            (``bias_ih`` holds it, ``bias_hh`` 0 for that gate), so the cell starts by keeping its state: 1 is
            Jozefowicz et al. (2015)'s remedy for gradients that vanish through time. None (default) leaves the
            biases as ``init`` draws them.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 128,
        num_layers: int = 1,
        cell: Cell = "lstm",
        nonlinearity: Nonlinearity = "tanh",
        dropout: float = 0.0,
        init: Init = "default",
        init_scale: float = 0.1,
        spectral_radius: float | None = None,
        residual: bool = False,
        layer_norm: bool = False,
        forget_bias: float | None = None,
    ):
        super().__init__()
        check_positive(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        check_positive(init_scale=init_scale, spectral_radius=spectral_radius)
        check_choice("cell", cell, GATES)
        check_choice("nonlinearity", nonlinearity, ("tanh", "relu", "linear"))
        check_choice("init", init, ("default", "uniform", "xavier", "orthogonal", "identity"))
        if cell != "rnn" and nonlinearity != "tanh":
            raise ConfigError(f"nonlinearity={nonlinearity!r}: only cell='rnn' takes a nonlinearity (cell={cell!r})")
        check_fraction("dropout", dropout, low_inclusive=True)
        if forget_bias is not None and cell != "lstm":
            raise ConfigError(f"forget_bias={forget_bias!r}: only cell='lstm' has a forget gate (cell={cell!r})")
        if forget_bias is not None and not math.isfinite(forget_bias):
            raise ConfigError(f"forget_bias={forget_bias!r}: must be finite")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.cell, self.nonlinearity = cell, nonlinearity
        self.residual = residual
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.layers = nn.ModuleList(self._make_layer(n) for n in sizes)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(num_layers - 1)) if layer_norm else None
        self.dropout = Dropout(dropout)
        self.forget_bias = forget_bias
        initialise(self, init, init_scale, spectral_radius)
        if forget_bias is not None:
            set_forget_bias(self, forget_bias)

    def _make_layer(self, input_size: int) -> nn.Module:
        if self.cell == "lstm":
            return nn.LSTM(input_size, self.hidden_size, batch_first=True)
        if self.cell == "gru":
            return nn.GRU(input_size, self.hidden_size, batch_first=True)
        if self.nonlinearity == "linear":
            return LinearRNN(input_size, self.hidden_size)
        return nn.RNN(input_size, self.hidden_size, nonlinearity=self.nonlinearity, batch_first=True)

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """Run ``x`` ``(B, L, input_size)`` from ``hidden`` (zeros if None); return ``(B, L, H)`` and the new state."""
        if self._sequence_first(x):
            return self._chain(x, hidden)
        states = []
        for i, layer in enumerate(self.layers):
            out, state = layer(x, None if hidden is None else hidden[i])  # (B, L, H)
            if self.residual and i > 0:
                out = out + x
            if i < self.num_layers - 1:
                if self.norms is not None:
                    out = self.norms[i](out)
                out = self.dropout(out)
            states.append(state)
            x = out
        return x, tuple(states)

    def _sequence_first(self, x: torch.Tensor) -> bool:
        """Whether the stack runs through its layers' kernels sequence first (:meth:`_chain`) instead of calling each
        layer module: a plain stack of ``nn.RNN``/``nn.LSTM``/``nn.GRU`` on the CPU (on a GPU each module call keeps
        its cuDNN weight buffer), without residual connections or layer norms, while nothing hooks a layer or the
        dropout between them (the gradient-flow probe and the non-finite origin search hook them, and get the loop)."""
        return (
            self.num_layers > 1
            and x.device.type == "cpu"
            and not self.residual
            and self.norms is None
            and isinstance(self.layers[0], nn.RNNBase)
            and not internals.forward_hooked(*self.layers, self.dropout)
        )

    def _chain(self, x: torch.Tensor, hidden: Hidden | None) -> tuple[torch.Tensor, Hidden]:
        """The stack sequence first: ``x`` transposed once to the ``(L, B, ·)`` layout the kernels work in, each
        layer's kernel called on it, the dropout between layers drawn on it, the output transposed back (a view, as
        a batch-first module returns it). The layer-by-layer loop's bits — each batch-first module call transposes
        its input to this layout and its output back, and the dropout draws its mask in memory order
        (:mod:`seqstab.nets.dropout`) — without a transposing copy per layer in the forward and the backward."""
        seq = x.transpose(0, 1)
        batch, states = x.shape[0], []
        for i, layer in enumerate(self.layers):
            state = None if hidden is None else hidden[i]
            flags = (True, 1, 0.0, layer.training, False, False)  # biases, one layer, no dropout, sequence first
            if self.cell == "lstm":
                h0, c0 = state if state is not None else (seq.new_zeros(1, batch, self.hidden_size),) * 2
                seq, h, c = torch.lstm(seq, (h0, c0), layer.all_weights[0], *flags)
                states.append((h, c))
            else:
                h0 = state if state is not None else seq.new_zeros(1, batch, self.hidden_size)
                seq, h = KERNELS[layer.mode](seq, h0, layer.all_weights[0], *flags)
                states.append(h)
            if i < self.num_layers - 1:
                seq = self.dropout(seq)
        return seq.transpose(0, 1), tuple(states)

    def recurrent_layers(self) -> list[nn.Module]:
        """The fused single-layer modules, bottom to top (the gradient-flow monitor hooks them)."""
        return list(self.layers)

    def recurrent_weights(self) -> list[torch.Tensor]:
        """Each layer's ``W_hh``, shape ``(GATES * H, H)``; ``cell`` names its gate blocks."""
        return [layer.weight_hh_l0 for layer in self.layers]


def gate_blocks(weight_hh: torch.Tensor) -> list[torch.Tensor]:
    """Split ``W_hh`` ``(G * H, H)`` into its ``G`` square gate blocks (views)."""
    hidden = weight_hh.shape[1]
    return list(weight_hh.split(hidden, dim=0))


def spectral_radius(matrix: torch.Tensor) -> float:
    """Largest eigenvalue modulus of a square matrix, computed in float64."""
    return torch.linalg.eigvals(matrix.detach().double()).abs().max().item()


_SIZING = threading.local()  # set while a net is built on the meta device only to be measured


@contextmanager
def sizing_only() -> Iterator[None]:
    """Within the block, :func:`initialise` does nothing: a net built on the ``meta`` device to count its parameters
    needs no values (and its eigenvalues cannot be computed there)."""
    _SIZING.active = True
    try:
        yield
    finally:
        _SIZING.active = False


@torch.no_grad()
def initialise(net: RecurrentNet, init: str, scale: float = 0.1, radius: float | None = None) -> None:
    """Apply a named initialisation to ``net``, then rescale ``W_hh`` gate blocks to ``radius`` if given."""
    if getattr(_SIZING, "active", False):
        return
    for layer in net.layers:
        if init == "uniform":
            for p in layer.parameters():
                p.uniform_(-scale, scale)
        elif init != "default":
            for block in gate_blocks(layer.weight_ih_l0):
                nn.init.xavier_uniform_(block)
            for block in gate_blocks(layer.weight_hh_l0):
                {"xavier": nn.init.xavier_uniform_, "orthogonal": nn.init.orthogonal_, "identity": _identity_}[init](
                    block
                )
            layer.bias_ih_l0.zero_()
            layer.bias_hh_l0.zero_()
        if radius is not None:
            for block in gate_blocks(layer.weight_hh_l0):
                current = spectral_radius(block)
                if current == 0:
                    raise ConfigError(f"spectral_radius={radius}: W_hh is zero under init={init!r}, cannot rescale")
                block.mul_(radius / current)


@torch.no_grad()
def set_forget_bias(net: RecurrentNet, value: float) -> None:
    """Set the forget gate's bias (block 1 of ``i f g o``) of every LSTM layer: ``bias_ih`` to ``value``,
    ``bias_hh`` to 0 (their sum is what the gate sees)."""
    if getattr(_SIZING, "active", False):
        return
    for layer in net.layers:
        hidden = layer.weight_hh_l0.shape[1]
        layer.bias_ih_l0[hidden : 2 * hidden] = value
        layer.bias_hh_l0[hidden : 2 * hidden] = 0.0


def _identity_(block: torch.Tensor) -> torch.Tensor:
    return nn.init.eye_(block)
