"""The callback inside other people's libraries, with stand-ins written to look like theirs (the libraries themselves
run in ``benchmarks/bench_callback_peers.py``, outside ``[dev]``): their batches (darts' slotted dataclass,
pytorch-forecasting's ``(x dict, (y, weight))``, neuralforecast's dict with its column index), their hyperparameters
holding objects, a ``training_step`` that reads the Trainer, the deep copy and the pickling they do; and a plain loop
around ``UpdateCore``. A planted spike (one batch ×10^4) in each: recorded, diagnosed as data, replayed bitwise."""

from __future__ import annotations

import collections
import copy
import io
import json
import os
import pickle
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from seqstab import StaticRun, UpdateCore
from seqstab.cli.replay import load_snapshot, replay
from seqstab.cli.replay import main as replay_main
from seqstab.core.clipping import AutoClip, NormClip
from seqstab.core.diagnose.remedies import remedies_for
from seqstab.core.errors import ConfigError
from seqstab.core.guard import ExplosionGuard
from seqstab.core.plain import PackError, leaves, pack, unpack
from seqstab.lightning.callbacks import GradientStability
from seqstab.lightning.safe_globals import when_imported
from tests.helpers import REPO, Started, asked_for, until_teardown

pytestmark = pytest.mark.usefixtures("one_torch_thread")

try:
    import pandas as pd
except ImportError:  # not in [dev]: neuralforecast's column index is then a list (the benchmark has the real one)
    pd = None

INPUT, HORIZON, SPIKE_AT = 24, 6, 12


# -- batches that look like theirs ----------------------------------------------------------------------------------


@dataclass(slots=True)
class DartsLikeBatch:
    """darts' ``TorchTrainingBatch``: a slotted dataclass, unused slots None."""

    past_target: torch.Tensor
    past_covariates: torch.Tensor | None = None
    static_covariates: torch.Tensor | None = None
    sample_weight: torch.Tensor | None = None
    future_target: torch.Tensor | None = None


def columns(names: list[str]):
    return pd.Index(names) if pd is not None else list(names)


def collate(shape: str):
    def make(rows):
        series = torch.stack([r[0] for r in rows])  # (B, INPUT + HORIZON)
        x, y = series[:, :INPUT, None], series[:, INPUT:]  # (B, INPUT, 1), (B, HORIZON)
        if shape == "darts":
            return DartsLikeBatch(past_target=x, future_target=y[..., None])
        if shape == "pf":
            lengths = torch.full((len(rows),), INPUT)
            encoder = {"encoder_cat": torch.zeros(len(rows), INPUT, 0, dtype=torch.long), "encoder_cont": x}
            return {**encoder, "encoder_lengths": lengths, "target_scale": torch.ones(len(rows), 2)}, (y, None)
        temporal = torch.stack([series, torch.ones_like(series)], dim=1)  # (B, 2, T): y and available_mask
        return {"temporal": temporal, "temporal_cols": columns(["y", "available_mask"]), "y_idx": 0}

    return make


def data(shape: str) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(INPUT + HORIZON, dtype=torch.float32)
    phase = torch.rand(160, 1, generator=g) * 6.28
    series = torch.sin(t / 4 + phase) + 0.1 * torch.randn(160, INPUT + HORIZON, generator=g)
    return DataLoader(TensorDataset(series), batch_size=8, collate_fn=collate(shape))


