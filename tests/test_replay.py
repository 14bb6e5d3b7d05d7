"""Replay of a guard snapshot recomputes the logged pre-clip norm bitwise (CPU), also with dropout and carried state."""

from __future__ import annotations

import json
import re
import struct
import sys
from functools import partial

import pytest
import torch

from seqstab.cli.replay import load_snapshot, replay
from seqstab.cli.replay import main as replay_main
from seqstab.cli.train import main as train_main
from seqstab.core.clipping import NoClip
from seqstab.core.guard import SNAPSHOT_FORMAT
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import SequenceRegressor
from tests.helpers import REPO, FlagAt, Started, TinyStream, asked_for, quiet_trainer, scalars, until_teardown

EXPLODE = REPO / "configs" / "explode" / "adding_rnn.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def f32(value: float) -> bytes:
    return struct.pack("<f", value)


def test_replay_prints_the_logged_norm(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(EXPLODE), "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1"]
    args += ["--data.seq_len", "50", "--data.num_train", "500", "--data.num_val", "50"]
    assert train_main(args) == 0
    run_dir = tmp_path / "runs" / "seqstab" / "version_0"
    first = json.loads((run_dir / "explosions.jsonl").read_text().splitlines()[0])
    snapshot = run_dir / first["snapshot"]
    assert torch.load(snapshot, weights_only=True)["update"] == first["update"]  # plain tensors and dicts only

    assert replay_main([str(snapshot.relative_to(tmp_path))]) == 0  # python -m seqstab.replay RUN_DIR/<snapshot>
    stdout = capsys.readouterr().out
    replayed, logged = re.search(r"pre-clip gradient norm: replayed (\S+)\s+logged (\S+)", stdout).groups()
    assert float(logged) == first["norm"]
    assert float(replayed) == first["norm"]  # repr round-trips: bitwise the same float
    assert "(bitwise)" in stdout
    tb_norm = dict(scalars(run_dir)["grad/norm_total"])[first["update"]]
    assert f32(tb_norm) == f32(float(replayed))
    breakdown = stdout.split("largest first:")[1].split()
    assert breakdown[0] == first["module"]


def test_replay_with_dropout_and_carried_hidden_state(tmp_path):
    """Update 4 starts from a hidden state carried across a chunk boundary and draws dropout masks."""
    from pytorch_lightning.loggers import TensorBoardLogger

    data = TinyStream(num_streams=3, length=24, window=8)
    torch.manual_seed(0)
    task = SequenceRegressor(
        net=partial(RecurrentNet, cell="lstm", hidden_size=8, num_layers=2, dropout=0.5),
        spec=data.spec,
        tbptt_steps=4,
        guard=FlagAt(4),
    )
    task.clipping = NoClip()
    logger = TensorBoardLogger(tmp_path, name="", version="run")
    quiet_trainer(max_epochs=1, logger=logger).fit(task, data)
    (path,) = (tmp_path / "run").glob("snapshot_update_*.pt")
    snapshot = load_snapshot(path)
    assert snapshot["update"] == 4 and snapshot["hidden_in"] is not None
    logged = snapshot["logged"]["grad/norm_total"]
    assert f32(replay(snapshot)["norm"]) == f32(logged)
    assert f32(replay(snapshot)["norm"]) == f32(logged)  # replay is repeatable
    without_rng = dict(snapshot, rng=None)  # the dropout masks matter: without the RNG state it differs
    assert f32(replay(without_rng)["norm"]) != f32(logged)
    without_hidden = dict(snapshot, hidden_in=None)  # and so does the carried state
    assert f32(replay(without_hidden)["norm"]) != f32(logged)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated", None])
def test_bad_snapshot_is_a_one_line_error(tmp_path, capsys, content):
    path = tmp_path / "snapshot.pt"
    if content is not None:
        path.write_bytes(content)
    assert replay_main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqstab.replay: error: snapshot") and str(path) in err[0]


def test_foreign_file_is_not_a_snapshot(tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    assert replay_main([str(path)]) == 2
    assert "not a seqstab replay snapshot" in capsys.readouterr().err


@pytest.fixture(scope="module", autouse=True)
def replays_of_evil(request, tmp_path_factory):
    """The test below's two ``python -m seqstab.replay`` commands, each in a folder of its own beside ``evil.py``,
    started together when this module starts: a snapshot whose task is evil.Task, and one whose task is seqstab's
    and whose net is evil.Task."""
    if not asked_for(request):  # no selected test reads the runs: start none
        yield None
        return
    snapshot = {"format": SNAPSHOT_FORMAT, "task_class": "evil.Task", "hparams": {}, "chunk": {}, "logged": {}}
    net = {"net": {"class_path": "evil.Task", "init_args": {}}, "spec": {"kind": "regression"}}
    snapshots = {"task": snapshot, "net": {**snapshot, "hparams": net, "task_class": "seqstab.tasks.SequenceRegressor"}}
    runs = {}
    for name, content in snapshots.items():
        cwd = tmp_path_factory.mktemp(f"evil_{name}")
        (cwd / "evil.py").write_text("from pathlib import Path\nPath('pwned').write_text('ran')\nclass Task: pass\n")
        torch.save(content, cwd / "snapshot_update_0.pt")
        runs[name] = Started([sys.executable, "-m", "seqstab.replay", "snapshot_update_0.pt"], cwd=cwd)
    yield from until_teardown(runs)


def test_replay_runs_no_code_a_snapshot_names(replays_of_evil):
    """A snapshot that loads cleanly (plain data) names a class of a module beside it: replay refuses before
    importing, so the module's code never runs, and says how to trust a module one means."""
    task = replays_of_evil["task"]
    result = task.result()
    assert result.returncode == 2 and not (task.cwd / "pwned").exists()
    (line,) = result.stderr.strip().splitlines()
    assert "evil.Task" in line and "--trust evil" in line
    net = replays_of_evil["net"]  # the task is seqstab's, its net is not
    result = net.result()
    assert result.returncode == 2 and not (net.cwd / "pwned").exists() and "--trust evil" in result.stderr


def test_a_snapshot_holding_code_is_refused_by_name_without_advice(tmp_path, capsys):
    import argparse

    path = tmp_path / "snapshot.pt"
    torch.save({"format": SNAPSHOT_FORMAT, "hparams": argparse.Namespace(lr=1)}, path)
    assert replay_main([str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "refused to load: it holds a argparse.Namespace object" in line
    assert "weights_only=False" not in line and "\x1b" not in line
