"""Gradient observability: what GradMonitor writes to TensorBoard, checked by reading the event files back."""

from __future__ import annotations

import itertools
import pickle
import threading
import time
from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch.utils.data import DataLoader

from datamodules.base import DataSpec, SeqDataModule, StreamWindows
from datamodules.synthetic import AddingProblem
from seqstab.core.monitor import FlowProbe, GradMonitor, flow_summary
from seqstab.core.monitor.background import Background
from seqstab.core.monitor.heatmap import Heatmap, render_heatmap
from seqstab.core.monitor.spectra import recurrent_spectra
from seqstab.core.record import StaticRun
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import LanguageModel, SequenceRegressor
from tests.helpers import quiet_trainer, run_cli

EVERYTHING = {
    k: 0 for k in ("scalars", "images", "histograms", "tensors", "compressedHistograms", "audio", "distributions")
}


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance=EVERYTHING)
    acc.Reload()
    return acc


def series(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


# -- the theory check ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.9, 1.1, 1.5])
def test_linear_rnn_gradient_growth_is_the_spectral_radius(tmp_path, rho):
    """W_hh = ρ·Q (Q orthogonal), loss on the last step only: ∂L/∂h_t = (W_hh^T)^(k−t) ∂L/∂h_k, so
    ‖∂L/∂h_t‖ = ρ^(k−t) ‖∂L/∂h_k‖ exactly and grad_flow/growth = ρ."""
    torch.manual_seed(0)
    data = AddingProblem(seq_len=25, num_train=16, num_val=16, num_test=16, batch_size=16)  # mask: last step only
    model = SequenceRegressor(
        net=partial(
            RecurrentNet, cell="rnn", nonlinearity="linear", hidden_size=16, init="orthogonal", spectral_radius=rho
        ),
        spec=data.spec,
        monitor=GradMonitor(grad_flow_every_n_steps=1, spectrum_every_n_steps=1, heatmap_every_n_steps=None),
    )
    logger = TensorBoardLogger(tmp_path, name="theory", default_hp_metric=False)
    quiet_trainer(logger=logger, max_steps=1).fit(model, data)
    acc = events(logger.log_dir)
    ((step, growth),) = series(acc, "grad_flow/growth")
    assert step == 0 and growth == pytest.approx(rho, rel=0.01)
    ((_, first),), ((_, last),) = series(acc, "grad_flow/first"), series(acc, "grad_flow/last")
    assert first / last == pytest.approx(rho**24, rel=0.01)
    ((_, radius),), ((_, sigma),) = series(acc, "rnn/spectral_radius/layer_0"), series(acc, "rnn/sigma_max/layer_0")
    assert radius == pytest.approx(rho, rel=1e-4) and sigma == pytest.approx(rho, rel=1e-4)  # ρ·Q: all σ_i = ρ
    assert "grad_flow/heatmap" in acc.Tags()["images"]  # drawn at the end of fit


# -- the gradient-flow measurement against an unrolled reference --------------------------------------------


def _unrolled_hidden_grad_norms(net: RecurrentNet, x, hidden, weight) -> torch.Tensor:
    """‖∂L/∂h_t‖ per layer and step from a step-by-step unroll with the cell functions: (L, k)."""
    batch, length, _ = x.shape
    states = [None if hidden is None else hidden[i] for i in range(net.num_layers)]
    kept: list[list[torch.Tensor]] = [[] for _ in range(net.num_layers)]
    outputs = []
    for t in range(length):
        inp = x[:, t]
        for i, layer in enumerate(net.layers):
            w = [layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0]
            zeros = x.new_zeros(batch, net.hidden_size)
            if net.cell == "lstm":
                h, c = torch.lstm_cell(inp, states[i] or (zeros, zeros), *w)
                states[i] = (h, c)
            else:
                prev = zeros if states[i] is None else states[i]
                if net.cell == "gru":
                    h = torch.gru_cell(inp, prev, *w)
                elif net.nonlinearity == "linear":
                    h = inp @ w[0].T + w[2] + w[3] + prev @ w[1].T
                else:
                    h = {"tanh": torch.rnn_tanh_cell, "relu": torch.rnn_relu_cell}[net.nonlinearity](inp, prev, *w)
                states[i] = h
            kept[i].append(h)
            inp = h
        outputs.append(inp)
    loss = (torch.tanh(torch.stack(outputs, dim=1)) * weight).sum()
    flat = [h for layer in kept for h in layer]
    grads = torch.autograd.grad(loss, flat)
    return torch.stack([g.norm() for g in grads]).view(net.num_layers, length)


@pytest.mark.parametrize(
    "cell,nonlinearity", [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "linear"), ("lstm", "tanh"), ("gru", "tanh")]
)
def test_flow_probe_matches_unrolled_backprop_through_time(cell, nonlinearity):
    torch.manual_seed(1)
    net = RecurrentNet(3, 5, num_layers=2, cell=cell, nonlinearity=nonlinearity).double()
    x = torch.randn(4, 7, 3, dtype=torch.double)  # (B, k, I)
    weight = torch.randn(4, 7, 5, dtype=torch.double)  # a loss on every step, through both layers
    _, carried = net(torch.randn(4, 3, 3, dtype=torch.double))  # a non-zero start state, as under TBPTT
    carried = tuple(tuple(s.detach() for s in st) if isinstance(st, tuple) else st.detach() for st in carried)

    probe = FlowProbe(net.layers)
    out, _ = net(x, carried)
    (torch.tanh(out) * weight).sum().backward()
    measured = probe.norms()  # (L, k)

    hidden = [(st[0][0], st[1][0]) if cell == "lstm" else st[0] for st in carried]  # (B, H) per layer
    expected = _unrolled_hidden_grad_norms(net, x, hidden, weight)
    assert measured.shape == (2, 7)
    assert torch.allclose(measured.double(), expected, rtol=1e-5)
    assert not measured[:, :-1].eq(measured[:, -1:]).all()  # the recurrent part is really in there
    assert all(len(layer._forward_hooks) == 0 for layer in net.layers)  # hooks removed


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_flow_probe_follows_a_chunk_run_in_pieces(cell):
    """A chunk run in pieces (``Unbiased``'s compensation points: the state passed on with its graph) is measured
    as the whole chunk: every piece's steps, and the gradient a piece's last state gets from the next piece."""
    torch.manual_seed(2)
    net = RecurrentNet(3, 5, num_layers=2, cell=cell).double()
    x = torch.randn(4, 9, 3, dtype=torch.double)
    weight = torch.randn(4, 9, 5, dtype=torch.double)

    probe = FlowProbe(net.layers)
    out, _ = net(x)
    (torch.tanh(out) * weight).sum().backward()
    whole = probe.norms()

    probe = FlowProbe(net.layers)
    with torch.no_grad():
        net(x)  # a forward without grad between arm and backward (the chunk loop's carry) is not measured
    first, state = net(x[:, :4])
    second, _ = net(x[:, 4:], state)
    (torch.tanh(torch.cat([first, second], dim=1)) * weight).sum().backward()
    pieces = probe.norms()
    assert pieces.shape == whole.shape == (2, 9)
    assert torch.allclose(pieces.double(), whole.double(), rtol=1e-6)


