"""``python -m seqstab.score --ckpt_path X FILE``: the perplexity of a text file under a trained language model (and
its bits per character, for a character-level one).

    python -m seqstab.score --ckpt_path runs/seqstab/version_0/checkpoints/last.ckpt data/wikitext-2/test.txt
    python -m seqstab.score --ckpt_path last.ckpt --streams 1 book.txt      # one stream: every token after the first

The file is tokenized as the training data was (the tokenizer the checkpoint carries, :mod:`seqstab.vocab`) and
scored as ``python -m seqstab.train test`` scores its split, so on the same file the two agree to float32 rounding::

    token stream t0 ... t(N-1)           cut into B = --streams rows of n = N // B tokens (the N mod B left dropped)
    row b: x = t(bn) ... t(bn+n-2)       y = the token after each: n - 1 predictions per row
    read in windows of --seq_len         the hidden state carried from window to window, zeros at the start
    loss = mean cross-entropy over the B (n - 1) predictions;  ppl = exp(loss);  bpc = loss / ln 2

``--streams`` and ``--seq_len`` default to the evaluation batching the model was trained with (``data.eval_batch_size``,
``data.seq_len``): that is what reproduces ``test/ppl``. ``--streams 1`` scores the file as one stream.

Memory stays flat whatever the file's size: a first pass counts the tokens and notes where each block of ~256 KiB of
whole lines starts; then each of the B rows is read from its own file handle, block by block, as the windows need it.
"""

from __future__ import annotations

import bisect
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from tqdm import tqdm

from seqstab.cli.console import ToolParser, error_line, tool_main
from seqstab.core.errors import ConfigError, DataError, SeqstabError, check_positive
from seqstab.data.vocab import TextCodec, normalize

__all__ = ["TokenFile", "main", "score", "windows"]

BLOCK_BYTES = 1 << 18  # lines are read and tokenized in blocks of about this many bytes


@dataclass(frozen=True)
class Block:
    """Where a block of whole lines starts: its byte offset, and the tokens and lines before it."""

    offset: int
    tokens: int
    lines: int


class TokenFile:
    """A text file's token stream, tokenized block by block as the training data was; never held whole.

    Args:
        path: The text file (UTF-8).
        codec: The tokenizer (from the checkpoint).
        progress: Show a progress bar (bytes, rate) on stderr while the file is first read, when it is a terminal.
    """

    def __init__(self, path: str | Path, codec: TextCodec, progress: bool = False):
        self.path, self.codec = Path(path), codec
        self.blocks: list[Block] = []
        self.tokens = 0  # N
        self._index(progress)
        self._starts = [block.tokens for block in self.blocks]

    def _index(self, progress: bool) -> None:
        """First pass: count the tokens, note each block's start, and check the file decodes."""
        blank = True
        f = self._open()
        with f, _bar(progress, os.fstat(f.fileno()).st_size, "B", f"reading {self.path.name}") as bar:
            for block, ids, raw in self._read(f, Block(0, 0, 0)):
                self.blocks.append(block)
                self.tokens += len(ids)
                blank = blank and not raw.strip()
                bar.update(len(raw))
        if blank:
            raise DataError(f"{self.path}: the file is empty")

    def ids(self, start: int, count: int) -> Iterator[np.ndarray]:
        """The ids ``[start, start + count)`` of the stream, in pieces, read from a file handle of their own."""
        first = self.blocks[bisect.bisect_right(self._starts, start) - 1]
        with self._open() as f:
            for block, ids, _ in self._read(f, first):
                piece = ids[max(start - block.tokens, 0) :][:count]
                if len(piece):
                    yield piece
                    count -= len(piece)
                if count <= 0:
                    return

    def _read(self, f: IO[bytes], block: Block) -> Iterator[tuple[Block, np.ndarray, bytes]]:
        """From ``block`` on: each block, its ids and its bytes."""
        f.seek(block.offset)
        while True:
            raw = b"".join(f.readlines(BLOCK_BYTES))  # whole lines: every tokenizer reads lines independently
            if not raw:
                return
            ids = self.codec.encode(self._decode(raw, block))
            yield block, ids, raw
            block = Block(block.offset + len(raw), block.tokens + len(ids), block.lines + raw.count(b"\n"))

    def _decode(self, raw: bytes, block: Block) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            line = block.lines + raw.count(b"\n", 0, err.start) + 1
            raise DataError(
                f"{self.path} line {line}: invalid UTF-8 (byte {raw[err.start]:#04x} at offset "
                f"{block.offset + err.start})"
            ) from None
        return normalize(text, at_start=block.offset == 0)

    def _open(self) -> IO[bytes]:
        try:
            return self.path.open("rb")
        except FileNotFoundError:
            raise DataError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise DataError(f"{self.path}: is a directory, expected a text file") from None
        except OSError as err:
            raise DataError(f"{self.path}: cannot be read ({err.strerror})") from None


