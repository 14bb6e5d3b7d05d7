"""Vanishing gradients and saturation: two planted stagnations through the CLI, each diagnosed as its own mechanism
(findings.jsonl, the console, the TensorBoard text entry and the saturation tags read with TensorBoard's reader); the
healthy default experiment gets no finding; the watch's rules on hand-made updates."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqstab.cli.train import main
from seqstab.core.diagnose import Vanishing, VanishingWatch
from seqstab.core.errors import ConfigError
from seqstab.core.monitor import custom_scalars_layout, saturation_tensors
from seqstab.core.record import StaticRun
from seqstab.nets.recurrent import RecurrentNet
from tests.helpers import REPO, scalars
from tests.test_bad_input import run_fails

VANISHING = REPO / "configs" / "vanishing"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_dir(tmp_path):
    return tmp_path / "runs" / "seqstab" / "version_0"


def findings(tmp_path) -> list[dict]:
    path = run_dir(tmp_path) / "findings.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def text_tags(tmp_path) -> list[str]:
    acc = EventAccumulator(str(run_dir(tmp_path)), size_guidance={"tensors": 0})
    acc.Reload()
    return acc.Tags()["tensors"]


def test_a_tanh_rnn_with_small_weights_vanishes_through_time(tmp_path, monkeypatch, capsys):
    """T = 400, every weight U(±0.01): the net learns the target's mean, then stagnates; time is the cause."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(VANISHING / "adding_tanh.yaml"), *QUIET]) == 0  # never stops the run
    (finding,) = findings(tmp_path)  # once: the next one would be 1000 updates later
    diagnosis = finding["diagnosis"]
    assert finding["finding"] == "vanishing" and finding["update"] >= 60
    assert diagnosis["top"] == "time" and float(diagnosis["ranked"][0]["score"]) > 10
    assert "σ_max(W_hh) of the bottom layer is" in diagnosis["ranked"][0]["evidence"]
    assert "--model.net.init orthogonal" in diagnosis["ranked"][0]["remedies"]
    saturation = next(f for f in diagnosis["ranked"] if f["mechanism"] == "saturation")
    assert saturation["evidence"].startswith("not saturated: ") and saturation["score"] == 0.0
    out = capsys.readouterr().out
    assert f"seqstab: vanishing gradients at update {finding['update']} (epoch 0): the training loss " in out
    assert "seqstab: why: time (10^" in out and "100 of 100 updates applied" in out
    assert "diagnosis/vanishing/text_summary" in text_tags(tmp_path)  # the text entry
    series = scalars(run_dir(tmp_path))
    tanh = series["rnn/saturation/layer_0/tanh"]
    assert [step for step, _ in tanh] == list(range(0, 100, 10))  # with every gradient-flow measurement
    assert all(0 <= v < 0.5 for _, v in tanh) and all(
        0.5 < v <= 1 for _, v in series["rnn/saturation/layer_0/tanh_slope"]
    )


def test_an_lstm_with_closed_forget_gates_is_diagnosed_as_saturation(tmp_path, monkeypatch, capsys):
    """forget_bias -10: every forget gate below 0.01, the cell cleared at every step; the remedy is a bias of 1."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(VANISHING / "lstm_gates_closed.yaml"), *QUIET]) == 0
    (finding,) = findings(tmp_path)
    top = finding["diagnosis"]["ranked"][0]
    assert finding["diagnosis"]["top"] == "saturation" and top["mechanism"] == "saturation"
    assert top["evidence"].startswith("saturated: 100% of the forget gates below 0.01")
    assert top["remedies"] == ["--model.net.forget_bias 1"]
    time = next(f for f in finding["diagnosis"]["ranked"] if f["mechanism"] == "time")
    assert time["score"] is None and "cut by saturated forget gates" in time["evidence"]
    assert "seqstab: why: saturation (" in capsys.readouterr().out
    series = scalars(run_dir(tmp_path))
    assert all(v == 1.0 for _, v in series["rnn/saturation/layer_0/forget_low"])
    assert all(v < 1e-4 for _, v in series["rnn/saturation/layer_0/forget_mean"])
    assert {f"rnn/saturation/layer_0/{g}_{end}" for g in ("input", "output") for end in ("low", "high")} <= set(series)


def test_the_healthy_default_experiment_gets_neither_finding_nor_origin(tmp_path, monkeypatch):
    """``python -m seqstab.train``: its one event (a finite spike) has no origin, and nothing vanishes."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *QUIET]) == 0
    assert findings(tmp_path) == []
    events = [json.loads(line) for line in (run_dir(tmp_path) / "explosions.jsonl").read_text().splitlines()]
    assert events and all("origin" not in e["diagnosis"] for e in events)
    series = scalars(run_dir(tmp_path))
    assert [step for step, _ in series["rnn/saturation/layer_0/dead"]] == [0, 50, 100, 150, 200]  # a ReLU net
    assert min(v for _, v in series["grad_flow/growth"]) > 0.9