def test_flow_under_truncation_on_a_last_step_task(tmp_path):
    """Truncated BPTT on the adding problem: only the last of 4 chunks carries loss, so each batch is one update,
    and a flow period of 2 lands on updates with a gradient to follow (before, on loss-free chunks, it had none)."""
    torch.manual_seed(0)
    data = AddingProblem(seq_len=40, num_train=48, num_val=16, num_test=16, batch_size=16)  # mask: last step only
    model = SequenceRegressor(
        net=partial(RecurrentNet, cell="rnn", hidden_size=8),
        spec=data.spec,
        tbptt_steps=10,
        monitor=GradMonitor(grad_flow_every_n_steps=2, spectrum_every_n_steps=None, heatmap_every_n_steps=None),
    )
    logger = TensorBoardLogger(tmp_path, name="tbptt", default_hp_metric=False)
    quiet_trainer(logger=logger, max_steps=6, limit_val_batches=0).fit(model, data)
    acc = events(logger.log_dir)
    loss = series(acc, "train/loss")
    assert [step for step, _ in loss] == [0, 1, 2, 3, 4, 5] and all(value > 0 for _, value in loss)
    flow = series(acc, "grad_flow/last")
    assert [step for step, _ in flow] == [0, 2, 4] and all(value > 0 for _, value in flow)


