"""Text corpora: tokenization, the train-only vocabulary, stream batching, the token cache, bad files."""

from __future__ import annotations

import os
import stat
import sys

import pytest
import torch

import datamodules.text.tokens as tokens_module
from datamodules.base import batchify
from datamodules.text import PennTreebank, TextFiles, TinyShakespeare, Vocab, WikiText2, tokenize, word_tokens
from seqstab.core.errors import ConfigError, DataError
from tests.data_paths import SHARED_DATA

WIKITEXT2 = SHARED_DATA / "wikitext-2"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare"


def _write_corpus(folder, train, valid, test, names=("train.txt", "valid.txt", "test.txt")):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in zip(names, (train, valid, test), strict=True):
        (folder / name).write_text(content, encoding="utf-8")
    return [str(folder / n) for n in names]


def _stitch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate a stream loader's windows along time: (B, N - 1) inputs and targets."""
    batches = list(loader)
    return torch.cat([b["x"] for b in batches], dim=1), torch.cat([b["y"] for b in batches], dim=1)


@pytest.fixture(scope="module")
def wikitext2(tmp_path_factory):
    return WikiText2(data_dir=str(WIKITEXT2), cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_wikitext2_token_counts_and_vocabulary(wikitext2):
    streams = wikitext2.corpus.streams
    assert {s: streams[s].numel() for s in streams} == {"train": 2_088_628, "valid": 217_646, "test": 245_569}
    assert len(wikitext2.vocab) == 33_278
    assert wikitext2.spec.vocab_size == 33_278 and wikitext2.spec.kind == "lm" and wikitext2.spec.stateful
    assert wikitext2.vocab.itos[:2] == ["<unk>", "<eos>"]
    assert (streams["train"] == 0).any()  # WikiText-2 has its own <unk> tokens: they map to ours


def test_wikitext2_every_target_is_the_next_token_within_its_split(wikitext2):
    for split, loader, streams in (
        ("train", wikitext2.train_dataloader(), 20),
        ("valid", wikitext2.val_dataloader(), 10),
        ("test", wikitext2.test_dataloader(), 10),
    ):
        rows = batchify(wikitext2.corpus.streams[split], streams)  # (B, n): the split alone, no other split's ids
        x, y = _stitch(loader)
        assert torch.equal(x, rows[:, :-1]) and torch.equal(y, rows[:, 1:]), split  # no gap, no overlap, y = next
    first = next(iter(wikitext2.train_dataloader()))
    assert first["x"].shape == (20, 35) and first["x"].dtype == torch.int64
    text = (WIKITEXT2 / "train.txt").read_text(encoding="utf-8")
    assert wikitext2.vocab.decode(first["x"][0, :6].tolist()) == ["<eos>", *text.split()[:5]]


def test_vocabulary_is_built_on_train_only(tmp_path):
    train, valid, test = _write_corpus(tmp_path / "c", "a b b c\n", "b zebra\n", "a\n")
    dm = TextFiles(train, valid, test, cache_dir=str(tmp_path))
    assert dm.vocab.itos == ["<unk>", "<eos>", "b", "a", "c"]
    assert dm.corpus.streams["valid"].tolist() == [2, 0, 1]  # zebra never seen in train: <unk>
    assert dm.corpus.streams["test"].tolist() == [3, 1]


def test_min_freq_and_max_size(tmp_path):
    train, valid, _ = _write_corpus(tmp_path / "c", "a a a b b c\n", "c\n", "c\n")
    assert TextFiles(train, valid, min_freq=2, cache_dir=str(tmp_path)).vocab.itos == ["<unk>", "<eos>", "a", "b"]
    assert TextFiles(train, valid, max_size=3, cache_dir=str(tmp_path)).vocab.itos == ["<unk>", "<eos>", "a"]
    with pytest.raises(ConfigError, match="max_size=1"):
        TextFiles(train, valid, max_size=1)


def test_word_tokens_end_every_line_with_eos():
    assert word_tokens(" a b \n\n c") == ["a", "b", "<eos>", "<eos>", "c", "<eos>"]


def test_vocab_round_trip():
    vocab = Vocab(["<unk>", "<eos>", "x", "y"])
    assert vocab.encode(["y", "q", "<eos>"]) == [3, 0, 1]
    assert vocab.decode([2, 3]) == ["x", "y"]
    with pytest.raises(ValueError):
        Vocab(["x", "<unk>"])


def test_char_level_tiny_shakespeare(tmp_path):
    dm = TinyShakespeare(data_dir=str(SHAKESPEARE), cache_dir=str(tmp_path))
    streams = dm.corpus.streams
    assert sum(s.numel() for s in streams.values()) == 1_115_394  # one id per character, "\n" is <eos>
    assert len(dm.vocab) == 66  # 65 characters, newline counted as <eos>, plus <unk>
    assert dm.spec.char_level and dm.spec.vocab_size == 66
    for split in ("train", "valid"):
        assert streams[split][-1].item() == 1  # each split ends at a line boundary
    text = (SHAKESPEARE / "input.txt").read_text()
    decoded = "".join("\n" if t == "<eos>" else t for t in dm.vocab.decode(torch.cat(list(streams.values())).tolist()))
    assert decoded == text
    assert 0.89 < streams["train"].numel() / len(text) <= 0.9


def test_char_level_unseen_character_is_unk(tmp_path):
    train, valid, _ = _write_corpus(tmp_path / "c", "ab\nba\n", "abz\n", "a\n")
    dm = TextFiles(train, valid, tokenizer="char", cache_dir=str(tmp_path))
    assert dm.vocab.decode(dm.corpus.streams["valid"].tolist()) == ["a", "b", "<unk>", "<eos>"]


def test_bpe_tokenizer(tmp_path):
    lines = [" ".join(["lower", "lowest", "newer", "newest", "wide", "wider", "widest"][i % 7 :]) for i in range(200)]
    train, valid, _ = _write_corpus(tmp_path / "c", "\n".join(lines) + "\n", "lowest widest\n", "newer\n")
    dm = TextFiles(train, valid, tokenizer="bpe", bpe_vocab_size=60, cache_dir=str(tmp_path))
    assert dm.vocab.itos[:2] == ["<unk>", "<eos>"] and len(dm.vocab) <= 60
    valid_ids = dm.corpus.streams["valid"].tolist()
    assert valid_ids[-1] == 1 and 2 <= len(valid_ids) - 1 < len("lowest widest")  # subwords: fewer than characters
    assert "".join(dm.vocab.decode(valid_ids[:-1])).replace("\u2581", " ").strip() == "lowest widest"


def test_bpe_without_tokenizers_installed_is_a_one_line_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ConfigError, match=r"pip install 'seqstab\[bpe\]'"):
        tokenize({"train": "a\n", "valid": "a\n", "test": "a\n"}, "bpe")


