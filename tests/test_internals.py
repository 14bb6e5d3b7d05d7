"""One test per private name seqstab touches (seqstab/internals.py): when an upgrade of Lightning, torch, TensorBoard
or jsonargparse renames or reshapes one, the test named after it fails."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from jsonargparse import ArgumentParser
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from seqstab import internals
from seqstab.cli.train import DEFAULT_CONFIG, SeqstabCLI
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks import SequenceRegressor
from tests.helpers import TinyStream, quiet_trainer


def test_foreach_norm_and_foreach_mul_are_torchs_fused_list_kernels():
    tensors = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])]
    assert [n.item() for n in internals.foreach_norm(tensors, 2.0, dtype=torch.float32)] == [5.0, 1.0]
    internals.foreach_mul_(tensors, torch.tensor(2.0))
    assert tensors[0].tolist() == [6.0, 8.0]
    internals.foreach_mul_(tensors, [torch.tensor(0.5), torch.tensor(3.0)])
    assert tensors[1].tolist() == [[6.0, 0.0], [0.0, 0.0]]


def test_attached_trainer_reads_lightning_modules_trainer_attribute():
    module = pl.LightningModule()
    assert internals.attached_trainer(module) is None
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    assert internals.attached_trainer(module) is trainer


def test_loss_scale_is_the_grad_scalers_scale_tensor_without_a_host_sync():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    assert internals.loss_scale(scaler) is None  # before its first use
    scaler.scale(torch.ones(()))
    scale = internals.loss_scale(scaler)
    assert isinstance(scale, torch.Tensor) and scale.item() == scaler.get_scale() == 1024.0


def test_file_writer_takes_raw_summaries(tmp_path):
    from torch.utils.tensorboard.summary import hparams

    writer = SummaryWriter(tmp_path)
    for summary in hparams({"lr": 0.1}, {"val/loss": 0.0}):
        internals.file_writer(writer).add_summary(summary)
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert acc.PluginTagToContent("hparams")  # the experiment, session start and end summaries


def test_fit_loop_state_finds_is_last_batch_and_the_loader_states_in_a_lightning_checkpoint(tmp_path):
    torch.manual_seed(0)
    data = TinyStream(num_streams=3, length=24, window=8)  # 3 batches an epoch
    task = SequenceRegressor(spec=data.spec, net=RecurrentNet)
    saving = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    quiet_trainer(max_steps=3, callbacks=[saving], enable_checkpointing=True).fit(task, data)
    (path,) = tmp_path.glob("epoch=*.ckpt")  # ModelCheckpoint's, at the epoch's last batch
    is_last_batch, loaders = internals.fit_loop_state(torch.load(path, weights_only=True))
    assert is_last_batch and loaders and loaders[0]["batches"] == 3  # seqstab's ResumableLoader, as Lightning saved it
    assert internals.fit_loop_state({}) == (False, [])


def test_unscaled_once_lets_lightnings_mixed_precision_step_a_manual_optimizer_unscaled_before():
    """SeqTask unscales before clipping; Lightning's MixedPrecision.optimizer_step unscales again (it would raise)."""
    assert "self.scaler.unscale_(optimizer)" in inspect.getsource(MixedPrecision.optimizer_step)
    torch.manual_seed(0)
    data = TinyStream(num_streams=3, length=24, window=8)
    task = SequenceRegressor(spec=data.spec, net=lambda n: RecurrentNet(n, 8, cell="rnn"))
    quiet_trainer(max_steps=3, plugins=[MixedPrecision("16-mixed", "cpu")]).fit(task, data)  # a real GradScaler
    assert task.trainer.global_step == 3 and task.run.scaler is not None


def test_keep_config_on_ckpt_path_overrides_lightningclis_parse_ckpt_path():
    assert callable(getattr(LightningCLI, "_parse_ckpt_path", None))
    assert "self._parse_ckpt_path()" in inspect.getsource(LightningCLI.parse_arguments) + inspect.getsource(
        LightningCLI.__init__
    )
    assert SeqstabCLI._parse_ckpt_path is internals.KeepConfigOnCkptPath._parse_ckpt_path


def test_cli_group_reads_a_group_under_the_subcommand():
    signature = inspect.signature(LightningCLI._get)
    assert list(signature.parameters)[:3] == ["self", "config", "key"]
    cli = SeqstabCLI(args=["--config", str(DEFAULT_CONFIG), "--optimizer", "SGD", "--optimizer.lr", "0.5"], run=False)
    assert internals.cli_group(cli, cli.config, "optimizer").init_args.lr == 0.5


