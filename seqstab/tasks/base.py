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
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from seqstab import internals
from seqstab.core import tbptt
from seqstab.core.clipping import ClipPolicy, NoClip
from seqstab.core.errors import ConfigError, check_positive
from seqstab.core.guard import ExplosionGuard, check_finite_weights
from seqstab.core.io import CheckpointError, check_shapes
from seqstab.core.monitor import GradMonitor
from seqstab.core.recipes import NetFactory, class_path, declared, flatten, net_factory, net_recipe, object_recipe
from seqstab.core.record import Action, Update, log_metrics
from seqstab.core.update import UpdateCore
from seqstab.data.module import DataSpec, as_spec
from seqstab.lightning.predictions import ForecastWriter
from seqstab.lightning.resume import STATE_KEY, ExactResume
from seqstab.lightning.trainer_run import TrainerRun, hparam_values
from seqstab.nets.fused import linear_cross_entropy
from seqstab.nets.recurrent import Hidden, RecurrentNet, sizing_only

__all__ = ["Forecaster", "LanguageModel", "SeqTask", "SequenceClassifier", "SequenceRegressor", "Update"]


class SeqTask(pl.LightningModule):
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
        if scheduler_interval not in ("step", "epoch"):
            raise ConfigError(f"scheduler_interval={scheduler_interval!r}: must be 'step' or 'epoch'")
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
        return [self._resume]

    def on_fit_start(self) -> None:
        stations = {"clipping": self.clipping, "guard": self.guard, "truncation": self.truncation}
        self.core.start(self.run, hparam_values(self, stations), metric_tags(self))

    def on_fit_end(self) -> None:
        self.core.finish(self.run)

    def start_train_epoch(self) -> None:
        """An epoch begins (called by :class:`~seqstab.resume.ExactResume`): stateful streams restart from zeros."""
        self.carry["train"].reset()

    def end_train_epoch(self) -> None:
        """An epoch ends (called by :class:`~seqstab.resume.ExactResume`): the per-epoch scheduler step."""
        self._step_scheduler("epoch")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        optimizer = self.optimizers()
        carry = self.carry["train"]
        batch_size, length = batch["x"].shape[0], batch["x"].shape[1]
        hidden = carry.get(batch_size) if self.spec.stateful else None
        windows = self.truncation.windows(length)
        params = [p for p in self.parameters() if p.requires_grad]
        self._measure_truncation_bias(batch, windows, hidden, params)
        scored = self._scored_chunks(batch, windows)
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
            with tbptt.scaled_lr(optimizer, window.lr_scale):
                update = self.core.update(
                    self.run,
                    params,
                    loss,
                    backward=lambda loss: self._backward(optimizer, loss),
                    unscale=lambda: self._unscale(optimizer),
                    step=lambda: self._step(optimizer),
                    skip=lambda: self._skip(optimizer),
                    chunk=chunk,
                    hidden_in=hidden,
                )
            self.log("loss", update.values["train/loss"], prog_bar=True, logger=False)
            if carried:
                hidden, at = tbptt.detach(new_hidden), window.stop
            if update.action is Action.STOP:
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

    def _scored_chunks(self, batch: dict[str, torch.Tensor], windows: list[tbptt.Window]) -> list[bool] | None:
        """Which windows of the batch score a step on any process (None: all, the batch has no mask). A window
        trained on one rank and skipped on another would leave DDP's gradient all-reduce waiting. With a mask: one
        host read (and, on several processes, one all-reduce) per batch; without, nothing."""
        flags = tbptt.scored(batch, windows)
        if flags is None:
            return None
        if self.trainer.world_size > 1:
            flags = self.trainer.strategy.reduce(flags.float(), reduce_op="sum") > 0
        return flags.tolist()

    def _out_of_steps(self) -> bool:
        max_steps = self.trainer.max_steps
        return max_steps is not None and 0 <= max_steps <= self.trainer.global_step

    # -- the callables the update core is given: backward, AMP unscaling, step, skip --------------------------

    def _backward(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)  # DDP all-reduce happens here

    def _unscale(self, optimizer) -> None:
        """Under 16-bit AMP with a GradScaler the policy must see unscaled gradients (Lightning #18089)."""
        scaler = self.run.scaler
        if scaler is not None:
            scaler.unscale_(optimizer.optimizer)

    def _step(self, optimizer) -> None:
        """Step through Lightning (its hooks, ``global_step``), then a per-update scheduler. Under a GradScaler the
        gradients were unscaled at :meth:`_unscale`, so Lightning's second unscale is turned off for this step."""
        scaler = self.run.scaler
        if scaler is None:
            optimizer.step()
        else:
            with internals.unscaled_once(scaler):
                optimizer.step()
        self._step_scheduler("step")

    def _skip(self, optimizer) -> None:
        """The update is not applied; a GradScaler still closes its iteration so the next unscale is legal."""
        optimizer.zero_grad(set_to_none=True)
        scaler = self.run.scaler
        if scaler is not None:
            scaler.update()

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

    # -- evaluation: whole batches, hidden state carried within the pass when the data is stateful ---------

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str) -> None:
        carry = self.carry[split]
        batch_size = batch["x"].shape[0]
        hidden = carry.get(batch_size) if self.spec.stateful else None
        out, hidden = self.forward_batch(batch, hidden)
        if self.spec.stateful:
            carry.put(hidden, batch_size)
        terms = self.step_losses(out, batch)
        mask = batch.get("mask")
        weight = torch.ones_like(terms["loss"]) if mask is None else mask.to(terms["loss"].dtype)
        for name, value in terms.items():
            self._eval_sums[name] = self._eval_sums.get(name, 0) + (value.detach() * weight).sum().double()
        self._eval_sums["_count"] = self._eval_sums.get("_count", 0) + weight.sum().double()

    def _eval_epoch_end(self, split: str) -> dict[str, float]:
        sums = {k: self.trainer.strategy.reduce(v, reduce_op="sum") for k, v in self._eval_sums.items()}
        self._eval_sums = {}
        if not sums:
            return {}
        count = sums.pop("_count").clamp(min=1)
        means = {name: (value / count).item() for name, value in sums.items()}
        metrics = {f"{split}/{name}": value for name, value in self.eval_metrics(means).items()}
        if self.trainer.sanity_checking:
            return metrics
        for name, value in metrics.items():
            self.log(name, value, logger=False, prog_bar=name == f"{split}/{self.main_metric}")
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.updates)
        return metrics

    def on_validation_epoch_start(self) -> None:
        self.carry["val"].reset()
        self._eval_sums = {}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        metrics = self._eval_epoch_end("val")
        if not self.trainer.sanity_checking:
            self._step_scheduler("validation", metrics)

    def on_test_epoch_start(self) -> None:
        self.carry["test"].reset()
        self._eval_sums = {}

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_predict_epoch_start(self) -> None:
        self.carry["predict"].reset()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
        """The network's output ``(B, L, ...)``, the hidden state carried from batch to batch as in evaluation."""
        return self._predict(batch)[0]

    def _predict(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output of every step and the ``(B, L)`` mask of the scored ones (None: all)."""
        carry, batch_size = self.carry["predict"], batch["x"].shape[0]
        hidden = carry.get(batch_size) if self.spec.stateful else None
        out, hidden = self.forward_batch(batch, hidden)
        if self.spec.stateful:
            carry.put(hidden, batch_size)
        return out, batch.get("mask")

    # -- checkpoint: the task's own state (the resume machinery is seqstab.resume.ExactResume) -----------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
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


def check_fits_memory(name: str, build: Callable[[], list[nn.Module]]) -> None:
    """Refuse, before allocating anything, a model whose weights and gradients exceed the free memory: its modules
    are built on the ``meta`` device (no storage, no initialisation, the RNG untouched) and their parameters counted.
    Nothing is checked where that build fails or the free memory cannot be read."""
    available = available_memory()
    if available is None:
        return
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"), sizing_only():
            modules = build()
    except Exception:  # a net that needs real values to be built: allocate as usual
        return
    count = sum(p.numel() for m in modules for p in m.parameters())
    needed = 2 * sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    if needed > available:
        raise ConfigError(
            f"model {name}: {count:.3g} parameters need {needed / 2**30:.3g} GiB for weights and gradients alone, "
            f"more than the {available / 2**30:.3g} GiB of memory free here (lower net.hidden_size or num_layers)"
        )


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation (Linux ``MemAvailable``); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


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


def _uniform_(module: nn.Module | nn.Parameter, scale: float | None) -> nn.Module | nn.Parameter:
    """U(±scale) on a parameter or on every parameter of a module; nothing when ``scale`` is None."""
    if scale is not None:
        with torch.no_grad():
            for p in [module] if isinstance(module, nn.Parameter) else module.parameters():
                p.uniform_(-scale, scale)
    return module


def _net_argument(kwargs: dict[str, Any]) -> NetFactory | dict:
    """The ``net`` a subclass passes on to :class:`SeqTask` (read here, not in the subclass's ``__init__``, where
    jsonargparse would take ``kwargs.get("net")`` for an untyped parameter of the subclass)."""
    return kwargs.get("net", RecurrentNet)


def _check_dropout(dropout: float) -> None:
    if not 0 <= dropout < 1:
        raise ConfigError(f"dropout={dropout!r}: must be in [0, 1)")


FUSED_MIN_VOCAB = 4096  # fused_loss='auto' from this vocabulary up (benchmarks/bench_throughput.py --fused)

TASK_OF_KIND = {
    "lm": "LanguageModel",
    "forecast": "Forecaster",
    "regression": "SequenceRegressor",
    "classification": "SequenceClassifier",
}


class LanguageModel(SeqTask):
    """Next-token prediction: embedding → recurrent net → decoder; cross-entropy.

    Logs ``val/loss`` (token mean), ``val/ppl`` and, for character-level data, ``val/bpc``.

    Args:
        embedding_size: Embedding width (the net's input size); None uses the net's ``hidden_size``.
        tie_weights: Share the embedding and decoder weights (needs ``embedding_size`` equal to the net's
            ``hidden_size``).
        loss_reduction: ``token_mean`` (pytorch/examples; clip 0.25) or ``sum_over_time`` — summed over the
            chunk's steps, averaged over the batch (Zaremba et al. 2014; clip 5). Evaluation is always per token.
        embedding_init: Initialise the embedding and decoder weights U(±a), whatever the net does to its own
            (pytorch/examples: 0.1, the LSTM at PyTorch's default). None leaves PyTorch's defaults.
        decoder_bias: With ``embedding_init``: the decoder bias starts at ``zero`` (pytorch/examples) or ``uniform``
            U(±a) like every other weight (Zaremba et al. 2014, with the net's ``init: uniform``).
        dropout: Dropout on the embedding's output and on the net's output before the decoder (the net's own
            dropout, between its layers, is ``net.init_args.dropout``).
        fused_loss: Train on the decoder and cross-entropy fused and chunked (``seqstab.fused``: the ``(B·k, V)``
            logits never held in full; equal to the unfused loss up to float32 rounding). ``auto``: where measured
            faster (:data:`FUSED_MIN_VOCAB`: float32 on the CPU, vocabulary ≥ 4,096, the task's own forward and
            losses); ``true``: always (under autocast in float32); ``false``: never. Evaluation is unfused.
        **kwargs: The net, truncation and stations: see :class:`SeqTask`.
    """

    kind = "lm"
    main_metric = "ppl"

    def __init__(
        self,
        embedding_size: int | None = None,
        tie_weights: bool = False,
        loss_reduction: Literal["token_mean", "sum_over_time"] = "token_mean",
        embedding_init: float | None = None,
        decoder_bias: Literal["zero", "uniform"] = "zero",
        dropout: float = 0.0,
        fused_loss: bool | Literal["auto"] = "auto",
        **kwargs,
    ):
        check_positive(embedding_size=embedding_size, embedding_init=embedding_init)
        _check_dropout(dropout)
        if fused_loss not in (True, False, "auto"):
            raise ConfigError(f"fused_loss={fused_loss!r}: must be true, false or 'auto'")
        if loss_reduction not in ("token_mean", "sum_over_time"):
            raise ConfigError(f"loss_reduction={loss_reduction!r}: must be 'token_mean' or 'sum_over_time'")
        if decoder_bias not in ("zero", "uniform"):
            raise ConfigError(f"decoder_bias={decoder_bias!r}: must be 'zero' or 'uniform'")
        if decoder_bias == "uniform" and embedding_init is None:
            raise ConfigError("decoder_bias='uniform' needs embedding_init (the a of U(±a))")
        if embedding_size is None:
            embedding_size = declared(_net_argument(kwargs), "hidden_size")
            if not isinstance(embedding_size, int):
                raise ConfigError("embedding_size: the net's hidden_size cannot be read from model.net; set it")
        self.embedding_size, self.tie_weights, self.loss_reduction = embedding_size, tie_weights, loss_reduction
        self.embedding_init, self.decoder_bias, self.dropout = embedding_init, decoder_bias, dropout
        self.fused_loss = fused_loss
        super().__init__(**kwargs)
        if tie_weights:
            if self.head[1].weight.shape != self.encoder[0].weight.shape:
                raise ConfigError(
                    f"tie_weights=True: embedding_size={self.encoder[0].weight.shape[1]} must equal the net's "
                    f"hidden_size={self.head[1].weight.shape[1]}"
                )
            self.head[1].weight = self.encoder[0].weight

    def build_encoder(self, spec):
        check_positive(vocab_size=spec.vocab_size)
        embedding = _uniform_(nn.Embedding(spec.vocab_size, self.embedding_size), self.embedding_init)
        return nn.Sequential(embedding, nn.Dropout(self.dropout)), self.embedding_size

    def build_head(self, spec, hidden_size):
        decoder = nn.Linear(hidden_size, spec.vocab_size)
        if self.decoder_bias == "uniform":
            _uniform_(decoder, self.embedding_init)  # weight, then bias
        elif self.embedding_init is not None:
            _uniform_(decoder.weight, self.embedding_init)
            nn.init.zeros_(decoder.bias)
        return nn.Sequential(nn.Dropout(self.dropout), decoder)

    def step_losses(self, out, batch):
        ce = F.cross_entropy(out.flatten(0, 1), batch["y"].flatten(), reduction="none")  # (B*L,)
        return {"loss": ce.view_as(batch["y"])}  # (B, L)

    def chunk_loss(self, chunk, hidden):
        if not self._fused(chunk["x"]):
            return super().chunk_loss(chunk, hidden)
        # the net's output, in pieces where the truncation policy reweights the gradient (as the unfused loss)
        out, new_hidden = tbptt.forward(lambda piece, h: self.net(self.encoder(piece["x"]), h), chunk, hidden)
        out, decoder, y, mask = self.head[0](out), self.head[1], chunk["y"], chunk.get("mask")  # out: (B, k, H)
        ones = torch.ones(y.shape, dtype=torch.float32, device=y.device) if mask is None else mask.float()
        # sum over time, mean over the batch | token mean over the (masked) steps
        weight = ones / y.shape[0] if self.loss_reduction == "sum_over_time" else ones / ones.sum().clamp(min=1)
        with torch.autocast(out.device.type, enabled=False):
            loss = linear_cross_entropy(
                out.flatten(0, 1).float(), decoder.weight.float(), decoder.bias.float(), y.flatten(), weight.flatten()
            )
        return tbptt.weighted(loss, chunk), new_hidden

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether this chunk trains on :func:`seqstab.fused.linear_cross_entropy` (``fused_loss``)."""
        if self.fused_loss != "auto":
            return bool(self.fused_loss)
        own = type(self)
        return (
            x.device.type == "cpu"
            and self.spec.vocab_size >= FUSED_MIN_VOCAB
            and self.head[1].weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and own.forward is SeqTask.forward
            and own.step_losses is LanguageModel.step_losses
            and own.reduce_loss is LanguageModel.reduce_loss
        )

    def reduce_loss(self, per_step, mask):
        if self.loss_reduction == "sum_over_time":
            kept = per_step if mask is None else per_step * mask
            return kept.sum() / per_step.shape[0]  # sum over time, mean over the batch
        return super().reduce_loss(per_step, mask)

    def eval_metrics(self, means):
        metrics = {"loss": means["loss"], "ppl": math.exp(min(means["loss"], 700.0))}
        if self.spec.char_level:
            metrics["bpc"] = means["loss"] / math.log(2)
        return metrics


class Forecaster(SeqTask):
    """Real-valued features in; at every step, the next ``horizon`` values of the targets out. MSE loss.

    Reports ``val/mae`` and ``val/rmse`` in the data's original units (the datamodule's normalisation undone), and
    with ``norm_metrics`` also ``val/mse_norm`` and ``val/mae_norm`` (``test/...`` likewise): on the train-normalised
    scale, averaged over every horizon step and target, as the forecasting literature reports them. A batch's
    ``level`` (per-window normalisation, ``CSVSeries(window_norm=...)``) is added to the output, so forecasts and
    metrics are on the global scale whatever the datamodule subtracted.

    Args:
        predict: ``level`` (default): the head's output is the forecast. ``change``: the forecast of every horizon
            step is the last observed value of each target (read from ``x`` at the current step, at the data's
            ``DataSpec.target_index``) plus the head's output, and the head's output layer starts at zero, so the
            untrained model makes the naive last-value forecast and learns a correction to it. Needs data whose
            inputs hold the targets (the time-series datamodules do).
        dropout: Dropout on the net's output before the head (the net's own, between its layers, is
            ``net.init_args.dropout``).
        head: ``linear`` (default): one linear map from the net's output at step ``t`` to all ``horizon`` forecasts.
            ``decoder``: the encoder–decoder head (:class:`seqstab.forecast.RolloutDecoder`): a cell started from
            the net's output, unrolled over the horizon, fed the horizon's known inputs (``DataSpec.known_size``,
            the batch's ``known``) and its own previous prediction. It runs only at the scored steps.
        decoder_cell: The decoder's cell: ``lstm``, ``gru`` or ``rnn``.
        norm_metrics: Also log ``val/mse_norm`` and ``val/mae_norm`` (and ``test/``) on the normalised scale.
        **kwargs: The net, truncation and stations: see :class:`SeqTask`.
    """

    kind = "forecast"
    main_metric = "mae"

    def __init__(
        self,
        predict: Literal["level", "change"] = "level",
        dropout: float = 0.0,
        head: Literal["linear", "decoder"] = "linear",
        decoder_cell: Literal["lstm", "gru", "rnn"] = "lstm",
        norm_metrics: bool = False,
        **kwargs,
    ):
        if predict not in ("level", "change"):
            raise ConfigError(f"predict={predict!r}: must be 'level' or 'change'")
        if head not in ("linear", "decoder"):
            raise ConfigError(f"head={head!r}: must be 'linear' or 'decoder'")
        _check_dropout(dropout)
        self.predict, self.dropout, self.head_kind, self.decoder_cell = predict, dropout, head, decoder_cell
        self.norm_metrics = norm_metrics
        super().__init__(**kwargs)

    def build_head(self, spec, hidden_size):
        check_positive(input_size=spec.input_size, output_size=spec.output_size, horizon=spec.horizon)
        if self.head_kind == "decoder":
            from seqstab.nets.decoder import RolloutDecoder

            self._target_index(spec, needed=self.predict == "change")
            residual = self.predict == "change"
            decoder = RolloutDecoder(
                hidden_size, spec.output_size, spec.known_size, spec.horizon, self.decoder_cell, residual
            )
            return nn.Sequential(nn.Dropout(self.dropout), decoder)
        linear = nn.Linear(hidden_size, spec.horizon * spec.output_size)
        if self.predict == "change":
            self._target_index(spec, needed=True)
            nn.init.zeros_(linear.weight)  # the untrained model is the naive forecast
            nn.init.zeros_(linear.bias)
        return nn.Sequential(nn.Dropout(self.dropout), linear)

    def _target_index(self, spec: DataSpec, needed: bool) -> None:
        """The ``target_index`` buffer (where the targets sit among the inputs), if the data has one."""
        index = spec.target_index
        if index is None or len(index) != spec.output_size or not all(0 <= i < spec.input_size for i in index):
            if needed:
                raise ConfigError(
                    f"predict='change' needs the targets among the inputs, but the data's target_index is {index!r} "
                    f"(output_size {spec.output_size}, input_size {spec.input_size}); use predict: level"
                )
            return
        self.register_buffer("target_index", torch.tensor(index, dtype=torch.long), persistent=False)

    def forward(self, x, hidden=None):
        if self.head_kind == "decoder":
            return self._rollout(x, hidden, None, None)
        out, hidden = super().forward(x, hidden)
        out = out.unflatten(-1, (self.spec.horizon, self.spec.output_size))  # (B, L, horizon, C)
        if self.predict == "change":
            out = out + x.index_select(-1, self.target_index).unsqueeze(-2)  # + last value (B, L, 1, C)
        return out, hidden

    def forward_batch(self, batch, hidden):
        """:meth:`forward`, the decoder fed the batch's ``known`` inputs at its scored steps, plus ``level``."""
        if self.head_kind == "decoder":
            out, hidden = self._rollout(batch["x"], hidden, batch.get("known"), batch.get("mask"))
        else:
            out, hidden = self(batch["x"], hidden)
        if "level" in batch:
            out = out + batch["level"].unsqueeze(-2)  # (B, L, 1, C): the window's level, back
        return out, hidden

    def _rollout(self, x, hidden, known, mask):
        """The decoder head at the scored steps ``S`` (zeros elsewhere: they carry no loss)."""
        from seqstab.nets.decoder import scored_steps

        encoded, hidden = self.net(self.encoder(x), hidden)  # (B, L, hidden)
        batch, length = encoded.shape[:2]
        steps = scored_steps(mask, length, x.device)  # (S,)
        state = self.head[0](encoded.index_select(1, steps)).flatten(0, 1)  # (B·S, hidden)
        seen = x.index_select(1, steps)  # (B, S, input_size)
        if hasattr(self, "target_index"):
            last = seen.index_select(-1, self.target_index).flatten(0, 1)  # (B·S, C) the last observed targets
        else:
            last = seen.new_zeros(batch * len(steps), self.spec.output_size)
        ahead = None if known is None else known.index_select(1, steps).flatten(0, 1)  # (B·S, horizon, K)
        forecast = self.head[1](state, last, ahead).unflatten(0, (batch, len(steps)))  # (B, S, horizon, C)
        shape = (batch, length, self.spec.horizon, self.spec.output_size)
        return forecast.new_zeros(shape).index_copy(1, steps, forecast), hidden

    def configure_callbacks(self) -> list[pl.Callback]:
        return [*super().configure_callbacks(), ForecastWriter()]

    def predict_step(self, batch, batch_idx):
        """The forecasts of the scored steps, with what was observed (NaN past the data) and, when the batch has
        ``row``, each step's row: what :class:`seqstab.predictions.ForecastWriter` writes to ``predictions.csv``."""
        out, mask = self._predict(batch)
        keep = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device) if mask is None else mask.bool()
        result = {"forecast": out[keep], "observed": batch["y"][keep]}  # (N, horizon, C) normalised units
        if "row" in batch:
            result["row"] = batch["row"][keep]
        return result

    def step_losses(self, out, batch):
        err = out - batch["y"]  # (B, L, horizon, C), normalised units
        scale = torch.as_tensor(self.spec.target_scale or 1.0, dtype=err.dtype, device=err.device)
        terms = {
            "loss": err.pow(2).mean(dim=(-2, -1)),
            "abs": (err * scale).abs().mean(dim=(-2, -1)),
            "sq": (err * scale).pow(2).mean(dim=(-2, -1)),
        }
        if self.norm_metrics:
            terms["abs_norm"] = err.abs().mean(dim=(-2, -1))  # (B, L); the squared one is "loss"
        return terms

    def eval_metrics(self, means):
        metrics = {"loss": means["loss"], "mae": means["abs"], "rmse": math.sqrt(means["sq"])}
        if self.norm_metrics:
            metrics.update(mse_norm=means["loss"], mae_norm=means["abs_norm"])
        return metrics


class SequenceRegressor(SeqTask):
    """Regression on marked steps (e.g. the adding problem: the last step). MSE loss.

    Args:
        **kwargs: The net, truncation and stations: see :class:`SeqTask`.
    """

    kind = "regression"

    def build_head(self, spec, hidden_size):
        check_positive(input_size=spec.input_size, output_size=spec.output_size)
        return nn.Linear(hidden_size, spec.output_size)

    def step_losses(self, out, batch):
        return {"loss": (out - batch["y"]).pow(2).mean(dim=-1)}  # (B, L)


class SequenceClassifier(SeqTask):
    """Classification on marked steps (copying memory, temporal order). Cross-entropy; reports accuracy.

    Args:
        **kwargs: The net, truncation and stations: see :class:`SeqTask`.
    """

    kind = "classification"
    main_metric = "acc"

    def build_head(self, spec, hidden_size):
        check_positive(input_size=spec.input_size, output_size=spec.output_size)
        return nn.Linear(hidden_size, spec.output_size)

    def step_losses(self, out, batch):
        ce = F.cross_entropy(out.flatten(0, 1), batch["y"].flatten(), reduction="none").view_as(batch["y"])
        correct = (out.argmax(dim=-1) == batch["y"]).to(out.dtype)
        return {"loss": ce, "acc": correct}  # (B, L) each

    def eval_metrics(self, means):
        return {"loss": means["loss"], "acc": means["acc"]}