def test_saturation_has_its_own_chart_and_the_spectra_chart_keeps_to_its_tags():
    charts = custom_scalars_layout()["seqstab"]
    assert charts["saturation: tanh |h| > 0.99, gates < 0.01 or > 0.99, dead ReLUs"] == [
        "Multiline",
        [r"^rnn/saturation/"],
    ]
    spectra = charts["W_hh: σ_max and spectral radius vs Pascanu bound"][1][0]
    assert spectra.startswith("^rnn/(") and "saturation" not in spectra


def calls(layer, x):
    """What the flow probe keeps of one call: input, start state, output."""
    out, _ = layer(x)
    return [SimpleNamespace(x=x, hx=None, out=out.detach())]


def test_saturation_tensors_of_each_cell():
    torch.manual_seed(0)
    x = torch.randn(4, 7, 3)
    tanh = torch.nn.RNN(3, 5, batch_first=True)
    with torch.no_grad():
        tanh.weight_ih_l0.mul_(100)  # |W x| >> 1: saturated
    got = saturation_tensors([tanh], [calls(tanh, x)])
    assert got["rnn/saturation/layer_0/tanh"] > 0.9 and got["rnn/saturation/layer_0/tanh_slope"] < 0.1

    relu = torch.nn.RNN(3, 4, nonlinearity="relu", batch_first=True)
    with torch.no_grad():
        relu.bias_ih_l0[:2] = -100.0  # units 0 and 1 never fire
    got = saturation_tensors([relu], [calls(relu, x)])
    assert got["rnn/saturation/layer_0/dead"] == pytest.approx(0.5)

    lstm = RecurrentNet(3, 6, cell="lstm", forget_bias=-10.0).layers[0]
    got = saturation_tensors([lstm], [calls(lstm, x)])
    assert got["rnn/saturation/layer_0/forget_low"] == 1.0 and got["rnn/saturation/layer_0/forget_high"] == 0.0
    assert got["rnn/saturation/layer_0/forget_mean"] == pytest.approx(torch.sigmoid(torch.tensor(-10.0)), rel=0.5)
    gates, _ = _lstm_gates(lstm, x)
    assert got["rnn/saturation/layer_0/input_high"] == pytest.approx(float((gates[0] > 0.99).float().mean()))

    gru = torch.nn.GRU(3, 4, batch_first=True)
    got = saturation_tensors([gru], [calls(gru, x)])
    assert set(got) == {f"rnn/saturation/layer_0/{n}" for n in ("reset_low", "reset_high", "update_low",
                                                                "update_high", "update_mean")}  # fmt: skip
    assert all(v.dim() == 0 for v in got.values())  # device scalars, read back with the loss

    linear = RecurrentNet(3, 4, cell="rnn", nonlinearity="linear").layers[0]
    assert saturation_tensors([linear], [calls(linear, x)]) == {}  # nothing to saturate


def _lstm_gates(lstm, x):
    """i, f, o of nn.LSTM, stepped by hand (the reference the recomputation is held to)."""
    h = c = torch.zeros(x.shape[0], lstm.hidden_size)
    kept = [[], [], []]
    for t in range(x.shape[1]):
        gates = x[:, t] @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + h @ lstm.weight_hh_l0.T + lstm.bias_hh_l0
        i, f, g, o = gates.detach().chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        for k, gate in enumerate((i, f, o)):
            kept[k].append(torch.sigmoid(gate))
    return [torch.stack(g) for g in kept], h


# -- the watch's rules, on hand-made updates ------------------------------------------------------------------------


def feed(watch, run, losses, ratio, start=0, every_flow=10):
    """Updates with the given losses; a flow measurement (first/last = ratio, 50 steps) every ``every_flow``."""
    out = []
    for i, loss in enumerate(losses, start):
        values = {"train/loss": loss, "grad/norm_total_clipped": 1.0}
        if i % every_flow == 0:
            values |= {"grad_flow/first": ratio, "grad_flow/last": 1.0, "grad_flow/steps": 50}
        found = watch.observe(run, SimpleNamespace(step=i, values=values), {"lr": 0.01}, applied=True)
        out += [i] if found else []
    return out