class LibraryModule(pl.LightningModule):
    """An LSTM forecaster as the three libraries write one: its hyperparameters hold an object (an optimizer class, as
    darts' ``optimizer_cls``; pytorch-forecasting's hold a normalizer, neuralforecast's a loss), so it cannot be
    rebuilt from them; the pf-shaped one reads the Trainer's stage in ``training_step``, as pytorch-forecasting's
    ``current_stage`` does."""

    def __init__(self, shape: str = "darts", optimizer_cls: type = torch.optim.Adam, hidden_size: int = 8):
        super().__init__()
        self.save_hyperparameters()
        self.shape = shape
        self.loss = nn.MSELoss()
        self.lstm = nn.LSTM(1, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, HORIZON)

    def split(self, batch):
        if self.shape == "darts":
            return batch.past_target, batch.future_target[..., 0]
        if self.shape == "pf":
            assert self.trainer.training, "pytorch-forecasting's training_step reads the Trainer's stage"
            x, (y, _) = batch
            return x["encoder_cont"], y
        series = batch["temporal"][:, list(batch["temporal_cols"]).index("y")]  # (B, T)
        return series[:, :INPUT, None], series[:, INPUT:]

    def training_step(self, batch, batch_idx):
        x, y = self.split(batch)
        out, _ = self.lstm(x)  # (B, INPUT, H)
        loss = self.loss(self.head(out[:, -1]), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return self.hparams.optimizer_cls(self.parameters(), lr=1e-2)


def darts_like() -> nn.Module:
    """Replay's factory (``--module tests.test_callback_peers.darts_like``)."""
    return LibraryModule("darts")


def pf_like() -> nn.Module:
    return LibraryModule("pf")


def nf_like() -> nn.Module:
    return LibraryModule("nf")


class Planter(pl.Callback):
    """Scales every floating-point tensor of one batch by 10^4 before its forward pass."""

    def __init__(self, at: int = SPIKE_AT):
        self.at, self.seen = at, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen == self.at:
            for _, tensor in leaves(batch):
                if tensor.is_floating_point():
                    tensor.mul_(1e4)
        self.seen += 1


def fit(module: pl.LightningModule, loader: DataLoader, tmp_path: Path, callbacks: list, **kwargs) -> pl.Trainer:
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="", version="run", default_hp_metric=False)
    settings = dict(max_steps=20, enable_checkpointing=False, log_every_n_steps=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        **{**settings, **kwargs},
    )
    trainer.fit(module, loader)
    return trainer


# -- a snapshot holds plain values, whatever the batch --------------------------------------------------------------


@pytest.mark.parametrize("shape", ["darts", "pf", "nf"])
def test_every_batch_shape_packs_to_plain_data_and_back(shape, tmp_path):
    batch = next(iter(data(shape)))
    buffer = io.BytesIO()
    torch.save(pack(batch), buffer)
    buffer.seek(0)
    packed = torch.load(buffer, weights_only=True)  # tensors and plain values only
    back = unpack(packed, {f"{__name__}.DartsLikeBatch": DartsLikeBatch}.__getitem__)
    assert type(back) is type(batch)
    assert [(w, t.dtype, t.shape) for w, t in leaves(back)] == [(w, t.dtype, t.shape) for w, t in leaves(batch)]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(leaves(back), leaves(batch), strict=True))
    if shape == "nf":
        assert type(back["temporal_cols"]) is type(batch["temporal_cols"]) and back["y_idx"] == 0
        assert list(back["temporal_cols"]) == ["y", "available_mask"]


def test_named_tuples_numpy_and_what_has_no_plain_form():
    import numpy as np

    Pair = collections.namedtuple("Pair", "x meta")
    packed = pack([Pair(torch.ones(2), {"n": np.int64(3), "w": np.ones(2, dtype=np.float32)})])
    back = unpack(packed, lambda path: Pair)
    assert back[0].meta["n"] == 3 and type(back[0].meta["n"]) is int and back[0].meta["w"].dtype == np.float32
    with pytest.raises(PackError, match=r"^batch\[0\]\['meta'\] is a builtins\.object object"):
        pack(({"x": torch.ones(1), "meta": object()},))


# -- a planted spike in each library's batch shape: recorded, diagnosed, replayed -----------------------------------


@pytest.mark.parametrize("shape,measured", [("darts", "batch.past_target"), ("pf", "batch[0]['encoder_cont']"),
                                            ("nf", "batch['temporal']")])  # fmt: skip
