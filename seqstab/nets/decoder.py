"""The encoder–decoder head of :class:`seqstab.tasks.Forecaster`: the encoder's state rolled out over the horizon.

The linear head maps the net's output at step ``t`` to all ``H`` forecasts at once. The rollout decoder instead
starts a recurrent cell from that output and steps it ``H`` times, one step per forecast, each step reading the
horizon's known inputs (the calendar of its row) and the decoder's own previous prediction — the autoregressive
rollout of darts' ``RNNModel`` or a seq2seq forecaster, but trained free-running (no teacher forcing)::

    net output h_t (B·S, hidden) ──► cell ──► cell ──► … ──► cell        S = scored steps of the chunk
    inputs:  [last observed y_t,  known_{t+1}]  [ŷ_{t+1}, known_{t+2}]  …  [ŷ_{t+H-1}, known_{t+H}]
    outputs:           ŷ_{t+1}                          ŷ_{t+2}          …          ŷ_{t+H}

A forecast at ``t`` reads ``x`` up to row ``t`` and the known inputs of rows ``t + 1 … t + H``; never a target of
its own horizon. The rollout is part of the chunk's graph: its gradient goes through the same clipping and guard
as the net's, and backpropagates through the ``H`` rollout steps as well as the chunk's ``tbptt_steps`` inputs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from seqstab.core.errors import ConfigError

__all__ = ["DECODER_CELLS", "RolloutDecoder", "scored_steps"]

DECODER_CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}


class RolloutDecoder(nn.Module):
    """A recurrent cell unrolled over the horizon from the encoder's state.

    Args:
        hidden_size: Width of the encoder's output, which is the decoder's initial hidden state (an LSTM's cell
            state starts at zero).
        output_size: Targets ``T`` per step.
        known_size: Known-future inputs ``K`` per horizon step (0: none).
        horizon: Steps ``H`` to unroll.
        cell: ``lstm``, ``gru`` or ``rnn`` (tanh).
        residual: Each step's output is a change from the previous prediction (``predict: change``), and the output
            layer starts at zero, so the untrained decoder repeats the last observed value (the naive forecast).
            False: each step's output is the forecast itself.
    """

    def __init__(
        self,
        hidden_size: int,
        output_size: int,
        known_size: int,
        horizon: int,
        cell: Literal["lstm", "gru", "rnn"] = "lstm",
        residual: bool = True,
    ):
        super().__init__()
        if cell not in DECODER_CELLS:
            raise ConfigError(f"decoder_cell={cell!r}: must be one of {', '.join(DECODER_CELLS)}")
        self.horizon, self.known_size, self.kind, self.residual = horizon, known_size, cell, residual
        self.cell = DECODER_CELLS[cell](output_size + known_size, hidden_size)
        self.out = nn.Linear(hidden_size, output_size)
        if residual:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, state: torch.Tensor, last: torch.Tensor, known: torch.Tensor | None) -> torch.Tensor:
        """``state`` ``(N, hidden)``, ``last`` ``(N, T)`` the last observed targets, ``known`` ``(N, H, K)`` or None
        -> forecasts ``(N, H, T)``."""
        if (known is None) != (self.known_size == 0):
            raise ConfigError(
                f"the decoder was built for {self.known_size} known-future inputs but the batch "
                + ("has no 'known'" if known is None else f"has {known.shape[-1]}")
            )
        h, c = state, torch.zeros_like(state)
        previous, outputs = last, []
        for k in range(self.horizon):
            step_in = previous if known is None else torch.cat([previous, known[:, k]], dim=-1)  # (N, T + K)
            if self.kind == "lstm":
                h, c = self.cell(step_in, (h, c))
            else:
                h = self.cell(step_in, h)
            previous = previous + self.out(h) if self.residual else self.out(h)  # (N, T)
            outputs.append(previous)
        return torch.stack(outputs, dim=1)  # (N, H, T)


def scored_steps(mask: torch.Tensor | None, length: int, device: torch.device) -> torch.Tensor:
    """Time offsets ``(S,)`` of a chunk whose forecasts count: those masked in for any sequence (all without a
    mask). One host read with a mask: the rollout runs only where it is scored (1 step of 96 in the ETT protocol)."""
    if mask is None:
        return torch.arange(length, device=device)
    return mask.reshape(mask.shape[0], length, -1).ne(0).any(dim=2).any(dim=0).nonzero().squeeze(-1)
