"""Checkpoints: atomic writes, ``weights_only`` loads, one-line errors for bad files, the resumable loaders."""

from __future__ import annotations

import io
import os
import sys
import textwrap
from functools import partial

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from seqstab.cli.train import main
from seqstab.core import io as checkpoint
from seqstab.core.io import CheckpointError
from seqstab.data import loaders
from seqstab.data.loaders import QuietLoader, ResumableLoader
from seqstab.lightning.resume import AtomicCheckpointIO
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import SequenceRegressor
from tests.helpers import Started, asked_for, until_teardown
from tests.test_resume import python_path

TINY = ["--data.num_train", "40", "--data.num_val", "20", "--data.seq_len", "10", "--data.batch_size", "10"]
TINY += ["--model.net.hidden_size", "8", "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "1"]


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("seqstab.train: error:")]


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """One real checkpoint of the default experiment (2 updates), written by the CLI."""
    cwd = tmp_path_factory.mktemp("good")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        assert main(["fit", *TINY, "--trainer.max_steps", "2"]) == 0
    finally:
        os.chdir(old)
    (path,) = (cwd / "runs").rglob("last.ckpt")
    return path


# -- atomic writes ----------------------------------------------------------------------------------------------


def test_interrupted_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io_ = AtomicCheckpointIO()
    io_.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def half_then_interrupt(obj, f, *args, **kwargs):  # a kill arriving in the middle of the write
        buffer = io.BytesIO()
        torch.serialization.save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        io_.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    loaded = io_.load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys, torch
    from seqstab.core import io as checkpoint
    path = sys.argv[1]
    checkpoint.save({"step": 1, "w": torch.ones(3)}, path)                 # the last good checkpoint
    real_open = os.fdopen
    class Dying:                                                            # SIGKILL after the first 64 KiB
        def __init__(self, f): self.f, self.n = f, 0
        def write(self, b):
            self.n += len(b)
            if self.n > 65536: os.kill(os.getpid(), signal.SIGKILL)
            return self.f.write(b)
        def __getattr__(self, name): return getattr(self.f, name)
        def __enter__(self): return self
        def __exit__(self, *a): return self.f.__exit__(*a)
    if sys.argv[2] == "atomic":
        os.fdopen = lambda fd, mode: Dying(real_open(fd, mode))
        checkpoint.save({"step": 2, "w": torch.zeros(10**6)}, path)
    else:                                                                   # what a plain torch.save(path) does
        with open(path, "wb") as f:
            torch.save({"step": 2, "w": torch.zeros(10**6)}, Dying(f))
    """
)


@pytest.fixture(scope="module", autouse=True)
def killed_writers(request, tmp_path_factory):
    """Both writers of the test below, each in a process of its own, started when this module starts."""
    if not asked_for(request):  # no selected test reads the runs: start none
        yield None
        return
    env = {**os.environ, "PYTHONPATH": python_path()}
    writers = {}
    for writer in ("atomic", "plain"):
        folder = tmp_path_factory.mktemp(writer)
        command = [sys.executable, "-c", KILLED_WRITER, str(folder / "last.ckpt"), writer]
        writers[writer] = Started(command, cwd=folder, env=env, timeout=120)
    yield from until_teardown(writers)


@pytest.mark.parametrize("writer", ["atomic", "plain"])
def test_sigkill_during_a_write(killed_writers, writer):
    done, tmp_path = killed_writers[writer].result(), killed_writers[writer].cwd
    path = tmp_path / "last.ckpt"
    assert done.returncode == -9  # really killed mid-write
    if writer == "atomic":
        assert checkpoint.load(path)["step"] == 1  # the previous checkpoint, whole
        (leftover,) = tmp_path.glob(".last.ckpt.*.part")  # what the killed save was writing
        checkpoint.save({"step": 3}, path)  # the next save of the same file cleans it up
        assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))
    else:  # the control: without the temporary file + rename, the kill leaves a truncated checkpoint
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            checkpoint.load(path)


def test_checkpoint_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        checkpoint.save({"step": 1}, tmp_path / "a.ckpt")
        checkpoint.write_text(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert [oct((tmp_path / n).stat().st_mode & 0o777) for n in ("a.ckpt", "b.json")] == ["0o644", "0o644"]


def test_every_run_ends_with_a_checkpoint_of_its_final_state(tmp_path, monkeypatch):
    """The recipe in docs/guides/resume.md for checkpoints within an epoch replaces Lightning's epoch-end one; a run
    stopped by max_steps between two saves still ends with last.ckpt at its final step, and resuming from it is
    exact."""
    every = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "3"]
    data = ["--data.num_train", "200", "--data.seq_len", "10", "--data.batch_size", "10", *TINY[-4:]]
    for where, steps, extra in (("a", 8, []), ("b", 14, ["--ckpt_path", "last"]), ("c", 14, [])):
        (tmp_path / where).mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / ("a" if where == "b" else where))
        assert main(["fit", *data, *every, "--trainer.max_steps", str(steps), *extra]) == 0
    run_a = tmp_path / "a" / "runs" / "seqstab"
    names = sorted(p.name for p in (run_a / "version_0" / "checkpoints").iterdir())
    assert names == ["epoch=0-step=6.ckpt", "last.ckpt"]
    assert torch.load(run_a / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    resumed = torch.load(run_a / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    straight = torch.load(tmp_path / "c" / "runs" / "seqstab" / "version_0" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 14
    assert all(torch.equal(straight["state_dict"][k], v) for k, v in resumed["state_dict"].items())


def test_last_resumes_only_a_checkpoint_of_the_same_experiment(tmp_path, monkeypatch, capsys):
    """Every run shares the experiment name: a newer run of another experiment must not be picked by ``last``."""
    monkeypatch.chdir(tmp_path)
    common = ["fit", "--data.num_train", "100", "--data.num_val", "20", "--data.batch_size", "10", *TINY[6:]]
    assert main([*common, "--data.seq_len", "20", "--trainer.max_steps", "3"]) == 0  # version_0: X
    assert main([*common, "--data.seq_len", "12", "--trainer.max_steps", "3"]) == 0  # version_1: Y, newer
    assert main([*common, "--data.seq_len", "20", "--trainer.max_steps", "6", "--ckpt_path", "last"]) == 0
    runs = tmp_path / "runs" / "seqstab"
    resumed = torch.load(runs / "version_2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 6 and resumed["seqstab"]["updates"] == 6  # X's 3 updates, then 3 more
    capsys.readouterr()
    assert main([*common, "--data.seq_len", "16", "--ckpt_path", "last"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("seqstab.train: error: --ckpt_path last: no checkpoint of this experiment; the newest, ")
    assert "version_2/checkpoints/last.ckpt" in line and "data.seq_len is 20 (here 16)" in line
    assert not (runs / "version_3").exists()


# -- safe loading ------------------------------------------------------------------------------------------------


def test_checkpoints_load_with_weights_only_and_rebuild_the_model(good_checkpoint):
    saved = torch.load(good_checkpoint, weights_only=True)  # raises on any pickled class (e.g. a dataclass)
    assert saved["hyper_parameters"]["spec"]["kind"] == "regression"
    assert {"updates", "clipping", "guard", "ranks"} <= saved["seqstab"].keys()
    model = SequenceRegressor.load_from_checkpoint(good_checkpoint, weights_only=True)
    assert model.spec.input_size == 2 and model.hparams.net["init_args"]["hidden_size"] == model.net.hidden_size == 8


def test_forecaster_spec_with_target_index_round_trips(tmp_path, monkeypatch):
    from seqstab.tasks import Forecaster

    rows = "".join(f"2020-01-{1 + i // 24:02d} {i % 24:02d}:00,{i % 11},{i % 5}\n" for i in range(120))
    (tmp_path / "series.csv").write_text("date,load,temp\n" + rows)
    series = ["--model", "seqstab.tasks.Forecaster", "--model.net.hidden_size", "8", "--model.predict", "change"]
    series += ["--data", "datamodules.timeseries.CSVSeries", "--data.path", "series.csv", "--data.target", "load"]
    series += ["--data.features", "[temp]", "--data.input_length", "8", "--data.horizon", "2"]
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *series, "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false"]) == 0
    (path,) = (tmp_path / "runs").rglob("last.ckpt")
    saved = torch.load(path, weights_only=True)
    assert saved["hyper_parameters"]["spec"]["target_index"] == (0,)
    assert saved["hyper_parameters"]["predict"] == "change"
    model = Forecaster.load_from_checkpoint(path, weights_only=True)
    assert model.spec.target_index == (0,) and model.predict == "change"
    as_list = {**saved["hyper_parameters"]["spec"], "target_index": [0], "target_scale": [2.0]}  # e.g. from YAML
    again = Forecaster(net=partial(RecurrentNet, hidden_size=8), spec=as_list, predict="change")
    assert again.spec.target_index == (0,) and again.spec.target_scale == (2.0,)


def test_truncated_checkpoint_is_a_one_line_error(good_checkpoint, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(good_checkpoint.read_bytes()[:5000])
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *TINY, "--ckpt_path", "broken.ckpt"]) == 2
    (line,) = error_lines(capsys)
    assert "broken.ckpt: not a readable checkpoint (truncated or corrupt?)" in line
    assert not (tmp_path / "runs").exists()


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_tampered_checkpoint_is_refused_without_running_its_code(good_checkpoint, tmp_path, monkeypatch, capsys):
    saved = torch.load(good_checkpoint, weights_only=True)
    saved["callbacks"] = {"evil": _Payload()}
    torch.save(saved, tmp_path / "tampered.ckpt")
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *TINY, "--ckpt_path", "tampered.ckpt"]) == 2
    (line,) = error_lines(capsys)
    assert "tampered.ckpt: refused to load: it holds a posix.system object" in line
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "content,needle",
    [(None, "no such checkpoint file"), (b"", "truncated or corrupt"), (b"not a checkpoint", "truncated or corrupt")],
)
def test_load_names_the_file_and_the_problem(tmp_path, content, needle):
    path = tmp_path / "x.ckpt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=needle) as err:
        checkpoint.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_checkpoint_via_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *TINY, "--ckpt_path", "nowhere.ckpt"]) == 2
    (line,) = error_lines(capsys)
    assert "nowhere.ckpt: no such checkpoint file" in line
    assert not (tmp_path / "runs").exists()


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    state = checkpoint.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.save(state, tmp_path / "rng.pt")
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "rng.pt"))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all() and expected[2] == again[2]


# -- loaders that resume mid-epoch --------------------------------------------------------------------------------


def _shuffled_loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.arange(20)), batch_size=3, shuffle=True)


def test_resumable_loader_continues_the_same_epoch_order():
    torch.manual_seed(0)
    uninterrupted = loaders.make_resumable(_shuffled_loader())
    full = [batch[0].tolist() for batch in uninterrupted]
    after_epoch = torch.get_rng_state()

    torch.manual_seed(0)
    first = loaders.make_resumable(_shuffled_loader())
    iterator = iter(first)
    seen = [next(iterator)[0].tolist() for _ in range(3)]
    state = first.state_dict()
    assert state["batches"] == 3

    torch.manual_seed(99)  # a new process: another RNG state, then the checkpoint's RNG state is restored
    resumed = loaders.make_resumable(_shuffled_loader())
    resumed.load_state_dict(state)
    torch.set_rng_state(after_epoch)
    rest = [batch[0].tolist() for batch in resumed]
    assert seen + rest == full
    assert torch.equal(torch.get_rng_state(), after_epoch)  # skipping did not disturb the random stream


def test_a_finished_epoch_is_not_skipped():
    torch.manual_seed(0)
    loader = loaders.make_resumable(_shuffled_loader())
    list(loader)
    state = loader.state_dict()
    fresh = loaders.make_resumable(_shuffled_loader())
    fresh.load_state_dict(state)
    assert len(list(fresh)) == len(fresh)


def test_only_plain_dataloaders_are_converted():
    class Custom(DataLoader):
        pass

    assert type(loaders.make_resumable(_shuffled_loader())) is ResumableLoader
    custom = Custom(TensorDataset(torch.arange(4)))
    assert type(loaders.make_resumable(custom)) is Custom
    quiet = loaders.make_quiet([_shuffled_loader(), custom])
    assert [type(q) for q in quiet] == [QuietLoader, Custom]


def test_quiet_loader_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    list(loaders.make_quiet(DataLoader(TensorDataset(torch.arange(4)), batch_size=2)))
    assert torch.equal(torch.get_rng_state(), before)
    list(DataLoader(TensorDataset(torch.arange(4)), batch_size=2))  # control: a plain loader draws a seed
    assert not torch.equal(torch.get_rng_state(), before)


def test_check_shapes_names_the_parameter():
    model = {"net.w": torch.zeros(4, 2), "head.b": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"net.w is \(8, 2\) in the checkpoint, \(4, 2\) in this model"):
        checkpoint.check_shapes(model, {"net.w": torch.zeros(8, 2), "head.b": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="it has no 'head.b'"):
        checkpoint.check_shapes(model, {"net.w": torch.zeros(4, 2)})
    checkpoint.check_shapes(model, dict(model))