def test_a_planted_spike_is_diagnosed_as_data_and_replays_bitwise(shape, measured, tmp_path, capsys):
    torch.manual_seed(0)
    stability = GradientStability(clipping=NormClip(max_norm=1.0), guard=ExplosionGuard(policy="skip"))
    fit(LibraryModule(shape), data(shape), tmp_path, [Planter(), stability])
    (event,) = [json.loads(line) for line in (tmp_path / "run" / "explosions.jsonl").read_text().splitlines()]
    assert (event["update"], event["reason"], event["action"]) == (SPIKE_AT, "spike", "skip")
    diagnosis = event["diagnosis"]
    data_finding = next(f for f in diagnosis["ranked"] if f["mechanism"] == "data")
    assert diagnosis["top"] == "data" and float(data_finding["score"]) == pytest.approx(4.0, abs=0.1)
    assert data_finding["evidence"].endswith(f"(measured: {measured})")
    every = [tip for f in diagnosis["ranked"] for tip in f["remedies"]]
    assert every and not any(tip.startswith("--") for tip in every)  # no seqstab CLI flags for a callback
    assert not any("NormClip" in tip or "policy='skip'" in tip for tip in every)  # both are in force

    snapshot = tmp_path / "run" / event["snapshot"]
    saved = torch.load(snapshot, weights_only=True)
    assert saved["source"] == "module" and saved["hparams"] is None  # a class among them: not plain
    capsys.readouterr()
    assert replay_main([str(snapshot)]) == 2  # without a factory: one line saying how
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "saved no hyperparameters as plain values" in line and "--module PKG.FUNC" in line
    assert replay_main([str(snapshot), "--module", f"{__name__}.{shape}_like"]) == 0
    out = capsys.readouterr().out
    assert "replayed norm == logged norm (bitwise)" in out, out
    result = replay(load_snapshot(snapshot), module=LibraryModule(shape))  # the Python API, an instance
    assert struct_f32(result["norm"]) == struct_f32(event["norm"])


def struct_f32(value: float) -> bytes:
    import struct

    return struct.pack("<f", value)


class LoopNet(nn.Module):
    """The plain loop's net: an LSTM and a head."""

    def __init__(self, hidden_size: int = 8):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, HORIZON)

    def forward(self, x):
        out, _ = self.lstm(x)  # (B, INPUT, H)
        return self.head(out[:, -1])  # (B, HORIZON)


