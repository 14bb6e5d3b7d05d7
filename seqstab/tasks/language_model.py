"""The word- and character-level language model: embedding, recurrent net, decoder (optionally fused with its
cross-entropy)."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from seqstab.core import tbptt
from seqstab.core.errors import ConfigError, check_choice, check_fraction, check_positive
from seqstab.core.recipes import NetFactory, declared
from seqstab.nets.dropout import Dropout
from seqstab.nets.fused import linear_cross_entropy
from seqstab.nets.recurrent import RecurrentNet
from seqstab.tasks.base import SeqTask

FUSED_MIN_VOCAB = 4096  # fused_loss='auto': from this vocabulary up (benchmarks/bench_throughput.py --fused) ...
# ... and where a chunk's unfused logits would take this many bytes or more: glibc serves such an array from a fresh
# mapping (its largest mmap threshold is 32 MiB) that the kernel page-faults in at every update, which the fused loss
# avoids; below it the unfused loss reuses the heap and is faster (WikiText-2, 700 positions a chunk, on 2 cores:
# V = 10,000, 28 MB of logits, unfused 96 ms an update against fused 107; V = 33,278, 93 MB, fused 1.15x faster)
FUSED_MIN_LOGITS_BYTES = 32 * 2**20


class Decoder(nn.Linear):
    """``nn.Linear`` on a contiguous input. The recurrent net's batch-first output is a transposed view of its
    kernel's; on such an input ``nn.Linear`` runs a matrix product and then adds the bias in a second pass over the
    logits, on a contiguous one a single ``addmm`` with the bias inside (the copy is the one the product made anyway).
    At V = 10,000 on a 2-core VM, decoder and loss take ~58 ms forward and backward instead of ~60 (of an update's ~95;
    ``benchmarks/bench_throughput.py --fused --vocab 10000``). Every gradient is bitwise ``nn.Linear``'s; so are the
    logits up to 160 units (the seeded fixtures have 16), and from 200 the bias enters the sum at its start rather
    than its end (a last-bit difference)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous())


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
            faster (float32 on the CPU, vocabulary ≥ 4,096 and a chunk's ``(B·k, V)`` logits of 32 MiB or more:
            :data:`FUSED_MIN_LOGITS_BYTES`; the task's own forward and losses); ``true``: always (under
            autocast in float32); ``false``: never. Evaluation is unfused.
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
        check_fraction("dropout", dropout, low_inclusive=True)
        check_choice("fused_loss", fused_loss, (True, False, "auto"))
        check_choice("loss_reduction", loss_reduction, ("token_mean", "sum_over_time"))
        check_choice("decoder_bias", decoder_bias, ("zero", "uniform"))
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
        return nn.Sequential(embedding, Dropout(self.dropout)), self.embedding_size

    def build_head(self, spec, hidden_size):
        decoder = Decoder(hidden_size, spec.vocab_size)
        if self.decoder_bias == "uniform":
            _uniform_(decoder, self.embedding_init)  # weight, then bias
        elif self.embedding_init is not None:
            _uniform_(decoder.weight, self.embedding_init)
            nn.init.zeros_(decoder.bias)
        return nn.Sequential(Dropout(self.dropout), decoder)

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
            and x.numel() * self.spec.vocab_size * 4 >= FUSED_MIN_LOGITS_BYTES
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
