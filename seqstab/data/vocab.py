"""How a language model's text becomes token ids and back: the tokenizer rules, the vocabulary, and the
:class:`TextCodec` a checkpoint carries so that ``python -m seqstab.generate`` and ``python -m seqstab.score`` read
and write text exactly as the training data was tokenized.

The rules (the text datamodules, ``datamodules.text``, tokenize with these, and nothing else does)::

    text     UTF-8; "\\r\\n" and "\\r" read as "\\n"; a leading byte-order mark dropped
    word     whitespace-separated words, <eos> after every line (the final newline ends a line, it starts none)
    char     one token per character; "\\n" is <eos>
    bpe      Hugging Face ``tokenizers`` BPE (Metaspace), each line encoded alone, <eos> after every line
    ids      <unk> = 0, <eos> = 1; a token the vocabulary lacks is <unk>

A text datamodule's checkpoint state (Lightning stores ``LightningDataModule.state_dict()`` under the datamodule's
class name) is :func:`datamodule_state`: the codec as plain data (``torch.load(weights_only=True)`` reads it) and the
evaluation batching; :func:`find_datamodule_state` finds it in a loaded checkpoint whatever the class was called.

No Lightning, no ``datamodules`` import: the core's side of the text contract, as :mod:`seqstab.data` is of the batch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from seqstab.core.errors import ConfigError, check_choice

__all__ = [
    "EOS",
    "STATE_FORMAT",
    "UNK",
    "TextCodec",
    "Vocab",
    "bpe_ids",
    "char_ids",
    "datamodule_state",
    "find_datamodule_state",
    "normalize",
    "split_lines",
    "word_tokens",
]

Tokenizer = Literal["word", "char", "bpe"]
TOKENIZERS = ("word", "char", "bpe")
UNK, EOS = "<unk>", "<eos>"
UNK_ID, EOS_ID = 0, 1
STATE_FORMAT = "seqstab.text/1"  # marks a text datamodule's state in a checkpoint


class Vocab:
    """Token ↔ id map: ``<unk>`` is 0, ``<eos>`` is 1, then the training types by falling frequency
    (ties in order of first appearance).

    Args:
        itos: The tokens, index = id.
    """

    def __init__(self, itos: list[str]):
        self.itos = list(itos)
        self.stoi = {token: i for i, token in enumerate(self.itos)}
        if self.itos[:2] != [UNK, EOS] or len(self.stoi) != len(self.itos):
            raise ValueError("itos must start with <unk>, <eos> and hold no duplicates")

    @classmethod
    def build(cls, counts: Counter, min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """Keep the types seen at least ``min_freq`` times; at most ``max_size`` entries, specials included."""
        kept = [token for token, n in counts.most_common() if n >= min_freq and token not in (UNK, EOS)]
        itos = [UNK, EOS, *kept]
        return cls(itos[:max_size] if max_size else itos)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        get = self.stoi.get
        return [get(token, 0) for token in tokens]

    def decode(self, ids) -> list[str]:
        return [self.itos[i] for i in ids]


# -- the rules --------------------------------------------------------------------------------------------------


def normalize(text: str, at_start: bool = True) -> str:
    """``\\n`` line ends (``\\r\\n`` and ``\\r`` become ``\\n``); a byte-order mark dropped where the text is the
    start of its file (``at_start``)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.removeprefix("\ufeff") if at_start else text