def loop_loss(net: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(net(x), y)


def test_a_plain_loop_spike_replays_with_its_factory_and_loss(tmp_path, capsys):
    torch.manual_seed(0)
    net = LoopNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    core = UpdateCore(NormClip(max_norm=1.0), ExplosionGuard(policy="skip"))
    run = StaticRun(net, optimizer=optimizer, run_dir=tmp_path, log_every_n_steps=4)
    for step, (series,) in zip(range(20), DataLoader(data("darts").dataset, batch_size=8), strict=False):
        x, y = series[:, :INPUT, None], series[:, INPUT:]
        if step == SPIKE_AT:
            x, y = x * 1e4, y * 1e4
        core.arm(run)
        loss = loop_loss(net, (x, y))
        optimizer.zero_grad()
        loss.backward()
        core.update(run, list(net.parameters()), loss, step=optimizer.step, chunk=(x, y))
    core.finish(run)
    (event,) = [json.loads(line) for line in (tmp_path / "explosions.jsonl").read_text().splitlines()]
    assert event["update"] == SPIKE_AT and event["diagnosis"]["top"] == "data"
    tips = [tip for f in event["diagnosis"]["ranked"] for tip in f["remedies"]]
    assert "torch.optim.Adam(params, lr=0.0001)" in tips and not any(t.startswith("--") for t in tips)
    out = capsys.readouterr().out
    assert "--module PKG.FUNC --loss PKG.FUNC" in out  # the console's replay line says what a loop's needs
    snapshot = tmp_path / event["snapshot"]
    assert torch.load(snapshot, weights_only=True)["source"] == "loop"
    assert replay_main([str(snapshot)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"model {__name__}.LoopNet: trained by a loop of its own" in line and "--loss PKG.FUNC" in line
    code = replay_main([str(snapshot), "--module", f"{__name__}.LoopNet", "--loss", f"{__name__}.loop_loss"])
    assert code == 0 and "(bitwise)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="does not fit the snapshot's weights"):
        replay(snapshot, module=lambda: LoopNet(hidden_size=4), loss=loop_loss)


# -- remedies in the words of the door ----------------------------------------------------------------------------


def test_remedies_speak_the_door_and_never_repeat_what_is_in_force():
    optimizer = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=1e-3)
    cli = remedies_for(None, None, optimizer, door="cli")
    assert cli.optimizer() == [
        "--optimizer torch.optim.Adam --optimizer.lr 1e-05",
        "--model.clipping seqstab.clipping.NormClip --model.clipping.max_norm 1",
    ]
    callback = remedies_for(None, None, optimizer, door="callback")
    assert callback.optimizer() == [
        "torch.optim.Adam(self.parameters(), lr=1e-05) in configure_optimizers",
        "GradientStability(clipping=NormClip(max_norm=1.0)), or Trainer(gradient_clip_val=1.0)",
    ]
    darts = remedies_for(None, NormClip(), optimizer, door="callback", library="darts", guard_policy="skip")
    assert darts.optimizer() == ["optimizer_kwargs={'lr': 1e-05}"]  # clipping in force: not suggested
    assert darts.data() == ["clean or normalise the data"]  # the guard already skips such batches
    assert "a shorter input_chunk_length" in darts.time(1.5, 96, 0, 95)[0]
    loop = remedies_for(None, None, optimizer, door="loop", guard_policy="warn")
    assert loop.data()[0].startswith("UpdateCore(guard=ExplosionGuard(policy='skip'))")
    assert remedies_for(None, AutoClip(), optimizer, door="loop").optimizer() == ["torch.optim.Adam(params, lr=1e-05)"]


# -- no false alarm from a norm growing out of warm-up --------------------------------------------------------------


def flagged(norms: list[float]) -> list[int]:
    g = ExplosionGuard(policy="warn", snapshot=False, diagnose=False)
    out = []
    for i, norm in enumerate(norms):
        if g.detect(norm)[0] == "spike":
            out.append(i)
        g.check(None, norm)
    return out


def test_a_norm_rising_smoothly_out_of_warm_up_is_no_spike_and_a_planted_one_still_is():
    g = torch.Generator().manual_seed(0)
    noise = (0.1 * torch.randn(120, generator=g)).exp().tolist()
    rising = [0.09 * 1.15 ** min(i, 45) * n for i, n in enumerate(noise)]  # out of warm-up ~600x, then level
    window_rule = [i for i in range(5, 120) if rising[i] > 10 * statistics.median(rising[max(0, i - 50) : i])]
    assert window_rule[:1] == [32]  # the window's median alone (the rule before) fired here, as in neuralforecast
    assert flagged(rising) == []
    planted = list(rising)
    planted[60] *= 1e4
    assert flagged(planted) == [60]
    planted[8] *= 1e4  # inside the warm-up too
    assert flagged(planted) == [8, 60]
    stepped = [1.0] * 30 + [1e3] * 40  # a lasting change of level: flagged for window / 2 updates, then the new level
    assert flagged(stepped) == list(range(30, 55))


# -- resume in the libraries' own ways ------------------------------------------------------------------------------


def test_the_callback_pickles_as_plain_settings_that_load_with_weights_only(tmp_path):
    stability = GradientStability(clipping=AutoClip(percentile=10), guard=ExplosionGuard(policy="skip"), net="lstm")
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": {"callbacks": [stability]}}, buffer)  # as neuralforecast's checkpoints hold it
    assert torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(buffer.getvalue())) == []
    buffer.seek(0)
    (back,) = torch.load(buffer, weights_only=True)["hyper_parameters"]["callbacks"]
    assert isinstance(back, GradientStability) and back.net == "lstm"
    assert repr(back.clipping) == repr(AutoClip(percentile=10)) and back.guard.policy == "skip"
    assert pickle.loads(pickle.dumps(stability)).settings() == stability.settings()  # as darts pickles its model
    text = yaml.dump({"callbacks": [stability]})  # as Lightning writes hparams.yaml
    assert "!!python" not in text and yaml.safe_load(text)["callbacks"][0]["init_args"]["net"] == "lstm"
    state = stability.__getstate__()
    state["init_args"]["clipping"]["class_path"] = "not_imported_anywhere.Clip"  # a file naming other code
    with pytest.raises(ValueError, match="not_imported_anywhere.*is not imported"):
        GradientStability.__new__(GradientStability).__setstate__(state)


class NeuralforecastLike(LibraryModule):
    """neuralforecast saves its trainer keywords, the callbacks among them, as hyperparameters."""

    def __init__(self, callbacks: list | None = None, **kwargs):
        super().__init__(**kwargs)


def test_hparams_yaml_and_checkpoint_hold_no_seqstab_object(tmp_path):
    stability = GradientStability(clipping=NormClip(max_norm=1.0))
    module = NeuralforecastLike(callbacks=[stability], shape="nf")
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(module, data("nf"), tmp_path, [stability, checkpoints], max_steps=6, enable_checkpointing=True)
    text = (tmp_path / "run" / "hparams.yaml").read_text()
    assert "GradientStability" in text and "!!python/object:seqstab" not in text
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "ckpt" / "last.ckpt"))
    assert not [name for name in unsafe if name.startswith("seqstab")], unsafe  # the MSELoss is the module's own
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["callbacks"]["GradientStability"]["updates"] == 6  # the state: plain data, in Lightning's place