def test_the_watch_needs_stagnation_and_vanished_flow_and_repeats_only_every_n(tmp_path, capsys):
    run = StaticRun(torch.nn.Linear(2, 1), run_dir=tmp_path, optimizer=None)
    settings = Vanishing(window=40, every=100)
    assert feed(VanishingWatch(settings), run, [1.0 - 0.01 * i for i in range(80)], 1e-6) == []  # still learning
    assert feed(VanishingWatch(settings), run, [0.5] * 80, 0.01) == []  # the flow reaches the first steps
    watch = VanishingWatch(settings)
    found = feed(watch, run, [0.5] * 300, 1e-6)
    assert found == [39, 139, 239]  # once the window is full, then at most every 100 updates
    lines = (tmp_path / "findings.jsonl").read_text().splitlines()
    assert [json.loads(line)["update"] for line in lines] == found
    assert "seqstab: vanishing gradients at update 39 (epoch 0): the training loss fell 0% " in capsys.readouterr().out

    feed(watch, run, [0.5] * 11, 1e-6, start=300)  # the last update (310) a flow step: its flow not yet taken
    copy = VanishingWatch(settings)
    copy.load_state_dict(json.loads(json.dumps(watch.state_dict())))  # plain values, the pending flow in them
    assert copy.state_dict() == watch.state_dict()
    assert feed(copy, run, [0.5] * 90, 1e-6, start=311) == feed(watch, run, [0.5] * 90, 1e-6, start=311) == [339]
    assert copy.state_dict() == watch.state_dict()


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("window", 3, "guard vanishing.window=3: must be an integer >= 8"),
        ("min_improvement", 1.5, "guard vanishing.min_improvement=1.5: must be in [0, 1)"),
        ("flow_ratio", 0.0, "guard vanishing.flow_ratio=0.0: must be in (0, 1)"),
        ("every", 0, "guard vanishing.every=0: must be an integer >= 1"),
    ],
)
def test_bad_vanishing_settings_are_one_line(field, value, needle, tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        Vanishing(**{field: value})
    monkeypatch.chdir(tmp_path)
    guard = ["--model.guard", "seqstab.guard.ExplosionGuard", f"--model.guard.vanishing.{field}", str(value)]
    assert needle in run_fails(guard, capsys, tmp_path)


def test_forget_bias_is_the_lstm_forget_block_and_refused_elsewhere(tmp_path, monkeypatch, capsys):
    net = RecurrentNet(3, 4, cell="lstm", num_layers=2, forget_bias=1.0)
    for layer in net.layers:
        assert torch.equal(layer.bias_ih_l0[4:8], torch.ones(4)) and torch.equal(layer.bias_hh_l0[4:8], torch.zeros(4))
    monkeypatch.chdir(tmp_path)
    line = run_fails(["--model.net.forget_bias", "1"], capsys, tmp_path)  # the default experiment: cell rnn
    assert "forget_bias=1.0: only cell='lstm' has a forget gate (cell='rnn')" in line
    line = run_fails(["--data.nan_batch", "1", "--data.nan_row", "50"], capsys, tmp_path)
    assert "nan_row=50: must be an integer in [0, batch_size=50)" in line
    line = run_fails(["--data.nan_row", "3"], capsys, tmp_path)
    assert "nan_row is set but nan_batch is not: a planted NaN needs the batch it goes in" in line


def test_a_run_resumes_under_other_vanishing_and_saturation_settings(tmp_path, monkeypatch):
    """What only watches changes no update: beside ``--ckpt_path last`` it may differ (and a run from before these
    settings existed resumes)."""
    monkeypatch.chdir(tmp_path)
    watch = ["--model.guard", "seqstab.guard.ExplosionGuard", "--model.monitor", "seqstab.monitor.GradMonitor"]
    base = ["fit", *watch, "--trainer.limit_val_batches", "1", *QUIET]
    assert main([*base, "--trainer.max_steps", "2"]) == 0
    again = ["--model.guard.vanishing.window", "40", "--model.monitor.saturation", "false", "--ckpt_path", "last"]
    assert main([*base, "--trainer.max_steps", "4", *again]) == 0
    assert (tmp_path / "runs" / "seqstab" / "version_1").is_dir()
