"""``python -m seqstab.generate`` and ``python -m seqstab.score`` on tiny language models trained here for a few steps
(cuts of WikiText-2 and Tiny Shakespeare from ``../shared/data``): the tokenizer travels in the checkpoint, sampling
is seeded, ``score`` reproduces ``seqstab.train test``, and a wrong checkpoint is one line.

Most calls are in-process (``main([...])``, as a console script dispatches); one of each runs as ``python -m``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from datamodules.text import TextFiles
from seqstab.cli import generate, score
from seqstab.cli.lm import load_lm
from seqstab.cli.train import main as train
from seqstab.core import io as checkpoint
from seqstab.core.io import CheckpointError
from tests.data_paths import SHARED_DATA, TEST_CACHE
from tests.helpers import REPO, Started, asked_for, until_teardown

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SMALL = ["--model", "seqstab.tasks.LanguageModel", "--model.net.hidden_size", "16", "--trainer.limit_val_batches", "1"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A directory to train in (``runs/`` lands there), on one thread (tiny nets; a shared 2-core machine)."""
    folder, cwd, threads = tmp_path_factory.mktemp("lm"), Path.cwd(), torch.get_num_threads()
    os.chdir(folder)
    torch.set_num_threads(1)
    yield folder
    os.chdir(cwd)
    torch.set_num_threads(threads)


def cut(source: Path, target: Path, lines: int, skip: int = 0) -> Path:
    text = source.read_text(encoding="utf-8").splitlines(keepends=True)
    target.write_text("".join(text[skip : skip + lines]), encoding="utf-8")
    return target


def fit(args: list[str], steps: int = 4) -> tuple[Path, list[str]]:
    """Train for ``steps`` updates; its last checkpoint, and the arguments that rebuild its data (for ``test``)."""
    before = set(Path("runs").glob("*/version_*"))
    assert train(["fit", *args, *QUIET, "--trainer.max_steps", str(steps)]) == 0
    (run,) = set(Path("runs").glob("*/version_*")) - before
    return (run / "checkpoints" / "last.ckpt").resolve(), args


@pytest.fixture(scope="module")
def wikitext(work):
    """Word level on a WikiText-2 cut: 3 evaluation streams of windows of 10 (not the defaults)."""
    wiki = SHARED_DATA / "wikitext-2"
    files = {split: cut(wiki / f"{split}.txt", work / f"wiki.{split}.txt", 120) for split in ("train", "valid", "test")}
    data = ["--data", "datamodules.text.TextFiles", "--data.cache_dir", str(TEST_CACHE)]
    data += [f"--data.{split}={path}" for split, path in files.items()]
    data += ["--data.batch_size", "4", "--data.eval_batch_size", "3", "--data.seq_len", "10"]
    ckpt, args = fit([*SMALL, *data])
    return ckpt, args, files["test"]


@pytest.fixture(scope="module")
def shakespeare(work):
    """Character level on the first 600 lines of Tiny Shakespeare (the TinyShakespeare datamodule, its own split)."""
    folder = work / "shakespeare"
    folder.mkdir()
    cut(SHARED_DATA / "tinyshakespeare" / "input.txt", folder / "input.txt", 600)
    data = ["--data", "datamodules.text.TinyShakespeare", "--data.data_dir", str(folder)]
    data += ["--data.cache_dir", str(TEST_CACHE), "--data.batch_size", "4", "--data.seq_len", "16"]
    ckpt, args = fit([*SMALL, *data])
    from datamodules.text import TinyShakespeare

    _, test_bytes = TinyShakespeare(data_dir=str(folder), cache_dir=str(TEST_CACHE)).read()["test"]
    (work / "shakespeare.test.txt").write_bytes(test_bytes)
    return ckpt, args, work / "shakespeare.test.txt"


CHAR_GENERATION = ["--prompt", "ROMEO:", "--tokens", "60", "--seed", "7"]


@pytest.fixture(scope="module", autouse=True)
def started(request):
    """The two ``python -m`` commands (generate and score on the character model), started as soon as the model is
    trained, when this module starts: they run beside the in-process tests."""
    if not asked_for(request):  # no selected test reads the runs: start none
        yield None
        return
    ckpt, _, test_file = request.getfixturevalue("shakespeare")  # trained here only when a reader runs
    runs = {
        "generate": [sys.executable, "-m", "seqstab.generate", "--ckpt_path", str(ckpt), *CHAR_GENERATION],
        "score": [sys.executable, "-m", "seqstab.score", "--ckpt_path", str(ckpt), str(test_file)],
    }
    runs = {name: Started(cmd, cwd=REPO, timeout=120) for name, cmd in runs.items()}
    yield from until_teardown(runs)


