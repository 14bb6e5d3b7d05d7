"""The stations for a module of one's own: a plain LSTM classifier under Lightning's automatic optimization, trained
with ``GradientStability`` by Trainers of both namespaces, read back with TensorBoard's reader."""

from __future__ import annotations

import json
import math
import re
import struct
import time
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from seqstab.cli.replay import main as replay_main
from seqstab.core.clipping import AutoClip, NoClip, NormClip
from seqstab.core.errors import ConfigError
from seqstab.core.guard import ExplosionGuard
from seqstab.lightning.callbacks import GradientStability
from tests.helpers import FlagAt, scalars

try:
    import lightning.pytorch as L
except ImportError:  # the dev extra installs it; without it only the pytorch_lightning half runs
    L = None


def classifier_class(base: type, name: str) -> type:
    """An ordinary user module: ``nn.LSTM`` over the sequence, a linear head on its last step, Adam."""

    class Classifier(base):
        def __init__(self, input_size: int = 3, hidden_size: int = 16, num_layers: int = 1, lr: float = 0.05):
            super().__init__()
            self.save_hyperparameters()
            self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True)
            self.out = nn.Linear(hidden_size, 4)

        def training_step(self, batch, batch_idx):
            x, y = batch
            # oneDNN has no fp16/bf16 LSTM kernel on this CPU: the LSTM runs in float32, the head under autocast
            with torch.autocast("cpu", enabled=False):
                h, _ = self.lstm(x.float())  # (B, L, H)
            loss = nn.functional.cross_entropy(self.out(h[:, -1]), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    Classifier.__qualname__ = Classifier.__name__ = name  # importable by its class path, as replay needs
    return Classifier


PLClassifier = classifier_class(pl.LightningModule, "PLClassifier")
if L is not None:
    LClassifier = classifier_class(L.LightningModule, "LClassifier")

NAMESPACES = [
    pytest.param((pl, PLClassifier), id="pytorch_lightning"),
    pytest.param(
        (L, globals().get("LClassifier")),
        id="lightning.pytorch",
        marks=pytest.mark.skipif(L is None, reason="lightning not installed"),
    ),
]


def data(batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 12, 3, generator=g), torch.randint(0, 4, (64,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def trainer(ns, tmp_path, callbacks, **kwargs):
    defaults = dict(
        accelerator="cpu",
        max_epochs=2,
        logger=ns.loggers.TensorBoardLogger(tmp_path, name="", version="run", default_hp_metric=False),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    return ns.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def f32(value: float) -> bytes:
    return struct.pack("<f", value)


def bitwise_equal(a: dict, b: dict) -> bool:
    def bits(t):
        return t.reshape(-1).view(torch.uint8)

    return a.keys() == b.keys() and all(torch.equal(bits(a[k]), bits(b[k])) for k in a)


class GradProbe(pl.Callback):
    """Before GradientStability in the list: the gradients it is about to see, and the GradScaler's scale."""

    def __init__(self):
        self.norms, self.scales = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(torch.nn.utils.get_total_norm(grads).item())
        self.scales.append(trainer.precision_plugin.scaler.get_scale())


def test_amp_norms_are_of_the_unscaled_gradients_and_the_post_clip_norm_obeys_the_policy(tmp_path):
    torch.manual_seed(0)
    model = PLClassifier()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    probe, stability = GradProbe(), GradientStability(clipping=NormClip(max_norm=0.25))
    amp = MixedPrecision("16-mixed", "cpu")  # a real GradScaler (Lightning's "16-mixed" flag means bf16 on CPU)
    trainer(pl, tmp_path, [probe, stability], plugins=[amp]).fit(model, data())
    series = scalars(tmp_path / "run")
    pre, post = dict(series["grad/norm_total"]), dict(series["grad/norm_total_clipped"])
    assert sorted(pre) == list(range(8)) and stability.updates == 8
    assert all(scale >= 2.0**15 for scale in probe.scales)  # the gradients were scaled in backward ...
    for step, norm in enumerate(probe.norms):  # ... and the policy saw them unscaled, as get_total_norm does
        assert f32(pre[step]) == f32(norm), step
        assert post[step] == pytest.approx(min(norm, 0.25), rel=1e-6)
        assert dict(series["grad/clipped"])[step] == float(norm > 0.25)
    assert set(dict(series["amp/overflow"]).values()) == {0.0}

    reference = PLClassifier()  # the first update's gradient in float32, outside Lightning: the same norm
    reference.load_state_dict(initial)
    x, y = next(iter(data()))
    h, _ = reference.lstm(x)
    nn.functional.cross_entropy(reference.out(h[:, -1]), y).backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters()]).item()
    assert pre[0] == pytest.approx(expected, rel=2e-2)  # fp16 head; a scaled gradient would be 65536x off


class StepProbe:
    """The weights and optimizer state each update starts from and ends with (after Lightning's step); mixed into
    the ``Callback`` of the Trainer's namespace."""

    def __init__(self):
        self.before, self.after = [], []

    @staticmethod
    def state(pl_module, trainer):
        optimizer = trainer.optimizers[0].state_dict()["state"]
        tensors = {f"w.{k}": v.detach().clone() for k, v in pl_module.state_dict().items()}
        for i, s in optimizer.items():
            tensors.update({f"opt.{i}.{n}": t.clone() for n, t in s.items()})
        return tensors

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before.append(self.state(pl_module, trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(self.state(pl_module, trainer))


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_skip_leaves_weights_and_optimizer_state_bitwise_unchanged_and_replays(namespace, tmp_path, capsys):
    ns, cls = namespace
    probe = type("Probe", (StepProbe, ns.Callback), {})()
    torch.manual_seed(0)
    stability = GradientStability(clipping=NormClip(max_norm=0.5), guard=FlagAt(3, policy="skip"))
    fit = trainer(ns, tmp_path, [probe, stability])
    fit.fit(cls(), data())
    assert stability.guard.events == 1 and fit.global_step == 8  # Lightning counts the optimizer call
    assert bitwise_equal(probe.before[3], probe.after[3])  # update 3 was not applied, not even to Adam's moments
    assert not any(bitwise_equal(probe.before[i], probe.after[i]) for i in (0, 1, 2, 4, 5, 6, 7))

    (event,) = [json.loads(line) for line in (tmp_path / "run" / "explosions.jsonl").read_text().splitlines()]
    assert event["update"] == 3 and event["action"] == "skip" and event["module"].startswith(("lstm.", "out."))
    assert replay_main([str(tmp_path / "run" / event["snapshot"])]) == 0
    out = capsys.readouterr().out
    assert f"model: tests.test_callbacks.{cls.__name__} (module)" in out
    assert "replayed norm == logged norm (bitwise)" in out
    replayed, logged = re.search(r"post-clip norm: +replayed (\S+) +logged (\S+)", out).groups()
    assert float(replayed) == float(logged) <= 0.5


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_resume_restores_policy_and_guard_state(namespace, tmp_path):
    ns, cls = namespace

    def fit(epochs, where, ckpt_path=None):
        torch.manual_seed(0)
        stability = GradientStability(clipping=AutoClip(percentile=50), guard=ExplosionGuard(policy="warn"))
        checkpoints = ns.callbacks.ModelCheckpoint(dirpath=tmp_path / where, save_top_k=-1)
        run = trainer(ns, tmp_path / where, [stability, checkpoints], max_epochs=epochs, enable_checkpointing=True)
        run.fit(cls(), data(), ckpt_path=ckpt_path)
        return stability, run

    uninterrupted, _ = fit(3, "a")
    first, _ = fit(1, "b")
    (saved,) = (tmp_path / "b").glob("*.ckpt")
    state = torch.load(saved, weights_only=True)["callbacks"]["GradientStability"]
    assert state["updates"] == 4 and state["clipping"]["steps"] == 4 and len(state["guard"]["norms"]) == 4
    resumed, run = fit(3, "c", ckpt_path=saved)
    assert resumed.updates == uninterrupted.updates == 12
    a, b = uninterrupted.clipping.state_dict(), resumed.clipping.state_dict()
    assert a["steps"] == b["steps"] == 12 and torch.equal(a["norms"], b["norms"])  # every clip decision the same
    assert resumed.guard.state_dict() == uninterrupted.guard.state_dict()
    steps = [s for s, _ in scalars(tmp_path / "c" / "run")["grad/clip_threshold"]]
    assert steps == list(range(4, 12))  # the resumed run logs from update 4 on


def test_a_stacked_lstm_gets_per_layer_norms_and_spectra_and_says_once_why_no_flow(tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(pl, tmp_path, [GradientStability(net="lstm")]).fit(PLClassifier(num_layers=2), data())
    notes = [str(w.message) for w in caught if "gradient flow" in str(w.message)]
    assert len(notes) == 1 and "recurrent_layers()" in notes[0]
    tags = set(scalars(tmp_path / "run"))
    assert {"grad/norm/lstm.l0.ih", "grad/norm/lstm.l0.hh", "grad/norm/lstm.l1.hh", "grad/norm/out"} <= tags
    assert {"rnn/sigma_max/layer_0/gate_f", "rnn/spectral_radius/layer_1/gate_o"} <= tags
    assert not any(t.startswith("grad_flow/") for t in tags)


def test_the_callback_writes_off_thread_spectra_before_each_checkpoint(tmp_path, monkeypatch):
    """``GradMonitor(spectra_off_thread=True)`` under the callback: a spectrum still being computed when Lightning
    saves a checkpoint is in the event file by the time the next callback sees the checkpoint."""
    from seqstab.core.monitor import GradMonitor
    from seqstab.core.monitor.spectra import recurrent_spectra

    def slow(weights, cells):
        time.sleep(0.2)  # longer than an update: still running at the flush after it
        return recurrent_spectra(weights, cells)

    monkeypatch.setattr("seqstab.core.monitor.monitor.recurrent_spectra", slow)
    seen: dict[int, list[int]] = {}

    class AtSave(pl.Callback):  # after GradientStability in the list: its on_save_checkpoint has run
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            seen[trainer.global_step] = [
                s for s, _ in scalars(tmp_path / "run").get("rnn/sigma_max/layer_0/gate_f", [])
            ]

    monitor = GradMonitor(grad_flow_every_n_steps=None, spectrum_every_n_steps=1, spectra_off_thread=True)
    stability = GradientStability(net="lstm", monitor=monitor)
    every_two = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    trainer(pl, tmp_path, [stability, every_two, AtSave()], max_epochs=1, limit_train_batches=4,
            enable_checkpointing=True).fit(PLClassifier(), data())  # fmt: skip
    assert seen == {2: [0, 1], 4: [0, 1, 2, 3]}  # every update before the checkpoint measured and written
    assert [s for s, _ in scalars(tmp_path / "run")["rnn/sigma_max/layer_0/gate_f"]] == [0, 1, 2, 3]


def test_two_clippers_manual_optimization_and_a_wrong_net_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"would both clip: keep one$"):
        trainer(pl, tmp_path, [GradientStability(clipping=NormClip())], gradient_clip_val=1.0).fit(
            PLClassifier(), data()
        )

    class Manual(PLClassifier):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(ConfigError, match="uses manual optimization"):
        trainer(pl, tmp_path, [GradientStability()]).fit(Manual(), data())
    with pytest.raises(ConfigError, match=r"GradientStability\(net='encoder'\): PLClassifier has no module there"):
        trainer(pl, tmp_path, [GradientStability(net="encoder")]).fit(PLClassifier(), data())


def test_accumulated_updates_log_once_per_optimizer_step(tmp_path):
    torch.manual_seed(0)
    stability = GradientStability(clipping=NoClip())
    trainer(pl, tmp_path, [stability], accumulate_grad_batches=2, max_epochs=1).fit(PLClassifier(), data(8))
    loss = scalars(tmp_path / "run")["train/loss"]
    assert [s for s, _ in loss] == [0, 1, 2, 3] and all(math.isfinite(v) and v > 0 for _, v in loss)


def test_an_event_reaches_tensorboard_as_text(tmp_path):
    torch.manual_seed(0)
    stability = GradientStability(guard=FlagAt(0, policy="warn"))
    logger = TensorBoardLogger(tmp_path, name="", version="run")
    trainer(pl, tmp_path, [stability], logger=logger, max_epochs=1).fit(PLClassifier(), data())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0})
    acc.Reload()
    assert [t.step for t in acc.Tensors("explosion/event/text_summary")] == [0]
