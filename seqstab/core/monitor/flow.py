"""Gradient flow through time: ``‖∂L/∂h_t‖`` for every step of a chunk and every recurrent layer, recovered by one
extra run of each layer's fused kernel (see :mod:`seqstab.core.monitor`)."""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import torch
from torch import nn

from seqstab.core.plain import map_tensors


class FlowProbe:
    """Hooks one forward + backward of a stack of recurrent layers to measure ``‖∂L/∂h_t‖`` per layer and step.

    Each layer is called as ``layer(x, hx) -> (out, state)`` with ``out`` of shape ``(B, k, H)`` (as in
    :class:`~seqstab.nets.RecurrentNet`). The forward hook keeps the layer's input and start state; tensor hooks
    keep ``∂L/∂out`` and the gradient reaching the final state ``h_k`` (non-zero where the chunk runs in pieces and
    the next piece starts from it, as under :class:`~seqstab.tbptt.Unbiased`). :meth:`norms`, after backward, adds
    the gradient through the recurrence, piece by piece, and joins the pieces along time. Calls without grad (the
    chunk loop carrying the state) are not measured.

    Args:
        layers: The recurrent layers, bottom first.
    """

    def __init__(self, layers):
        self.layers = list(layers)
        self.calls: list[list[_Call]] = [[] for _ in self.layers]  # per layer, its calls with grad, in time order
        self.ran = [0] * len(self.layers)  # per layer, the steps of its last call (with grad or not)
        self.handles = [layer.register_forward_hook(partial(self._forward, i)) for i, layer in enumerate(self.layers)]

    def _forward(self, i: int, module: nn.Module, args: tuple, output: tuple) -> None:
        out = output[0]  # (B, k, H)
        self.ran[i] = out.shape[1]
        if not out.requires_grad:
            return
        hx = args[1] if len(args) > 1 else None
        call = _Call(args[0].detach(), map_tensors(torch.Tensor.detach, hx))
        call.out = out.detach()  # h_1..h_k: the saturation tags are measured on it (seqstab.core.monitor.saturation)
        self.calls[i].append(call)
        self.handles.append(out.register_hook(partial(setattr, call, "out_grad")))
        state = output[1] if len(output) > 1 else None
        last, cell = state if isinstance(state, tuple) else (state, None)  # h_k; LSTM: (h_k, c_k)
        for name, tensor in (("last_grad", last), ("cell_grad", cell)):
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad and tensor.numel() == out[:, -1].numel():
                self.handles.append(tensor.register_hook(partial(setattr, call, name)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def norms(self, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``(L, k)``: ``‖∂L/∂h_t‖`` over batch and units, for each layer and step; divided by the AMP ``scale``."""
        self.remove()
        rows = []
        for layer, calls, steps in zip(self.layers, self.calls, self.ran, strict=True):
            if not steps:
                raise RuntimeError("FlowProbe.norms: a recurrent layer was not run between arm and step_tensors")
            totals = [call.total(layer) for call in calls]
            if all(t is None for t in totals):  # the loss does not depend on this layer's output
                device = next((p.device for p in layer.parameters()), None)
                rows.append(torch.zeros(sum(c.x.shape[1] for c in calls) or steps, device=device))
                continue
            like = next(t for t in totals if t is not None)
            totals = [
                like.new_zeros(*c.x.shape[:2], like.shape[2]) if t is None else t
                for t, c in zip(totals, calls, strict=True)
            ]
            joined = totals[0] if len(totals) == 1 else torch.cat(totals, dim=1)  # one call: its layout (the bits)
            rows.append(torch.linalg.vector_norm(joined.float(), dim=(0, 2)))  # (k,)
        self.calls, self.ran = [[] for _ in self.layers], [0] * len(self.layers)
        norms = torch.stack(rows)  # (L, k)
        return norms if scale is None else norms / scale.float()


class _Call:
    """One call of a recurrent layer under grad: its input and start state, and the gradients its hooks caught."""

    def __init__(self, x: torch.Tensor, hx) -> None:
        self.x, self.hx = x, hx
        self.out: torch.Tensor | None = None  # the layer's output (B, k, H), detached
        self.out_grad: torch.Tensor | None = None  # ∂L/∂out (B, k, H), from outside the layer
        self.last_grad: torch.Tensor | None = None  # ∂L/∂h_k through the state, from the next piece
        self.cell_grad: torch.Tensor | None = None  # LSTM: ∂L/∂c_k, from the next piece

    def total(self, layer: nn.Module) -> torch.Tensor | None:
        """``∂L/∂h_t`` for every step of this call ``(B, k, H)``; None when no gradient reached it."""
        if self.out_grad is None and self.last_grad is None and self.cell_grad is None:
            return None
        known = next(g for g in (self.out_grad, self.last_grad, self.cell_grad) if g is not None)
        out_grad = self.out_grad
        out_grad = known.new_zeros(*self.x.shape[:2], known.shape[-1]) if out_grad is None else out_grad.clone()
        if self.last_grad is not None:  # h_k is out[:, -1]: what reaches it from the next piece joins ∂L/∂out there
            out_grad[:, -1] += self.last_grad.reshape(out_grad[:, -1].shape).to(out_grad.dtype)
        cell_grad = None if self.cell_grad is None else self.cell_grad.reshape(1, *out_grad[:, -1].shape)
        return hidden_state_grads(layer, self.x, self.hx, out_grad, cell_grad)


def hidden_state_grads(
    layer: nn.Module, x: torch.Tensor, hx, out_grad: torch.Tensor, cell_grad: torch.Tensor | None = None
) -> torch.Tensor:
    """``∂L/∂h_t`` of one recurrent layer for every step of its chunk, through the recurrence: ``(B, k, H)``.

    Args:
        layer: ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` (single layer, batch first) or a layer with their parameter names.
        x: The layer's input ``(B, k, I)``.
        hx: Its start state (``(1, B, H)``, ``(h, c)`` for LSTM, or None for zeros).
        out_grad: ``∂L/∂out`` ``(B, k, H)``: the gradient reaching the output sequence from outside the layer.
        cell_grad: LSTM: ``∂L/∂c_k`` ``(1, B, H)`` reaching the final cell state from outside (a next piece).
    """
    if isinstance(layer, nn.GRU):
        return _unrolled_gru_grads(layer, x, hx, out_grad)
    hidden = layer.weight_hh_l0.shape[1]
    w_ih, w_hh = layer.weight_ih_l0.detach(), layer.weight_hh_l0.detach()
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weights are not part of single contiguous chunk.*")
        delta = x.new_zeros(*x.shape[:2], hidden, requires_grad=True)  # (B, k, H): perturbs h_{t-1} at step t
        wide_x = torch.cat([x, delta], dim=-1)  # (B, k, I + H)
        weights = [torch.cat([w_ih, w_hh], dim=1), w_hh, *(b.detach() for b in biases(layer))]  # W_ih widened
        out, cell = _run_fused(layer, wide_x, hx, weights)  # (B, k, H); LSTM: c_k (1, B, H)
        outputs, grads = [out], [out_grad.to(out.dtype)]
        if cell_grad is not None and cell is not None:
            outputs.append(cell)
            grads.append(cell_grad.to(cell.dtype))
        (through,) = torch.autograd.grad(outputs, delta, grad_outputs=grads)  # (B, k, H)
    total = out_grad.clone()
    total[:, :-1] += through[:, 1:].to(total.dtype)  # h_t feeds step t+1; h_k's successor is past the graph cut
    return total


def biases(layer: nn.Module) -> list[torch.Tensor]:
    """``[b_ih, b_hh]`` of a single-layer recurrent module, or ``[]`` for one built with ``bias=False``."""
    found = [getattr(layer, name, None) for name in ("bias_ih_l0", "bias_hh_l0")]
    return [b for b in found if b is not None]


def _run_fused(layer: nn.Module, x: torch.Tensor, hx, weights: list[torch.Tensor]):
    """Run one layer's kernel on ``x`` with the given ``[W_ih, W_hh, b_ih, b_hh]`` (``[W_ih, W_hh]`` without
    biases): the output ``(B, k, H)`` and, for an LSTM, the final cell state (else None)."""
    batch, hidden, has_biases = x.shape[0], weights[1].shape[1], len(weights) == 4
    if isinstance(layer, nn.LSTM):
        h0, c0 = hx if hx is not None else (x.new_zeros(1, batch, hidden), x.new_zeros(1, batch, hidden))
        out, _, cell = torch.lstm(x, (h0, c0), weights, has_biases, 1, 0.0, layer.training, False, True)
        return out, cell
    if isinstance(layer, nn.RNN):
        kernel = torch.rnn_tanh if layer.nonlinearity == "tanh" else torch.rnn_relu
        h0 = hx if hx is not None else x.new_zeros(1, batch, hidden)
        return kernel(x, h0, weights, has_biases, 1, 0.0, layer.training, False, True)[0], None
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")  # e.g. seqstab.nets.LinearRNN
    return torch.func.functional_call(layer, dict(zip(names, weights, strict=False)), (x, hx))[0], None


def _unrolled_gru_grads(layer: nn.GRU, x: torch.Tensor, hx, out_grad: torch.Tensor) -> torch.Tensor:
    """GRU: replay step by step with the fused cell (measurement only), keeping each ``h_t`` in the graph."""
    weights = [layer.weight_ih_l0.detach(), layer.weight_hh_l0.detach(), *(b.detach() for b in biases(layer))]
    with torch.enable_grad():
        h = hx[0] if hx is not None else x.new_zeros(x.shape[0], layer.hidden_size)  # (B, H)
        h = h.detach().requires_grad_(True)
        states = []
        for t in range(x.shape[1]):
            h = torch.gru_cell(x[:, t], h, *weights)
            states.append(h)
        grads = torch.autograd.grad(torch.stack(states, dim=1), states, grad_outputs=out_grad.to(h.dtype))
    return torch.stack(grads, dim=1)  # (B, k, H)


def flow_summary(norms: np.ndarray) -> dict[str, float]:
    """``first`` = ‖∂L/∂h_1‖, ``last`` = ‖∂L/∂h_k‖, ``growth`` = (first / last)^(1/(k−1)) (when k > 1, last > 0)."""
    first, last = float(norms[0]), float(norms[-1])
    summary = {"first": first, "last": last}
    if len(norms) > 1 and last > 0 and np.isfinite(first) and np.isfinite(last):
        summary["growth"] = (first / last) ** (1.0 / (len(norms) - 1))
    return summary
