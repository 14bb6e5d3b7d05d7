"""The stream datamodule of every corpus: tokenized splits cut into parallel rows, read in consecutive windows.

A split's token ids form one stream, cut into ``B`` parallel rows and read in contiguous windows of ``seq_len`` tokens
(the classic word-level LM ``batchify``/``get_batch``), so batch ``i + 1`` continues batch ``i`` and the hidden state
carries over. A checkpoint carries the tokenizer (the datamodule's ``state_dict()``), so a trained model can generate
and score text without its corpus; a resume on data with another vocabulary is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from datamodules.base import DataSpec, SeqDataModule, StreamWindows, batchify
from datamodules.download import cache_root
from datamodules.files import read_bytes
from datamodules.text.tokens import Corpus, cached_corpus
from seqstab.core.errors import ConfigError, DataError, check_positive
from seqstab.core.io import CheckpointError
from seqstab.data.vocab import TextCodec, Tokenizer, Vocab, datamodule_state

__all__ = ["TextFiles"]


class _TextStream(SeqDataModule):
    """Stream batching over a tokenized corpus; subclasses say where the three texts come from (:meth:`read`)."""

    def __init__(
        self,
        tokenizer: Tokenizer = "word",
        min_freq: int = 1,
        max_size: int | None = None,
        bpe_vocab_size: int = 8000,
        batch_size: int = 20,
        eval_batch_size: int = 10,
        seq_len: int = 35,
        cache_dir: str | None = None,
    ):
        super().__init__()
        check_positive(
            min_freq=min_freq,
            max_size=max_size,
            bpe_vocab_size=bpe_vocab_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seq_len=seq_len,
        )
        if tokenizer not in ("word", "char", "bpe"):
            raise ConfigError(f"tokenizer={tokenizer!r}: must be 'word', 'char' or 'bpe'")
        if max_size is not None and max_size < 2:
            raise ConfigError(f"max_size={max_size}: must be >= 2 (<unk> and <eos>)")
        self.tokenizer, self.min_freq, self.max_size, self.bpe_vocab_size = (
            tokenizer,
            min_freq,
            max_size,
            bpe_vocab_size,
        )
        self.batch_size, self.eval_batch_size, self.seq_len = batch_size, eval_batch_size, seq_len
        self.cache_dir = cache_dir
        self._corpus: Corpus | None = None

    def read(self) -> dict[str, tuple[str, bytes]]:
        """Each split's name for messages and raw bytes: ``{"train": (name, bytes), "valid": ..., "test": ...}``."""
        raise NotImplementedError

    # -- tokenized corpus, cached --------------------------------------------------------------------------------

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            self._corpus = self._load_corpus()
        return self._corpus

    @property
    def vocab(self) -> Vocab:
        return self.corpus.vocab

    @property
    def codec(self) -> TextCodec:
        """The tokenizer the model is trained with; checkpoints carry it (:meth:`state_dict`)."""
        return self.corpus.codec

    def _load_corpus(self) -> Corpus:
        cache = cache_root(self.cache_dir) / "tokens" / type(self).__name__.lower()
        return cached_corpus(self.read(), cache, self.tokenizer, self.min_freq, self.max_size, self.bpe_vocab_size)

    # -- checkpoint: the tokenizer travels with the model ------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What Lightning stores in a checkpoint under this class's name: the tokenizer and the evaluation batching
        (:func:`seqstab.vocab.datamodule_state`), so ``seqstab.generate`` and ``seqstab.score`` need no corpus."""
        return datamodule_state(self.codec, self.eval_batch_size, self.seq_len)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """On resume and on ``test --ckpt_path``: the tokenizer is rebuilt from the data; the checkpoint's vocabulary
        must be the same, else its token ids would mean other tokens (:class:`CheckpointError`)."""
        saved = state.get("codec") if isinstance(state, dict) else None
        if not isinstance(saved, dict):
            return
        mine = self.codec
        itos = list(saved.get("itos") or [])
        if saved.get("tokenizer") != mine.tokenizer or itos != mine.vocab.itos:
            first = next((i for i, (a, b) in enumerate(zip(itos, mine.vocab.itos, strict=False)) if a != b), None)
            where = "" if first is None else f"; id {first} is {itos[first]!r} there, {mine.vocab.itos[first]!r} here"
            raise CheckpointError(
                f"checkpoint: made with another vocabulary ({saved.get('tokenizer')}, {len(itos):,} tokens; this "
                f"data's: {mine.tokenizer}, {len(mine.vocab):,}{where}): its token ids would mean other tokens"
            )

    # -- what the model and the trainer see -----------------------------------------------------------------------

    @property
    def spec(self) -> DataSpec:
        return DataSpec(kind="lm", vocab_size=len(self.vocab), stateful=True, char_level=self.tokenizer == "char")

    def prepare_data(self) -> None:
        self.read()  # downloads, if any, happen here first

    def windows(self, split: str, num_streams: int) -> StreamWindows:
        """``split``'s stream cut into ``num_streams`` rows, read in windows of ``seq_len``: x and its next token y."""
        stream = self.corpus.streams[split]
        if stream.numel() < 2 * num_streams:
            raise DataError(
                f"the {split} split holds {stream.numel()} tokens: too few for {num_streams} streams of 2+ tokens; "
                "lower the batch size"
            )
        rows = batchify(stream, num_streams)  # (B, n)
        return StreamWindows(rows[:, :-1], rows[:, 1:], self.seq_len)  # y[b, t] = x[b, t + 1]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.windows("train", self.batch_size), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.windows("valid", self.eval_batch_size), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.windows("test", self.eval_batch_size), batch_size=None)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class TextFiles(_TextStream):
    """Language modelling on any train/valid/test text files (UTF-8, one sentence or paragraph per line).

    Args:
        train: Training text; the vocabulary is built on it alone.
        valid: Validation text.
        test: Test text; None uses ``valid``.
        tokenizer: ``word`` (whitespace), ``char`` or ``bpe`` (Hugging Face ``tokenizers``, extra ``seqstab[bpe]``).
            Every line ends with ``<eos>`` (for ``char``, the newline is ``<eos>``).
        min_freq: Types seen fewer times in train become ``<unk>`` (for ``bpe``: the merge frequency threshold).
        max_size: At most this many vocabulary entries, ``<unk>`` and ``<eos>`` included; None keeps all.
        bpe_vocab_size: Vocabulary size ``bpe`` learns.
        batch_size: Parallel training streams ``B``.
        eval_batch_size: Parallel validation and test streams.
        seq_len: Tokens per stream in one batch (``L``); truncated BPTT may cut it further (``model.tbptt_steps``).
        cache_dir: Where tokenized corpora are cached; None uses ``$SEQSTAB_CACHE`` or ``~/.cache/seqstab``.
    """

    def __init__(
        self,
        train: str,
        valid: str,
        test: str | None = None,
        tokenizer: Tokenizer = "word",
        min_freq: int = 1,
        max_size: int | None = None,
        bpe_vocab_size: int = 8000,
        batch_size: int = 20,
        eval_batch_size: int = 10,
        seq_len: int = 35,
        cache_dir: str | None = None,
    ):
        super().__init__(tokenizer, min_freq, max_size, bpe_vocab_size, batch_size, eval_batch_size, seq_len, cache_dir)
        self.paths = {"train": Path(train), "valid": Path(valid), "test": Path(test if test is not None else valid)}

    def read(self) -> dict[str, tuple[str, bytes]]:
        return {split: read_bytes(path) for split, path in self.paths.items()}