class _Row:
    """One row's ids handed out in windows of ``k`` tokens that overlap by one: a window's last token (the target
    of its last step) is the input of the next window's first step."""

    def __init__(self, pieces: Iterator[np.ndarray]):
        self.pieces, self.buffer = pieces, np.empty(0, dtype=np.int32)

    def take(self, k: int) -> np.ndarray:
        while len(self.buffer) < k and (piece := next(self.pieces, None)) is not None:
            self.buffer = np.concatenate([self.buffer, piece])
        window, self.buffer = self.buffer[:k], self.buffer[k - 1 :]
        return window


def windows(file: TokenFile, streams: int, seq_len: int) -> Iterator[dict[str, torch.Tensor]]:
    """The evaluation batches of ``file``: ``{"x", "y"}`` ``(streams, <= seq_len)``, as a text datamodule's
    ``test_dataloader`` gives them for a split (``batchify`` into rows, ``StreamWindows`` over x and the next token)."""
    n = file.tokens // streams
    if n < 2:
        raise DataError(
            f"{file.path}: holds {file.tokens} tokens: too few for {streams} streams of 2+ tokens; lower --streams"
        )
    rows = [_Row(file.ids(b * n, n)) for b in range(streams)]
    for start in range(0, n - 1, seq_len):
        k = min(seq_len, n - 1 - start) + 1
        block = torch.from_numpy(np.stack([row.take(k) for row in rows])).long()  # (B, k)
        yield {"x": block[:, :-1], "y": block[:, 1:]}  # (B, k - 1) each: y[b, t] = x[b, t + 1]


def score(model, file: TokenFile, streams: int, seq_len: int, device: str = "cpu", progress: bool = False):
    """The task's eval metrics of ``file`` (``loss``, ``ppl``; ``bpc`` at character level) and the number of scored
    tokens. Per-token losses are the task's own (``step_losses``), summed as evaluation sums them."""
    check_positive(streams=streams, seq_len=seq_len)
    total = streams * (file.tokens // streams - 1)
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as err:  # an unknown device, or one this torch build lacks
        raise ConfigError(f"--device {device}: {str(err).splitlines()[0]}") from None
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    hidden = None
    with torch.inference_mode(), _bar(progress, total, "tok", "scoring") as bar:
        for batch in windows(file, streams, seq_len):
            batch = {key: value.to(device) for key, value in batch.items()}
            out, hidden = model(batch["x"], hidden)  # (B, L, V), the state carried to the next window
            loss = model.step_losses(out, batch)["loss"]  # (B, L) cross-entropy of each prediction
            loss_sum += loss.sum().double()
            bar.update(loss.numel())
    return model.eval_metrics({"loss": (loss_sum / total).item()}), total


def _bar(progress: bool, total: int, unit: str, desc: str) -> tqdm:
    """A progress bar with rate on stderr: only when asked, on a terminal, and after the first second."""
    return tqdm(
        total=total, unit=unit, unit_scale=True, desc=desc, file=sys.stderr, leave=False, delay=1.0,
        disable=None if progress else True,
    )  # fmt: skip


@tool_main("score")
def main(argv: list[str] | None = None) -> int:
    parser = ToolParser(
        "score",
        description="Perplexity (and bits per character, for a character-level model) of a text file under a trained "
        "language model, tokenized and batched as seqstab.train test does.",
    )
    parser.add_argument("file", type=Path, help="a UTF-8 text file, any size (streamed)")
    parser.add_argument("--ckpt_path", type=Path, required=True, help="a LanguageModel checkpoint written by fit")
    parser.add_argument(
        "--streams", type=int, help="parallel streams the file is cut into; default: the model's data.eval_batch_size"
    )
    parser.add_argument("--seq_len", type=int, help="tokens per stream per forward pass; default: the model's")
    parser.add_argument("--device", default="cpu", help="torch device to score on (default: cpu)")
    parser.add_argument("--trust", action="append", default=[], metavar="MODULE", help="as for seqstab.replay")
    args = parser.parse(argv)
    if isinstance(args, int):  # a mistake (one line said it) or --help
        return args
    try:
        from seqstab.cli.lm import load_lm

        check_positive(streams=args.streams, seq_len=args.seq_len)
        lm = load_lm(args.ckpt_path, args.trust)
        streams, seq_len = args.streams or lm.eval_batch_size, args.seq_len or lm.seq_len
        file = TokenFile(args.file, lm.codec, progress=True)
        metrics, scored = score(lm.model, file, streams, seq_len, args.device, progress=True)
    except SeqstabError as err:
        return error_line("score", err)
    print(
        f"{args.file}: {file.tokens:,} {lm.codec.tokenizer} tokens; {scored:,} scored in {streams} streams, "
        f"windows of {seq_len}"
    )
    width = max(map(len, metrics))
    print("\n".join(f"{name:<{width}}  {value:.6g}" for name, value in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