def test_flow_summary_edges():
    assert flow_summary(np.array([8.0, 4.0, 2.0])) == {"first": 8.0, "last": 2.0, "growth": 2.0}
    assert "growth" not in flow_summary(np.array([3.0]))  # k = 1: no step to grow over
    assert "growth" not in flow_summary(np.array([1.0, 0.0]))  # no gradient at h_k


def test_lstm_spectra_per_gate_block():
    hidden = 4
    weight = torch.zeros(4 * hidden, hidden)
    for g, scale in enumerate([0.5, 2.0, 3.0, 0.25]):  # gates i, f, g, o
        weight[g * hidden : (g + 1) * hidden] = scale * torch.linalg.qr(torch.randn(hidden, hidden)).Q
    weight[3 * hidden] = float("nan")  # an exploded block is left out, the others still reported
    spectra = recurrent_spectra([weight], "lstm")
    assert spectra["rnn/sigma_max/layer_0/gate_f"] == pytest.approx(2.0)
    assert spectra["rnn/spectral_radius/layer_0/gate_g"] == pytest.approx(3.0)
    assert spectra["rnn/sigma_max/layer_0/gate_i"] == pytest.approx(0.5)
    assert not any(tag.endswith("gate_o") for tag in spectra) and "rnn/pascanu_bound" not in spectra


# -- nothing costly when not due ---------------------------------------------------------------------------


def test_monitor_does_nothing_when_not_due():
    net = RecurrentNet(2, 3, cell="lstm")
    run = StaticRun(net, loggers=[object()], log_every_n_steps=50, is_global_zero=True)
    monitor = GradMonitor()  # flow every 50, spectra every 500, histograms off, per-module every log step
    for step in (1, 49, 51):
        monitor.arm(run, step)
        assert not net.layers[0]._forward_hooks
        assert monitor.step_tensors(run, step) == {}
        assert not monitor._flow and not monitor._weights and not monitor._hist
    run.loggers = []  # nothing is measured when nothing would be written, even when due
    monitor.arm(run, 0)
    assert not net.layers[0]._forward_hooks and monitor.step_tensors(run, 0) == {}


# -- a user's run, read back from the event files ----------------------------------------------------------


