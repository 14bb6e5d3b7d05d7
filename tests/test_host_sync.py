"""No device→host read on the update path between logging steps: 200 updates of the default experiment, of a word
LM and of the callback on a plain module, with every clipping policy, the guard and the default monitor, read back
exactly once per ``log_every_n_steps`` updates (``tests/host_reads.py`` counts the reads on the CPU as a GPU would
wait on them, and the update path takes the CPU for a device: ``seqstab.core.withhold.reads_wait``;
``benchmarks/gpu/sync_check.py`` repeats it on a GPU under ``torch.cuda.set_sync_debug_mode``). On the CPU as it
is, where a read waits for nothing, the update path reads the guard's decision once an update, and nothing else."""

from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.synthetic import AddingProblem
from seqstab import clipping
from seqstab.core import withhold
from seqstab.core.guard import ExplosionGuard
from seqstab.core.update import UpdateCore
from seqstab.lightning.callbacks import GradientStability
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import LanguageModel, SequenceRegressor
from tests.helpers import Plain, TinyStream
from tests.host_reads import DeviceReads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UPDATES, EVERY = 200, 50
POLICIES = {
    "NoClip": clipping.NoClip,
    "NormClip": partial(clipping.NormClip, max_norm=1.0),
    "ValueClip": partial(clipping.ValueClip, clip_value=0.01),
    "PerParameterNormClip": partial(clipping.PerParameterNormClip, max_norm=0.1),
    "AGC": clipping.AGC,
    "AutoClip": partial(clipping.AutoClip, percentile=10, history=64),
    "ZClip": partial(clipping.ZClip, warmup_steps=5),
    "AdaGC": partial(clipping.AdaGC, warmup_steps=5),
}


class Marks(pl.Callback):
    """The batch a training step receives is on the device (as Lightning moved it there); the count of unlabelled
    reads ends with the training loop (Lightning's teardown moves the module to the CPU: a copy out of the loop)."""

    def __init__(self, reads: DeviceReads):
        self.reads = reads

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.reads.on_device(batch)

    def on_train_end(self, trainer, pl_module):
        self.reads.counting = False


def count(fit, module, monkeypatch, device: bool = True) -> tuple[DeviceReads, list[tuple[int, int]]]:
    """Run ``fit(callbacks)``; the reads, and per flush (reads in it, events it settled). ``device``: the update
    path takes the CPU for an accelerator (a read waits there), as the counting does."""
    if device:
        monkeypatch.setattr(withhold, "reads_wait", lambda device: True)
    reads, flushes = DeviceReads(), []
    flush = UpdateCore.flush

    def counted(core, run):
        before, events = reads.reads["flush"], core.guard.events if core.guard is not None else 0
        with reads.labelled("flush"):
            out = flush(core, run)
        flushes.append((reads.reads["flush"] - before, (core.guard.events if core.guard else 0) - events))
        return out

    monkeypatch.setattr(UpdateCore, "flush", counted)
    reads.on_device(module)
    with reads:
        fit([Marks(reads)])
    return reads, flushes


def trainer(callbacks, **kwargs) -> pl.Trainer:
    settings = dict(max_steps=UPDATES, log_every_n_steps=EVERY, limit_val_batches=0, enable_checkpointing=False)
    settings.update(enable_progress_bar=False, enable_model_summary=False, logger=pl.loggers.CSVLogger("/tmp/x"))
    return pl.Trainer(callbacks=callbacks, **{**settings, **kwargs})


def check(reads: DeviceReads, flushes: list[tuple[int, int]]) -> None:
    assert reads.reads["elsewhere"] == 0, "\n".join(
        f"{n} {w}" for w, n in reads.where.most_common()
    )  # nothing on the update path, nor in Lightning's loop
    quiet = [n for n, events in flushes if not events]
    assert quiet and all(n == 1 for n in quiet), (flushes, dict(reads.where))  # one read-back per flush
    assert len(flushes) <= UPDATES // EVERY + 2  # every 50 updates, and the end of fit


