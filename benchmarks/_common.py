"""Shared pieces of the benchmarks: the machine they ran on, WikiText-2 as pytorch/examples reads it, timing helpers."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
WIKITEXT2 = SHARED_DATA / "wikitext-2"

if str(REPO) not in sys.path:  # `python benchmarks/bench_x.py` from a clean checkout finds seqstab and datamodules
    sys.path.insert(0, str(REPO))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    """One line naming the machine: CPU model, cores, torch version and intra-op threads."""
    import pytorch_lightning as pl

    return (
        f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"Lightning {pl.__version__}, Python {platform.python_version()}"
    )


def wikitext2_dir(data_dir: str | None = None) -> Path:
    """``data_dir`` if given, else the shared copy beside the checkout, else the copy ``datamodules.text.WikiText2``
    downloads (SHA-256 checked) into its cache on first use."""
    if data_dir:
        return Path(data_dir)
    if (WIKITEXT2 / "train.txt").is_file():
        return WIKITEXT2
    from datamodules.text import WikiText2

    return WikiText2().files()["train"].parent


def read_words(path: Path) -> list[str]:
    """pytorch/examples ``data.Corpus`` tokenization: whitespace split, ``<eos>`` at each line end."""
    words = []
    with open(path, encoding="utf8") as f:
        for line in f:
            words.extend(line.split() + ["<eos>"])
    return words


def wikitext2_ids(data_dir: str | None = None) -> tuple[torch.Tensor, int]:
    """WikiText-2 train token ids (vocabulary built over train, valid and test, as pytorch/examples) and the
    vocabulary size (33,278)."""
    data_dir = wikitext2_dir(data_dir)
    index: dict[str, int] = {}
    splits = {}
    for split in ("train", "valid", "test"):
        words = read_words(data_dir / f"{split}.txt")
        splits[split] = [index.setdefault(w, len(index)) for w in words]
    return torch.tensor(splits["train"], dtype=torch.long), len(index)


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best-of-``repeats`` float32 ``torch.mm`` of two ``n × n`` matrices, in GFLOP/s (2 n³ FLOPs each)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def cuda_matmul_gflops(n: int = 8192, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Best-of-``repeats`` ``torch.mm`` of two ``n × n`` matrices on the GPU, in GFLOP/s (timed by CUDA events;
    float32 runs as TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is on)."""
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):  # warm-up
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.mm(a, b)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * n**3 / best / 1e9


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """``median (min–max)`` of a list of measurements."""
    return f"{median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"