def test_cli_parser_dumps_a_subcommands_config_as_config_yaml_holds_it():
    cli = SeqstabCLI(args=["--config", str(DEFAULT_CONFIG)], run=False)
    dumped = internals.cli_parser(cli, None).dump(cli.config, skip_none=False)
    assert "class_path: seqstab.tasks.SequenceRegressor" in dumped and "seq_len: 50" in dumped


def test_partial_class_finds_the_class_jsonargparse_builds_a_callable_argument_of():
    parser = ArgumentParser()
    parser.add_argument("--net", type=Callable[[int], nn.Module], default=RecurrentNet)
    config = parser.parse_args(["--net.hidden_size", "8"])
    factory = parser.instantiate_classes(config).net
    assert internals.partial_class(factory) is RecurrentNet and factory.keywords["hidden_size"] == 8
    assert factory(3).hidden_size == 8


def test_drop_lightning_tips_filters_the_rank_zero_log_lightning_writes_its_tips_to(caplog):
    import logging

    import lightning_utilities.core.rank_zero as rank_zero
    import pytorch_lightning as pl

    # where rank_zero_info writes: the logger of the Lightning namespace imported last
    assert rank_zero.log.name in {f"{ns}.utilities.rank_zero" for ns in internals.LIGHTNING_NAMESPACES}
    internals.drop_lightning_tips()
    with caplog.at_level(logging.INFO):
        pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
        rank_zero.log.info("💡 Tip: try another product")
        rank_zero.log.info("GPU available: no")
    assert "GPU available: no" in caplog.text and "💡 Tip" not in caplog.text


def test_foreach_copy_copies_a_list_of_tensors_in_place():
    targets, sources = [torch.zeros(2), torch.zeros(1)], [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]
    internals.foreach_copy_(targets, sources)
    assert [t.tolist() for t in targets] == [[1.0, 2.0], [3.0]]


def test_steps_with_found_inf_marks_the_fused_optimizers_whose_step_reads_found_inf():
    param = nn.Parameter(torch.ones(2))
    fused, plain = torch.optim.Adam([param], lr=0.1, fused=True), torch.optim.Adam([param], lr=0.1)
    assert internals.steps_with_found_inf(fused) and not internals.steps_with_found_inf(plain)
    param.grad = torch.ones(2)
    fused.found_inf = torch.ones(())  # the attribute the fused step reads (and a GradScaler sets)
    fused.step()
    assert param.tolist() == [1.0, 1.0] and float(fused.state[param]["step"]) == 0  # skipped, step count included


def test_retype_makes_a_plain_dataloader_a_subclass_in_place():
    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2)
    sub = type("Sub", (torch.utils.data.DataLoader,), {"extra": lambda self: "added"})
    internals.retype(loader, sub)
    assert type(loader) is sub and loader.extra() == "added" and [b.tolist() for b in loader] == [[0, 1], [2, 3]]


def test_show_in_progress_bar_writes_into_the_trainers_live_progress_bar_dict():
    trainer = pl.Trainer(logger=False, enable_checkpointing=False)
    internals.show_in_progress_bar(trainer, "loss", 0.5)
    assert trainer.progress_bar_metrics["loss"] == 0.5