def run(module, capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = module.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def metrics(stdout: str, prefix: str = "") -> dict[str, float]:
    """``name  value`` lines of a command's output (``seqstab.train`` prints ``test/ppl  56.82``)."""
    found = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith(prefix):
            with contextlib.suppress(ValueError):
                found[parts[0].removeprefix(prefix)] = float(parts[1])
    return found


def test_the_checkpoint_carries_the_tokenizer(wikitext):
    ckpt, _, _ = wikitext
    saved = checkpoint.load(ckpt)  # weights_only: plain data
    state = saved["TextFiles"]  # Lightning: the datamodule's state_dict() under its class's name
    assert state["codec"]["tokenizer"] == "word" and state["codec"]["itos"][:2] == ["<unk>", "<eos>"]
    assert (state["eval_batch_size"], state["seq_len"]) == (3, 10)
    assert len(state["codec"]["itos"]) == saved["hyper_parameters"]["spec"]["vocab_size"]


def test_word_generation_is_the_same_for_the_same_seed(wikitext, capsys):
    ckpt, _, _ = wikitext
    argv = ["--ckpt_path", ckpt, "--prompt", "the", "--tokens", "40", "--seed"]
    (code, first, err), (_, again, _), (_, other, _) = (run(generate, capsys, *argv, seed) for seed in (0, 0, 1))
    assert code == 0 and err == ""
    assert first == again != other
    assert first.startswith("the ")
    vocab = set(load_lm(ckpt).codec.vocab.itos)
    assert set(first.split()) <= vocab  # words joined by spaces, <eos> as a line end
    assert "<eos>" not in first


def test_temperature_zero_is_greedy(wikitext, capsys):
    ckpt, _, _ = wikitext
    texts = {run(generate, capsys, "--ckpt_path", ckpt, "--prompt", "the", "--tokens", "5", "--temperature", "0",
                 "--seed", s)[1] for s in (0, 1)}  # fmt: skip
    assert len(texts) == 1  # the seed does not matter
    lm = load_lm(ckpt)
    prompt, _ = lm.codec.encode_prompt("the")
    with torch.inference_mode():
        logits, _ = lm.model(torch.tensor([[1, *prompt]]))
    ids = generate.generate(lm.model, prompt, 5, temperature=0)
    assert ids[0] == int(logits[0, -1].argmax())
    assert texts.pop().strip() == lm.codec.decode([*prompt, *ids]).strip()


def test_unknown_prompt_words_are_said_once(wikitext, capsys):
    ckpt, _, _ = wikitext
    code, out, err = run(generate, capsys, "--ckpt_path", ckpt, "--prompt", "zqxj the zqxj", "--tokens", "3")
    assert code == 0 and out.startswith("<unk> the <unk>")
    assert err.count("\n") == 1 and err.count("'zqxj'") == 1 and "<unk>" in err


def test_bpe_checkpoint_round_trips_its_tokenizer(work, capsys):
    wiki = SHARED_DATA / "wikitext-2"
    files = {split: cut(wiki / f"{split}.txt", work / f"bpe.{split}.txt", 60) for split in ("train", "valid", "test")}
    data = ["--data", "datamodules.text.TextFiles", "--data.tokenizer", "bpe", "--data.bpe_vocab_size", "300"]
    data += [f"--data.{split}={path}" for split, path in files.items()] + ["--data.cache_dir", str(TEST_CACHE)]
    ckpt, _ = fit([*SMALL, *data, "--data.batch_size", "4", "--data.seq_len", "8"], steps=1)
    codec = load_lm(ckpt).codec
    dm = TextFiles(**{split: str(path) for split, path in files.items()}, tokenizer="bpe", bpe_vocab_size=300,
                   cache_dir=str(TEST_CACHE))  # fmt: skip
    assert codec.tokenizer == "bpe" and codec.vocab.itos == dm.vocab.itos
    test_text = files["test"].read_text(encoding="utf-8")
    assert codec.encode(test_text).tolist() == dm.corpus.streams["test"].tolist()  # encodes as the datamodule did
    line = "the game was released in japan"
    ids, unknown = codec.encode_prompt(line)
    assert codec.decode(ids) == line and unknown == []
    code, out, _ = run(generate, capsys, "--ckpt_path", ckpt, "--prompt", "the game", "--tokens", "12")
    assert code == 0 and out.startswith("the game")


def test_score_reproduces_test_ppl(wikitext, capsys, monkeypatch):
    ckpt, args, test_file = wikitext
    assert train(["test", *args, *QUIET, "--ckpt_path", str(ckpt)]) == 0
    tested = metrics(capsys.readouterr().out, "test/")
    code, out, _ = run(score, capsys, "--ckpt_path", ckpt, test_file)
    scored = metrics(out)
    assert code == 0 and f"{test_file}: " in out and "3 streams, windows of 10" in out
    assert set(scored) == {"loss", "ppl"}  # word level: no bpc
    assert f"{scored['ppl']:.4g}" == f"{tested['ppl']:.4g}"
    assert scored["ppl"] == pytest.approx(tested["ppl"], rel=1e-5)
    monkeypatch.setattr(score, "BLOCK_BYTES", 64)  # many blocks, rows starting mid-block: the same stream
    assert metrics(run(score, capsys, "--ckpt_path", ckpt, test_file)[1]) == scored
    one = metrics(run(score, capsys, "--ckpt_path", ckpt, test_file, "--streams", "1", "--seq_len", "7")[1])
    assert one["ppl"] != scored["ppl"] and math.isfinite(one["ppl"])  # one stream: other predictions scored


def test_char_generation_via_the_command_line(shakespeare, started, capsys):
    ckpt, _, _ = shakespeare
    argv = ["--ckpt_path", str(ckpt), *CHAR_GENERATION]
    result = started["generate"].result()
    assert result.returncode == 0, result.stderr
    code, again, _ = run(generate, capsys, *argv)
    assert code == 0 and result.stdout == again  # the same seed: the same text, in another process too
    text = result.stdout.removesuffix("\n")
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 60  # characters concatenated, <eos> is "\n"
    assert run(generate, capsys, *argv[:-1], "8")[1] != again


def test_score_reports_bits_per_character_via_the_command_line(shakespeare, started, capsys):
    ckpt, args, _ = shakespeare
    assert train(["test", *args, *QUIET, "--ckpt_path", str(ckpt)]) == 0
    tested = metrics(capsys.readouterr().out, "test/")
    result = started["score"].result()
    assert result.returncode == 0, result.stderr
    scored = metrics(result.stdout)
    assert set(scored) == {"loss", "ppl", "bpc"}
    assert scored["bpc"] == pytest.approx(scored["loss"] / math.log(2), rel=1e-5)
    for name in ("bpc", "ppl"):
        assert f"{scored[name]:.4g}" == f"{tested[name]:.4g}", name


@pytest.fixture(scope="module")
def forecaster(work):
    data = ["--data", "datamodules.timeseries.SumOfSines", "--data.length", "300", "--data.input_length", "12"]
    data += ["--data.batch_size", "8"]
    ckpt, _ = fit(["--model", "seqstab.tasks.Forecaster", "--model.net.hidden_size", "8", *data], steps=1)
    return ckpt


@pytest.mark.parametrize("module", [generate, score], ids=["generate", "score"])
@pytest.mark.parametrize("case", ["missing", "garbage", "not a checkpoint", "forecaster"])
def test_a_wrong_checkpoint_is_one_line(module, case, work, forecaster, capsys):
    paths = {
        "missing": work / "nowhere.ckpt",
        "garbage": work / "garbage.ckpt",
        "not a checkpoint": work / "tensors.pt",
        "forecaster": forecaster,
    }
    (work / "garbage.ckpt").write_bytes(b"\x00 not a checkpoint at all \xff" * 10)
    torch.save({"weights": torch.zeros(3)}, work / "tensors.pt")
    argv = ["--ckpt_path", paths[case]] + ([work / "wiki.test.txt"] if module is score else [])
    code, out, err = run(module, capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"seqstab.{module.__name__.rpartition('.')[2]}: error: {paths[case]}")
    needle = {"missing": "no such", "garbage": "not a readable", "not a checkpoint": "not a checkpoint of a seqstab",
              "forecaster": "seqstab.tasks.Forecaster"}[case]  # fmt: skip
    assert needle in err


@pytest.mark.parametrize(
    "content,needle",
    [(None, "no such file"), (b" \n\n", "the file is empty"), (b"a b\n\xff c\n", "line 2: invalid UTF-8")],
)
def test_a_bad_text_file_is_one_line(wikitext, content, needle, tmp_path, capsys):
    ckpt, _, _ = wikitext
    path = tmp_path / "text.txt"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(score, capsys, "--ckpt_path", ckpt, path)
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err


def test_resuming_with_another_vocabulary_is_refused(tmp_path):
    for name, text in (("a.txt", "a b c\n"), ("b.txt", "c b a a\n")):
        (tmp_path / name).write_text(text)
    first = TextFiles(str(tmp_path / "a.txt"), str(tmp_path / "a.txt"), cache_dir=str(tmp_path))
    same = TextFiles(str(tmp_path / "a.txt"), str(tmp_path / "a.txt"), cache_dir=str(tmp_path))
    other = TextFiles(str(tmp_path / "b.txt"), str(tmp_path / "b.txt"), cache_dir=str(tmp_path))
    same.load_state_dict(first.state_dict())  # resume: the same vocabulary
    with pytest.raises(CheckpointError, match="another vocabulary"):
        other.load_state_dict(first.state_dict())
