"""Lightning's floor: the least a Lightning ``Trainer.fit`` of the word LM can do per update, run as a program by
``bench_peer.py`` (its ``lightning-floor`` program, in the ``floor`` setting) beside pytorch/examples' ``main.py`` and
``python -m seqstab.train``.

    python benchmarks/lightning_floor.py --data DIR --emsize 16 --nhid 16 --every 50

A manual-optimization ``LightningModule`` whose ``training_step`` runs only the forward, the backward and the
optimizer step of the same kind of net as the two others: embedding → ``nn.LSTM`` (``--nlayers``, sequence-first as
main.py; ``--cell gru``, ``rnn_tanh`` or ``rnn_relu``: ``nn.GRU`` or ``nn.RNN``, as main.py's ``--model``) → linear
decoder, dropout 0.2 on the embedding, between the layers and before the decoder, embedding and decoder U(±0.1),
decoder bias 0; the hidden state carried from batch to batch and detached; batch 20 × bptt 35 read as main.py reads
it (the token stream cut into 20 rows, contiguous windows of 35); token-mean cross-entropy, ``clip_grad_norm_`` 0.25,
``torch.optim.SGD`` lr 20 stepped through Lightning's optimizer wrapper. The vocabulary is seqstab's (``<unk>``,
``<eos>`` and the types of ``train.txt``), so the decoder has the same size. No validation, no logger, no
checkpoint, no progress bar, no model summary; one epoch over ``train.txt``. It prints the marks ``bench_peer.py``
times (its ``UpdateMarks`` callback, the one seqstab's run gets): what the Trainer's loop costs per update, without
anything seqstab adds on top.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from bench_peer import CELLS, UpdateMarks  # this file's folder is on sys.path when it runs as a program
from torch import nn
from torch.utils.data import DataLoader, Dataset


def read_stream(path: Path) -> tuple[torch.Tensor, int]:
    """``path``'s token ids (whitespace-split words, ``<eos>`` after every line) and the vocabulary size: ``<unk>``,
    ``<eos>``, then the types in order of first appearance (seqstab's vocabulary over the same file, other ids)."""
    index = {"<unk>": 0, "<eos>": 1}
    ids: list[int] = []
    with open(path, encoding="utf8") as f:
        for line in f:
            for word in [*line.split(), "<eos>"]:
                ids.append(index.setdefault(word, len(index)))
    return torch.tensor(ids, dtype=torch.long), len(index)


class Windows(Dataset):
    """main.py's batching: the stream cut into ``batch`` rows (sequence-first ``(N, B)``), windows of ``bptt``."""

    def __init__(self, ids: torch.Tensor, batch: int, bptt: int):
        rows = ids.numel() // batch
        self.data = ids[: rows * batch].view(batch, rows).t().contiguous()
        self.bptt = bptt
        self.starts = list(range(0, rows - 1, bptt))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.starts[i]
        length = min(self.bptt, self.data.size(0) - 1 - start)
        return self.data[start : start + length], self.data[start + 1 : start + 1 + length]


def recurrent(cell: str, emsize: int, nhid: int, nlayers: int, dropout: float) -> nn.RNNBase:
    """The recurrent module of ``--cell`` (a key of ``bench_peer.CELLS``), as main.py's ``--model`` of the same name
    builds it: ``LSTM``, ``GRU``, or ``RNN_TANH`` / ``RNN_RELU`` (an ``nn.RNN`` with that nonlinearity)."""
    mode = CELLS[cell][0]
    if mode in ("LSTM", "GRU"):
        return getattr(nn, mode)(emsize, nhid, nlayers, dropout=dropout)
    return nn.RNN(emsize, nhid, nlayers, nonlinearity=mode.removeprefix("RNN_").lower(), dropout=dropout)


class FloorLM(pl.LightningModule):
    """Embedding → LSTM (or GRU, RNN) → decoder; forward, backward, clip, SGD step; nothing else."""

    def __init__(
        self,
        ntoken: int,
        emsize: int,
        nhid: int,
        nlayers: int,
        dropout: float,
        lr: float,
        clip: float,
        cell: str = "lstm",
    ):
        super().__init__()
        self.automatic_optimization = False
        self.ntoken, self.lr, self.clip = ntoken, lr, clip
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, emsize)
        self.rnn = recurrent(cell, emsize, nhid, nlayers, dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        self.hidden: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None  # LSTM: (h, c)
        self.updates = 0  # what UpdateMarks reads

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        hidden = self.hidden
        if hidden is not None:
            hidden = tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()
        out, self.hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        logits = self.decoder(self.drop(out))
        loss = F.cross_entropy(logits.view(-1, self.ntoken), y.reshape(-1))
        opt.zero_grad()
        self.manual_backward(loss)
        nn.utils.clip_grad_norm_(self.parameters(), self.clip)
        opt.step()
        self.updates += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train.txt")
    parser.add_argument("--emsize", type=int, default=200)
    parser.add_argument("--nhid", type=int, default=200)
    parser.add_argument("--nlayers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=20.0)
    parser.add_argument("--clip", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--every", type=int, default=50, help="a mark every this many updates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cell", default="lstm", choices=list(CELLS), help="the recurrent layers (main.py's --model)")
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many updates (-1: one epoch)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    ids, ntoken = read_stream(args.data / "train.txt")
    print(f"lightning-floor: {ids.numel():,} tokens, vocabulary {ntoken:,}", flush=True)
    loader = DataLoader(Windows(ids, args.batch_size, args.bptt), batch_size=None, shuffle=False)
    model = FloorLM(ntoken, args.emsize, args.nhid, args.nlayers, args.dropout, args.lr, args.clip, args.cell)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        max_steps=args.max_steps,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[UpdateMarks(args.every)],
    )
    trainer.fit(model, train_dataloaders=loader)


if __name__ == "__main__":
    main()