def test_logger_prefix_is_what_the_tensorboard_logger_puts_before_each_tag(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger

    assert internals.logger_prefix(TensorBoardLogger(tmp_path, prefix="exp")) == "exp"
    assert internals.logger_prefix(TensorBoardLogger(tmp_path)) == ""


def test_namedtuple_fields_reads_the_field_names_of_both_kinds_of_named_tuple():
    import collections
    import typing

    class Typed(typing.NamedTuple):
        x: int
        y: int

    assert internals.namedtuple_fields(collections.namedtuple("Pair", "a b")(1, 2)) == ("a", "b")
    assert internals.namedtuple_fields(Typed(1, 2)) == ("x", "y")
    assert internals.namedtuple_fields((1, 2)) is None and internals.namedtuple_fields([1]) is None


def test_throttle_progress_bar_wraps_tqdm_progress_bars_should_update(monkeypatch):
    from pytorch_lightning.callbacks import TQDMProgressBar

    assert "_should_update" in vars(TQDMProgressBar)
    assert list(inspect.signature(TQDMProgressBar._should_update).parameters) == ["self", "current", "total"]
    clock = iter([0.0, 0.05, 0.2, 0.21])
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    bar = TQDMProgressBar()
    assert internals.throttle_progress_bar(bar, seconds=0.1)
    # the first batch redraws; 0.05 s later not; 0.2 s: again; the last batch always
    assert [bar._should_update(n, 10) for n in (1, 2, 3, 10)] == [True, False, True, True]
    assert not internals.throttle_progress_bar(TQDMProgressBar(refresh_rate=5), seconds=0.1)  # a chosen rate stays


def test_forward_hooked_sees_a_modules_own_hooks_and_the_global_ones():
    layer, other = nn.Linear(2, 2), nn.Linear(2, 2)
    assert not internals.forward_hooked(layer) and not internals.forward_hooked(other, layer)
    for register in (layer.register_forward_hook, layer.register_forward_pre_hook):
        handle = register(lambda *_: None)
        assert internals.forward_hooked(layer) and internals.forward_hooked(other, layer)
        assert not internals.forward_hooked(other)
        handle.remove()
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    for register in (register_module_forward_hook, register_module_forward_pre_hook):
        handle = register(lambda *_: None)
        assert internals.forward_hooked(layer)
        handle.remove()
    assert not internals.forward_hooked(layer)


def test_skip_unused_batch_hooks_leaves_a_callbacks_own_hooks_and_lightning_skips_the_rest():
    calls = []

    class Counting(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            calls.append(batch_idx)

    callback = Counting()
    skipped = internals.skip_unused_batch_hooks(callback)
    assert "on_train_batch_end" not in skipped and "on_train_batch_start" in skipped
    assert callback.on_train_batch_start is None and callable(callback.on_train_batch_end)
    assert not internals.skip_unused_batch_hooks(callback)  # twice: nothing more to skip

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(max_steps=3, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(Tiny(), torch.utils.data.DataLoader(torch.randn(6, 2), batch_size=2))  # Lightning skips the Nones
    assert calls == [0, 1, 2]


class _Recorded(pl.Callback):
    """Records Lightning's step hooks as it calls them."""

    def __init__(self):
        self.calls = []

    def on_before_backward(self, trainer, pl_module, loss):
        self.calls.append("on_before_backward")

    def on_after_backward(self, trainer, pl_module):
        self.calls.append("on_after_backward")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.calls.append("on_before_optimizer_step")


def _fit_regressor(*callbacks, **trainer_args) -> tuple[SequenceRegressor, pl.Trainer]:
    torch.manual_seed(0)
    data = TinyStream()
    model = SequenceRegressor(spec=data.spec, net=lambda n: RecurrentNet(n, 4))
    trainer = quiet_trainer(max_steps=6, callbacks=list(callbacks), **trainer_args)
    trainer.fit(model, datamodule=data)
    return model, trainer


def test_lightning_steps_are_bare_where_its_wrappers_only_step_and_the_task_then_steps_the_same():
    bare, bare_trainer = _fit_regressor()
    assert bare._bare_steps  # one CPU, 32-bit, no hooks: the task calls backward and the step itself
    recorded = _Recorded()
    wrapped, wrapped_trainer = _fit_regressor(recorded)
    assert not wrapped._bare_steps  # a callback's hooks: through Lightning, which calls them at every update
    assert recorded.calls == ["on_before_backward", "on_after_backward", "on_before_optimizer_step"] * 6
    assert bare_trainer.global_step == wrapped_trainer.global_step == 6  # count_step counts as Lightning does
    for (name, a), b in zip(bare.state_dict().items(), wrapped.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the same updates, bit for bit


def test_lightning_steps_are_not_bare_under_a_module_hook_a_profiler_loss_scaling_or_fabric():
    class Hooked(SequenceRegressor):
        def on_after_backward(self):
            self.seen = True

    data = TinyStream()
    model = Hooked(spec=data.spec, net=lambda n: RecurrentNet(n, 4))
    trainer = quiet_trainer(max_steps=2)
    trainer.fit(model, datamodule=data)
    assert not model._bare_steps and model.seen
    _, plain = _fit_regressor()
    assert internals.lightning_steps_are_bare(plain, plain.lightning_module)
    assert not internals.lightning_steps_are_bare(quiet_trainer(profiler="simple"), plain.lightning_module)
    assert not internals.lightning_steps_are_bare(quiet_trainer(precision="bf16-mixed"), plain.lightning_module)
    plain.lightning_module._fabric = object()  # LightningModule's attribute for a Fabric-driven module
    assert not internals.lightning_steps_are_bare(plain, plain.lightning_module)


def test_count_step_drives_the_manual_loops_step_counters():
    from pytorch_lightning.core.optimizer import LightningOptimizer

    sgd = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    wrapped = LightningOptimizer(sgd)
    assert {"_on_before_step", "_on_after_step"} <= set(vars(wrapped)) and wrapped.optimizer is sgd
    calls = []
    wrapped._on_before_step, wrapped._on_after_step = lambda: calls.append("before"), lambda: calls.append("after")
    internals.count_step(wrapped)
    assert calls == ["before", "after"]
    assert inspect.signature(pl.LightningModule.backward).parameters.keys() >= {"loss"}
    assert "_fabric" in vars(pl.LightningModule())


def test_set_hook_name_stores_lightnings_hook_name_past_module_setattr(monkeypatch):
    from pytorch_lightning.trainer import call

    for setter in (call._call_lightning_module_hook, call._call_callback_hooks, call._call_strategy_hook):
        assert f"pl_module.{internals.HOOK_NAME} = hook_name" in inspect.getsource(setter)
    assert internals.HOOK_NAME in vars(pl.LightningModule())  # LightningModule.log reads it
    seen, slow = [], []

    class Watched(SequenceRegressor):
        def training_step(self, batch, batch_idx):
            seen.append(self._current_fx_name)
            return super().training_step(batch, batch_idx)

    model = Watched(spec=TinyStream().spec, net=lambda n: RecurrentNet(n, 4))
    module_setattr = nn.Module.__setattr__

    def counted(self, name, value):
        slow.append(name)
        module_setattr(self, name, value)

    monkeypatch.setattr(nn.Module, "__setattr__", counted)
    quiet_trainer(max_steps=3).fit(model, datamodule=TinyStream())
    assert seen == ["training_step"] * 3  # what Lightning set arrives
    assert internals.HOOK_NAME not in slow  # never through nn.Module.__setattr__
    assert model._current_fx_name is None and "_current_fx_name" not in model._modules
    assert not internals.set_hook_name(model, "lr", 0.1)  # any other name: set as usual


def test_keep_data_hooks_keeps_the_selectors_answers_and_a_datamodules_own_hook_still_runs():
    from pytorch_lightning.trainer.connectors.data_connector import _DataHookSelector

    class Moved(TinyStream):
        """Defines one of the three batch-transfer hooks (the module's own no-ops answer the other two)."""

        seen = 0

        def on_after_batch_transfer(self, batch, dataloader_idx):
            Moved.seen += 1
            return batch

    data = Moved()
    model = SequenceRegressor(spec=data.spec, net=lambda n: RecurrentNet(n, 4))
    trainer = quiet_trainer(max_steps=4)
    trainer.fit(model, datamodule=data)
    kept = trainer._data_connector._datahook_selector
    assert isinstance(kept, internals._KeptDataHooks)  # SeqTask.on_fit_start wrapped the fit's selector
    assert isinstance(kept.selector, _DataHookSelector) and kept.model is model and kept.datamodule is data
    hooks = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
    assert set(kept._found) == set(hooks) == set(_DataHookSelector(model, data)._valid_hooks)
    fresh = _DataHookSelector(model, data)
    assert [kept.get_instance(h) for h in hooks] == [fresh.get_instance(h) for h in hooks] == [model, model, data]
    assert Moved.seen == 4  # the datamodule's hook, at every batch
    internals.keep_data_hooks(trainer)
    assert trainer._data_connector._datahook_selector is kept  # twice: wrapped once


def test_signature_kept_gives_lightning_the_signature_it_would_build():
    from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature

    from seqstab.tasks.base import SeqTask

    def step(self, batch, batch_idx):
        return batch

    built = inspect.signature(step)
    kept = internals.signature_kept(step)
    assert kept is step and vars(step)["__signature__"] == built == inspect.signature(step)
    assert inspect.getfullargspec(step).args == ["self", "batch", "batch_idx"]
    assert "__signature__" in vars(SeqTask.training_step)
    model = SequenceRegressor(spec=TinyStream().spec, net=lambda n: RecurrentNet(n, 4))
    assert is_param_in_hook_signature(model.training_step, "batch_idx", min_args=2)  # what _build_kwargs asks
    assert "_build_kwargs" in vars(pl.loops.training_epoch_loop._TrainingEpochLoop)
