"""LightningModules: each task wraps one recurrent net between its encoder and head, and trains through one loop.

The one optimization path, for every task and every feature: the chunk loop of truncated BPTT
(``SeqTask.training_step``) around the update core (:mod:`seqstab.update`)::

    for window in truncation.windows(L):                # seqstab.tbptt: Fixed(k) = chunks of LENGTH k, ...
        advance hidden to window.start                  # without grad, where windows overlap or were skipped
        no scored step in the window: carry the state   # forward without grad; no update, nothing logged
        core.arm                                        # gradient-flow hooks on h_t; RNG state for a snapshot
        loss = chunk_loss(chunk, hidden)                # forward from the carried hidden state; masked loss
        core.update(backward, unscale, step, skip)      # measure -> clip -> guard -> step | skip -> log
        detach hidden                                   # cut the graph at the window boundary

Nothing else steps an optimizer, clips or measures norms. New behaviour is an object plugged into a station.
Exact resume (loader position, RNG around validation, the carried state, epoch boundaries) is
:class:`seqstab.resume.ExactResume`, which each task attaches to its Trainer.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from seqstab import internals
from seqstab.core import tbptt
from seqstab.core.clipping import ClipPolicy, NoClip
from seqstab.core.errors import ConfigError, check_choice, check_positive
from seqstab.core.guard import ExplosionGuard, check_finite_weights
from seqstab.core.io import CheckpointError, check_shapes
from seqstab.core.logs import log_metrics
from seqstab.core.monitor import GradMonitor
from seqstab.core.recipes import NetFactory, class_path, flatten, net_factory, net_recipe, object_recipe
from seqstab.core.update import UpdateCore
from seqstab.data.loaders import SCORED_STEPS
from seqstab.data.module import DataSpec, as_spec
from seqstab.lightning.resume import STATE_KEY, ExactResume
from seqstab.lightning.trainer_run import TrainerRun, hparam_values
from seqstab.nets.recurrent import Hidden, RecurrentNet
from seqstab.tasks.evaluation import Evaluation
from seqstab.tasks.memory import check_fits_memory


class SeqTask(Evaluation, pl.LightningModule):
    """Base of seqstab's tasks: the recurrent net, the truncated-BPTT loop around the update core, its stations.

    Args:
        spec: Sizes and statefulness of the data; the CLI links it from ``data.spec``.
        net: The recurrent net: a class path (with its ``init_args``) of any ``nn.Module`` of the recurrent contract
            (``seqstab.nets``), built with the input size the task gives it. Default: ``seqstab.nets.RecurrentNet``
            (a 128-unit LSTM; ``cell``, ``hidden_size``, ``num_layers``, ``init``, ``spectral_radius`` ... are its
            ``init_args``).
        tbptt_steps: Chunk length ``k`` of truncated BPTT, the shorthand for ``truncation: Fixed(k)``; None (and no
            ``truncation``) trains on the whole batch (full BPTT).
        truncation: Truncation policy (``seqstab.tbptt``: ``Full``, ``Fixed``, ``Overlapping``, ``VariableLength``,
            ``Unbiased``) by class path; None: ``tbptt_steps``.
        truncation_bias_every_n_steps: Every n updates (at the first batch reaching it), log
            ``grad/truncation_cosine`` and ``grad/truncation_norm_ratio`` (the policy's gradient of the batch against
            full BPTT's, same weights and state) and the bytes saved for backward per update and by full BPTT. Costs
            a full-BPTT pass of the batch; None: off.
        clipping: Clipping policy (``seqstab.clipping``); None measures only (``NoClip``).
        guard: Explosion guard (``seqstab.guard.ExplosionGuard``); None uses ``ExplosionGuard(policy='warn',
            snapshot=False)``: events are logged, non-finite updates are skipped, nothing else changes.
        monitor: What to measure and how often (``seqstab.monitor.GradMonitor``); None uses its defaults.
        scheduler_interval: Step the LR scheduler after every ``step`` (update) or every ``epoch``.
    """

    kind: str | None = None  # the DataSpec.kind a task trains on (None: any; a subclass of one's own decides)
    main_metric = "loss"  # the eval metric the progress bar shows (val/<main_metric>)

    def __setattr__(self, name: str, value: Any) -> None:
        if not internals.set_hook_name(self, name, value):  # Lightning's, ~19 times an update: set directly
            super().__setattr__(name, value)

    def __init__(
        self,
        spec: DataSpec | None = None,
        net: NetFactory = RecurrentNet,
        tbptt_steps: int | None = None,
        truncation: tbptt.TruncationPolicy | None = None,
        truncation_bias_every_n_steps: int | None = None,
        clipping: ClipPolicy | None = None,
        guard: ExplosionGuard | None = None,
        monitor: GradMonitor | None = None,
        scheduler_interval: Literal["step", "epoch"] = "epoch",
    ):
        super().__init__()
        if spec is None:
            raise ConfigError("spec is missing: the task needs its data's DataSpec (the CLI links data.spec)")
        check_positive(tbptt_steps=tbptt_steps, truncation_bias_every_n_steps=truncation_bias_every_n_steps)
        check_choice("scheduler_interval", scheduler_interval, ("step", "epoch"))
        spec = as_spec(spec)  # a dict: from a checkpoint's hyperparameters (saved as plain data)
        if self.kind is not None and spec.kind != self.kind:
            fits = TASK_OF_KIND.get(spec.kind)
            raise ConfigError(
                f"model {type(self).__name__} trains on data of kind {self.kind!r}, but the data's spec.kind is "
                f"{spec.kind!r}" + (f": use --model seqstab.tasks.{fits}" if fits else "")
            )
        self.save_hyperparameters(ignore=["clipping", "guard", "monitor", "truncation"])
        self.hparams["spec"] = dataclasses.asdict(spec)  # plain data: checkpoints load with weights_only=True
        self.hparams["net"] = net_recipe(net)  # {class_path, init_args}; None for a factory that cannot be said
        self.automatic_optimization = False
        self.spec = spec
        self.tbptt_steps = tbptt_steps
        self.truncation = tbptt.policy_of(tbptt_steps, truncation)
        self.truncation_bias_every_n_steps = truncation_bias_every_n_steps
        self._bias_due_at = 0  # the update from which the next truncation-bias measurement is due
        self.scheduler_interval = scheduler_interval
        if guard is None:
            guard = ExplosionGuard(policy="warn", snapshot=False)
        self.core = UpdateCore(clipping, guard, monitor or GradMonitor())
        check_fits_memory(type(self).__name__, lambda: self._build_modules(spec, net))
        self.encoder, input_size = self.build_encoder(spec)
        self.net = net_factory(net)(input_size)
        hidden_size = getattr(self.net, "hidden_size", None)
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ConfigError(
                f"net {type(self.net).__name__}: needs an int attribute hidden_size (the width H of its (B, L, H) "
                f"output), has {hidden_size!r}"
            )
        self.head = self.build_head(spec, hidden_size)
        self.carry = {split: tbptt.HiddenCarry() for split in ("train", "val", "test", "predict")}
        self.run = TrainerRun(self, self.net, self.replay_recipe)  # what the stations see of the Trainer
        self._resume = ExactResume()
        self._eval_sums: dict[str, torch.Tensor] = {}
        self._trained: list[torch.Tensor] | None = None  # the trained parameters, listed at an epoch's start
        self._bare_steps = False  # backward and step past Lightning's wrappers (internals.lightning_steps_are_bare)

    def _build_modules(self, spec: DataSpec, net: NetFactory | dict) -> list[nn.Module]:
        """Encoder, net and head as ``__init__`` builds them (for :func:`check_fits_memory`, on the meta device)."""
        encoder, input_size = self.build_encoder(spec)
        built = net_factory(net)(input_size)
        return [encoder, built, self.build_head(spec, getattr(built, "hidden_size", 1))]

    # -- the stations, by name ---------------------------------------------------------------------------------

    @property
    def clipping(self) -> ClipPolicy:
        return self.core.clipping

    @clipping.setter
    def clipping(self, policy: ClipPolicy | None) -> None:
        self.core.clipping = policy if policy is not None else NoClip()

    @property
    def guard(self) -> ExplosionGuard | None:
        return self.core.guard

    @guard.setter
    def guard(self, guard: ExplosionGuard | None) -> None:
        self.core.guard = guard

    @property
    def monitor(self) -> GradMonitor | None:
        return self.core.monitor

    @monitor.setter
    def monitor(self, monitor: GradMonitor | None) -> None:
        self.core.monitor = monitor

    @property
    def updates(self) -> int:
        """Updates attempted so far: the x axis of every per-update tag."""
        return self.core.updates

    # -- what a task defines -------------------------------------------------------------------------------

    def build_encoder(self, spec: DataSpec) -> tuple[nn.Module, int]:
        """Module applied to ``x`` before the net, and the net's input size. Default: identity on features."""
        return nn.Identity(), spec.input_size

    def build_head(self, spec: DataSpec, hidden_size: int) -> nn.Module:
        """Module mapping the net's ``(B, L, H)`` output to predictions."""
        raise NotImplementedError

    def step_losses(self, out: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-step terms ``(B, L)``: ``loss`` is trained on; every term is averaged over masked steps in eval."""
        raise NotImplementedError

    def eval_metrics(self, means: dict[str, float]) -> dict[str, float]:
        """Turn eval means of :meth:`step_losses` terms into the logged metrics (without the split prefix)."""
        return {"loss": means["loss"]}

    def reduce_loss(self, per_step: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Training loss of a chunk from per-step losses ``(B, k)``: the mean over its (masked) steps."""
        if mask is None:
            return per_step.mean()
        return (per_step * mask).sum() / mask.sum().clamp(min=1)

    # -- forward and the loss of a chunk --------------------------------------------------------------------

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        out, hidden = self.net(self.encoder(x), hidden)  # (B, L, H)
        return self.head(out), hidden

    def forward_batch(self, batch: dict[str, torch.Tensor], hidden: Hidden | None) -> tuple[torch.Tensor, Hidden]:
        """The output of a batch (or chunk) from ``hidden``, and the state after it: what training, evaluation and
        prediction run. Default: :meth:`forward` on ``x``; a task that reads more of the batch (a forecaster's
        known-future inputs) overrides it."""
        return self(batch["x"], hidden)

    def chunk_loss(self, chunk: dict[str, torch.Tensor], hidden: Hidden | None) -> tuple[torch.Tensor, Hidden]:
        """The training loss of one chunk from ``hidden``, and the state after it: what every caller trains on (the
        chunk loop, ``python -m seqstab.replay``)."""
        # in pieces where the policy reweights the gradient
        out, new_hidden = tbptt.forward(self.forward_batch, chunk, hidden)
        loss = self.reduce_loss(self.step_losses(out, chunk)["loss"], chunk.get("mask"))
        return tbptt.weighted(loss, chunk), new_hidden

    # -- the one optimization path ------------------------------------------------------------------------

    def configure_callbacks(self) -> list[pl.Callback]:
        internals.skip_unused_batch_hooks(self._resume)
        return [self._resume]

    def on_fit_start(self) -> None:
        self._bare_steps = internals.lightning_steps_are_bare(self.trainer, self)
        internals.keep_data_hooks(self.trainer)
        stations = {"clipping": self.clipping, "guard": self.guard, "truncation": self.truncation}
        self.core.start(self.run, hparam_values(self, stations), metric_tags(self))

    def on_fit_end(self) -> None:
        self.core.finish(self.run)

    def start_train_epoch(self) -> None:
        """An epoch begins (called by :class:`~seqstab.resume.ExactResume`): stateful streams restart from zeros."""
        self.carry["train"].reset()
        self._trained = None

    def _trained_parameters(self) -> list[torch.Tensor]:
        """The parameters that train (``requires_grad``), listed once an epoch (not at every update)."""
        if self._trained is None:
            self._trained = [p for p in self.parameters() if p.requires_grad]
        return self._trained

    def end_train_epoch(self) -> None:
        """An epoch ends (called by :class:`~seqstab.resume.ExactResume`): the per-epoch scheduler step."""
        self._step_scheduler("epoch")

    @internals.signature_kept  # Lightning reads it at every batch
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        noted = batch.pop(SCORED_STEPS, None)
        optimizer = self.optimizers()
        carry = self.carry["train"]
        batch_size, length = batch["x"].shape[0], batch["x"].shape[1]
        hidden = carry.get(batch_size) if self.spec.stateful else None
        windows = self.truncation.windows(length)
        params = self._trained_parameters()
        self._measure_truncation_bias(batch, windows, hidden, params)
        scored = self._scored_chunks(batch, windows, noted)
        at, stopped = 0, False  # hidden is the state before step `at`
        for i, window in enumerate(windows):
            if self._out_of_steps():
                stopped = True
                break
            hidden, at = self._advance(batch, hidden, at, window.start), window.start
            chunk = tbptt.window_chunk(batch, window, self.reduce_loss)
            carried = tbptt.carries(windows, i, length)  # the next window starts where this one stops
            if scored is not None and not scored[i]:  # no loss, no gradient: carry the state; no update, no log
                if carried:
                    with torch.no_grad():
                        _, hidden = self(chunk["x"], hidden)
                    at = window.stop
                continue
            self.core.arm(self.run)
            loss, new_hidden = self.chunk_loss(chunk, hidden)
            shown = self.core.last
            with tbptt.scaled_lr(optimizer, window.lr_scale):
                self.core.update(
                    self.run,
                    params,
                    loss,
                    backward=lambda loss: self._backward(optimizer, loss),
                    unscale=None if self._bare_steps else lambda: self._unscale(optimizer),  # bare: 32-bit, no scaler
                    step=lambda: self._step(optimizer),
                    chunk=chunk,
                    hidden_in=hidden,
                )
            if self.core.last is not shown:  # read back at this update: the progress bar's loss (no sync of its own)
                internals.show_in_progress_bar(self.trainer, "loss", self.core.last.values["train/loss"])
            if carried:
                hidden, at = tbptt.detach(new_hidden), window.stop
            if self.core.stop_requested:
                self.trainer.should_stop = stopped = True
                break
        if self.spec.stateful:
            carry.put(hidden if stopped else self._advance(batch, hidden, at, length), batch_size)

    def _advance(self, batch: dict[str, torch.Tensor], hidden: Hidden | None, at: int, to: int) -> Hidden | None:
        """The state before step ``to`` from the state before step ``at``: a forward without grad over the steps
        between (where windows overlap, or a skipped window left them); nothing when ``at == to``."""
        if at >= to:
            return hidden
        with torch.no_grad():
            return self(batch["x"][:, at:to], hidden)[1]

    def _measure_truncation_bias(self, batch, windows, hidden, params) -> None:
        """``truncation_bias_every_n_steps``: the policy's gradient of this batch against full BPTT's, logged at the
        batch's first update (see :func:`seqstab.tbptt.truncation_bias`)."""
        every = self.truncation_bias_every_n_steps
        if every is None or self.updates < self._bias_due_at or not self.run.loggers:
            return
        self._bias_due_at = (self.updates // every + 1) * every
        values = tbptt.truncation_bias(self, batch, windows, hidden, params)
        log_metrics(self.run, values, self.updates)

    def _scored_chunks(
        self, batch: dict[str, torch.Tensor], windows: list[tbptt.Window], noted: tuple[bool, ...] | None
    ) -> list[bool] | None:
        """Which windows of the batch score a step on any process (None: all, the batch has no mask). ``noted``: the
        batch's scored steps as its loader noted them on the host (:class:`seqstab.data.loaders.NoteScoredSteps`,
        which seqstab's tasks put on their training loader): no device sync; without them the mask is read back.
        A window trained on one rank and skipped on another would leave DDP's gradient all-reduce waiting: on
        several processes the flags are all-reduced (one read per batch)."""
        if batch.get("mask") is None:
            return None
        per_step = noted if noted is not None else tbptt.scored_steps(batch["mask"]).tolist()  # noted: on the host
        flags = tbptt.scored_windows(per_step, windows)
        if self.trainer.world_size > 1:
            flags_now = torch.tensor(flags, dtype=torch.float32, device=self.device)
            summed = self.trainer.strategy.reduce(flags_now, reduce_op="sum")
            flags = (summed > 0).tolist()
        return flags

    def _out_of_steps(self) -> bool:
        max_steps = self.trainer.max_steps
        return max_steps is not None and 0 <= max_steps <= self.trainer.global_step

    # -- the callables the update core is given: backward, AMP unscaling, step, skip --------------------------

    def _backward(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self._bare_steps:  # all that manual_backward would do here (one device, no hooks, no loss scaling)
            loss.backward()
        else:
            self.manual_backward(loss)  # DDP all-reduce happens here

    def _unscale(self, optimizer) -> None:
        """Under 16-bit AMP with a GradScaler the policy must see unscaled gradients (Lightning #18089)."""
        scaler = self.run.scaler
        if scaler is not None:
            scaler.unscale_(optimizer.optimizer)

    def _step(self, optimizer) -> None:
        """Step through Lightning (its hooks, ``global_step``; where they are all no-ops, only the step and its count),
        then a per-update scheduler. Under a GradScaler the gradients were unscaled at :meth:`_unscale`, so
        Lightning's second unscale is turned off for this step."""
        if self._bare_steps:
            internals.count_step(optimizer)
        elif (scaler := self.run.scaler) is None:
            optimizer.step()
        else:
            with internals.unscaled_once(scaler):
                optimizer.step()
        if self.scheduler_interval == "step":  # a per-epoch or plateau scheduler never steps here
            self._step_scheduler("step")

    def _step_scheduler(self, event: Literal["step", "epoch", "validation"], metrics: dict | None = None) -> None:
        """Step the LR scheduler on its event: ReduceLROnPlateau after validation, others per ``scheduler_interval``."""
        scheduler = self.lr_schedulers()
        if scheduler is None:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            value = (metrics or {}).get(getattr(scheduler, "monitor", "val/loss"))
            if event == "validation" and value is not None:
                scheduler.step(value)
        elif event == self.scheduler_interval:
            scheduler.step()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam(lr=1e-3) unless the config names an optimizer (``--optimizer``, ``--lr_scheduler``)."""
        return torch.optim.Adam(self.parameters(), lr=1e-3)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.updates == 0 and self.tbptt_steps is not None and self.tbptt_steps > batch["x"].shape[1]:
            rank_zero_warn(
                f"model.tbptt_steps={self.tbptt_steps} is longer than a batch ({batch['x'].shape[1]} steps): each "
                "batch is one chunk, truncated BPTT cuts nothing",
                category=UserWarning,
            )

    # -- checkpoint: the task's own state (the resume machinery is seqstab.resume.ExactResume) -----------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.core.flush(self.run, complete=True)  # every update read back (the guard's state is whole), every
        # spectrum measured so far written: a run resumed from here misses none
        check_finite_weights(checkpoint["state_dict"])  # never write a checkpoint holding inf/nan weights
        checkpoint.setdefault(STATE_KEY, {}).update(self.core.state_dict())
        checkpoint[STATE_KEY]["truncation"] = self.truncation.state_dict()  # a random policy's generator

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = internals.attached_trainer(self)
        try:
            check_shapes(
                self.state_dict(), checkpoint.get("state_dict", {}), str(getattr(trainer, "ckpt_path", "") or "")
            )
        except CheckpointError as err:
            saved, mine = flatten(checkpoint.get("hyper_parameters") or {}), flatten(dict(self.hparams))
            differs = [f"{k}={saved[k]!r}" for k in mine if k in saved and saved[k] != mine[k]]
            hint = f" (it was made with {', '.join(differs)})" if differs else ""
            raise CheckpointError(f"{err}{hint}") from None
        self.core.load_state_dict(checkpoint.get(STATE_KEY, {}))
        self.truncation.load_state_dict(checkpoint.get(STATE_KEY, {}).get("truncation", {}))

    def replay_recipe(self) -> dict[str, Any]:
        """How ``python -m seqstab.replay`` rebuilds this task from a snapshot (read on a guard event)."""
        return {
            "kind": "task",
            "class_path": class_path(type(self)),
            "hparams": dict(self.hparams),
            "clipping": object_recipe(self.clipping),
        }


def metric_tags(task: SeqTask) -> list[str]:
    """The tags shown as HPARAMS metric columns: training loss, the task's eval metrics, norm, gradient flow."""
    try:
        evals = [f"val/{name}" for name in task.eval_metrics(defaultdict(lambda: 1.0))]
    except Exception:  # a task whose eval_metrics needs more than numbers
        evals = ["val/loss"]
    tags = ["train/loss", *evals, "grad/norm_total"]
    if task.monitor is not None and task.monitor.grad_flow_every_n_steps is not None:
        tags.append("grad_flow/growth")
    if task.guard is not None:
        tags.append("explosion/events")
    return tags


TASK_OF_KIND = {
    "lm": "LanguageModel",
    "forecast": "Forecaster",
    "regression": "SequenceRegressor",
    "classification": "SequenceClassifier",
}
