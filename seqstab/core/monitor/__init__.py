"""What the optimization path measures beyond the per-update norms, and how often: :class:`GradMonitor`.

The monitor hangs off the update core (:class:`seqstab.update.UpdateCore`) at five stations, each given the
:class:`~seqstab.record.Run` around it::

    fit start      start(run, ...)      HPARAMS entry (hyperparameters + final-metric tags), custom-scalars layout;
                                        says once what the net offers nothing to measure for
    per update     arm(run, step)       before the forward: on a flow step, hook every recurrent layer
                   step_tensors(...)    after backward, before clipping: per-module norms as device tensors (read
                                        back with the loss in the update's one sync); gradient flow; host copies
                                        of what emit needs, queued behind that same sync
                   emit(run, update)    at the flush, each update read back: write what is due (flow scalars,
                                        histograms, image); on a GPU, hand the spectra to a worker thread
                   collect(run, wait)   the flush's end: write the spectra the worker has finished (wait: all)
    fit end        finish(run)          the spectra still being computed; the final gradient-flow heatmap

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

Saturation
----------
With each gradient-flow measurement (``GradMonitor(saturation=True)``, the default), per recurrent layer: the share of
tanh units with ``|h| > 0.99``, of LSTM/GRU gates below 0.01 or above 0.99 (and the mean forget / update gate), of
ReLU units dead over the whole chunk (``rnn/saturation/layer_<i>/...``). The gates are recomputed from the layer's
input and hidden states the flow probe captured (:mod:`seqstab.core.monitor.saturation`): device tensors, read back
with the update's loss.
"""

from seqstab.core.monitor.contract import CELL_OF_MODE, flow_layers, spectral_weights
from seqstab.core.monitor.copies import HostCopy, ModuleGroups
from seqstab.core.monitor.dashboard import custom_scalars_layout, write_dashboard
from seqstab.core.monitor.flow import FlowProbe, flow_summary, hidden_state_grads
from seqstab.core.monitor.heatmap import render_heatmap
from seqstab.core.monitor.monitor import HEATMAP_TAG, GradMonitor
from seqstab.core.monitor.saturation import saturation_tensors
from seqstab.core.monitor.spectra import recurrent_spectra

__all__ = [
    "recurrent_spectra",
    "CELL_OF_MODE",
    "custom_scalars_layout",
    "flow_layers",
    "flow_summary",
    "FlowProbe",
    "GradMonitor",
    "HEATMAP_TAG",
    "hidden_state_grads",
    "HostCopy",
    "ModuleGroups",
    "render_heatmap",
    "saturation_tensors",
    "spectral_weights",
    "write_dashboard",
]
