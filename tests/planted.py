"""Nets with a planted fault, for the tests of the non-finite origin (``tests/test_origin.py``)."""

from __future__ import annotations

import torch
from torch import nn


class _SignedRoot(torch.autograd.Function):
    """``sign(x)·sqrt(|x|)`` with its derivative written out by hand: ``1 / (2·sqrt|x|)``, a division by zero where
    ``x = 0`` (the forward is finite there)."""

    @staticmethod
    def forward(ctx, x):
        root = x.abs().sqrt()
        ctx.save_for_backward(x, root)
        return torch.sign(x) * root

    @staticmethod
    def backward(ctx, grad):
        x, root = ctx.saved_tensors
        return grad * torch.sign(x).abs() / (2 * root)  # 0/0 = nan where x = 0


class SignedRoot(nn.Module):
    """A readout whose backward divides by zero wherever its input is exactly 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SignedRoot.apply(x)


class RootRNN(nn.Module):
    """A net of the recurrent contract: a tanh RNN whose output is read as the distance each step's state moved from
    the first step's, through :class:`SignedRoot`. At the first step that distance is exactly 0: a finite forward, and
    a backward that divides by zero.

    Args:
        input_size: Features per step (given by the task).
        hidden_size: Units.
    """

    def __init__(self, input_size: int, hidden_size: int = 16):
        super().__init__()
        self.hidden_size = hidden_size
        self.rnn = nn.RNN(input_size, hidden_size, batch_first=True)
        self.root = SignedRoot()

    def forward(self, x: torch.Tensor, hidden=None):
        out, state = self.rnn(x, hidden)  # (B, L, H)
        return self.root(out - out[:, :1]), state

    def recurrent_layers(self) -> list[nn.Module]:
        return [self.rnn]
