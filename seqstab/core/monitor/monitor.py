"""The monitor's schedule: what is measured at which update, and written when (:class:`GradMonitor`)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from seqstab.core.errors import check_positive
from seqstab.core.logs import add_image, flush, log_metrics, writes
from seqstab.core.monitor.background import Background
from seqstab.core.monitor.contract import flow_layers, spectral_weights
from seqstab.core.monitor.copies import HostCopy, ModuleGroups, write_histograms
from seqstab.core.monitor.dashboard import write_dashboard
from seqstab.core.monitor.flow import FlowProbe, flow_summary
from seqstab.core.monitor.heatmap import Heatmap
from seqstab.core.monitor.saturation import saturation_tensors
from seqstab.core.monitor.spectra import recurrent_spectra
from seqstab.core.record import Run, Update

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
            LSTM/GRU) every this many updates (``rnn/...``), and at the first. An eigendecomposition of each gate
            block is costly: ~110 ms a measurement of the 2×200 LSTM on 2 CPU cores (its eigenvalues ~90 ms), 4 %
            of the ~27 ms updates between two measurements at 100, 0.8 % at the default 500 (``python
            benchmarks/bench_peer.py --profile --settings char``). Cubic in the hidden size: at 2×650 on the same 2
            cores, 1.2–2.3 s a measurement, 1–2 % of the 10k-word LM's ~230 ms updates between two at 500
            (``benchmarks/RESULTS.md``, run X); raise it for wide nets trained on the CPU. None turns it off.
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
        saturation: With each gradient-flow measurement, the saturation of every recurrent layer
            (``rnn/saturation/layer_<i>/...``: saturated tanh units, LSTM/GRU gates near 0 or 1, dead ReLUs;
            :mod:`seqstab.core.monitor.saturation`), recomputed from what the flow probe captured.
        spectra_off_thread: Compute the spectra on a worker thread, with one CPU thread, and write them at their
            own step at a later flush — at the latest before the next checkpoint is saved and at the fit's end —
            instead of at the flush, on the training thread (:mod:`seqstab.core.monitor.background`). None (default):
            when the net trains on a GPU, whose queue would run dry while the host computes (a measurement of a
            2×1,500 LSTM takes 9–12 s on 2 cores); on the CPU the training's own threads need the cores. True: on the
            CPU too, for a host with a core to spare. Their last bits may differ from the training thread's where
            it runs several threads.
    """

    def __init__(
        self,
        grad_flow_every_n_steps: int | None = 50,
        spectrum_every_n_steps: int | None = 500,
        histogram_every_n_steps: int | None = None,
        per_module: bool = True,
        heatmap_every_n_steps: int | None = 1000,
        dashboard: bool = True,
        saturation: bool = True,
        spectra_off_thread: bool | None = None,
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
        self.saturation = saturation
        self.spectra_off_thread = spectra_off_thread
        self._reset()

    def _reset(self) -> None:
        self._probe: FlowProbe | None = None  # hooks of the flow step in progress
        self._flow: dict[int, HostCopy] = {}  # step -> (L, k) norms, awaiting emit (at the flush)
        self._weights: dict[int, list[tuple[HostCopy, str]]] = {}  # step -> W_hh snapshots awaiting emit
        if getattr(self, "_spectra", None) is not None:
            self._spectra.close()
        self._spectra = Background()  # the spectra being computed off the training thread, by step
        self._hist: dict[int, dict[str, HostCopy]] = {}  # step -> tag -> values awaiting emit
        self._groups: ModuleGroups | None = None
        self.flow_history: list[tuple[int, np.ndarray]] = []  # (step, (L, k) norms): the heatmap's columns
        self._drawn = 0  # columns in the last heatmap drawn
        self._heatmap = Heatmap()  # its fonts and rasterized labels, kept between draws

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "flow_history")
        return f"GradMonitor({args})"

    def __getstate__(self) -> dict[str, Any]:  # hooks and pending copies do not travel (e.g. to spawned workers)
        state = dict(self.__dict__)
        state.update(_probe=None, _flow={}, _weights={}, _hist={}, _groups=None, _spectra=Background())
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
        measured: dict[str, torch.Tensor] = {}
        if self._probe is not None:
            if self.saturation:  # device tensors, read back with the loss
                measured = saturation_tensors(self._probe.layers, self._probe.calls)
            norms = self._probe.norms(run.loss_scale)  # (L, k)
            self._probe = None
            self._flow[step] = HostCopy(norms)
        every_log = run.log_every_n_steps if self.per_module else None
        modules, spectra, hist = (
            _due(n, step) for n in (every_log, self.spectrum_every_n_steps, self.histogram_every_n_steps)
        )
        if not (modules or spectra or hist) or not writes(run):
            return measured
        groups = self._module_groups(run)
        if spectra:
            weights = spectral_weights(run.net)
            if weights:
                self._weights[step] = [(HostCopy(w), cell) for w, cell in weights]
        if hist:
            self._hist[step] = groups.histogram_copies()
        return {**groups.norms(), **measured} if modules else measured

    def emit(self, run: Run, update: Update) -> None:
        """At the flush, for each update read back in order: write what was measured at it (the host copies are
        complete: the flush's read-back came after them in the device's queue)."""
        step = update.step
        if step in self._flow:  # the summaries join the update's values: the guard's vanishing watch reads them
            update.values.update(self._emit_flow(run, step, self._flow.pop(step)))
        if step in self._weights:
            copies = self._weights.pop(step)
            weights, cells = [c.get() for c, _ in copies], [cell for _, cell in copies]
            off_thread = self.spectra_off_thread
            if off_thread is None:
                off_thread = copies[0][0].device.type != "cpu"
            if off_thread:  # written by collect(), at a later flush
                self._spectra.submit(step, recurrent_spectra, weights, cells)
            else:
                log_metrics(run, recurrent_spectra(weights, cells), step)
        if step in self._hist:
            write_histograms(run, step, self._hist.pop(step))
        if _due(self.heatmap_every_n_steps, update.step) and len(self.flow_history) > self._drawn:
            self._draw_heatmap(run, update.step)

    def collect(self, run: Run, wait: bool = False) -> None:
        """At the end of a flush (and at :meth:`finish`): write the spectra computed since, each at its own step
        (``wait``: every one given, waiting for them, as before a checkpoint is saved). The caller flushes the
        loggers."""
        for step, metrics in self._spectra.results(wait):
            log_metrics(run, metrics, step, flushed=False)  # the flush that called makes them readable

    def drop(self, step: int) -> None:
        """What was measured at ``step`` is not to be written (an update that is not logged)."""
        for pending in (self._flow, self._weights, self._hist):
            pending.pop(step, None)

    def finish(self, run: Run) -> None:
        """Fit end: write the spectra still being computed; draw the gradient-flow heatmap with every column
        measured."""
        if self._probe is not None:
            self._probe.remove()
            self._probe = None
        self.collect(run, wait=True)
        flush(run)
        self._spectra.close()
        if len(self.flow_history) > self._drawn and writes(run):
            self._draw_heatmap(run, self.flow_history[-1][0])
        for writer in run.writers:
            writer.flush()

    # -- what emit writes ----------------------------------------------------------------------------------

    def _emit_flow(self, run: Run, step: int, copy: HostCopy) -> dict[str, float]:
        norms = copy.get().double().numpy()  # (L, k)
        if not np.any(norms > 0):  # no loss in this chunk: no gradient to follow
            return {}
        self.flow_history.append((step, norms))
        metrics: dict[str, float] = {}
        for i, layer_norms in enumerate(norms):
            summary = flow_summary(layer_norms)
            if i == 0:
                metrics.update({f"grad_flow/{name}": value for name, value in summary.items()})
            if len(norms) > 1:
                metrics.update({f"grad_flow/{name}/layer_{i}": value for name, value in summary.items()})
        log_metrics(run, metrics, step)
        metrics["grad_flow/steps"] = norms.shape[1]  # not a tag: the chunk's length, for the guard's vanishing watch
        return metrics

    def _draw_heatmap(self, run: Run, step: int) -> None:
        image = self._heatmap.render(self.flow_history)  # (H, W, 3) uint8
        add_image(run, HEATMAP_TAG, image, step)
        self._drawn = len(self.flow_history)

    def _module_groups(self, run: Run) -> ModuleGroups:
        if self._groups is None:
            self._groups = ModuleGroups(run.module, flow_layers(run.net))
        return self._groups


def _due(every: int | None, step: int) -> bool:
    return every is not None and step % every == 0
