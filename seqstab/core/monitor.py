"""What the optimization path measures beyond the per-update norms, and how often: :class:`GradMonitor`.

The monitor hangs off the update core (:class:`seqstab.update.UpdateCore`) at five stations, each given the
:class:`~seqstab.record.Run` around it::

    fit start      start(run, ...)      HPARAMS entry (hyperparameters + final-metric tags), custom-scalars layout;
                                        says once what the net offers nothing to measure for
    per update     arm(run, step)       before the forward: on a flow step, hook every recurrent layer
                   step_tensors(...)    after backward, before clipping: per-module norms as device tensors (read
                                        back with the loss in the update's one sync); gradient flow; host copies
                                        of what emit needs, queued behind that same sync
                   emit(run, update)    after the step: write what is due (flow scalars, spectra, histograms, image)
    fit end        finish(run)          the final gradient-flow heatmap

On a step where nothing is due each station returns after an integer test or two. What a net offers for gradient
flow and spectra is the recurrent contract of :mod:`seqstab.nets` (:func:`flow_layers`, :func:`spectral_weights`).

Gradient flow through time
--------------------------
For the chunk being trained, ``‖∂L/∂h_t‖`` for t = 1..k, per recurrent layer (norm over batch and units).
A hook on a layer's output sequence sees only the gradient reaching ``h_t`` from outside the layer (the head,
the layer above); the part that flows back through the recurrence stays inside the fused cuDNN/ATen kernel.
:func:`hidden_state_grads` recovers it without a Python loop over time and without touching the training
step: one extra run of the layer's fused kernel (detached weights, measurement only) on its input widened by a
zero perturbation ``δ_t`` with ``W_ih`` widened by ``W_hh``::

    gates_t = [W_ih | W_hh] [x_t ; δ_t] + W_hh h_{t-1} + b      ≡  the step with h_{t-1} + δ_t in place of h_{t-1}

so back-propagating the hooked output gradient through it gives ``∂L/∂δ_t = W_hh^T ∂L/∂gates_t``, the recurrent
part of ``∂L/∂h_{t-1}``; ``∂L/∂h_t = ∂L/∂out_t + ∂L/∂δ_{t+1}``. Exact for vanilla RNN (tanh, relu, linear) and
LSTM; the GRU's reset gate multiplies only the hidden part, so GRU layers are replayed step by step instead.
Summaries: ``grad_flow/first`` = ‖∂L/∂h_1‖, ``grad_flow/last`` = ‖∂L/∂h_k‖ and
``grad_flow/growth`` = (‖∂L/∂h_1‖ / ‖∂L/∂h_k‖)^(1/(k−1)), the per-step factor by which the gradient grows going
back in time (> 1 explodes, < 1 vanishes), for the bottom layer; with several layers also ``.../layer_<i>``.
A chunk with no gradient at all (e.g. a loss that does not depend on the net) logs no gradient flow.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from seqstab import internals
from seqstab.core.errors import check_positive
from seqstab.core.record import Run, Update, add_histogram, add_image, writes
from seqstab.core.spectra import recurrent_spectra

HEATMAP_TAG = "grad_flow/heatmap"


class GradMonitor:
    """Gradient observability: per-module norms, gradient flow through time, recurrent spectra, histograms.

    The per-update scalars (``train/loss``, ``train/lr``, ``grad/norm_total``, ``grad/norm_total_clipped``,
    ``grad/clipped``, ``grad/clip_threshold``) are always logged by the update core; this object adds the rest.
    Set it in YAML as ``model.init_args.monitor: {class_path: seqstab.monitor.GradMonitor, init_args: {...}}``.

    Args:
        grad_flow_every_n_steps: Measure ``‖∂L/∂h_t‖`` for every time step of the chunk and every recurrent layer
            every this many updates (``grad_flow/first``, ``grad_flow/last``, ``grad_flow/growth``, and a column of
            the ``grad_flow/heatmap`` image). None turns it off.
        spectrum_every_n_steps: Log σ_max and the spectral radius of each layer's ``W_hh`` (each gate block for
            LSTM/GRU) every this many updates (``rnn/...``). None turns it off.
        histogram_every_n_steps: Histograms of the gradient (pre-clip) and the weights of every module every this
            many updates (``hist/grad/<module>``, ``hist/weight/<module>``). None (default) turns them off.
        per_module: Log ``grad/norm/<module>`` (pre-clip, like ``grad/norm_total``) and ``weight/norm/<module>``
            every ``trainer.log_every_n_steps`` updates. Recurrent layers are split into their input-to-hidden
            (``<path>.ih``) and hidden-to-hidden (``<path>.hh``) weights, biases included.
        heatmap_every_n_steps: Redraw the ``grad_flow/heatmap`` image (time step × training step) every this many
            updates; it is always drawn at the end of fit. None draws it only at the end.
        dashboard: At fit start, register the run in TensorBoard's HPARAMS tab (hyperparameters, with the final
            values of ``train/loss``, ``val/*``, ``grad/norm_total``, ``grad_flow/growth`` as its metrics) and write a
            custom-scalars layout grouping loss, pre/post-clip norms, gradient flow and spectra on one page.
    """

    def __init__(
        self,
        grad_flow_every_n_steps: int | None = 50,
        spectrum_every_n_steps: int | None = 100,
        histogram_every_n_steps: int | None = None,
        per_module: bool = True,
        heatmap_every_n_steps: int | None = 1000,
        dashboard: bool = True,
    ):
        check_positive(
            grad_flow_every_n_steps=grad_flow_every_n_steps,
            spectrum_every_n_steps=spectrum_every_n_steps,
            histogram_every_n_steps=histogram_every_n_steps,
            heatmap_every_n_steps=heatmap_every_n_steps,
        )
        self.grad_flow_every_n_steps = grad_flow_every_n_steps
        self.spectrum_every_n_steps = spectrum_every_n_steps
        self.histogram_every_n_steps = histogram_every_n_steps
        self.per_module = per_module
        self.heatmap_every_n_steps = heatmap_every_n_steps
        self.dashboard = dashboard
        self._reset()

    def _reset(self) -> None:
        self._probe: FlowProbe | None = None  # hooks of the flow step in progress
        self._flow: tuple[int, HostCopy] | None = None  # (step, (L, k) norms) awaiting emit
        self._weights: tuple[int, list[HostCopy]] | None = None  # (step, W_hh snapshots) awaiting emit
        self._hist: tuple[int, dict[str, HostCopy]] | None = None  # (step, tag -> values) awaiting emit
        self._groups: ModuleGroups | None = None
        self.flow_history: list[tuple[int, np.ndarray]] = []  # (step, (L, k) norms): the heatmap's columns
        self._drawn = 0  # columns in the last heatmap drawn

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "flow_history")
        return f"GradMonitor({args})"

    def __getstate__(self) -> dict[str, Any]:  # hooks and pending copies do not travel (e.g. to spawned workers)
        state = dict(self.__dict__)
        state.update(_probe=None, _flow=None, _weights=None, _hist=None, _groups=None)
        return state

    # -- stations ------------------------------------------------------------------------------------------

    def start(self, run: Run, hparams: dict[str, Any] | None = None, metric_tags: list[str] | None = None) -> None:
        """Fit start: forget the previous fit; say once what the net offers nothing to measure for; write the
        custom-scalars layout and, given ``hparams`` (flat plain values), the HPARAMS entry with ``metric_tags``."""
        self._reset()
        if not writes(run):
            return
        self._say_what_cannot_be_measured(run.net)
        if self.dashboard:
            write_dashboard(run.writers, hparams, metric_tags)

    def _say_what_cannot_be_measured(self, net: nn.Module) -> None:
        missing = []
        if self.grad_flow_every_n_steps is not None and not flow_layers(net):
            missing.append("gradient flow (grad_flow/*: it offers no recurrent_layers() and has no single-layer "
                           "batch-first nn.RNN/LSTM/GRU)")  # fmt: skip
        if self.spectrum_every_n_steps is not None and not spectral_weights(net):
            missing.append("spectra (rnn/*: it offers no recurrent_weights() and has no nn.RNN/LSTM/GRU)")
        if missing:
            warnings.warn(
                f"seqstab: the net {type(net).__name__} is not measured for {' and '.join(missing)}; norms, clipping "
                "and the guard are unaffected (the recurrent contract: seqstab.nets)",
                UserWarning,
                stacklevel=3,
            )

    def arm(self, run: Run, step: int) -> None:
        """Before the forward pass: on a flow step, hook every recurrent layer's input and output gradient."""
        if self._probe is not None:  # left by an update that did not reach step_tensors
            self._probe.remove()
            self._probe = None
        if _due(self.grad_flow_every_n_steps, step) and writes(run):
            layers = flow_layers(run.net)
            if layers:
                self._probe = FlowProbe(layers)

    def step_tensors(self, run: Run, step: int) -> dict[str, torch.Tensor]:
        """After backward, before clipping: device tensors read back with the loss; host copies for :meth:`emit`."""
        if self._probe is not None:
            norms = self._probe.norms(run.loss_scale)  # (L, k)
            self._probe = None
            self._flow = (step, HostCopy(norms))
        every_log = run.log_every_n_steps if self.per_module else None
        modules, spectra, hist = (
            _due(n, step) for n in (every_log, self.spectrum_every_n_steps, self.histogram_every_n_steps)
        )
        if not (modules or spectra or hist) or not writes(run):
            return {}
        groups = self._module_groups(run)
        if spectra:
            weights = spectral_weights(run.net)
            if weights:
                self._weights = (step, [(HostCopy(w), cell) for w, cell in weights])
        if hist:
            self._hist = (step, groups.histogram_copies())
        return groups.norms() if modules else {}

    def emit(self, run: Run, update: Update) -> None:
        """After the step: write what is due to the loggers (the host copies are complete after the update's sync)."""
        if self._flow is not None:
            self._emit_flow(run, *self._flow)
            self._flow = None
        if self._weights is not None:
            step, copies = self._weights
            self._weights = None
            metrics = recurrent_spectra([c.get() for c, _ in copies], [cell for _, cell in copies])
            _log(run, metrics, step)
        if self._hist is not None:
            step, copies = self._hist
            self._hist = None
            _write_histograms(run, step, copies)
        if _due(self.heatmap_every_n_steps, update.step) and len(self.flow_history) > self._drawn:
            self._draw_heatmap(run, update.step)

    def finish(self, run: Run) -> None:
        """Fit end: draw the gradient-flow heatmap with every column measured."""
        if self._probe is not None:
            self._probe.remove()
            self._probe = None
        if len(self.flow_history) > self._drawn and writes(run):
            self._draw_heatmap(run, self.flow_history[-1][0])
        for writer in run.writers:
            writer.flush()

    # -- what emit writes ----------------------------------------------------------------------------------

    def _emit_flow(self, run: Run, step: int, copy: HostCopy) -> None:
        norms = copy.get().double().numpy()  # (L, k)
        if not np.any(norms > 0):  # no loss in this chunk: no gradient to follow
            return
        self.flow_history.append((step, norms))
        metrics: dict[str, float] = {}
        for i, layer_norms in enumerate(norms):
            summary = flow_summary(layer_norms)
            if i == 0:
                metrics.update({f"grad_flow/{name}": value for name, value in summary.items()})
            if len(norms) > 1:
                metrics.update({f"grad_flow/{name}/layer_{i}": value for name, value in summary.items()})
        _log(run, metrics, step)

    def _draw_heatmap(self, run: Run, step: int) -> None:
        image = render_heatmap(self.flow_history)  # (H, W, 3) uint8
        add_image(run, HEATMAP_TAG, image, step)
        self._drawn = len(self.flow_history)

    def _module_groups(self, run: Run) -> ModuleGroups:
        if self._groups is None:
            self._groups = ModuleGroups(run.module, flow_layers(run.net))
        return self._groups


def _due(every: int | None, step: int) -> bool:
    return every is not None and step % every == 0


def _log(run: Run, metrics: dict[str, float], step: int) -> None:
    for logger in run.loggers:
        logger.log_metrics(metrics, step=step)


# -- what a net offers the monitors (the recurrent contract of seqstab.nets) ----------------------------------

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


class HostCopy:
    """A copy of a tensor on the host, queued behind the work already on its device: no synchronisation.

    The update's one sync (the loss read-back) completes it; :meth:`get` only waits for it in case it did not.
    """

    def __init__(self, tensor: torch.Tensor):
        cuda = tensor.is_cuda
        self.tensor = tensor.detach().to("cpu", non_blocking=cuda, copy=True)
        self.event = None
        if cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def get(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
        return self.tensor


# -- per-module norms --------------------------------------------------------------------------------------


class ModuleGroups:
    """The model's trained parameters grouped by module path, recurrent layers split into ``.ih`` and ``.hh``.

    Recurrent layers are the net's :func:`flow_layers` and every ``nn.RNN``/``LSTM``/``GRU``; a stacked one
    (``num_layers > 1``) is split per layer too (``<path>.l<k>.ih``, ``<path>.l<k>.hh``).

    Args:
        module: The model whose parameters are grouped (shared parameters count once, under their first owner).
        recurrent_layers: Recurrent layers besides ``nn.RNNBase`` ones (e.g. a net's own cells).
    """

    def __init__(self, module: nn.Module, recurrent_layers: list[nn.Module] = ()):
        recurrent = {id(layer) for layer in recurrent_layers}
        recurrent_paths, stacked = set(), set()
        for name, sub in module.named_modules():
            if id(sub) in recurrent or isinstance(sub, nn.RNNBase):
                recurrent_paths.add(name)
                if getattr(sub, "num_layers", 1) > 1:
                    stacked.add(name)
        self.names: list[str] = []
        self.params: list[torch.Tensor] = []
        index: list[int] = []
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            owner, _, leaf = name.rpartition(".")
            group = owner or leaf
            if owner in recurrent_paths:
                layer = f".l{leaf.rsplit('_l', 1)[-1].removesuffix('_reverse')}" if owner in stacked else ""
                group = f"{owner}{layer}.{'hh' if '_hh' in leaf else 'ih'}"
            if group not in self.names:
                self.names.append(group)
            index.append(self.names.index(group))
            self.params.append(param)
        device = self.params[0].device if self.params else torch.device("cpu")
        self.group_of = index  # group of each parameter
        self.index = torch.tensor(index, device=device)  # (P,) the same, on the device

    def norms(self) -> dict[str, torch.Tensor]:
        """``grad/norm/<group>`` and ``weight/norm/<group>`` as 0-dim device tensors (two fused passes)."""
        have = [i for i, p in enumerate(self.params) if p.grad is not None]
        grad_sq = self._group_sum_sq([self.params[i].grad for i in have], have)
        weight_sq = self._group_sum_sq([p.detach() for p in self.params], range(len(self.params)))
        grads, weights = grad_sq.sqrt(), weight_sq.sqrt()  # (G,) each
        tensors = {f"grad/norm/{name}": grads[g] for g, name in enumerate(self.names)}
        tensors.update({f"weight/norm/{name}": weights[g] for g, name in enumerate(self.names)})
        return tensors

    def _group_sum_sq(self, tensors: list[torch.Tensor], which) -> torch.Tensor:
        total = torch.zeros(len(self.names), device=self.index.device)
        if not tensors:
            return total
        squares = torch.stack([n.float() for n in internals.foreach_norm(tensors)]).square()  # (P',)
        index = self.index if len(tensors) == len(self.params) else self.index[list(which)]
        return total.index_add_(0, index, squares)

    def histogram_copies(self) -> dict[str, HostCopy]:
        """Every group's gradient (pre-clip) and weights, flattened, copied to the host."""
        grads: dict[str, list[torch.Tensor]] = defaultdict(list)
        weights: dict[str, list[torch.Tensor]] = defaultdict(list)
        for param, g in zip(self.params, self.group_of, strict=True):
            weights[self.names[g]].append(param.detach().flatten())
            if param.grad is not None:
                grads[self.names[g]].append(param.grad.detach().flatten())
        copies = {f"hist/grad/{name}": HostCopy(torch.cat(parts)) for name, parts in grads.items()}
        copies.update({f"hist/weight/{name}": HostCopy(torch.cat(parts)) for name, parts in weights.items()})
        return copies


def _write_histograms(run: Run, step: int, copies: dict[str, HostCopy]) -> None:
    for tag, copy in copies.items():
        values = copy.get().float().numpy()
        values = values[np.isfinite(values)]
        if values.size:
            add_histogram(run, tag, values, step)


# -- gradient flow through time ----------------------------------------------------------------------------


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
        call = _Call(args[0].detach(), _detach(hx))
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


def _detach(hx):
    if hx is None:
        return None
    return tuple(h.detach() for h in hx) if isinstance(hx, tuple) else hx.detach()


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
    w_ih, w_hh, b_ih, b_hh = (
        getattr(layer, n).detach() for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    )
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weights are not part of single contiguous chunk.*")
        delta = x.new_zeros(*x.shape[:2], hidden, requires_grad=True)  # (B, k, H): perturbs h_{t-1} at step t
        wide_x = torch.cat([x, delta], dim=-1)  # (B, k, I + H)
        weights = [torch.cat([w_ih, w_hh], dim=1), w_hh, b_ih, b_hh]  # W_ih widened to (G * H, I + H)
        out, cell = _run_fused(layer, wide_x, hx, weights)  # (B, k, H); LSTM: c_k (1, B, H)
        outputs, grads = [out], [out_grad.to(out.dtype)]
        if cell_grad is not None and cell is not None:
            outputs.append(cell)
            grads.append(cell_grad.to(cell.dtype))
        (through,) = torch.autograd.grad(outputs, delta, grad_outputs=grads)  # (B, k, H)
    total = out_grad.clone()
    total[:, :-1] += through[:, 1:].to(total.dtype)  # h_t feeds step t+1; h_k's successor is past the graph cut
    return total


def _run_fused(layer: nn.Module, x: torch.Tensor, hx, weights: list[torch.Tensor]):
    """Run one layer's kernel on ``x`` with the given ``[W_ih, W_hh, b_ih, b_hh]``: the output ``(B, k, H)`` and,
    for an LSTM, the final cell state (else None)."""
    batch, hidden = x.shape[0], weights[1].shape[1]
    if isinstance(layer, nn.LSTM):
        h0, c0 = hx if hx is not None else (x.new_zeros(1, batch, hidden), x.new_zeros(1, batch, hidden))
        out, _, cell = torch.lstm(x, (h0, c0), weights, True, 1, 0.0, layer.training, False, True)
        return out, cell
    if isinstance(layer, nn.RNN):
        kernel = torch.rnn_tanh if layer.nonlinearity == "tanh" else torch.rnn_relu
        h0 = hx if hx is not None else x.new_zeros(1, batch, hidden)
        return kernel(x, h0, weights, True, 1, 0.0, layer.training, False, True)[0], None
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")  # e.g. seqstab.nets.LinearRNN
    return torch.func.functional_call(layer, dict(zip(names, weights, strict=True)), (x, hx))[0], None


def _unrolled_gru_grads(layer: nn.GRU, x: torch.Tensor, hx, out_grad: torch.Tensor) -> torch.Tensor:
    """GRU: replay step by step with the fused cell (measurement only), keeping each ``h_t`` in the graph."""
    weights = [
        layer.weight_ih_l0.detach(),
        layer.weight_hh_l0.detach(),
        layer.bias_ih_l0.detach(),
        layer.bias_hh_l0.detach(),
    ]
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


def render_heatmap(history: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """The ``grad_flow/heatmap`` image: ``‖∂L/∂h_t‖`` by time step (y) and training step (x), log colour scale.

    Args:
        history: ``(training step, (L, k) norms)`` per measurement; one panel per layer. Returns ``(H, W, 3)`` uint8.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    steps = np.array([step for step, _ in history], dtype=float)
    layers = history[0][1].shape[0]
    length = max(norms.shape[1] for _, norms in history)
    data = np.full((layers, length, len(history)), np.nan)  # (L, k, columns); a shorter chunk leaves NaN on top
    for c, (_, norms) in enumerate(history):
        data[:, : norms.shape[1], c] = norms
    data[~(data > 0) | ~np.isfinite(data)] = np.nan  # zero or non-finite: no colour
    gap = np.diff(steps).min() if len(steps) > 1 else 1.0
    x_edges = np.concatenate([[steps[0] - gap / 2], (steps[1:] + steps[:-1]) / 2, [steps[-1] + gap / 2]])
    y_edges = np.arange(length + 1) + 0.5  # time step t = 1..k at the cell centres
    finite = data[np.isfinite(data)]
    low, high = (finite.min(), finite.max()) if finite.size else (1e-8, 1.0)
    norm = LogNorm(vmin=low, vmax=high if high > low else low * 10)

    height = 0.9 + 1.7 * layers  # inches: fixed margins, no layout engine (it costs more than the drawing)
    fig = Figure(figsize=(7.0, height), dpi=90)
    canvas = FigureCanvasAgg(fig)
    top, bottom, panel = 1 - 0.35 / height, 0.55 / height, 1.7 / height
    for i in range(layers):
        ax = fig.add_axes((0.1, top - (i + 1) * panel + 0.12 / height, 0.74, panel - 0.24 / height))
        mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(data[i]), norm=norm, cmap="magma", shading="flat")
        ax.set_ylabel(f"layer {i}: time step t" if layers > 1 else "time step t", fontsize=8)
        ax.tick_params(labelsize=7, labelbottom=i == layers - 1)
    ax.set_xlabel("training step", fontsize=8)
    bar = fig.colorbar(mesh, cax=fig.add_axes((0.87, bottom, 0.025, top - bottom)))
    bar.set_label("‖∂L/∂h_t‖ (log scale)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle("Gradient flow through time: ‖∂L/∂h_t‖ per chunk (bright at small t = exploding)", fontsize=9)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# -- TensorBoard dashboard: HPARAMS and custom scalars -----------------------------------------------------


def custom_scalars_layout() -> dict:
    """One page with the loss, pre/post-clip norms, gradient flow and spectra (TensorBoard's CUSTOM SCALARS tab)."""
    return {
        "seqstab": {
            "loss": ["Multiline", [r"^train/loss$", r"^val/loss$"]],
            "gradient norm: pre-clip, post-clip, threshold": [
                "Multiline",
                [r"^grad/norm_total$", r"^grad/norm_total_clipped$", r"^grad/clip_threshold$"],
            ],
            "gradient flow: ‖∂L/∂h_1‖ and ‖∂L/∂h_k‖": ["Multiline", [r"^grad_flow/first", r"^grad_flow/last"]],
            "gradient flow: growth per step back in time (>1 explodes)": ["Multiline", [r"^grad_flow/growth"]],
            "W_hh: σ_max and spectral radius vs Pascanu bound": ["Multiline", [r"^rnn/"]],
            "clipped updates and explosion events": ["Multiline", [r"^grad/clipped$", r"^explosion/events$"]],
        }
    }


def write_dashboard(writers, hparams: dict[str, Any] | None = None, metric_tags: list[str] | None = None) -> None:
    """Write the custom-scalars layout and, given ``hparams``, register the run in HPARAMS (flat plain values, with
    ``metric_tags`` as its metric columns).

    Written at fit start, before Lightning's own ``log_hyperparams``: TensorBoard keeps the first HPARAMS entry
    of a run. Its metric columns show the last value of each tagged series, i.e. the run's final metrics.
    """
    if not writers:
        return
    summaries = ()
    if hparams is not None:
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        summaries = hparams_summaries(hparams, {tag: 0.0 for tag in metric_tags or []})
    for writer in writers:
        file_writer = internals.file_writer(writer)
        for summary in summaries:
            file_writer.add_summary(summary)
        writer.add_custom_scalars(custom_scalars_layout())