def test_cli_run_writes_every_monitor_tag(tmp_path):
    """The default experiment (IRNN, NormClip(max_norm=1)) with every measurement switched on."""
    args = ["--data.seq_len", "30", "--data.num_train", "150", "--data.num_val", "50", "--trainer.max_epochs", "1"]
    args += [
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.log_every_n_steps",
        "2",
        "--model.net.num_layers",
        "2",
    ]
    args += ["--model.monitor", "seqstab.monitor.GradMonitor", "--model.monitor.grad_flow_every_n_steps", "1"]
    args += ["--model.monitor.spectrum_every_n_steps", "2", "--model.monitor.histogram_every_n_steps", "2"]
    result = run_cli("fit", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    acc = events(tmp_path / "runs" / "seqstab" / "version_0")
    tags = acc.Tags()
    updates = list(range(3))  # 150 sequences / batch 50

    assert [s for s, _ in series(acc, "grad/norm_total")] == updates  # every step
    clipped = series(acc, "grad/norm_total_clipped")
    assert [s for s, _ in clipped] == updates and all(v <= 1.0 * (1 + 1e-6) for _, v in clipped)
    assert any(v > 1.0 for _, v in series(acc, "grad/norm_total"))  # the explosion is there, pre-clip

    for group in ("net.layers.0.ih", "net.layers.0.hh", "net.layers.1.hh", "head"):  # every log_every_n_steps
        assert [s for s, _ in series(acc, f"grad/norm/{group}")] == [0, 2]
        assert [s for s, _ in series(acc, f"weight/norm/{group}")] == [0, 2]
    assert "hist/grad/net.layers.0.hh" in tags["histograms"] and "hist/weight/head" in tags["histograms"]

    for tag in ("grad_flow/first", "grad_flow/last", "grad_flow/growth", "grad_flow/growth/layer_1"):
        assert [s for s, _ in series(acc, tag)] == updates, tag
    assert all(v > 0 for _, v in series(acc, "grad_flow/growth"))
    images = acc.Images("grad_flow/heatmap")
    assert images and images[-1].step == 2 and images[-1].width > 100

    for layer in (0, 1):
        assert [s for s, _ in series(acc, f"rnn/spectral_radius/layer_{layer}")] == [0, 2]
    ((_, radius), _) = series(acc, "rnn/spectral_radius/layer_0")
    assert radius == pytest.approx(1.0, rel=1e-4)  # identity W_hh (the IRNN's init), measured before step 0

    experiment = hparams_metadata.parse_experiment_plugin_data(
        acc.PluginTagToContent("hparams")[hparams_metadata.EXPERIMENT_TAG]
    )
    hparams = {h.name for h in experiment.hparam_infos}
    assert {
        "net.hidden_size",
        "net.cell",
        "net.spectral_radius",
        "clipping",
        "clipping.max_norm",
        "optimizer",
    } <= hparams
    assert {"train/loss", "val/loss", "grad/norm_total", "grad_flow/growth"} <= {
        m.name.tag for m in experiment.metric_infos
    }
    assert "hp_metric" not in tags["scalars"]
    assert "custom_scalars__config__" in acc.PluginTagToContent("custom_scalars")


# -- a language model under truncated BPTT -----------------------------------------------------------------


class _TokenStream(SeqDataModule):
    def __init__(self, vocab_size=30, streams=4, length=48, window=16):
        super().__init__()
        tokens = torch.randint(0, vocab_size, (streams, length + 1), generator=torch.Generator().manual_seed(0))
        self.vocab_size, self.window = vocab_size, window
        self.x, self.y = tokens[:, :-1], tokens[:, 1:]  # (B, N)

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="lm", vocab_size=self.vocab_size, stateful=True)

    def train_dataloader(self):
        return DataLoader(StreamWindows(self.x, self.y, self.window), batch_size=None)


def test_language_model_module_paths_and_chunks(tmp_path):
    data = _TokenStream()
    model = LanguageModel(
        net=partial(RecurrentNet, hidden_size=8, num_layers=2),
        spec=data.spec,
        tbptt_steps=6,  # windows of 16 -> chunks of 6, 6, 4
        monitor=GradMonitor(grad_flow_every_n_steps=2, spectrum_every_n_steps=3, heatmap_every_n_steps=8),
    )
    logger = TensorBoardLogger(tmp_path, name="lm", default_hp_metric=False)
    quiet_trainer(logger=logger, max_epochs=1, log_every_n_steps=4).fit(model, data)
    acc = events(logger.log_dir)
    groups = {t.removeprefix("grad/norm/") for t in acc.Tags()["scalars"] if t.startswith("grad/norm/")}
    assert groups == {"encoder.0", "net.layers.0.ih", "net.layers.0.hh", "net.layers.1.ih", "net.layers.1.hh", "head.1"}
    assert [s for s, _ in series(acc, "grad/norm/encoder.0")] == [0, 4, 8]  # 9 updates, log_every_n_steps=4
    assert [s for s, _ in series(acc, "grad_flow/growth")] == [0, 2, 4, 6, 8]
    assert [s for s, _ in series(acc, "rnn/sigma_max/layer_1/gate_f")] == [0, 3, 6]
    assert [i.step for i in acc.Images("grad_flow/heatmap")] == [0, 8]  # every 8 steps (the end of fit adds none)


