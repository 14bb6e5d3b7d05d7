"""Every private name of Lightning, torch and TensorBoard that seqstab touches, in one file.

Each accessor below names what it reaches into and why no public API does the job. ``tests/test_internals.py`` has a
test for each that fails, naming the accessor, when an upgrade renames or reshapes what it relies on; nothing else in
seqstab uses an underscored name of another library (``tests/test_imports.py`` checks that too).

========================================  ====================================================================
accessor                                  what it relies on
========================================  ====================================================================
:data:`foreach_norm`                      ``torch._foreach_norm``, ``_foreach_mul_``, ``_foreach_copy_``: one fused
:data:`foreach_mul_`                      kernel over a list of tensors (what ``clip_grad_norm_(foreach=True)``
:data:`foreach_copy_`                     uses)
:func:`forward_hooked`                    ``Module._forward_hooks``, ``_forward_pre_hooks`` and the global ones: no
                                          public API says whether a module's forward is hooked (a net runs its
                                          layers sequence first, past the modules, only while nothing hooks them)
:func:`skip_unused_batch_hooks`           Lightning's ``_call_callback_hooks`` skips a hook attribute that is not
                                          callable (a callback's inherited no-ops, set to ``None``, cost no call)
:func:`lightning_steps_are_bare`          Lightning's ``manual_backward`` and ``LightningOptimizer.step`` go through
:func:`count_step`                        the strategy and precision plugin to ``loss.backward()`` and the
                                          optimizer's step, calling the backward and step hooks of the module and of
                                          every callback on the way (``_fabric``, ``LightningOptimizer._on_before_step``
                                          and ``_on_after_step``: the manual loop's step counters)
:func:`keep_data_hooks`                   ``Trainer._data_connector._datahook_selector`` (``_DataHookSelector``:
                                          which of module and datamodule defines each batch-transfer hook, asked
                                          three times a batch)
:func:`signature_kept`                    Lightning's ``_TrainingEpochLoop._build_kwargs`` reads the signature of
                                          ``training_step`` at every batch (``__signature__`` is ``inspect``'s own)
:func:`set_hook_name`                     ``LightningModule._current_fx_name``: Lightning's ``trainer/call.py`` sets
                                          it to the hook's name before and after every hook it calls on the module
                                          (~19 times an update)
:func:`steps_with_found_inf`              ``Optimizer._step_supports_amp_scaling`` (fused optimizers: a device-side
                                          skip through ``found_inf``)
:func:`show_in_progress_bar`              ``Trainer.progress_bar_metrics`` is the logger connector's live dict of the
                                          bar's values (``self.log`` would keep a device tensor it reads back
                                          at every batch)
:func:`attached_trainer`                  ``LightningModule._trainer`` (``.trainer`` raises when detached)
:func:`loss_scale`                        ``torch.amp.GradScaler._scale`` (``get_scale()`` syncs with the host)
:func:`file_writer`                       ``SummaryWriter._get_file_writer()`` (raw HPARAMS summaries; an update's
                                          scalars as one event)
:func:`logger_prefix`                     ``TensorBoardLogger._prefix`` (the prefix its ``log_metrics`` puts on tags)
:func:`fit_loop_state`                    the checkpoint's ``loops.fit_loop`` progress dicts (``is_last_batch``,
                                          the combined loader's saved states)
:func:`unscaled_once`                     Lightning's ``MixedPrecision.optimizer_step`` calls ``scaler.unscale_``
                                          (seqstab unscales earlier, before clipping)
:class:`KeepConfigOnCkptPath`             ``LightningCLI._parse_ckpt_path`` (overridden: the config stays as given)
:func:`cli_group`                         ``LightningCLI._get`` (a config group under the subcommand, if any)
:func:`cli_parser`                        ``LightningCLI._parser`` (the parser of a subcommand, which dumps its config)
:func:`retype`                            ``DataLoader`` keeps no state that depends on its class, so a plain one
                                          can become a subclass that only adds methods (``obj.__class__ = ...``)
:func:`partial_class`                     jsonargparse builds a ``Callable[[int], nn.Module]`` argument as
                                          ``partial(<instantiator>, <instantiator>, cls, **init_args)``
:func:`throttle_progress_bar`             ``TQDMProgressBar._should_update(current, total)``: whether a batch
                                          redraws the bar (Lightning redraws at every batch, bypassing tqdm's own
                                          ``mininterval``)
:func:`namedtuple_fields`                 a named tuple's ``_fields`` (``collections.namedtuple``'s and
                                          ``typing.NamedTuple``'s documented attribute, underscored so that no
                                          field name clashes with it): a batch's structure for a snapshot
========================================  ====================================================================
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.nn.modules import module as _modules

foreach_norm = torch._foreach_norm  # (tensors, ord=2, dtype=None) -> list of 0-dim norms
foreach_mul_ = torch._foreach_mul_  # (tensors, scalar | tensor | list of tensors), in place
foreach_copy_ = torch._foreach_copy_  # (targets, sources), in place


def forward_hooked(*modules: torch.nn.Module) -> bool:
    """Whether anything hooks the forward of any of ``modules``: their own forward and pre-forward hooks
    (``Module._forward_hooks``, ``_forward_pre_hooks``) or the global ones of
    ``torch.nn.modules.module.register_module_forward_hook``."""
    if _modules._global_forward_hooks or _modules._global_forward_pre_hooks:
        return True
    return any(module._forward_hooks or module._forward_pre_hooks for module in modules)


BATCH_HOOKS = (  # the callback hooks Lightning calls at every batch
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_zero_grad",
    "on_before_optimizer_step",
    "on_train_batch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
)


def skip_unused_batch_hooks(callback: Any) -> list[str]:
    """Let Lightning skip ``callback``'s per-batch hooks that are ``Callback``'s own no-ops (returns their names).

    Lightning's ``_call_callback_hooks`` calls ``getattr(callback, hook)`` for every callback at every hook, each in
    a profiler context, and skips it when that is not callable: an instance attribute ``None`` over the inherited
    no-op saves the call (2-4 µs each on the 2-core VM of ``benchmarks/RESULTS.md``; 5 hooks an update, for every
    callback in the Trainer). A hook the callback's
    class overrides, or that its instance sets, is left alone."""
    skipped: list[str] = []
    if not hasattr(callback, "__dict__"):  # a callback with __slots__ only: nothing to set
        return skipped
    for name in BATCH_HOOKS:
        method = getattr(type(callback), name, None)
        if name not in vars(callback) and method is not None and _base_callback_noop(method):
            setattr(callback, name, None)
            skipped.append(name)
    return skipped


def _base_callback_noop(method: Any) -> bool:
    """``method`` is the no-op of Lightning's ``Callback`` (``pytorch_lightning`` or ``lightning.pytorch``)."""
    owner = getattr(method, "__qualname__", "").split(".")[0]
    return owner == "Callback" and getattr(method, "__module__", "").endswith("callbacks.callback")


STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")  # called around backward and step


def lightning_steps_are_bare(trainer: Any, module: Any) -> bool:
    """Whether Lightning's ``manual_backward(loss)`` and ``LightningOptimizer.step()`` would do nothing here but
    ``loss.backward()``, the optimizer's step and the step count (:func:`count_step`), so that ``module`` may call
    those itself: one device (``SingleDeviceStrategy``, no gradient all-reduce to prepare), 32-bit precision (the
    plain ``Precision`` plugin: no loss scaling), no profiler, no Fabric, ``LightningModule.backward`` itself, and
    nobody overriding the hooks Lightning calls on the way (:data:`STEP_HOOKS`: the module's, and every callback's
    that is not ``Callback``'s no-op or set to None by :func:`skip_unused_batch_hooks`).

    Both wrappers and their hook dispatch cost ~0.1 ms of host time an update (~6 % of an update of a 2×16 LSTM
    on the 2-core VM of ``benchmarks/RESULTS.md``: ``python benchmarks/bench_stations.py``)."""
    from pytorch_lightning import LightningModule
    from pytorch_lightning.plugins.precision import Precision
    from pytorch_lightning.profilers import PassThroughProfiler
    from pytorch_lightning.strategies import SingleDeviceStrategy
    from pytorch_lightning.utilities.model_helpers import is_overridden

    strategy = trainer.strategy
    if type(strategy) is not SingleDeviceStrategy or type(strategy.precision_plugin) is not Precision:
        return False
    if not isinstance(trainer.profiler, PassThroughProfiler) or getattr(module, "_fabric", None) is not None:
        return False
    if type(module).backward is not LightningModule.backward or any(is_overridden(h, module) for h in STEP_HOOKS):
        return False
    return all(
        hook is None or _base_callback_noop(hook)
        for callback in trainer.callbacks
        for hook in (getattr(callback, name, None) for name in STEP_HOOKS)
    )


def count_step(optimizer: Any) -> None:
    """``optimizer.step()`` of a ``LightningOptimizer`` without its strategy and precision round trip, where
    :func:`lightning_steps_are_bare` says that round trip only steps: the wrapped optimizer's step between the
    manual loop's ``_on_before_step`` and ``_on_after_step`` (its progress counters: ``trainer.global_step``)."""
    optimizer._on_before_step()
    optimizer.optimizer.step()
    optimizer._on_after_step()


