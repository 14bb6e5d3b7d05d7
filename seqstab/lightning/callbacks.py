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
"""

from __future__ import annotations

import warnings
from typing import Any

import pytorch_lightning as pl
import torch

from seqstab.core.clipping import ClipPolicy, NoClip
from seqstab.core.errors import ConfigError
from seqstab.core.guard import ExplosionGuard, check_finite_weights
from seqstab.core.monitor import GradMonitor, flow_layers
from seqstab.core.recipes import class_path, object_recipe
from seqstab.core.update import UpdateCore
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

    @property
    def clipping(self) -> ClipPolicy:
        return self.core.clipping

    @property
    def guard(self) -> ExplosionGuard | None:
        return self.core.guard

    @property
    def monitor(self) -> GradMonitor | None:
        return self.core.monitor

    @property
    def updates(self) -> int:
        return self.core.updates

    # -- fit ---------------------------------------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ConfigError(
                f"GradientStability: {type(pl_module).__name__} uses manual optimization; call the update core "
                "(seqstab.update.UpdateCore.update) from its training_step instead, as seqstab's tasks do"
            )
        if trainer.gradient_clip_val and not isinstance(self.clipping, NoClip):
            raise ConfigError(
                f"GradientStability(clipping={self.clipping!r}) and Trainer(gradient_clip_val="
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
            net = getattr(net, part, None)
            if not isinstance(net, torch.nn.Module):
                where = f"GradientStability(net={self.net!r})"
                raise ConfigError(f"{where}: {type(pl_module).__name__} has no module there")
        return net

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._hooks = [o.register_step_post_hook(self._after_step) for o in trainer.optimizers]
        monitor = self.monitor
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
        elif self.guard is not None:
            self._batch, self._batch_idx = batch, batch_idx  # the snapshot holds the last batch of the update

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        """The loss Lightning back-propagates is divided by ``accumulate_grad_batches`` and, under a GradScaler,
        scaled: undone here, so ``train/loss`` is what ``training_step`` returned."""
        loss = loss.detach() * trainer.accumulate_grad_batches
        scale = self.run.loss_scale
        self._loss = loss / scale if scale is not None else loss

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self._loss is None:  # no backward this step (training_step returned None): nothing to measure
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]
        loss, self._loss = self._loss, None
        self.core.update(self.run, params, loss, step=None, chunk=self._batch)  # Lightning steps next
        self._stepping = True

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
            "kind": "module",
            "class_path": class_path(type(module)),
            "hparams": dict(hparams) if hparams else None,
            "clipping": object_recipe(self.clipping),
            "batch_idx": self._batch_idx,
        }

    # -- checkpoint --------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self.run is not None:
            self.core.flush(self.run)
        check_finite_weights(checkpoint["state_dict"])  # never write a checkpoint holding inf/nan weights

    def state_dict(self) -> dict[str, Any]:
        """The update count, the policy's and the guard's state (saved under ``checkpoint["callbacks"]``)."""
        return self.core.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.core.load_state_dict(state_dict)