def split_lines(text: str) -> list[str]:
    """The lines of ``text``: a final newline ends the last line, it does not start an empty one."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def word_tokens(text: str) -> list[str]:
    """Whitespace-separated words, ``<eos>`` after every line (as pytorch/examples' word_language_model)."""
    tokens: list[str] = []
    for line in split_lines(text):
        tokens += line.split()
        tokens.append(EOS)
    return tokens


def char_ids(text: str, vocab: Vocab) -> np.ndarray:
    """Characters to ids through a lookup table over code points: ``\\n`` is ``<eos>``, unseen ones ``<unk>``."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # (N,) code points
    known = [(ord(token), i) for i, token in enumerate(vocab.itos) if len(token) == 1]
    size = max(int(points.max(initial=0)), *(p for p, _ in known), ord("\n")) + 1
    table = np.zeros(size, dtype=np.int32)  # 0 = <unk>
    for point, i in known:
        table[point] = i
    table[ord("\n")] = EOS_ID
    return table[points]


def bpe_ids(tok, text: str) -> np.ndarray:
    """A ``tokenizers.Tokenizer``'s ids of every line of ``text``, ``<eos>`` after each."""
    ids: list[int] = []
    for encoding in tok.encode_batch(split_lines(text)):
        ids += encoding.ids
        ids.append(EOS_ID)
    return np.asarray(ids, dtype=np.int32)


def import_tokenizers():
    """The Hugging Face ``tokenizers`` module; a one-line :class:`ConfigError` saying how to install it if missing."""
    try:
        import tokenizers
    except ImportError:
        raise ConfigError(
            "tokenizer='bpe' needs Hugging Face tokenizers: pip install 'seqstab[bpe]' (or pip install tokenizers)"
        ) from None
    return tokenizers


# -- the codec ---------------------------------------------------------------------------------------------------


@dataclass
class TextCodec:
    """The tokenizer of a language model: its kind, its vocabulary and, for ``bpe``, the trained tokenizer.

    Args:
        tokenizer: ``word``, ``char`` or ``bpe``.
        vocab: The vocabulary (for ``bpe``, the tokenizer's own, id for id).
        bpe: For ``bpe``: the trained ``tokenizers.Tokenizer`` as JSON (``Tokenizer.to_str()``).
    """

    tokenizer: Tokenizer
    vocab: Vocab
    bpe: str | None = None
    _bpe: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_choice("tokenizer", self.tokenizer, TOKENIZERS)
        if self.tokenizer == "bpe" and not isinstance(self.bpe, str):
            raise ValueError("a bpe codec needs its tokenizer's JSON")

    @property
    def bpe_tokenizer(self):
        """The ``tokenizers.Tokenizer`` of a ``bpe`` codec, built from its JSON once."""
        if self._bpe is None:
            self._bpe = import_tokenizers().Tokenizer.from_str(self.bpe)
        return self._bpe

    def encode(self, text: str) -> np.ndarray:
        """The ids ``(N,)`` int32 of a :func:`normalize`-d text of whole lines, as the datamodules encode a split."""
        if self.tokenizer == "word":
            return np.asarray(self.vocab.encode(word_tokens(text)), dtype=np.int32)
        if self.tokenizer == "char":
            return char_ids(text, self.vocab)
        return bpe_ids(self.bpe_tokenizer, text)

    def encode_prompt(self, prompt: str) -> tuple[list[int], list[str]]:
        """The ids of a prompt to continue, and the pieces of it the vocabulary lacks (read as ``<unk>``).

        A prompt is the start of a text: ``<eos>`` after each of its lines but the last, which the model continues.
        """
        lines = normalize(prompt).split("\n")
        ids: list[int] = []
        unknown: list[str] = []
        for i, line in enumerate(lines):
            if self.tokenizer == "bpe":
                encoding = self.bpe_tokenizer.encode(line)
                ids += encoding.ids
                pairs = zip(encoding.ids, encoding.offsets, strict=True)
                unknown += [line[start:end] for token, (start, end) in pairs if token == UNK_ID]
            else:
                tokens = line.split() if self.tokenizer == "word" else list(line)
                ids += self.vocab.encode(tokens)
                unknown += [t for t in tokens if t not in self.vocab.stoi]
            if i < len(lines) - 1:
                ids.append(EOS_ID)
        return ids, list(dict.fromkeys(unknown))

    def decode(self, ids) -> str:
        """Text of token ids: ``<eos>`` is a line end; words are joined by spaces, characters by nothing, BPE pieces
        by the tokenizer's decoder."""
        ids = [int(i) for i in ids]
        if self.tokenizer == "char":
            return "".join("\n" if i == EOS_ID else self.vocab.itos[i] for i in ids)
        lines: list[list[int]] = [[]]
        for i in ids:
            if i == EOS_ID:
                lines.append([])
            else:
                lines[-1].append(i)
        if self.tokenizer == "word":
            return "\n".join(" ".join(self.vocab.itos[i] for i in line) for line in lines)
        return "\n".join(self.bpe_tokenizer.decode(line, skip_special_tokens=False) for line in lines)

    def state_dict(self) -> dict[str, Any]:
        """Plain data (``weights_only``-loadable): the tokenizer kind, ``itos`` and, for ``bpe``, its JSON."""
        return {"tokenizer": self.tokenizer, "itos": list(self.vocab.itos), "bpe": self.bpe}

    @classmethod
    def from_state(cls, state: Any) -> TextCodec:
        """The codec :meth:`state_dict` describes; ``ValueError`` (one line) if ``state`` is not such a state."""
        if not isinstance(state, dict) or state.get("tokenizer") not in TOKENIZERS:
            raise ValueError("no tokenizer kind ('word', 'char' or 'bpe') in its vocabulary")
        itos = state.get("itos")
        if not isinstance(itos, (list, tuple)) or not all(isinstance(t, str) for t in itos):
            raise ValueError("its vocabulary is not a list of tokens")
        return cls(state["tokenizer"], Vocab(list(itos)), state.get("bpe"))


def datamodule_state(codec: TextCodec, eval_batch_size: int, seq_len: int) -> dict[str, Any]:
    """A text datamodule's ``state_dict()``: its codec and how evaluation batches a split (``eval_batch_size``
    parallel streams read in windows of ``seq_len``), which ``python -m seqstab.score`` repeats."""
    return {
        "format": STATE_FORMAT,
        "codec": codec.state_dict(),
        "eval_batch_size": int(eval_batch_size),
        "seq_len": int(seq_len),
    }


def find_datamodule_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The :func:`datamodule_state` in a loaded Lightning checkpoint (under the datamodule's class name), or None."""
    for value in checkpoint.values():
        if isinstance(value, dict) and value.get("format") == STATE_FORMAT:
            return value
    return None