def keep_data_hooks(trainer: Any) -> None:
    """Let this fit's batches find their transfer hooks without asking Lightning's ``is_overridden`` each time.

    ``LightningModule._call_batch_hook`` asks the trainer's ``_DataHookSelector.get_instance`` (its
    ``_data_connector._datahook_selector``, made when a fit attaches its data) whether the datamodule or the module
    defines ``on_before_batch_transfer``, ``transfer_batch_to_device`` and ``on_after_batch_transfer``, three times a
    batch, and each answer runs ``is_overridden`` on both (~2.5 µs a hook on the 2-core VM of
    ``benchmarks/RESULTS.md``). The answers depend on the two objects' methods, which do not change during a fit:
    the selector is wrapped in one that keeps each answer (Lightning's warning for a hook both define, given once,
    as before). A later fit, validate or test attaches a new selector."""
    connector = trainer._data_connector
    selector = connector._datahook_selector
    if selector is not None and not isinstance(selector, _KeptDataHooks):
        connector._datahook_selector = _KeptDataHooks(selector)


class _KeptDataHooks:
    """A ``_DataHookSelector`` whose ``get_instance`` answers are kept (its other attributes are the selector's)."""

    def __init__(self, selector: Any):
        self.selector = selector
        self._found: dict[str, Any] = {}

    def get_instance(self, hook_name: str) -> Any:
        found = self._found.get(hook_name)
        if found is None:
            found = self._found[hook_name] = self.selector.get_instance(hook_name)
        return found

    def __getattr__(self, name: str) -> Any:  # model, datamodule, _valid_hooks
        return getattr(self.selector, name)


def signature_kept(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with its signature worked out once (``__signature__``, which ``inspect`` returns as it is):
    Lightning's training loop calls ``inspect.getfullargspec(training_step)`` at every batch
    (``_TrainingEpochLoop._build_kwargs``: whether to pass ``batch_idx``), which builds it from the code each time:
    the check takes ~7 µs on the 2-core VM of ``benchmarks/RESULTS.md``, ~2.5 with ``__signature__`` set."""
    function.__signature__ = inspect.signature(function)
    return function


HOOK_NAME = "_current_fx_name"  # what LightningModule.log reads to know which hook logs


def set_hook_name(module: Any, name: str, value: Any) -> bool:
    """Store ``value`` as ``module.<name>`` directly and return True where ``name`` is the attribute Lightning's
    loop sets around every hook call on the module (``_current_fx_name``, a hook's name or None: never a parameter,
    buffer or submodule); False otherwise, to be set as usual. ``nn.Module.__setattr__`` checks every value for a
    parameter, a submodule and a buffer (~1 µs on the 2-core VM of ``benchmarks/RESULTS.md``; a task's
    ``__setattr__`` through this takes ~0.2), ~19 times an update of a seqstab task."""
    if name != HOOK_NAME:
        return False
    object.__setattr__(module, name, value)
    return True


def steps_with_found_inf(optimizer: Any) -> bool:
    """Whether ``optimizer.step`` takes ``found_inf`` (and ``grad_scale``) and skips the update on the device when it
    is non-zero: ``Optimizer._step_supports_amp_scaling``, set by torch's fused implementations (what GradScaler
    reads to hand them its overflow flag instead of skipping on the host)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def show_in_progress_bar(trainer: Any, name: str, value: float) -> None:
    """Put a host float on the progress bar (it stays until replaced): what ``self.log(name, value, prog_bar=True,
    logger=False)`` shows, without the device tensor ``self.log`` makes of it and reads back at every batch."""
    trainer.progress_bar_metrics[name] = value


def attached_trainer(module: Any) -> Any | None:
    """The Trainer a LightningModule is attached to, or None (``module.trainer`` raises instead)."""
    return getattr(module, "_trainer", None)


def loss_scale(scaler: Any) -> torch.Tensor | None:
    """A GradScaler's current scale as the device tensor it keeps (no host sync), None before its first use."""
    return getattr(scaler, "_scale", None)


def logger_prefix(logger: Any) -> str:
    """The prefix a Lightning logger's ``log_metrics`` puts before each tag (``prefix=`` at construction)."""
    return getattr(logger, "_prefix", "") or ""


def file_writer(writer: Any) -> Any:
    """The ``FileWriter`` behind a ``torch.utils.tensorboard.SummaryWriter``: it takes raw summaries (HPARAMS)."""
    return writer._get_file_writer()


