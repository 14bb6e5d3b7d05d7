"""Tokenization and the token cache: a corpus' three texts -> the tokenizer built on train and one id stream per split.

Tokenized corpora are cached under ``<cache>/tokens/`` keyed by the texts' SHA-256 and the tokenizer settings, so a
second run reads ids instead of tokenizing again. An entry is written atomically (several processes may fill it at
once: the ranks of a DDP run); one that cannot be read is tokenized again.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datamodules.files import decode_text
from seqstab.core.errors import ConfigError, DataError
from seqstab.core.io import CheckpointError, atomic_file, load
from seqstab.data.vocab import (
    EOS,
    UNK,
    TextCodec,
    Tokenizer,
    Vocab,
    bpe_ids,
    char_ids,
    import_tokenizers,
    split_lines,
    word_tokens,
)

__all__ = ["CACHE_VERSION", "SPLITS", "Corpus", "cached_corpus", "tokenize"]

SPLITS = ("train", "valid", "test")
CACHE_VERSION = 1


@dataclass
class Corpus:
    """A tokenized corpus: the tokenizer (with its vocabulary) and one id stream per split."""

    codec: TextCodec
    streams: dict[str, torch.Tensor]  # split -> (N,) int64

    @property
    def vocab(self) -> Vocab:
        return self.codec.vocab


def _bpe_train(text: str, vocab_size: int, min_freq: int):
    hf = import_tokenizers()
    decoders, models, pre_tokenizers, trainers = hf.decoders, hf.models, hf.pre_tokenizers, hf.trainers
    tok = hf.Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_freq, special_tokens=[UNK, EOS], show_progress=False
    )
    tok.train_from_iterator(split_lines(text), trainer)
    return tok


def tokenize(
    texts: dict[str, str],
    tokenizer: Tokenizer = "word",
    min_freq: int = 1,
    max_size: int | None = None,
    bpe_vocab_size: int = 8000,
) -> tuple[TextCodec, dict[str, torch.Tensor]]:
    """Build the tokenizer (its vocabulary; for ``bpe`` its merges) on ``texts['train']`` and encode every split as
    one int64 stream ``(N,)``."""
    if tokenizer == "word":
        tokens = {split: word_tokens(text) for split, text in texts.items()}
        codec = TextCodec("word", Vocab.build(Counter(tokens["train"]), min_freq, max_size))
        ids = {split: np.asarray(codec.vocab.encode(t), dtype=np.int32) for split, t in tokens.items()}
    elif tokenizer == "char":
        counts = Counter(texts["train"])
        counts[EOS] = counts.pop("\n", 0)
        codec = TextCodec("char", Vocab.build(counts, min_freq, max_size))
        ids = {split: char_ids(text, codec.vocab) for split, text in texts.items()}
    elif tokenizer == "bpe":
        tok = _bpe_train(texts["train"], bpe_vocab_size, min_freq)
        codec = TextCodec("bpe", Vocab([tok.id_to_token(i) for i in range(tok.get_vocab_size())]), tok.to_str())
        ids = {split: bpe_ids(tok, text) for split, text in texts.items()}
    else:
        raise ConfigError(f"tokenizer={tokenizer!r}: must be 'word', 'char' or 'bpe'")
    return codec, {split: torch.from_numpy(a).long() for split, a in ids.items()}


def cached_corpus(
    raw: dict[str, tuple[str, bytes]],
    cache: Path,
    tokenizer: Tokenizer = "word",
    min_freq: int = 1,
    max_size: int | None = None,
    bpe_vocab_size: int = 8000,
) -> Corpus:
    """The tokenized corpus of ``raw`` (each split's name for messages and its bytes), read from the cache entry
    ``<cache>-<key>.pt`` when there is one, else tokenized (:func:`tokenize`) and saved there."""
    settings = f"v{CACHE_VERSION}|{tokenizer}|{min_freq}|{max_size}|{bpe_vocab_size}"
    key = hashlib.sha256(settings.encode())
    for split in SPLITS:
        key.update(hashlib.sha256(raw[split][1]).digest())
    path = cache.with_name(f"{cache.name}-{key.hexdigest()[:24]}.pt")
    saved = _read_entry(path)
    if saved is not None and (tokenizer != "bpe" or saved.get("bpe") is not None):  # old entries: no bpe tokenizer
        codec = TextCodec(tokenizer, Vocab(saved["itos"]), saved.get("bpe"))
        return Corpus(codec, {split: saved[split].long() for split in SPLITS})
    texts = {split: decode_text(data, name) for split, (name, data) in raw.items()}
    codec, streams = tokenize(texts, tokenizer, min_freq, max_size, bpe_vocab_size)
    for split, name in ((s, raw[s][0]) for s in SPLITS):
        if streams[split].numel() < 2:
            raise DataError(f"{name}: holds {streams[split].numel()} token(s); a {split} stream needs at least 2")
    with atomic_file(path, sweep=False) as f:  # the ranks of a DDP run may write it at once
        torch.save({"itos": codec.vocab.itos, "bpe": codec.bpe, **{s: streams[s].int() for s in SPLITS}}, f)
    return Corpus(codec, streams)


def _read_entry(path: Path) -> dict | None:
    """A cache entry, or None if there is none or it cannot be read (then it is made again)."""
    if not path.is_file():
        return None
    try:
        saved = load(path, kind="token cache")
    except CheckpointError:
        return None
    return saved if isinstance(saved, dict) and {"itos", *SPLITS} <= saved.keys() else None
