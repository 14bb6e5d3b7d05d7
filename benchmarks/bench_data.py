"""Data: WikiText-2 tokenization and vocabulary build, cold (first use) and cached (every later run).

    python benchmarks/bench_data.py                       # ~1 min on 2 cores; --help for the knobs

``cold``: a fresh ``datamodules.text.WikiText2`` over local files and an empty cache directory: read the three
splits, tokenize, build the vocabulary on train, encode every split, write the token cache. ``cached``: a second
instance with the same cache directory: hash the files, load the cached ids. Each repeat uses a fresh cache
directory, so every cold figure is a real first use; the figure is the median over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import _common

from datamodules.text import WikiText2


def load_seconds(data_dir: str, cache_dir: str, tokenizer: str) -> tuple[float, WikiText2]:
    start = time.perf_counter()
    dm = WikiText2(data_dir=data_dir, cache_dir=cache_dir, tokenizer=tokenizer)
    dm.corpus  # noqa: B018 -- the property does the work
    return time.perf_counter() - start, dm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokenizers", default="word,char", help="comma-separated: word, char, bpe")
    parser.add_argument("--data-dir", help="WikiText-2 train/valid/test.txt (default: ../shared/data or download)")
    args = parser.parse_args(argv)
    args.data_dir = str(_common.wikitext2_dir(args.data_dir))
    print(f"machine: {_common.machine()}")
    print(f"data: {args.data_dir}; median (min–max) of {args.repeats} repeats, each with a fresh cache directory")
    print("| tokenizer | vocabulary | train / valid / test tokens | cold (s) | cached (s) | cold / cached |")
    print("|---|---:|---:|---:|---:|---:|")
    for tokenizer in args.tokenizers.split(","):
        cold, cached = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                seconds, dm = load_seconds(args.data_dir, cache, tokenizer)
                cold.append(seconds)
                seconds, again = load_seconds(args.data_dir, cache, tokenizer)
                cached.append(seconds)
                assert all((again.corpus.streams[s] == dm.corpus.streams[s]).all() for s in dm.corpus.streams)
        sizes = " / ".join(f"{len(dm.corpus.streams[s]):,}" for s in ("train", "valid", "test"))
        c, k = statistics.median(cold), statistics.median(cached)
        print(
            f"| {tokenizer} | {len(dm.vocab):,} | {sizes} | {c:.2f} ({min(cold):.2f}–{max(cold):.2f}) "
            f"| {k:.3f} ({min(cached):.3f}–{max(cached):.3f}) | {c / k:.0f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
