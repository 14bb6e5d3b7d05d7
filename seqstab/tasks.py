"""LightningModules: each wraps one :class:`~seqstab.nets.RecurrentNet` and trains through one loop.

The one optimization path (``SeqTask.training_step``), for every task and every feature::

    for chunk in chunks(batch, tbptt_steps):            # seqstab.tbptt: chunks of LENGTH k
        no scored step in the chunk: carry the state    # forward without grad; no update, nothing logged
        forward from the carried hidden state           # monitor.arm: gradient-flow hooks on h_t
        loss (masked; token mean or sum over time)
        manual_backward                                 # DDP all-reduce happens here
        unscale (AMP)                                   # clipping must see unscaled gradients
        clipping policy -> ClipResult                   # one fused norm pass, no host sync
        read back loss + norms                          # the one host sync of the update
        explosion guard -> step | skip | stop
        optimizer.step, scheduler.step
        log (one logging step per update)
        detach hidden                                   # cut the graph at the chunk boundary

Nothing else steps an optimizer, clips or measures norms. New behaviour is an object plugged into a station.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from datamodules.base import DataSpec, in_order_across_ranks
from seqstab import tbptt
from seqstab.checkpoint import CheckpointError, check_shapes, make_quiet, make_resumable, rng_state, set_rng_state
from seqstab.clipping import ClipPolicy, ClipResult, NoClip
from seqstab.errors import ConfigError, check_positive
from seqstab.guard import Action, ExplosionGuard, check_finite_weights
from seqstab.monitor import GradMonitor
from seqstab.nets import Cell, Hidden, Init, Nonlinearity, RecurrentNet


@dataclass
class Update:
    """One update of the optimization path, as the guard and the monitor see it.

    Attributes:
        step: Index of this update (0-based; skipped updates count too).
        chunk: The chunk trained on (``x``, ``y``, optional ``mask``), ``(B, k, ...)``.
        hidden_in: The (detached) hidden state the chunk started from; None for zeros.
        clip: What the clipping policy did (device tensors).
        values: ``train/loss`` and the clip results read back as floats (``grad/norm_total`` ...).
    """

    step: int
    chunk: dict[str, torch.Tensor]
    hidden_in: Hidden | None
    clip: ClipResult
    values: dict[str, float]


class SeqTask(pl.LightningModule):
    """Base of seqstab's tasks: the recurrent net, the truncated-BPTT loop and its stations.

    Args:
        spec: Sizes and statefulness of the data; the CLI links it from ``data.spec``.
        hidden_size: Units per recurrent layer.
        num_layers: Stacked recurrent layers.
        cell: ``rnn`` (vanilla), ``lstm`` or ``gru``.
        nonlinearity: For ``cell: rnn``: ``tanh``, ``relu`` or ``linear``.
        dropout: Dropout between stacked layers (and on the task's input and output where it has them).
        init: Recurrent initialisation: ``default``, ``uniform``, ``xavier``, ``orthogonal`` or ``identity``.
        init_scale: The ``a`` of ``uniform`` (±a) initialisation.
        spectral_radius: Rescale each gate block of ``W_hh`` to exactly this spectral radius after init.
        residual: Residual connections between stacked layers.
        layer_norm: Layer normalisation between stacked layers.
        tbptt_steps: Chunk length ``k`` of truncated BPTT; None trains on the whole batch (full BPTT).
        clipping: Clipping policy (``seqstab.clipping``); None measures only (``NoClip``).
        guard: Explosion guard (``seqstab.guard.ExplosionGuard``); None uses ``ExplosionGuard(policy='warn',
            snapshot=False)``: events are logged, non-finite updates are skipped, nothing else changes.
        monitor: What to measure and how often (``seqstab.monitor.GradMonitor``); None uses its defaults.
        scheduler_interval: Step the LR scheduler after every ``step`` (update) or every ``epoch``.
    """

    def __init__(
        self,
        spec: DataSpec | None = None,
        hidden_size: int = 128,
        num_layers: int = 1,
        cell: Cell = "lstm",
        nonlinearity: Nonlinearity = "tanh",
        dropout: float = 0.0,
        init: Init = "default",
        init_scale: float = 0.1,
        spectral_radius: float | None = None,
        residual: bool = False,
        layer_norm: bool = False,
        tbptt_steps: int | None = None,
        clipping: ClipPolicy | None = None,
        guard: ExplosionGuard | None = None,
        monitor: GradMonitor | None = None,
        scheduler_interval: Literal["step", "epoch"] = "epoch",
    ):
        super().__init__()
        if spec is None:
            raise ConfigError("spec is missing: the task needs its data's DataSpec (the CLI links data.spec)")
        check_positive(tbptt_steps=tbptt_steps)
        if scheduler_interval not in ("step", "epoch"):
            raise ConfigError(f"scheduler_interval={scheduler_interval!r}: must be 'step' or 'epoch'")
        if isinstance(spec, dict):  # from a checkpoint's hyperparameters (saved as plain data)
            spec = DataSpec(**spec)
        self.save_hyperparameters(ignore=["clipping", "guard", "monitor"])
        self.hparams["spec"] = dataclasses.asdict(spec)  # plain data: checkpoints load with weights_only=True
        self.automatic_optimization = False
        self.spec = spec
        self.tbptt_steps = tbptt_steps
        self.clipping = clipping or NoClip()
        self.guard = guard if guard is not None else ExplosionGuard(policy="warn", snapshot=False)
        self.monitor = monitor or GradMonitor()
        self.scheduler_interval = scheduler_interval
        uniform = init_scale if init == "uniform" else None  # Zaremba et al. init the embedding and decoder too
        self.encoder, input_size = self.build_encoder(spec, hidden_size, dropout, uniform)
        self.net = RecurrentNet(
            input_size,
            hidden_size,
            num_layers,
            cell,
            nonlinearity,
            dropout,
            init,
            init_scale,
            spectral_radius,
            residual,
            layer_norm,
        )
        self.head = self.build_head(spec, hidden_size, dropout, uniform)
        self.carry = {"train": tbptt.HiddenCarry(), "val": tbptt.HiddenCarry(), "test": tbptt.HiddenCarry()}
        self.updates = 0  # updates attempted so far: the x axis of every per-update log
        self._epoch_open = False  # between on_train_epoch_start and on_train_epoch_end (saved for exact resume)
        self._resume: dict[str, Any] = {}  # what on_load_checkpoint leaves for the loop
        self._eval_sums: dict[str, torch.Tensor] = {}

    # -- what a task defines -------------------------------------------------------------------------------

    def build_encoder(
        self, spec: DataSpec, hidden_size: int, dropout: float, uniform: float | None
    ) -> tuple[nn.Module, int]:
        """Module applied to ``x`` before the net, and the net's input size. Default: identity on features."""
        return nn.Identity(), spec.input_size

    def build_head(self, spec: DataSpec, hidden_size: int, dropout: float, uniform: float | None) -> nn.Module:
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

    # -- forward -------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        out, hidden = self.net(self.encoder(x), hidden)  # (B, L, H)
        return self.head(out), hidden

    # -- the one optimization path ------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        self.monitor.start(self)

    def on_fit_end(self) -> None:
        self.monitor.finish(self)

    def on_train_epoch_start(self) -> None:
        self._cross_saved_epoch_boundary()
        self._epoch_open = True
        self.carry["train"].reset()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        optimizer = self.optimizers()
        carry = self.carry["train"]
        hidden = carry.get(batch["x"].shape[0]) if self.spec.stateful else None
        scored = self._scored_chunks(batch)
        for i, chunk in enumerate(tbptt.chunks(batch, self.tbptt_steps)):
            if self._out_of_steps():
                break
            if scored is not None and not scored[i]:  # no loss, no gradient: carry the state; no update, no log
                with torch.no_grad():
                    _, hidden = self(chunk["x"], hidden)
                continue
            self.monitor.arm(self, self.updates)
            if self.guard is not None:
                self.guard.arm(self, self.updates)  # RNG state for the replay snapshot
            out, new_hidden = self(chunk["x"], hidden)
            loss = self.reduce_loss(self.step_losses(out, chunk)["loss"], chunk.get("mask"))
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self._unscale(optimizer)
            measured = self.monitor.step_tensors(self, self.updates)  # before clipping: pre-clip per-module norms
            clip = self.clipping(self._trained_params())
            values = self._read_back(loss, clip, measured)
            update = Update(self.updates, chunk, hidden, clip, values)
            if update.step == 0:
                self._warn_if_suspicious(update)
            action = self.guard.check(self, update) if self.guard is not None else Action.STEP
            if action is Action.STEP:
                self._step_optimizer(optimizer)
                self._step_scheduler("step")
            else:
                self._skip_step(optimizer)
            self._log_update(update)
            self.updates += 1
            hidden = tbptt.detach(new_hidden)
            if action is Action.STOP:
                self.trainer.should_stop = True
                break
        if self.spec.stateful:
            carry.put(hidden)

    def _scored_chunks(self, batch: dict[str, torch.Tensor]) -> list[bool] | None:
        """Which chunks of the batch carry a scored step on any process (None: all, the batch has no mask). A chunk
        trained on one rank and skipped on another would leave DDP's gradient all-reduce waiting. With a mask: one
        host read (and, on several processes, one all-reduce) per batch; without, nothing."""
        flags = tbptt.scored(batch, self.tbptt_steps)
        if flags is None:
            return None
        if self.trainer.world_size > 1:
            flags = self.trainer.strategy.reduce(flags.float(), reduce_op="sum") > 0
        return flags.tolist()

    def _trained_params(self) -> list[torch.Tensor]:
        return [p for p in self.parameters() if p.requires_grad]

    def _out_of_steps(self) -> bool:
        max_steps = self.trainer.max_steps
        return max_steps is not None and 0 <= max_steps <= self.trainer.global_step

    def _scaler(self) -> torch.amp.GradScaler | None:
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def _unscale(self, optimizer) -> None:
        """Under 16-bit AMP with a GradScaler the policy must see unscaled gradients (Lightning #18089)."""
        scaler = self._scaler()
        if scaler is not None:
            scaler.unscale_(optimizer.optimizer)

    def _step_optimizer(self, optimizer) -> None:
        """Step through Lightning (its hooks, ``global_step``). Under a GradScaler the gradients were unscaled at
        :meth:`_unscale`; Lightning's ``MixedPrecision.optimizer_step`` calls ``unscale_`` again, which raises, so that
        second call is a no-op here (``scaler.step`` itself sees the optimizer as already unscaled)."""
        scaler = self._scaler()
        if scaler is None:
            optimizer.step()
            return
        scaler.unscale_ = lambda opt: None  # shadows GradScaler.unscale_ for this one step
        try:
            optimizer.step()
        finally:
            del scaler.unscale_

    def _skip_step(self, optimizer) -> None:
        """The update is not applied; a GradScaler still closes its iteration so the next unscale is legal."""
        optimizer.zero_grad(set_to_none=True)
        scaler = self._scaler()
        if scaler is not None:
            scaler.update()

    def _read_back(self, loss: torch.Tensor, clip: ClipResult, extra: dict[str, torch.Tensor]) -> dict[str, float]:
        """The single host synchronisation of an update: loss, clip results and monitor tensors in one transfer."""
        tensors = {
            "train/loss": loss.detach(),
            "grad/norm_total": clip.pre_norm,
            "grad/norm_total_clipped": clip.post_norm,
            "grad/clipped": clip.clipped,
        }
        if clip.threshold is not None:
            tensors["grad/clip_threshold"] = clip.threshold
        tensors.update(extra)
        stacked = torch.stack([t.detach().float().reshape(()) for t in tensors.values()])
        return dict(zip(tensors, stacked.tolist(), strict=True))

    def _log_update(self, update: Update) -> None:
        metrics = dict(update.values)
        metrics["train/lr"] = self.optimizers().param_groups[0]["lr"]
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=update.step)
        self.monitor.emit(self, update)
        self.log("loss", update.values["train/loss"], prog_bar=True, logger=False)

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

    def on_train_epoch_end(self) -> None:
        if not self._resume.pop("epoch_end_done", False):  # True: resumed from a save made after this very step
            self._step_scheduler("epoch")
        self._epoch_open = False

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam(lr=1e-3) unless the config names an optimizer (``--optimizer``, ``--lr_scheduler``)."""
        return torch.optim.Adam(self.parameters(), lr=1e-3)

    # -- evaluation: whole batches, hidden state carried within the pass when the data is stateful ---------

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str) -> None:
        carry = self.carry[split]
        hidden = carry.get(batch["x"].shape[0]) if self.spec.stateful else None
        out, hidden = self(batch["x"], hidden)
        if self.spec.stateful:
            carry.put(hidden)
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
            self.log(name, value, logger=False, prog_bar=name == f"{split}/loss")
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.updates)
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

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out, _ = self(batch["x"])
        return out

    # -- checkpoint: the loop's own state, for a bitwise-exact resume (see seqstab.checkpoint) ------------------

    def setup(self, stage: str) -> None:
        """The training loader remembers its position within the epoch (a resume continues mid-epoch); validation
        loaders leave the training RNG alone (seqstab.checkpoint.make_resumable, make_quiet)."""
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if stage == "fit" and datamodule is not None:
            _convert_loaders(
                datamodule, "train_dataloader", _stateful_train_loader if self.spec.stateful else make_resumable
            )
            _convert_loaders(datamodule, "val_dataloader", make_quiet)

    def on_validation_model_zero_grad(self) -> None:
        """Validation inside fit leaves the training RNG stream as it found it (restored in on_validation_end)."""
        super().on_validation_model_zero_grad()
        self._resume["rng_before_validation"] = rng_state()

    def on_validation_end(self) -> None:
        if "rng_before_validation" in self._resume:
            set_rng_state(self._resume.pop("rng_before_validation"))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_finite_weights(checkpoint["state_dict"])  # never write a checkpoint holding inf/nan weights
        checkpoint["seqstab"] = {
            "updates": self.updates,
            "clipping": self.clipping.state_dict(),
            "epoch_open": self._epoch_open,
            "ranks": self._gather_process_state(),
        }
        if self.guard is not None:
            checkpoint["seqstab"]["guard"] = self.guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        try:
            path = str(self._trainer.ckpt_path or "") if self._trainer is not None else ""
            check_shapes(self.state_dict(), checkpoint.get("state_dict", {}), path)
        except CheckpointError as err:
            saved = checkpoint.get("hyper_parameters") or {}
            differs = [f"{k}={saved[k]!r}" for k in self.hparams if k in saved and saved[k] != self.hparams[k]]
            hint = f" (it was made with {', '.join(differs)})" if differs else ""
            raise CheckpointError(f"{err}{hint}") from None
        state = checkpoint.get("seqstab", {})
        self.updates = state.get("updates", 0)
        self.clipping.load_state_dict(state.get("clipping", {}))
        if self.guard is not None:
            self.guard.load_state_dict(state.get("guard", {}))
        if self._trainer is not None and self.trainer.state.fn == "fit":
            self._restore_process_state(state.get("ranks") or [])
            self._resume_position(checkpoint, state.get("epoch_open", False))

    def _gather_process_state(self) -> list[dict[str, Any]]:
        """What only each process knows, from every rank: the hidden state its streams carry, its RNG states."""
        mine = {"carry": tbptt.map_hidden(torch.Tensor.cpu, self.carry["train"].state), "rng": rng_state()}
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return [mine]
        ranks: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)  # on_save_checkpoint runs on every rank; rank 0 writes the file
        return ranks

    def _restore_process_state(self, ranks: list[dict[str, Any]]) -> None:
        if len(ranks) != self.trainer.world_size:
            if ranks:
                warnings.warn(
                    f"checkpoint saved by {len(ranks)} process(es), resumed on {self.trainer.world_size}: carried "
                    "hidden states restart from zeros and random streams from the seed; the resume is not exact",
                    stacklevel=2,
                )
            return
        mine = ranks[self.global_rank]
        self.carry["train"].state = tbptt.map_hidden(lambda t: t.to(self.device), mine["carry"])
        set_rng_state(mine["rng"])

    def _resume_position(self, checkpoint: dict[str, Any], epoch_open: bool) -> None:
        """A checkpoint saved after an epoch's last batch: Lightning resumes in the next epoch, but may skip the
        saved epoch's ``on_train_epoch_end`` and the new one's ``on_train_epoch_start``; the loader must not skip."""
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        if not fit_loop.get("epoch_loop.batch_progress", {}).get("is_last_batch", False):
            return
        for loader_state in fit_loop.get("state_dict", {}).get("combined_loader", []):
            if isinstance(loader_state, dict) and "batches" in loader_state:
                loader_state["batches"] = 0
        self._resume["epoch_end_done"] = not epoch_open  # False: the saved epoch's scheduler step is still due

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._resume:
            self._cross_saved_epoch_boundary()
        if self.updates == 0 and self.tbptt_steps is not None and self.tbptt_steps > batch["x"].shape[1]:
            rank_zero_warn(
                f"model.tbptt_steps={self.tbptt_steps} is longer than a batch ({batch['x'].shape[1]} steps): each "
                "batch is one chunk, truncated BPTT cuts nothing",
                category=UserWarning,
            )

    def _warn_if_suspicious(self, update: Update) -> None:
        """Legal but likely a mistake, seen at the first update: a clip threshold far below the gradient norm."""
        norm, threshold = update.values["grad/norm_total"], update.values.get("grad/clip_threshold")
        if threshold is not None and math.isfinite(norm) and 0 < threshold < norm / 100:
            rank_zero_warn(
                f"clip threshold {threshold:g} is {norm / threshold:.0f}x below the first gradient norm {norm:g}: "
                "nearly every update will be clipped to it (a threshold carries over only with the same loss "
                "reduction and model size)",
                category=UserWarning,
            )

    def _cross_saved_epoch_boundary(self) -> None:
        """What Lightning may skip when it resumes at an epoch boundary: the old epoch's end, the new one's start."""
        if "epoch_end_done" not in self._resume:
            return
        if not self._resume.pop("epoch_end_done"):
            with warnings.catch_warnings():  # no optimizer.step() yet in this process: torch's order check misfires
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self._step_scheduler("epoch")
        self._epoch_open = True
        self.carry["train"].reset()


def _stateful_train_loader(loader):
    """Stateful streams stay in order on every rank under DDP; the loader can resume mid-epoch."""
    return make_resumable(in_order_across_ranks(loader))


def _convert_loaders(datamodule: pl.LightningDataModule, hook: str, convert) -> None:
    """Wrap ``datamodule.<hook>`` (once) so the loaders it returns pass through ``convert``."""
    make = getattr(datamodule, hook)
    if getattr(make, "__seqstab__", False):
        return

    def converted():
        return convert(make())

    converted.__seqstab__ = True
    setattr(datamodule, hook, converted)


def _uniform_(module: nn.Module | nn.Parameter, scale: float | None) -> nn.Module | nn.Parameter:
    """U(±scale) on a parameter or on every parameter of a module; nothing when ``scale`` is None."""
    if scale is not None:
        with torch.no_grad():
            for p in [module] if isinstance(module, nn.Parameter) else module.parameters():
                p.uniform_(-scale, scale)
    return module


class LanguageModel(SeqTask):
    """Next-token prediction: embedding → recurrent net → decoder; cross-entropy.

    Logs ``val/loss`` (token mean), ``val/ppl`` and, for character-level data, ``val/bpc``.

    Args:
        embedding_size: Embedding width; None uses ``hidden_size``.
        tie_weights: Share the embedding and decoder weights (needs ``embedding_size == hidden_size``).
        loss_reduction: ``token_mean`` (pytorch/examples; clip 0.25) or ``sum_over_time`` — summed over the
            chunk's steps, averaged over the batch (Zaremba et al. 2014; clip 5). Evaluation is always per token.
        embedding_init: Initialise the embedding and decoder weights U(±a) and the decoder bias to 0, whatever
            ``init`` does to the recurrent weights (pytorch/examples: 0.1 with the LSTM at PyTorch's default).
            None: ``init: uniform`` puts U(±``init_scale``) on every parameter, other inits leave PyTorch's defaults.
        **kwargs: The net, truncation and stations: see :class:`SeqTask`.
    """

    def __init__(
        self,
        embedding_size: int | None = None,
        tie_weights: bool = False,
        loss_reduction: Literal["token_mean", "sum_over_time"] = "token_mean",
        embedding_init: float | None = None,
        **kwargs,
    ):
        check_positive(embedding_size=embedding_size, embedding_init=embedding_init)
        if loss_reduction not in ("token_mean", "sum_over_time"):
            raise ConfigError(f"loss_reduction={loss_reduction!r}: must be 'token_mean' or 'sum_over_time'")
        self.embedding_size, self.tie_weights, self.loss_reduction = embedding_size, tie_weights, loss_reduction
        self.embedding_init = embedding_init
        super().__init__(**kwargs)
        if tie_weights:
            if self.head[1].weight.shape != self.encoder[0].weight.shape:
                raise ConfigError(
                    f"tie_weights=True: embedding_size={self.encoder[0].weight.shape[1]} must equal hidden_size"
                )
            self.head[1].weight = self.encoder[0].weight

    def build_encoder(self, spec, hidden_size, dropout, uniform):
        check_positive(vocab_size=spec.vocab_size)
        size = self.embedding_size or hidden_size
        embedding = _uniform_(nn.Embedding(spec.vocab_size, size), self.embedding_init or uniform)
        return nn.Sequential(embedding, nn.Dropout(dropout)), size

    def build_head(self, spec, hidden_size, dropout, uniform):
        decoder = nn.Linear(hidden_size, spec.vocab_size)
        if self.embedding_init is None:
            _uniform_(decoder, uniform)
        else:
            _uniform_(decoder.weight, self.embedding_init)
            nn.init.zeros_(decoder.bias)
        return nn.Sequential(nn.Dropout(dropout), decoder)

    def step_losses(self, out, batch):
        ce = F.cross_entropy(out.flatten(0, 1), batch["y"].flatten(), reduction="none")  # (B*L,)
        return {"loss": ce.view_as(batch["y"])}  # (B, L)

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

    Reports ``val/mae`` and ``val/rmse`` in the data's original units (the datamodule's normalisation undone).

    Args:
        predict: ``level`` (default): the head's output is the forecast. ``change``: the forecast of every horizon
            step is the last observed value of each target (read from ``x`` at the current step, at the data's
            ``DataSpec.target_index``) plus the head's output, and the head's output layer starts at zero, so the
            untrained model makes the naive last-value forecast and learns a correction to it. Needs data whose
            inputs hold the targets (the time-series datamodules do).
        **kwargs: The net, truncation and stations: see :class:`SeqTask`.
    """

    def __init__(self, predict: Literal["level", "change"] = "level", **kwargs):
        if predict not in ("level", "change"):
            raise ConfigError(f"predict={predict!r}: must be 'level' or 'change'")
        self.predict = predict
        super().__init__(**kwargs)

    def build_head(self, spec, hidden_size, dropout, uniform):
        check_positive(input_size=spec.input_size, output_size=spec.output_size, horizon=spec.horizon)
        linear = nn.Linear(hidden_size, spec.horizon * spec.output_size)
        if self.predict == "change":
            index = spec.target_index
            if index is None or len(index) != spec.output_size or not all(0 <= i < spec.input_size for i in index):
                raise ConfigError(
                    f"predict='change' needs the targets among the inputs, but the data's target_index is {index!r} "
                    f"(output_size {spec.output_size}, input_size {spec.input_size}); use predict: level"
                )
            self.register_buffer("target_index", torch.tensor(index, dtype=torch.long), persistent=False)
            nn.init.zeros_(linear.weight)  # the untrained model is the naive forecast
            nn.init.zeros_(linear.bias)
        return nn.Sequential(nn.Dropout(dropout), linear)

    def forward(self, x, hidden=None):
        out, hidden = super().forward(x, hidden)
        out = out.unflatten(-1, (self.spec.horizon, self.spec.output_size))  # (B, L, horizon, C)
        if self.predict == "change":
            out = out + x.index_select(-1, self.target_index).unsqueeze(-2)  # + last value (B, L, 1, C)
        return out, hidden

    def step_losses(self, out, batch):
        err = out - batch["y"]  # (B, L, horizon, C), normalised units
        scale = torch.as_tensor(self.spec.target_scale or 1.0, dtype=err.dtype, device=err.device)
        return {
            "loss": err.pow(2).mean(dim=(-2, -1)),
            "abs": (err * scale).abs().mean(dim=(-2, -1)),
            "sq": (err * scale).pow(2).mean(dim=(-2, -1)),
        }

    def eval_metrics(self, means):
        return {"loss": means["loss"], "mae": means["abs"], "rmse": math.sqrt(means["sq"])}


class SequenceRegressor(SeqTask):
    """Regression on marked steps (e.g. the adding problem: the last step). MSE loss.

    Args:
        **kwargs: The net, truncation and stations: see :class:`SeqTask`.
    """

    def build_head(self, spec, hidden_size, dropout, uniform):
        check_positive(input_size=spec.input_size, output_size=spec.output_size)
        return nn.Linear(hidden_size, spec.output_size)

    def step_losses(self, out, batch):
        return {"loss": (out - batch["y"]).pow(2).mean(dim=-1)}  # (B, L)


class SequenceClassifier(SeqTask):
    """Classification on marked steps (copying memory, temporal order). Cross-entropy; reports accuracy.

    Args:
        **kwargs: The net, truncation and stations: see :class:`SeqTask`.
    """

    def build_head(self, spec, hidden_size, dropout, uniform):
        check_positive(input_size=spec.input_size, output_size=spec.output_size)
        return nn.Linear(hidden_size, spec.output_size)

    def step_losses(self, out, batch):
        ce = F.cross_entropy(out.flatten(0, 1), batch["y"].flatten(), reduction="none").view_as(batch["y"])
        correct = (out.argmax(dim=-1) == batch["y"]).to(out.dtype)
        return {"loss": ce, "acc": correct}  # (B, L) each

    def eval_metrics(self, means):
        return {"loss": means["loss"], "acc": means["acc"]}