def test_the_default_experiment_reads_back_once_per_logging_step(tmp_path, monkeypatch):
    data = AddingProblem(seq_len=50, num_train=4000, num_val=50, num_test=50, batch_size=50)
    torch.manual_seed(0)
    net = partial(RecurrentNet, cell="rnn", nonlinearity="relu", init="identity", hidden_size=64)
    task = SequenceRegressor(spec=data.spec, net=net, clipping=clipping.NormClip(max_norm=1.0))
    # fused: Adam's implementations without it count steps in a CPU tensor, so on a GPU the host decides a withheld
    # update there (seqstab.core.withhold); the fused one reads the guard's decision on the device
    task.configure_optimizers = lambda: torch.optim.Adam(task.parameters(), lr=3e-3, fused=True)
    reads, flushes = count(lambda cbs: trainer(cbs, default_root_dir=tmp_path).fit(task, data), task, monkeypatch)
    assert task.core.updates == UPDATES
    check(reads, flushes)


def test_the_word_lm_reads_back_once_per_logging_step(tmp_path, monkeypatch):
    vocab, data = 50, TinyStream(num_streams=4, length=UPDATES * 8 + 1, window=8, input_size=1)
    data.x = torch.randint(0, vocab, (4, UPDATES * 8 + 1), generator=torch.Generator().manual_seed(0))[:, :, None]
    tokens = torch.randint(0, vocab, (20, 2001), generator=torch.Generator().manual_seed(0))
    spec = {"kind": "lm", "input_size": 1, "output_size": vocab, "vocab_size": vocab, "stateful": True}

    class Words(pl.LightningDataModule):
        def train_dataloader(self):
            x, y = tokens[:, :-1].unfold(1, 35, 35), tokens[:, 1:].unfold(1, 35, 35)  # (20, 57, 35)
            batches = [{"x": x[:, i], "y": y[:, i]} for i in range(x.shape[1])]
            return DataLoader(batches * 4, batch_size=None)

    torch.manual_seed(0)
    net = partial(RecurrentNet, cell="lstm", hidden_size=16, num_layers=2, dropout=0.2)
    task = LanguageModel(spec=spec, net=net, dropout=0.2, clipping=clipping.NormClip(max_norm=0.25))
    task.configure_optimizers = lambda: torch.optim.SGD(task.parameters(), lr=20.0)
    reads, flushes = count(lambda cbs: trainer(cbs, default_root_dir=tmp_path).fit(task, Words()), task, monkeypatch)
    assert task.core.updates == UPDATES
    check(reads, flushes)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_the_callback_reads_back_once_per_logging_step_with_every_policy(policy, tmp_path, monkeypatch):
    torch.manual_seed(0)
    x, y = torch.randn(64, 5, 3), torch.randn(64, 1)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    module = Plain()
    stability = GradientStability(clipping=POLICIES[policy](), guard=ExplosionGuard(policy="skip", snapshot=True))
    run = lambda cbs: trainer([stability, *cbs], default_root_dir=tmp_path).fit(module, loader)  # noqa: E731
    reads, flushes = count(run, module, monkeypatch)
    assert stability.updates == UPDATES
    check(reads, flushes)


def test_on_the_cpu_the_update_path_reads_only_the_guards_decision(tmp_path, monkeypatch):
    data = AddingProblem(seq_len=50, num_train=4000, num_val=50, num_test=50, batch_size=50)
    torch.manual_seed(0)
    net = partial(RecurrentNet, cell="rnn", nonlinearity="relu", init="identity", hidden_size=64)
    task = SequenceRegressor(spec=data.spec, net=net, clipping=clipping.NormClip(max_norm=1.0))
    # Adam, not fused: on a device its withheld update would be restored from copies taken at every update
    task.configure_optimizers = lambda: torch.optim.Adam(task.parameters(), lr=3e-3)
    fit = lambda cbs: trainer(cbs, default_root_dir=tmp_path).fit(task, data)  # noqa: E731
    reads, flushes = count(fit, task, monkeypatch, device=False)
    assert task.core.updates == UPDATES
    outside = {where: n for where, n in reads.where.items() if where.startswith("elsewhere")}
    assert outside and all("withhold.py" in where and where.endswith(" before") for where in outside), outside
    logged = UPDATES // EVERY  # updates 0, 50, 100, 150: read at their flush, before their step
    assert reads.reads["elsewhere"] == UPDATES - logged
    assert all(n == 1 for n, events in flushes if not events)
