"""A net of one's own, complete: an IndRNN (Li et al. 2018) that follows seqstab's recurrent contract (seqstab.nets).

Train it from the CLI by class path; the task gives it ``input_size``, the rest are its ``init_args``::

    python -m seqstab.train fit -c configs/synthetic/adding_indrnn.yaml
    python -m seqstab.train fit --model.net seqstab.example_net.IndRNN --model.net.hidden_size 32

It offers ``recurrent_weights()`` (so TensorBoard shows its spectra) and not ``recurrent_layers()`` (its Python loop
over time has no fused layer to hook): seqstab says once that gradient flow is not measured, and everything else
(norms, clipping, the guard, replay, exact resume) works as for seqstab's own net.
"""

from __future__ import annotations

import torch
from torch import nn


class IndRNN(nn.Module):
    """Independently recurrent net: ``h_t = relu(W x_t + b + u ⊙ h_{t-1})``, one recurrent weight per unit.

    Args:
        input_size: Features per step (given by the task).
        hidden_size: Units per layer.
        num_layers: Stacked layers.
        recurrent_init: Each ``u_i`` starts U(0, recurrent_init); ``|u_i| > 1`` lets unit i explode.
    """

    def __init__(self, input_size: int, hidden_size: int = 128, num_layers: int = 1, recurrent_init: float = 1.0):
        super().__init__()
        self.hidden_size = hidden_size  # the width of the output: the task sizes its head by it
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.inputs = nn.ModuleList(nn.Linear(n, hidden_size) for n in sizes)
        self.recurrent = nn.ParameterList(nn.Parameter(recurrent_init * torch.rand(hidden_size)) for _ in sizes)

    def forward(self, x: torch.Tensor, hidden: tuple[torch.Tensor, ...] | None = None):
        states = []
        for i, (layer, u) in enumerate(zip(self.inputs, self.recurrent, strict=True)):
            drive = layer(x)  # (B, L, H): the input part of every step at once
            h = drive.new_zeros(drive.shape[0], self.hidden_size) if hidden is None else hidden[i]  # (B, H)
            steps = []
            for t in range(drive.shape[1]):
                h = torch.relu(drive[:, t] + u * h)
                steps.append(h)
            x = torch.stack(steps, dim=1)  # (B, L, H)
            states.append(h)
        return x, tuple(states)

    def recurrent_weights(self) -> list[torch.Tensor]:
        """``W_hh = diag(u)`` per layer: its σ_max and spectral radius are both ``max |u_i|``."""
        return [torch.diag(u) for u in self.recurrent]
