"""A net of one's own, trained through ``python -m seqstab.train`` by class path: the shipped example (an IndRNN)
and a net written outside the repository that offers the monitors nothing, yet gets the guard, replay and resume."""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest
import torch

from seqstab.cli.replay import main as replay_main
from seqstab.cli.train import main
from seqstab.nets.example import IndRNN
from tests.helpers import REPO, asked_for, scalars, start_cli, until_teardown

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

ELMAN = '''
import torch
from torch import nn


class Elman(nn.Module):
    """h_t = tanh(W [x_t; h_{t-1}]): a Python loop over one nn.Linear; its state is a dict."""

    def __init__(self, input_size: int, hidden_size: int = 8):
        super().__init__()
        self.hidden_size = hidden_size
        self.cell = nn.Linear(input_size + hidden_size, hidden_size)

    def forward(self, x, hidden=None):
        h = x.new_zeros(x.shape[0], self.hidden_size) if hidden is None else hidden["h"]
        steps = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.cell(torch.cat([x[:, t], h], dim=-1)))
            steps.append(h)
        return torch.stack(steps, dim=1), {"h": h}
'''


def test_the_example_net_is_under_fifty_lines_and_keeps_the_contract():
    source = (REPO / "seqstab" / "nets" / "example.py").read_text()
    assert len(source[source.index("class IndRNN") :].splitlines()) < 50
    net = IndRNN(3, hidden_size=5, num_layers=2)
    out, hidden = net(torch.randn(4, 7, 3))
    assert out.shape == (4, 7, 5) and net.hidden_size == 5 and [h.shape for h in hidden] == [(4, 5), (4, 5)]
    again, _ = net(torch.randn(4, 2, 3), hidden)  # continues from a carried state
    assert again.shape == (4, 2, 5)


def test_a_net_that_offers_nothing_still_gets_the_guard_replay_and_exact_resume(tmp_path, monkeypatch):
    """Elman: no recurrent_layers(), no recurrent_weights(), a dict for its state; stateful streams under truncated
    BPTT, dropout-free. Every update is a guard event (applied: policy warn); the first one replays bitwise; a run
    stopped at update 4 and resumed from its last checkpoint ends bitwise where the uninterrupted one ends."""
    (tmp_path / "mynets.py").write_text(textwrap.dedent(ELMAN))
    monkeypatch.syspath_prepend(str(tmp_path))  # importable, as from the user's shell with PYTHONPATH set
    common = ["fit", "--model", "seqstab.tasks.SequenceRegressor", "--model.net", "mynets.Elman"]
    common += ["--model.net.hidden_size", "6", "--model.tbptt_steps", "4", "--data", "tests.helpers.TinyStream"]
    common += ["--data.length", "48", "--trainer.limit_val_batches", "0", *QUIET]
    common += ["--model.guard", "seqstab.guard.ExplosionGuard", "--model.guard.policy", "warn"]
    common += ["--model.guard.max_norm", "1e-9"]  # every update is an event
    common += ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "4"]
    common += ["--trainer.callbacks.save_last", "true"]

    def fit(where, steps, *extra):
        (tmp_path / where).mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / where)
        assert main([*common, "--trainer.max_steps", str(steps), *extra]) == 0

    fit("a", 12)
    run_a = tmp_path / "a" / "runs" / "seqstab" / "version_0"
    events = [json.loads(line) for line in (run_a / "explosions.jsonl").read_text().splitlines()]
    assert [e["update"] for e in events] == list(range(12)) and events[0]["module"].startswith(("net.cell.", "head."))
    sys.modules.pop("mynets", None)  # as in a fresh `python -m seqstab.replay`: not imported before
    snapshot = str(run_a / events[0]["snapshot"])
    assert replay_main([snapshot]) == 2  # a snapshot names mynets.Elman: replay imports it only when trusted
    assert replay_main([snapshot, "--trust", "mynets"]) == 0

    fit("b", 4)
    fit("b", 12, "--ckpt_path", "last")
    uninterrupted = torch.load(run_a / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(tmp_path / "b" / "runs" / "seqstab" / "version_1" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == uninterrupted["global_step"] == 12
    assert resumed["seqstab"]["ranks"][0]["carry"]["h"].shape == (3, 6)  # the dict state, carried and saved
    for name, tensor in uninterrupted["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    assert resumed["seqstab"]["guard"] == uninterrupted["seqstab"]["guard"]


@pytest.fixture(scope="module", autouse=True)
def example_net_run(request, tmp_path_factory):
    """The example net's command-line run, started when this module starts: it runs beside the in-process tests, and
    the test reading it comes last."""
    if not asked_for(request):  # no selected test reads the runs: start none
        yield None
        return
    config = REPO / "configs" / "synthetic" / "adding_indrnn.yaml"
    args = ["--data.seq_len", "20", "--data.num_train", "100", "--data.num_val", "50", "--trainer.max_steps", "3"]
    cwd = tmp_path_factory.mktemp("indrnn")
    run = start_cli("fit", "-c", str(config), *args, *QUIET, cwd=cwd, PYTHONWARNINGS="default")
    yield from until_teardown(run)


def test_the_example_net_trains_from_its_config_with_spectra_and_one_note_about_flow(example_net_run):
    result = example_net_run.result()
    assert result.returncode == 0, result.stderr[-3000:]
    notes = re.findall(r"the net IndRNN is not measured for gradient flow", result.stderr)
    assert len(notes) == 1 and "spectra" not in result.stderr.split("not measured for")[1].split("\n")[0]
    series = scalars(example_net_run.cwd / "runs" / "seqstab" / "version_0")
    assert {"grad/norm_total", "grad/norm/net.inputs.0", "grad/norm/net.recurrent", "val/loss"} <= series.keys()
    sigma, radius = series["rnn/sigma_max/layer_1"][0][1], series["rnn/spectral_radius/layer_1"][0][1]
    assert sigma == pytest.approx(radius) and 0 < sigma <= 0.9  # diag(u): both are max |u_i|, u_i in U(0, 0.9)
    assert not any(tag.startswith("grad_flow/") for tag in series)