def fit_loop_state(checkpoint: dict[str, Any]) -> tuple[bool, list[dict[str, Any]]]:
    """From a Lightning checkpoint: was it saved after the epoch's last batch, and the states of the training loaders
    (as each loader's ``state_dict()`` returned them; the dicts are the checkpoint's own, to edit in place)."""
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
    is_last_batch = bool(fit_loop.get("epoch_loop.batch_progress", {}).get("is_last_batch", False))
    loaders = fit_loop.get("state_dict", {}).get("combined_loader", [])
    return is_last_batch, [state for state in loaders if isinstance(state, dict)]


@contextmanager
def unscaled_once(scaler: Any) -> Iterator[None]:
    """Within the block, ``scaler.unscale_`` does nothing.

    seqstab unscales the gradients itself before clipping (Lightning #18089); Lightning's
    ``MixedPrecision.optimizer_step`` then calls ``scaler.unscale_`` again, which raises. ``scaler.step`` itself sees
    the optimizer as already unscaled.
    """
    scaler.unscale_ = lambda optimizer: None  # shadows GradScaler.unscale_ on this instance
    try:
        yield
    finally:
        del scaler.unscale_


class KeepConfigOnCkptPath:
    """Mixin for a ``LightningCLI`` subclass: ``--ckpt_path`` is checked by :meth:`check_ckpt_path`, and the config is
    kept as given (LightningCLI would replace the model's settings with the checkpoint's hyperparameters)."""

    def _parse_ckpt_path(self) -> None:  # LightningCLI's private hook, called before classes are instantiated
        self.check_ckpt_path()

    def check_ckpt_path(self) -> None:
        raise NotImplementedError


def cli_parser(cli: Any, subcommand: str | None) -> Any:
    """The parser of ``subcommand`` (the one whose ``dump`` writes a run's ``config.yaml``)."""
    return cli._parser(subcommand)


def cli_group(cli: Any, config: Any, group: str) -> Any:
    """``config[<subcommand>.]group`` of a LightningCLI (None when absent)."""
    return cli._get(config, group)


def retype(loader: Any, subclass: type) -> None:
    """Make a plain ``torch.utils.data.DataLoader`` an instance of ``subclass`` in place (no copy: Lightning and the
    datamodule keep the same object). ``subclass`` adds methods only; the loader's attributes stay as they are."""
    loader.__class__ = subclass


def partial_class(factory: functools.partial) -> type | None:
    """The class a jsonargparse-made ``partial`` instantiates (its last positional argument), or None."""
    args = factory.args
    if len(args) == 2 and isinstance(args[-1], type) and not isinstance(args[0], type):
        return args[-1]
    return None


LIGHTNING_NAMESPACES = ("pytorch_lightning", "lightning.pytorch")


def drop_lightning_tips() -> None:
    """Drop Lightning's "💡 Tip" lines (advertisements for other products) from its rank-zero info log."""
    import logging

    import lightning_utilities.core.rank_zero as rank_zero

    # each Lightning namespace points rank_zero.log at its own logger when it is imported (the last one wins)
    for log in {rank_zero.log, *(logging.getLogger(f"{ns}.utilities.rank_zero") for ns in LIGHTNING_NAMESPACES)}:
        if not any(isinstance(f, _NoTips) for f in log.filters):
            log.addFilter(_NoTips())


class _NoTips:
    def filter(self, record) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def namedtuple_fields(value: Any) -> tuple[str, ...] | None:
    """The field names of a named tuple (``type(value)._fields``), or None for any other value (a plain tuple too)."""
    fields = getattr(type(value), "_fields", None) if isinstance(value, tuple) else None
    return tuple(fields) if isinstance(fields, tuple) and all(isinstance(f, str) for f in fields) else None


def throttle_progress_bar(bar: Any, seconds: float) -> bool:
    """Let Lightning's ``TQDMProgressBar`` redraw at most once every ``seconds`` (and always at a bar's last batch),
    where it would redraw at every batch: each redraw formats the metrics and writes to the terminal, a cost per
    update as large as a small model's step. Only a bar left at ``refresh_rate=1``, Lightning's default (a rate
    someone chose is kept); returns whether it was throttled."""
    import time

    should_update = getattr(bar, "_should_update", None)
    if should_update is None or getattr(bar, "refresh_rate", None) != 1:
        return False
    last = -math.inf

    def throttled(current: int, total: int | float) -> bool:
        nonlocal last
        if not should_update(current, total):
            return False
        now = time.monotonic()
        if current == total or now - last >= seconds:
            last = now
            return True
        return False

    bar._should_update = throttled
    return True
