"""The stations for a LightningModule you already have: :class:`GradientStability`.

For a module trained with Lightning's *automatic* optimization (neuralforecast, darts, pytorch-forecasting, your
own), the callback runs seqstab's update core (:class:`seqstab.update.UpdateCore`) at the one point Lightning leaves
for it: after backward and AMP unscaling, before the optimizer step (``on_before_optimizer_step``)::

    on_train_batch_start      core.arm                 gradient-flow hooks; the RNG state for a replay snapshot
    (training_step, backward: Lightning's)
    on_before_backward        the batch's loss         for train/loss and the event record
    (unscale: Lightning's)
    on_before_optimizer_step  core.update              measure -> clip -> guard on the device; a withheld update is
                                                       prepared (its gradient masked, or its state copied)
    (optimizer.step: Lightning's)
    (post-step hook)          core.complete            right after the step: a withheld update undone, so the step
                                                       changed neither weights nor optimizer state
    on_train_batch_end                                 a stop read at a flush ends the run
    every log_every_n_steps   core.flush               the values read back once, logged at each update's step

It logs the same tags as seqstab's tasks (``grad/norm_total``, ``grad/norm_total_clipped``, ``grad/clipped``,
``grad/clip_threshold``, ``grad/norm/<module>``, ``weight/norm/<module>``, ``explosion/events``, ``train/loss``,
``train/lr``; spectra and gradient flow where the module's recurrent layers allow), at the update index, to every
logger of the Trainer; writes ``explosions.jsonl`` and a replay snapshot into the logger's directory; and keeps the
update count, the policy's and the guard's state in the checkpoint (``checkpoint["callbacks"]``).

    from seqstab.lightning.callbacks import GradientStability
    from seqstab.core.clipping import AutoClip

    trainer = Trainer(callbacks=[GradientStability(clipping=AutoClip(percentile=10))])

The same class works with Trainers of both namespaces, ``pytorch_lightning`` and ``lightning.pytorch``: it is a
``Callback`` of each that is installed.

Inside other people's libraries (darts, pytorch-forecasting, neuralforecast: ``docs/guides/callback-in-libraries.md``):

* A library that deep-copies its Trainer arguments (neuralforecast) trains with a copy: the object you made reads the
  copy's results (``updates``, ``guard``, ``clipping``, ``monitor``), and :attr:`GradientStability.live` is the copy.
* Pickled (darts saves its model object with its callbacks; neuralforecast's hyperparameters hold them) the callback
  is its settings as plain data, loadable with ``weights_only=True`` (:mod:`seqstab.lightning.safe_globals`); its
  state (update count, policy and guard state) travels in the Lightning checkpoint, restored when a fit resumes.
* A setting found wrong when the fit starts (two clippers, manual optimization, a ``net`` that is not there) is one
  line and exit 1 when nothing catches it (:class:`seqstab.core.errors.SettingError`, a ``ConfigError``).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import sys
import warnings
from typing import Any

import pytorch_lightning as pl
import torch

from seqstab.core.clipping import ClipPolicy, NoClip
from seqstab.core.errors import SettingError
from seqstab.core.guard import ExplosionGuard, check_finite_weights
from seqstab.core.monitor import GradMonitor, flow_layers
from seqstab.core.plain import to_plain
from seqstab.core.recipes import class_path, object_recipe
from seqstab.core.update import UpdateCore
from seqstab.lightning import safe_globals
from seqstab.lightning.trainer_run import TrainerRun

__all__ = ["GradientStability"]


def _callback_bases() -> tuple[type, ...]:
    """``Callback`` of ``pytorch_lightning`` and, where installed, of ``lightning.pytorch``: a Trainer of either
    namespace accepts the callback (each checks ``isinstance`` against its own class)."""
    bases: list[type] = [pl.Callback]
    try:
        import lightning.pytorch as L
    except ImportError:
        return tuple(bases)
    if L.Callback is not pl.Callback:
        bases.append(L.Callback)
    return tuple(bases)


class GradientStability(*_callback_bases()):
    """seqstab's clipping, gradient monitor and explosion guard for any LightningModule (automatic optimization).

    Args:
        clipping: Clipping policy (``seqstab.clipping``); None measures only (``NoClip``). Leave Lightning's
            ``gradient_clip_val`` unset when you give one here: two clippers are refused.
        guard: Explosion guard; None uses ``ExplosionGuard(policy='warn', snapshot=False)``, as seqstab's tasks do.
            A skipped update leaves the parameters and the optimizer's state untouched.
        monitor: What to measure beyond the per-update norms; None uses ``GradMonitor()``'s defaults.
        net: Attribute path of the module's recurrent part (e.g. ``"hist_encoder"`` for neuralforecast's
            ``LSTM``), where gradient flow and spectra look for recurrent layers; None: the whole module.
    """

    def __init__(
        self,
        clipping: ClipPolicy | None = None,
        guard: ExplosionGuard | None = None,
        monitor: GradMonitor | None = None,
        net: str | None = None,
    ):
        if guard is None:
            guard = ExplosionGuard(policy="warn", snapshot=False)
        self.core = UpdateCore(clipping, guard, monitor if monitor is not None else GradMonitor())
        self.net = net
        self.run: TrainerRun | None = None
        self._loss: torch.Tensor | None = None  # of the batch whose backward completes the update
        self._batch: Any = None
        self._batch_idx = 0
        self._stepping = False  # an update is between its core.update and Lightning's step
        self._hooks: list[Any] = []  # the optimizers' post-step hooks
        self._params: tuple[Any, list[torch.Tensor]] | None = None  # (module, its trainable parameters) at fit start
        self._shared = _Shared()  # with every deep copy of this callback: which one trained last

    # -- what the callback that trained holds (a library may have trained a deep copy of this one) -------------

    @property
    def live(self) -> GradientStability:
        """The callback that trained last: this one, or the deep copy of it a library trained with (neuralforecast
        deep-copies its models and their Trainer arguments before fitting). Its results are this one's too."""
        return self._shared.live or self

    @property
    def clipping(self) -> ClipPolicy:
        return self.live.core.clipping

    @property
    def guard(self) -> ExplosionGuard | None:
        return self.live.core.guard

    @property
    def monitor(self) -> GradMonitor | None:
        return self.live.core.monitor

    @property
    def updates(self) -> int:
        """Updates attempted in the last fit (of the callback that trained: :attr:`live`)."""
        return self.live.core.updates

    def summary(self) -> str:
        """One line: how many of the updates attempted were applied (by the callback that trained)."""
        return self.live.core.summary()

    def __deepcopy__(self, memo: dict[int, Any]) -> GradientStability:
        """A copy with its own state that shares :attr:`live` with this one (a fit of the copy shows here)."""
        memo[id(self._shared)] = self._shared
        twin = type(self).__new__(type(self))
        memo[id(self)] = twin
        for key, value in self.__dict__.items():
            setattr(twin, key, copy.deepcopy(value, memo))
        return twin

    # -- pickling: plain data (seqstab.lightning.safe_globals) ---------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The callback's settings as plain data: ``{"class_path", "init_args"}``, each policy, guard and monitor a
        recipe of its own (``class_path``, ``init_args``). What pickling stores and ``hparams.yaml`` shows."""
        core = self.core
        init_args = {
            "clipping": _recipe(core.clipping),
            "guard": _recipe(core.guard),
            "monitor": _recipe(core.monitor),
            "net": self.net,
        }
        try:
            init_args = to_plain(init_args)
        except TypeError as err:
            raise TypeError(f"GradientStability cannot be stored as plain data: {err}") from None
        return {"class_path": class_path(type(self)), "init_args": init_args}

    def __getstate__(self) -> dict[str, Any]:
        """Plain data only: the settings (:meth:`settings`). The state of a fit (update count, the policy's and the
        guard's state) is not pickled: it travels in the Lightning checkpoint (:meth:`state_dict`)."""
        return {"seqstab": "GradientStability/1", **self.settings()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuild from :meth:`__getstate__`'s plain data; a class path that is neither seqstab's nor from a module
        already imported is refused, never imported (unpickling must not run code a file names)."""
        if not isinstance(state, dict) or state.get("seqstab") != "GradientStability/1":
            raise ValueError("not the plain state of a seqstab GradientStability callback")
        init_args = state.get("init_args") or {}
        bases = {"clipping": ClipPolicy, "guard": ExplosionGuard, "monitor": GradMonitor}
        built = {name: _built(init_args.get(name), base, name) for name, base in bases.items()}
        self.__init__(**built, net=init_args.get("net"))

    # -- fit ---------------------------------------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        self._shared.live = self
        if not pl_module.automatic_optimization:
            raise SettingError(
                f"GradientStability: {type(pl_module).__name__} uses manual optimization; call the update core "
                "(seqstab.update.UpdateCore.update) from its training_step instead, as seqstab's tasks do"
            )
        if trainer.gradient_clip_val and not isinstance(self.core.clipping, NoClip):
            raise SettingError(
                f"GradientStability(clipping={self.core.clipping!r}) and Trainer(gradient_clip_val="
                f"{trainer.gradient_clip_val}) would both clip: keep one"
            )
        if trainer.gradient_clip_val:
            warnings.warn(
                "GradientStability measures before Lightning's gradient_clip_val clips: grad/norm_total_clipped is "
                "the norm before that clipping; give the callback clipping=NormClip(max_norm) to log what is applied",
                UserWarning,
                stacklevel=2,
            )
        self.run = TrainerRun(pl_module, self._net_of(pl_module), self._replay_recipe)

    def _net_of(self, pl_module: Any) -> torch.nn.Module:
        if self.net is None:
            return pl_module
        net: Any = pl_module
        for part in self.net.split("."):
            parent, net = net, getattr(net, part, None)
            if not isinstance(net, torch.nn.Module):
                where = f"GradientStability(net={self.net!r})"
                names = ", ".join(name for name, _ in parent.named_children()) or "none"
                raise SettingError(
                    f"{where}: {type(pl_module).__name__} has no module there (the modules of "
                    f"{type(parent).__name__} are: {names})"
                )
        return net

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._hooks = [o.register_step_post_hook(self._after_step) for o in trainer.optimizers]
        self._params = (pl_module, [p for p in pl_module.parameters() if p.requires_grad])
        monitor = self.core.monitor
        if trainer.accumulate_grad_batches > 1 and monitor is not None:
            if monitor.grad_flow_every_n_steps is not None and flow_layers(self.run.net) and trainer.is_global_zero:
                warnings.warn(
                    "GradientStability: gradient flow is not measured under accumulate_grad_batches > 1 (an update's "
                    "gradient spans several forward passes)",
                    UserWarning,
                    stacklevel=2,
                )
            monitor.grad_flow_every_n_steps = None
        self.core.start(self.run)  # the custom-scalars page; the HPARAMS tab stays the module's own

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.core.finish(self.run)
        if self.core.updates and not self.core.applied and trainer.is_global_zero:
            warnings.warn(f"GradientStability: {self.core.summary()}", UserWarning, stacklevel=2)

    # -- the update --------------------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx % trainer.accumulate_grad_batches == 0:  # the first batch of an update
            self._batch, self._batch_idx = batch, batch_idx
            self.core.arm(self.run)
        elif self.core.guard is not None:
            self._batch, self._batch_idx = batch, batch_idx  # the snapshot holds the last batch of the update

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        """The loss Lightning back-propagates is divided by ``accumulate_grad_batches`` and, under a GradScaler,
        scaled: undone here, so ``train/loss`` is what ``training_step`` returned."""
        loss = loss.detach()
        if trainer.accumulate_grad_batches != 1:
            loss = loss * trainer.accumulate_grad_batches
        scale = self.run.loss_scale
        self._loss = loss / scale if scale is not None else loss

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self._loss is None:  # no backward this step (training_step returned None): nothing to measure
            return
        params = self._trainable(pl_module)
        loss, self._loss = self._loss, None
        self.core.update(self.run, params, loss, step=None, chunk=self._batch)  # Lightning steps next
        self._stepping = True

    def _trainable(self, pl_module: Any) -> list[torch.Tensor]:
        """The module's trainable parameters as listed at the epoch's start (a walk of the module tree per epoch, not
        per update: fine-tuning callbacks freeze and unfreeze at epoch boundaries), or now for another module."""
        if self._params is None or self._params[0] is not pl_module:
            self._params = (pl_module, [p for p in pl_module.parameters() if p.requires_grad])
        return self._params[1]

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._params = None  # listed again at the epoch's first update

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Right after the optimizer's step (a ``torch.optim`` post-step hook: before any other callback looks): a
        withheld update is undone, on the device."""
        if self._stepping:
            self._stepping = False
            self.core.complete(self.run)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """A step the optimizer did not take (a GradScaler's overflow) is completed here; a stop read at a flush
        ends the run."""
        self._after_step(None, None, None)
        if self.core.stop_requested:
            trainer.should_stop = True

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking and self.run is not None:
            self.core.flush(self.run)

    def _replay_recipe(self) -> dict[str, Any]:
        module = self.run.module
        hparams = getattr(module, "hparams", None)
        return {
            "source": "module",
            "class_path": class_path(type(module)),
            "hparams": dict(hparams) if hparams else None,
            "clipping": object_recipe(self.core.clipping),
            "batch_idx": self._batch_idx,
        }

    # -- checkpoint --------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self.run is not None:
            self.core.flush(self.run, complete=True)  # the spectra measured so far written too: none is lost on resume
        check_finite_weights(checkpoint["state_dict"])  # never write a checkpoint holding inf/nan weights

    def state_dict(self) -> dict[str, Any]:
        """The update count, the policy's and the guard's state (saved under ``checkpoint["callbacks"]``)."""
        return self.core.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.core.load_state_dict(state_dict)


class _Shared:
    """What a callback shares with its deep copies: the one that trained last."""

    def __init__(self) -> None:
        self.live: GradientStability | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self

    def __getstate__(self) -> dict[str, Any]:
        return {}


def _recipe(obj: Any) -> dict[str, Any] | None:
    """``object_recipe`` of a station, an argument that is itself an object (the guard's ``vanishing`` settings, a
    dataclass) a recipe of its own."""
    recipe = object_recipe(obj)
    if recipe is not None:
        for name, value in recipe["init_args"].items():
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
                recipe["init_args"][name] = {"class_path": class_path(type(value)), "init_args": fields}
    return recipe


def _built(recipe: Any, base: type, what: str) -> Any:
    """The object a plain ``{"class_path", "init_args"}`` recipe describes, its class seqstab's own or from a module
    already imported (never importing one a file names), and a ``base``; None for None."""
    if recipe is None:
        return None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("class_path"), str):
        raise ValueError(f"GradientStability {what}: not a recipe ({type(recipe).__name__})")
    path = recipe["class_path"]
    module_name, _, name = path.rpartition(".")
    if not (module_name == "seqstab" or module_name.startswith("seqstab.") or module_name in sys.modules):
        raise ValueError(
            f"GradientStability {what}: {path} is from module {module_name!r}, which is not imported: import it "
            "before loading, if you trust it"
        )
    cls = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"GradientStability {what}: {path} is not a {base.__name__}")
    init_args = {
        key: _built(value, object, f"{what}.{key}") if isinstance(value, dict) and "class_path" in value else value
        for key, value in (recipe.get("init_args") or {}).items()
    }
    return cls(**init_args)


safe_globals.register(GradientStability, GradientStability.settings)