def test_a_deep_copy_trains_and_the_original_reads_its_results(tmp_path):
    torch.manual_seed(0)
    mine = GradientStability()
    trained = copy.deepcopy(mine)  # what neuralforecast does to the callbacks it is given
    fit(LibraryModule("nf"), data("nf"), tmp_path, [trained], max_steps=5)
    assert mine.live is trained and mine.updates == trained.updates == 5
    assert mine.summary() == "5 of 5 updates applied" and mine.guard is trained.guard


def test_darts_allow_list_is_filled_when_darts_is_imported_later(tmp_path, monkeypatch):
    """The import hook: a module imported after seqstab gets its hook run once its import finishes."""
    (tmp_path / "late_peer_module.py").write_text("REGISTERED = []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    when_imported("late_peer_module", lambda module: (seen.append(module.__name__), module.REGISTERED.append(1)))
    import late_peer_module

    assert seen == ["late_peer_module"] and late_peer_module.REGISTERED == [1]
    assert late_peer_module.__loader__.__class__.__name__ != "_ThenLoader"


@pytest.fixture(scope="module", autouse=True)
def wrong_net_script(request, tmp_path_factory):
    """The last test's script, run as a user runs it, started when this module starts (beside the tests above)."""
    if not asked_for(request):  # no selected test reads the runs: start none
        yield None
        return
    script = tmp_path_factory.mktemp("wrong_net") / "train.py"
    script.write_text(
        "import torch, pytorch_lightning as pl\n"
        "from tests.test_callbacks import PLClassifier, data\n"
        "from seqstab.callbacks import GradientStability\n"
        "pl.Trainer(callbacks=[GradientStability(net='encoder')], max_steps=1, logger=False,\n"
        "           enable_progress_bar=False, enable_checkpointing=False).fit(PLClassifier(), data())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    run = Started([sys.executable, str(script)], cwd=REPO, env=env, timeout=120)
    yield from until_teardown(run)


def test_a_wrong_net_is_one_line_and_exit_1_when_nothing_catches_it(wrong_net_script):
    done = wrong_net_script.result()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "seqstab: error: GradientStability(net='encoder'): PLClassifier has no module there (the modules of "
        "PLClassifier are: lstm, out)"
    )