def test_a_heatmap_kept_between_draws_draws_what_a_fresh_one_draws():
    rng = np.random.default_rng(0)
    history = [(50 * i, rng.random((2, 35)) + 0.01) for i in range(20)]
    longer = history + [(50 * i, 10 * rng.random((2, 35))) for i in range(20, 40)]
    heatmap = Heatmap()
    heatmap.render(history)  # its labels are kept ...
    assert np.array_equal(heatmap.render(longer), render_heatmap(longer))  # ... and it redraws what a fresh one draws
    assert heatmap.render(history).shape == (387, 630, 3)
    assert heatmap.render([(0, rng.random((1, 10)))]).shape == (234, 630, 3)  # one layer: an image of its own height
    assert pickle.loads(pickle.dumps(heatmap))._texts == {}  # copies carry no rasterized labels


def test_the_heatmap_shows_each_norm_at_its_time_step_and_training_step_on_a_log_colour_scale():
    from seqstab.core.monitor.heatmap import LEFT, PANEL, RIGHT, TOP, _colour_table

    norms = np.full((1, 4), 1e-3)  # (L, k): t = 1..4
    norms[0, 0] = 1.0  # t = 1: the largest
    early, late = norms.copy(), norms * 10**1.5  # the later step half-way up the scale
    late[0, 0] = 0.0  # no value: no colour
    image = render_heatmap([(0, early), (50, late)])
    magma = _colour_table()
    bottom, middle = TOP + PANEL - 2, RIGHT - (RIGHT - LEFT) // 2
    row_of_t1, row_of_t4 = bottom, TOP + 1  # t = 1 at the bottom, t = 4 at the top
    left, right = LEFT + 2, RIGHT - 2  # step 0 at the left, step 50 at the right
    assert image[row_of_t4, left].tolist() == magma[0].tolist()  # the smallest norm: the table's first colour
    assert image[row_of_t1, left].tolist() == magma[255].tolist()  # the largest: its last
    assert image[row_of_t4, right].tolist() == magma[128].tolist()  # 10^-1.5: half-way on the log scale
    assert image[row_of_t1, right].tolist() == [255, 255, 255]  # zero: white
    assert image[row_of_t4, middle - 3].tolist() == magma[0].tolist()  # the columns meet half-way between steps
    assert image[row_of_t4, middle + 3].tolist() == magma[128].tolist()


@pytest.mark.parametrize(
    ("layers", "low", "high"),
    [(1, 0.34, 0.46), (1, 0.11, 0.99), (2, 0.2, 0.9), (2, 1e-3, 1.0), (3, 1e-12, 1e3), (1, 7.0, 7.0), (2, 1e-30, 1e30)],
)
def test_the_heatmaps_labels_stay_inside_the_image_and_the_colour_bars_do_not_overlap(layers, low, high):
    from seqstab.core.monitor.heatmap import BAR_RIGHT

    rng = np.random.default_rng(layers)
    history = [(50 * i, np.exp(rng.uniform(np.log(low), np.log(high), (layers, 12)))) for i in range(30)]
    history[0][1][0, :2] = low, high
    heatmap = Heatmap()
    image = heatmap.render(history)
    height, width = image.shape[:2]
    for text, (x0, y0, x1, y1) in heatmap.labels:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, text
    bar = sorted(
        (box for text, box in heatmap.labels if box[0] > BAR_RIGHT and "log scale" not in text), key=lambda b: b[1]
    )
    assert bar, heatmap.labels  # at least one tick of the colour bar is labelled
    assert all(a[3] < b[1] for a, b in itertools.pairwise(bar)), bar  # one above the other, apart


