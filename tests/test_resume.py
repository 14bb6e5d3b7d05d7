"""Exact resume: a run killed mid-epoch and resumed with ``--ckpt_path last`` ends bitwise where an uninterrupted
run ends (weights, optimizer, scheduler, clipping state, carried hidden state, RNG, position within the epoch)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from datamodules.synthetic import AddingProblem
from seqstab.cli.train import main
from seqstab.core.clipping import ZClip
from seqstab.lightning.resume import AtomicCheckpointIO
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import SequenceRegressor
from tests.helpers import REPO, TinyStream, quiet_trainer, scalars


class Pace(Callback):
    """Sleep after every batch once ``after`` updates are done: gives a test time to kill the run mid-epoch."""

    def __init__(self, after: int = 0, seconds: float = 0.0):
        self.after, self.seconds = after, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.seconds and trainer.global_step >= self.after:
            time.sleep(self.seconds)


def python_path() -> str:
    """PYTHONPATH for subprocesses that import test helpers (``tests.*``) by class path."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)


def write_text(path, lines: int, seed: int) -> None:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)]
    sentences = (" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) for _ in range(lines))
    path.write_text("".join(f"{s}\n" for s in sentences))


def lm_args(tmp_path, max_steps: int) -> list[str]:
    """A stateful LSTM language model with ZClip, dropout and truncated BPTT (2 updates per batch) on a tiny text."""
    return [
        "fit",
        *["--model", "seqstab.tasks.LanguageModel", "--model.net.hidden_size", "16", "--model.net.num_layers", "2"],
        *["--model.dropout", "0.2", "--model.net.dropout", "0.2", "--model.tbptt_steps", "4"],
        *["--model.clipping", "seqstab.clipping.ZClip", "--model.clipping.warmup_steps", "2"],
        *["--data", "datamodules.text.TextFiles", "--data.train", str(tmp_path / "train.txt")],
        *["--data.valid", str(tmp_path / "valid.txt"), "--data.cache_dir", str(tmp_path / "cache")],
        *["--data.batch_size", "4", "--data.seq_len", "8"],
        *["--trainer.max_steps", str(max_steps), "--trainer.limit_val_batches", "2"],
        *["--trainer.val_check_interval", "6", "--trainer.enable_progress_bar", "false"],
        *["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "4"],
        *["--trainer.callbacks.save_last", "true"],
    ]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_killed_mid_epoch_then_resumed_from_last_is_bitwise_exact(tmp_path, monkeypatch, capsys):
    write_text(tmp_path / "train.txt", 300, seed=0)  # ~2300 tokens: ~70 batches per epoch, the run ends in epoch 0
    write_text(tmp_path / "valid.txt", 30, seed=1)
    steps = 16
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paced = ["--trainer.callbacks+=tests.test_resume.Pace", "--trainer.callbacks.after", "4"]
    paced += ["--trainer.callbacks.seconds", "1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": python_path()}
    killed = subprocess.Popen(
        [sys.executable, "-m", "seqstab.train", *lm_args(tmp_path, steps), *paced],
        cwd=tmp_path / "b",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        monkeypatch.chdir(tmp_path / "a")  # meanwhile: the uninterrupted run, in-process
        assert main(lm_args(tmp_path, steps)) == 0, capsys.readouterr().err[-3000:]
        last = tmp_path / "b" / "runs" / "seqstab" / "version_0" / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 240
        while not last.exists() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.exists(), "the run to kill never wrote a checkpoint"
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    saved = torch.load(last, weights_only=True)
    assert 4 <= saved["global_step"] < steps
    assert not saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"]  # mid-epoch

    monkeypatch.chdir(tmp_path / "b")
    assert main([*lm_args(tmp_path, steps), "--ckpt_path", "last"]) == 0, capsys.readouterr().err[-3000:]
    resumed = torch.load(tmp_path / "b" / "runs" / "seqstab" / "version_1" / "checkpoints" / "last.ckpt")
    uninterrupted = torch.load(tmp_path / "a" / "runs" / "seqstab" / "version_0" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == uninterrupted["global_step"] == steps
    assert_same_state(uninterrupted["state_dict"], resumed["state_dict"])
    assert resumed["seqstab"]["clipping"]["steps"] == uninterrupted["seqstab"]["clipping"]["steps"] == steps
    for key in ("mean", "var"):
        assert torch.equal(resumed["seqstab"]["clipping"][key], uninterrupted["seqstab"]["clipping"][key])
    loss = scalars(tmp_path / "b" / "runs" / "seqstab" / "version_1")["train/loss"]
    assert [s for s, _ in loss] == list(range(saved["seqstab"]["updates"], steps))  # the logging step continues


# -- in-process: every place Lightning may save a checkpoint, resumed exactly ------------------------------------


def _fit(data: str, max_steps: int, ckpt: dict, trainer: dict, dirpath, ckpt_path=None):
    pl.seed_everything(0)
    dm = TinyStream(num_streams=3, length=48, window=8) if data == "stream" else AddingProblem(10, 60, 20, 20, 8)
    net = partial(RecurrentNet, hidden_size=8, num_layers=2, cell="rnn", dropout=0.3)
    model = SequenceRegressor(spec=dm.spec, net=net, tbptt_steps=4, clipping=ZClip(warmup_steps=3))

    def optimizers():
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}  # halved each epoch

    model.configure_optimizers = optimizers
    if ckpt_path is not None:
        torch.manual_seed(1234)  # the resumed run must not depend on the RNG state it starts with
    callback = ModelCheckpoint(dirpath=dirpath, save_last=True, save_top_k=-1, **ckpt)
    t = quiet_trainer(max_steps=max_steps, callbacks=[callback], enable_checkpointing=True, **trainer)
    t.strategy.checkpoint_io = AtomicCheckpointIO()
    t.fit(model, dm, ckpt_path=ckpt_path)
    return model


SAVE_POINTS = {
    # data, updates before the save, total updates, ModelCheckpoint kwargs, Trainer kwargs
    # AddingProblem: shuffled, 8 batches of 3 chunks per epoch; TinyStream: stateful, 6 batches of 2 chunks per epoch
    "mid-epoch, validation due at that batch": (
        "adding",
        6,
        30,
        {"every_n_train_steps": 6},
        {"limit_val_batches": 2, "val_check_interval": 2},
    ),
    "last batch of an epoch (stateful streams)": ("stream", 12, 20, {"every_n_train_steps": 12}, {}),
    "epoch end, after validation": ("stream", 12, 20, {}, {"limit_val_batches": 2}),
}


@pytest.mark.parametrize("save_point", SAVE_POINTS)
def test_resume_is_exact_wherever_lightning_saved(tmp_path, save_point):
    data, k, total, ckpt, trainer = SAVE_POINTS[save_point]
    uninterrupted = _fit(data, total, ckpt, trainer, tmp_path / "a")
    _fit(data, k, ckpt, trainer, tmp_path / "b")
    resumed = _fit(data, total, ckpt, trainer, tmp_path / "c", ckpt_path=tmp_path / "b" / "last.ckpt")
    assert resumed.updates == uninterrupted.updates == total
    assert resumed.lr_schedulers().get_last_lr() == uninterrupted.lr_schedulers().get_last_lr()
    assert_same_state(uninterrupted.state_dict(), resumed.state_dict())


def test_resume_restores_the_carried_hidden_state(tmp_path):
    """Without the carried state in the checkpoint the streams would restart from zeros: the weights would differ."""
    ckpt = {"every_n_train_steps": 4}
    _fit("stream", 4, ckpt, {}, tmp_path / "b")
    saved = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    carry = saved["seqstab"]["ranks"][0]["carry"]
    assert len(carry) == 2 and carry[0].shape == (1, 3, 8) and carry[0].abs().sum() > 0  # (1, B, H) per layer
    saved["seqstab"]["ranks"][0]["carry"] = None
    torch.save(saved, tmp_path / "zeros.ckpt")
    exact = _fit("stream", 8, ckpt, {}, tmp_path / "c", ckpt_path=tmp_path / "b" / "last.ckpt")
    from_zeros = _fit("stream", 8, ckpt, {}, tmp_path / "d", ckpt_path=tmp_path / "zeros.ckpt")
    assert not torch.equal(exact.net.layers[0].weight_hh_l0, from_zeros.net.layers[0].weight_hh_l0)