def test_tokenized_corpus_is_cached_by_content_and_settings(tmp_path, monkeypatch):
    train, valid, test = _write_corpus(tmp_path / "c", "a b\n", "b\n", "a\n")
    cache = tmp_path / "cache"
    first = TextFiles(train, valid, test, cache_dir=str(cache)).corpus
    saved = list((cache / "tokens").iterdir())
    assert len(saved) == 1 and not saved[0].name.startswith(".")  # written under a temporary name, then renamed
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(saved[0].stat().st_mode) == 0o666 & ~umask  # core.io.atomic_file's, not mkstemp's 0o600

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again despite the cache")

    monkeypatch.setattr(tokens_module, "tokenize", no_tokenizing)
    again = TextFiles(train, valid, test, cache_dir=str(cache)).corpus
    assert again.vocab.itos == first.vocab.itos and torch.equal(again.streams["train"], first.streams["train"])
    with pytest.raises(AssertionError, match="tokenized again"):
        _ = TextFiles(train, valid, test, min_freq=2, cache_dir=str(cache)).corpus  # other settings: other entry
    (tmp_path / "c" / "train.txt").write_text("a b c\n")
    with pytest.raises(AssertionError, match="tokenized again"):
        _ = TextFiles(train, valid, test, cache_dir=str(cache)).corpus  # other content: other entry


def test_an_unreadable_cache_entry_is_tokenized_again(tmp_path):
    train, valid, test = _write_corpus(tmp_path / "c", "a b\n", "b\n", "a\n")
    first = TextFiles(train, valid, test, cache_dir=str(tmp_path / "cache")).corpus
    (entry,) = (tmp_path / "cache" / "tokens").iterdir()
    entry.write_bytes(b"not a torch file")  # e.g. from a disk that filled up under another tool
    again = TextFiles(train, valid, test, cache_dir=str(tmp_path / "cache")).corpus
    assert again.vocab.itos == first.vocab.itos and torch.equal(again.streams["test"], first.streams["test"])
    assert entry.read_bytes() != b"not a torch file"  # written again


def test_penn_treebank_local_directory(tmp_path):
    folder = tmp_path / "ptb"
    _write_corpus(folder, " a b \n", " b \n", " a \n", names=("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"))
    dm = PennTreebank(data_dir=str(folder), cache_dir=str(tmp_path), batch_size=1, eval_batch_size=1)
    assert dm.spec.vocab_size == 4 and dm.corpus.streams["train"].tolist() == [2, 3, 1]


@pytest.mark.parametrize(
    "content,needle",
    [
        (None, "valid.txt: no such file"),
        (b"", "valid.txt: the file is empty"),
        (b"  \n\n", "valid.txt: the file is empty"),
        (b"ok line\nsecond \xff line\n", "valid.txt line 2: invalid UTF-8"),
    ],
)
def test_bad_text_file_is_one_line_data_error(tmp_path, content, needle):
    train, valid, _ = _write_corpus(tmp_path / "c", "a\n", "a\n", "a\n")
    if content is None:
        (tmp_path / "c" / "valid.txt").unlink()
    else:
        (tmp_path / "c" / "valid.txt").write_bytes(content)
    with pytest.raises(DataError) as err:
        _ = TextFiles(train, valid, cache_dir=str(tmp_path / "cache")).spec
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "cache" / "tokens").exists()  # nothing cached from a failed read


def test_too_short_split_for_its_streams(tmp_path):
    train, valid, _ = _write_corpus(tmp_path / "c", "a b c d e f\n", "a\n", "a\n")
    dm = TextFiles(train, valid, batch_size=2, eval_batch_size=4, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="valid split holds 2 tokens"):
        dm.val_dataloader()


def test_bad_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer='bytes'"):
        TextFiles("a", "b", tokenizer="bytes")
    with pytest.raises(ConfigError, match="seq_len=0"):
        TextFiles("a", "b", seq_len=0)
    with pytest.raises(ConfigError, match="split="):
        TinyShakespeare(split=(0.9, 0.2))
    with pytest.raises(ConfigError, match="sha256 is set but url is not"):
        WikiText2(sha256="ab")