def test_the_heatmap_draws_steps_out_of_order_or_measured_twice():
    norms = [np.full((1, 3), v) for v in (1.0, 2.0, 4.0)]
    for history in ([(5, norms[0])] * 2, [(100, norms[0]), (50, norms[1]), (100, norms[2])]):
        heatmap = Heatmap()
        image = heatmap.render(history)
        assert image.shape == (234, 630, 3)
        steps = [text for text, box in heatmap.labels if box[1] > 174 and text.isdigit()]  # under the panel
        assert steps and steps == sorted(steps, key=int), steps


def test_the_heatmaps_colour_bar_labels_decades_in_plain_text_and_digits_within_a_decade():
    heatmap = Heatmap()

    def bar_labels(low, high):
        heatmap.render([(0, np.array([[low, high, (low * high) ** 0.5]]))])
        return [text for text, box in heatmap.labels if box[0] > 560 and "log scale" not in text]

    assert bar_labels(2e-5, 3e-1) == ["10\u207b\u2074", "10\u207b\u00b3", "10\u207b\u00b2", "10\u207b\u00b9"]
    assert "2\u00d710\u207b\u00b9" in bar_labels(0.15, 0.9)  # 2×10⁻¹: within a decade the digits too
    assert bar_labels(0.34, 0.46) == ["0.34", "0.36", "0.38", "0.4", "0.42", "0.44", "0.46"]  # linear ticks


