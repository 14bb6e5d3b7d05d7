"""Where did the NaN come from: three planted faults run through the CLI, each located where it was planted (the
event's line in explosions.jsonl, the console, ``python -m seqstab.replay --origin``), a module under the callback,
an LSTM gate block, and healthy updates that get no origin."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from seqstab.cli.replay import main as replay_main
from seqstab.cli.train import main
from seqstab.core.diagnose import find_origin
from seqstab.core.guard import ExplosionGuard
from seqstab.lightning.callbacks import GradientStability
from tests.helpers import REPO
from tests.test_callbacks import PLClassifier

NAN = REPO / "configs" / "nan"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
FAST = ["--trainer.limit_val_batches", "1", *QUIET]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_dir(tmp_path):
    return tmp_path / "runs" / "seqstab" / "version_0"


def events(tmp_path) -> list[dict]:
    path = run_dir(tmp_path) / "explosions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def replayed_origin(snapshot, capsys, *trust: str) -> str:
    assert replay_main([str(snapshot), "--origin", *trust]) == 0
    out = capsys.readouterr().out
    return out.split("origin (the update recomputed with hooks on every module):\n")[1]


def test_overflow_in_the_forward_pass_is_located_at_its_step(tmp_path, monkeypatch, capsys):
    """Linear RNN, W_hh = 3·Q, T = 400: |h_t| grows 3x a step and overflows float32 near step 80 of the first update."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(NAN / "overflow.yaml"), *FAST]) == 3  # policy stop at update 0
    (event,) = events(tmp_path)
    origin = event["diagnosis"]["origin"]
    assert event["reason"] == "non-finite" and event["loss"] == "nan"
    assert origin["phase"] == "forward" and origin["module"] == "net.layers.0" and origin["kind"] == "overflow"
    assert origin["module_type"] == "LinearRNN" and origin["inputs_finite"] is True
    assert 70 <= origin["step"] <= 90 and origin["steps"] == 400  # 3^80 · |h_1| ≈ float32's largest value
    assert 1e37 < origin["largest_finite"] < 3.5e38 and origin["rows_total"] == 32 and origin["rows_bad"] >= 1
    out = capsys.readouterr().out
    assert "seqstab: where: forward, in net.layers.0 (LinearRNN) in its own code (no submodule of it): " in out
    assert f"step {origin['step']} of 400" in out and out.count("where:") == 1

    where = replayed_origin(run_dir(tmp_path) / event["snapshot"], capsys)
    assert where.startswith("where: forward, in net.layers.0 (LinearRNN)") and f"step {origin['step']} of 400" in where


def test_nan_born_in_the_backward_pass_is_located_in_the_module_whose_backward_divides_by_zero(
    tmp_path, monkeypatch, capsys
):
    """tests.planted.RootRNN: a finite forward; the readout's hand-written backward is 0/0 at the first step."""
    monkeypatch.chdir(tmp_path)
    net = ["--model.net", "tests.planted.RootRNN", "--data.spike_batch", "null", "--data.spike_scale", "null"]
    assert main(["fit", "--config", str(REPO / "configs" / "explode" / "cause_data.yaml"), *net, *FAST]) == 3
    (event,) = events(tmp_path)
    origin = event["diagnosis"]["origin"]
    assert event["loss"] != "nan" and event["norm"] == "nan"  # a finite loss, a non-finite gradient
    assert origin["phase"] == "backward" and origin["module"] == "net.root" and origin["module_type"] == "SignedRoot"
    assert origin["kind"] == "0/0" and origin["values"] == "nan"
    assert origin["step"] == 1 and origin["steps"] == 20 and origin["rows_bad"] == origin["rows_total"] == 32
    assert 0 < origin["largest_finite"] < 1  # the gradient arriving at the readout was finite and small
    assert "seqstab: where: backward, in net.root (SignedRoot): ∂L/∂(its input) is nan at step 1 of 20" in (
        capsys.readouterr().out
    )

    where = replayed_origin(run_dir(tmp_path) / event["snapshot"], capsys, "--trust", "tests")
    assert where.startswith("where: backward, in net.root (SignedRoot)") and "0/0" in where


