"""The benchmarks still run: the peer bench's corpora give both programs one vocabulary, and the station bench
trains and prints its table (a few updates; the figures themselves come from the benchmarks, never from a test)."""

from __future__ import annotations

import subprocess
import sys
from argparse import Namespace

import pytest

from tests.helpers import REPO, SHARED_DATA

BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))
import bench_peer  # noqa: E402  (a script's module: its folder is on sys.path above)
import bench_stations  # noqa: E402

CORPORA = {
    "wikitext-2": SHARED_DATA / "wikitext-2" / "train.txt",
    "tinyshakespeare": SHARED_DATA / "tinyshakespeare" / "input.txt",
}
# seqstab's vocabulary in each setting: every type of WikiText-2's train.txt (with <unk>, <eos>); the 10k cut; the
# floor's 98 hashed words; Shakespeare's 63 characters (WikiText-2's depend on the length of the cut)
VOCABULARY = {
    ("wikitext-2", "wt2-33k"): 33_278,
    ("wikitext-2", "wt2-10k"): 10_000,
    ("wikitext-2", "floor"): 100,
    ("tinyshakespeare", "wt2-10k"): 10_000,
    ("tinyshakespeare", "floor"): 100,
    ("tinyshakespeare", "char"): 63,
}


@pytest.mark.parametrize(("corpus", "setting"), sorted(VOCABULARY))
def test_peer_corpus_gives_both_programs_one_vocabulary(tmp_path, corpus, setting):
    if not CORPORA[corpus].is_file():  # (without it the WikiText-2 lookup would download: tests never reach out)
        pytest.skip(f"{CORPORA[corpus]} not found (../shared/data beside the checkout)")
    source = bench_peer.CORPORA[corpus](Namespace(data_dir=None))  # what --corpus reads
    assert source == CORPORA[corpus]
    # characters: the cut of the bench's default run (50 + 300 updates), where every one of the 63 symbols is seen
    tokens = (50 + 300 + 5) * bench_peer.TOKENS + bench_peer.BATCH if setting == "char" else 5_000
    bench_peer.write_corpus(setting, source, tmp_path / "data", tokens)
    sizes = bench_peer.vocabularies(tmp_path / "data")
    assert sizes["main.py"] == sizes["seqstab"] == VOCABULARY[corpus, setting]
    assert sizes["train_tokens"] >= tokens


def test_stations_bench_prints_every_row():
    """``bench_stations.py`` cuts its corpus as the peer bench does and times both programs: every station a row."""
    if not CORPORA["tinyshakespeare"].is_file():
        pytest.skip("../shared/data not found")
    cmd = [sys.executable, str(BENCH / "bench_stations.py"), "--corpus", "tinyshakespeare", "--updates", "3"]
    done = subprocess.run([*cmd, "--warmup", "2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[1:] == [label for label, *_ in bench_stations.SEQSTAB_ROWS]
    assert "seqstab's loop over Lightning's floor's" in done.stdout