def test_add_image_writes_what_summary_writers_add_image_writes(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from seqstab.core.logs import add_image

    image = render_heatmap([(50 * i, np.random.default_rng(i).random((2, 9)) + 0.01) for i in range(3)])
    theirs, ours = SummaryWriter(str(tmp_path / "theirs")), SummaryWriter(str(tmp_path / "ours"))
    theirs.add_image("grad_flow/heatmap", image, global_step=7, dataformats="HWC")
    add_image(StaticRun(torch.nn.Linear(1, 1), writers=[ours]), "grad_flow/heatmap", image, 7)
    read = []
    for writer in (theirs, ours):
        writer.flush()
        acc = EventAccumulator(writer.log_dir)
        acc.Reload()
        read.append(acc.Images("grad_flow/heatmap"))
    assert [(i.step, i.width, i.height, i.encoded_image_string) for i in read[0]] == [
        (i.step, i.width, i.height, i.encoded_image_string) for i in read[1]
    ]
    assert read[1][0].height == image.shape[0]


@pytest.mark.parametrize("step", [0, 1, 127, 128, 10**6, 2**40, -1])
def test_scalar_events_are_the_bytes_protobuf_serializes(step):
    """seqstab encodes its scalar events itself (``seqstab.core.logs.scalar_event``): the same bytes as the messages
    built and serialized by protobuf, for every value a tag can take (float32 rounding and its overflow, NaN, signed
    zeros and infinities), long and non-ASCII tags, and the steps whose varints change length."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    from seqstab.core.logs import scalar_event

    big = np.nextafter(np.float64(np.finfo(np.float32).max), np.inf)  # rounds to float32's max, not to inf
    values = [0.0, -0.0, 1.0, 0.1, -2.5e-45, 1e-50, float(big), 3.5e38, -1e39, float("inf"), float("-inf"),
              float("nan"), -float("nan"), 7, True]  # fmt: skip
    cases = [{f"t{i}": v for i, v in enumerate(values)}, {"x" * 200: 1.5, "grad/norm/é→ü": 2.0}, {}]
    for metrics in cases:
        for wall in (0.0, 1.7e9 + 0.123):
            summary = Summary(value=[Summary.Value(tag=t, simple_value=float(v)) for t, v in metrics.items()])
            expected = Event(wall_time=wall, step=step, summary=summary).SerializeToString()
            assert scalar_event(metrics, step, wall) == expected


def test_scalar_events_read_back_with_tensorboard(tmp_path):
    """An event file written through ``ScalarEvents`` reads back with TensorBoard's own reader, every tag at its
    step, float32-rounded."""
    from seqstab.core.logs import ScalarEvents

    events = ScalarEvents(tmp_path)
    for step in range(1, 301):
        events.write({"train/loss": 1.0 / step, "grad/norm_total": float(step)}, step)
    events.flush()
    reader = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    reader.Reload()
    loss = reader.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 301))
    assert [e.value for e in loss] == [float(np.float32(1.0 / s)) for s in range(1, 301)]
    assert [e.value for e in reader.Scalars("grad/norm_total")] == [float(s) for s in range(1, 301)]


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_flow_probe_and_saturation_of_a_layer_without_biases(cell):
    """``nn.LSTM(..., bias=False)`` and its kin (a net of one's own may use them): the probe measures ‖∂L/∂h_t‖ as
    the unrolled cells give it, and the saturation tags come out (they failed on the missing ``bias_ih_l0``)."""
    from seqstab.core.monitor.saturation import saturation_tensors

    torch.manual_seed(0)
    kind, _, nonlinearity = cell.partition("_")
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    extra = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
    layer = module(3, 5, batch_first=True, bias=False, **extra).double()
    x, weight = torch.randn(4, 6, 3, dtype=torch.double), torch.randn(4, 6, 5, dtype=torch.double)
    probe = FlowProbe([layer])
    out, _ = layer(x)
    (torch.tanh(out) * weight).sum().backward()
    tags = saturation_tensors(probe.layers, probe.calls)
    measured = probe.norms()[0]  # (k,)

    step = {"rnn": getattr(torch, f"rnn_{nonlinearity}_cell", None), "lstm": torch.lstm_cell, "gru": torch.gru_cell}
    h = x.new_zeros(4, 5)
    state, states = ((h, h) if kind == "lstm" else h), []
    for t in range(6):
        state = step[kind](x[:, t], state, layer.weight_ih_l0, layer.weight_hh_l0)
        states.append(state[0] if kind == "lstm" else state)
    loss = (torch.tanh(torch.stack(states, dim=1)) * weight).sum()
    expected = torch.stack([g.norm() for g in torch.autograd.grad(loss, states)])
    assert torch.allclose(measured.double(), expected, rtol=1e-6)
    if kind == "rnn":
        names = {"tanh": {"tanh", "tanh_slope"}, "relu": {"dead"}}[nonlinearity]
        assert set(tags) == {f"rnn/saturation/layer_0/{name}" for name in names}
    else:
        gates = x @ layer.weight_ih_l0.T + torch.cat([x.new_zeros(4, 1, 5), out[:, :-1]], 1) @ layer.weight_hh_l0.T
        mean_block = 1  # forget (LSTM i f g o) or update (GRU r z n): the second block
        name = "forget" if kind == "lstm" else "update"
        expected_mean = torch.sigmoid(gates[..., 5 * mean_block : 5 * (mean_block + 1)]).mean()
        assert tags[f"rnn/saturation/layer_0/{name}_mean"] == pytest.approx(float(expected_mean), rel=1e-5)


# -- the spectra off the training thread (where the net trains on a GPU) ------------------------------------------


def test_background_gives_results_back_in_order_and_raises_on_the_caller():
    """One worker, jobs in order: a poll returns the finished prefix only; ``wait`` every one; a job's exception is
    raised by the call that takes its result back; a pickled owner carries no job."""
    gate = threading.Event()
    worker = Background()
    worker.submit("first", lambda: (gate.wait(10), torch.get_num_threads())[1])
    worker.submit("second", lambda: "done")
    assert worker.results() == [] and len(worker) == 2  # the first still runs: nothing, not even the second
    gate.set()
    assert worker.results(wait=True) == [("first", 1), ("second", "done")]  # the job ran on one torch thread
    worker.submit("bad", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        worker.results(wait=True)
    worker.submit("kept", lambda: 1)
    assert len(pickle.loads(pickle.dumps(worker))) == 0
    worker.close()
    assert len(worker) == 0


def _spectra_fit(tmp_path, name: str, off_thread: bool, **checkpointing) -> EventAccumulator:
    torch.manual_seed(0)
    data = AddingProblem(seq_len=12, num_train=48, num_val=16, num_test=16, batch_size=8)
    model = SequenceRegressor(
        net=partial(RecurrentNet, cell="lstm", hidden_size=24, num_layers=2),
        spec=data.spec,
        monitor=GradMonitor(grad_flow_every_n_steps=None, spectrum_every_n_steps=2, spectra_off_thread=off_thread),
    )
    logger = TensorBoardLogger(tmp_path, name=name, default_hp_metric=False)
    quiet_trainer(logger=logger, max_steps=6, log_every_n_steps=2, **checkpointing).fit(model, data)
    return events(logger.log_dir)


def test_spectra_off_the_training_thread_are_the_values_it_would_write(tmp_path, monkeypatch):
    """``spectra_off_thread=True`` on the CPU: every spectrum at its step, the same values the training thread
    writes with one thread, and nothing else in the run moved."""
    computed_on: dict[str, set[str]] = {"inline": set(), "off": set()}
    run_name = ["inline"]

    def spectra(weights, cells):
        computed_on[run_name[0]].add(threading.current_thread().name)
        return recurrent_spectra(weights, cells)

    monkeypatch.setattr("seqstab.core.monitor.monitor.recurrent_spectra", spectra)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker's count: the values bitwise
    try:
        inline = _spectra_fit(tmp_path, "inline", False)
        run_name[0] = "off"
        off = _spectra_fit(tmp_path, "off", True)
    finally:
        torch.set_num_threads(threads)
    assert computed_on["inline"] == {threading.main_thread().name}
    assert len(computed_on["off"]) == 1 and computed_on["off"].pop().startswith("seqstab-monitor")
    tags = inline.Tags()["scalars"]
    assert "rnn/spectral_radius/layer_1/gate_f" in tags and sorted(off.Tags()["scalars"]) == sorted(tags)
    for tag in tags:
        assert series(off, tag) == series(inline, tag), tag
    assert [s for s, _ in series(off, "rnn/sigma_max/layer_0/gate_i")] == [0, 2, 4]


def test_a_checkpoint_waits_for_the_spectra_measured_before_it(tmp_path, monkeypatch):
    """A spectrum still being computed when a checkpoint is saved is written before the checkpoint: a run resumed
    from it, which trains from the step after, would never write it."""
    measured: list[int] = []

    def spectra(weights, cells):
        time.sleep(0.3)  # longer than the updates up to the next flush
        measured.append(len(weights))
        return recurrent_spectra(weights, cells)

    monkeypatch.setattr("seqstab.core.monitor.monitor.recurrent_spectra", spectra)
    written_at_save: list[int] = []

    class AtSave(pl.Callback):  # after the task's own on_save_checkpoint: what the event file holds by then
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                pl_module.on_save_checkpoint({"state_dict": pl_module.state_dict()})
                logs = events(trainer.logger.log_dir)
                written_at_save.extend(s for s, _ in series(logs, "rnn/sigma_max/layer_0/gate_i"))

    acc = _spectra_fit(tmp_path, "ckpt", True, callbacks=[AtSave()])
    assert written_at_save == [0, 2]  # both measured before update 3, both in the file before its checkpoint
    assert [s for s, _ in series(acc, "rnn/sigma_max/layer_0/gate_i")] == [0, 2, 4] and measured == [2, 2, 2]