def test_nan_in_one_input_row_is_located_in_the_batch(tmp_path, monkeypatch, capsys):
    """configs/nan/nan_input.yaml: batch 3, row 5, NaN at step 11 of 20; the guard skips it and the run goes on."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(NAN / "nan_input.yaml"), *FAST]) == 0
    (event,) = events(tmp_path)
    diagnosis = event["diagnosis"]
    origin = diagnosis["origin"]
    assert event["update"] == 3 and event["action"] == "skip"
    assert origin["phase"] == "input" and origin["in_batch"] is True and origin["kind"] == "non-finite input"
    assert origin["rows"] == [5] and origin["rows_bad"] == 1 and origin["step"] == 11 and origin["argument"] == 0
    assert diagnosis["top"] == "data" and diagnosis["ranked"][0]["mechanism"] == "data"
    out = capsys.readouterr().out
    assert "seqstab: why: data (inf amplification)" in out
    assert "where: input: its input was already non-finite when the model (SequenceRegressor) was called (the " in out
    assert "nan at step 11 of 20, 1 of 32 rows: 5 of (32, 20, 2)" in out


def test_a_module_under_the_callback_is_located_too(tmp_path, capsys):
    """An ordinary LightningModule (its training_step calls its nn.LSTM): a NaN in row 2 of the second batch."""
    x, y = torch.randn(64, 12, 3, generator=torch.Generator().manual_seed(0)), torch.randint(0, 4, (64,))
    x[16 + 2, 4, 1] = float("nan")  # batch 1 (of 16 rows), row 2, step 5
    torch.manual_seed(0)
    stability = GradientStability(guard=ExplosionGuard(policy="skip"))
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[stability],
        logger=pl.loggers.TensorBoardLogger(tmp_path, name="", version="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(PLClassifier(), DataLoader(TensorDataset(x, y), batch_size=16))
    (event,) = [json.loads(line) for line in (tmp_path / "run" / "explosions.jsonl").read_text().splitlines()]
    origin = event["diagnosis"]["origin"]
    assert event["update"] == 1
    assert origin["phase"] == "input" and origin["module"] == "lstm" and origin["in_batch"] is True
    assert origin["rows"] == [2] and origin["step"] == 5
    assert "where: input: its input was already non-finite when lstm was called (the batch holds them)" in (
        capsys.readouterr().out
    )
    where = replayed_origin(tmp_path / "run" / event["snapshot"], capsys)
    assert where.startswith("where: input:") and "step 5 of 12, 1 of 16 rows: 2" in where


class StepLSTM(torch.nn.Module):
    """An LSTM layer written step by step, with nn.LSTM's parameter names (a layer of the recurrent contract)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        like = torch.nn.LSTM(input_size, hidden_size, batch_first=True)
        for name, p in like.named_parameters():
            self.register_parameter(name, p)

    def forward(self, x, hx=None):
        h = c = x.new_zeros(x.shape[0], self.weight_hh_l0.shape[1])  # (B, H)
        out = []
        for t in range(x.shape[1]):
            gates = x[:, t] @ self.weight_ih_l0.T + self.bias_ih_l0 + h @ self.weight_hh_l0.T + self.bias_hh_l0
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return torch.stack(out, dim=1), (h[None], c[None])


def test_the_gate_block_of_an_lstm_layer_is_named():
    """Forget-gate input weights of ±3e38 on inputs of 2: each product overflows and their sum is inf - inf = nan, in
    the forget block only (finite weights, finite inputs)."""
    torch.manual_seed(0)
    lstm = StepLSTM(2, 4)
    with torch.no_grad():
        lstm.weight_ih_l0[4:8] = torch.tensor([3e38, -3e38])  # the forget block of i f g o
    x = torch.full((3, 6, 2), 2.0)
    x[:, :2] = 0.0  # finite for two steps
    origin = find_origin(lstm, lambda: lstm(x)[0].sum(), [lstm], x)
    assert origin["phase"] == "forward" and origin["module"] == "" and origin["gate"] == "forget"
    assert origin["step"] == 3 and origin["rows_bad"] == 3 and origin["kind"] == "0/0"
    assert "(the forget gate's pre-activation)" in origin["evidence"]


def test_log_of_a_non_positive_in_an_elementwise_module():
    class Log(torch.nn.Module):
        def forward(self, x):
            return torch.log(x)

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), Log())
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3))
        model[0].bias.zero_()
    x = torch.tensor([[1.0, 2.0, 3.0], [1.0, -1.0, 2.0]])
    origin = find_origin(model, lambda: model(x).sum(), [], x)
    assert origin["phase"] == "forward" and origin["module"] == "1" and origin["kind"] == "log of a non-positive"
    assert origin["rows"] == [1]


def test_a_finite_update_and_non_finite_weights():
    model = torch.nn.Linear(3, 1)
    x = torch.randn(4, 3)
    assert find_origin(model, lambda: model(x).sum(), [], x)["phase"] is None
    with torch.no_grad():
        model.bias.fill_(float("inf"))
    origin = find_origin(model, lambda: model(x).sum(), [], x)
    assert origin["phase"] == "weights" and origin["parameters"] == ["bias"] and origin["kind"] == "non-finite weights"


def test_the_origin_search_leaves_weights_grads_and_rng_as_they_were():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    model(torch.randn(4, 3)).sum().backward()
    before = {n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()}
    state = torch.get_rng_state()
    find_origin(model, lambda: model(torch.randn(4, 3)).sum(), [], None)
    assert torch.equal(torch.get_rng_state(), state)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name][0]) and torch.equal(p.grad, before[name][1])
    assert not model._forward_hooks and not model[0]._forward_pre_hooks  # every hook removed


def test_the_search_runs_where_lightning_flushes_under_inference_mode():
    """A flush at validation start runs inside Lightning's inference mode: the backward is still followed."""
    from tests.planted import RootRNN

    torch.manual_seed(0)
    net = RootRNN(2, 8)
    x = torch.rand(4, 6, 2)
    with torch.inference_mode():
        origin = find_origin(net, lambda: net(x)[0][:, -1].sum(), net.recurrent_layers(), x)
    assert origin["phase"] == "backward" and origin["module"] == "root" and origin["step"] == 1
