"""The training process keeps the memory it frees for the next update, instead of giving it back to the kernel.

glibc's ``malloc`` serves a block above its mmap threshold (128 KiB at first, rising as such blocks are freed, to
32 MiB at most) from a fresh mapping, and returns heap memory to the kernel whenever more than twice that threshold
lies free at the top of the heap. A training step allocates and frees the same arrays of tens of megabytes at every
update (a word LM's logits and their gradient: 28 MB each at 700 positions and V = 10,000), so the kernel maps and
zeroes their pages again at every update: 20–30 ms of system time in a 100 ms update on 2 cores, where it should be
nothing (``python benchmarks/bench_peer.py --settings wt2-10k``). :func:`keep_heap`, called once when ``python -m
seqstab.train`` starts, fixes the threshold at its largest (blocks up to 32 MiB come from the heap) and stops the
trimming, as a caching allocator does (PyTorch's own on a GPU, jemalloc, tcmalloc): the process's resident memory
stays at its peak, the pages are faulted in once.

It does nothing where the C library is not glibc, where malloc was tuned already (``GLIBC_TUNABLES`` or a
``MALLOC_*_`` variable in the environment: yours win), or with ``SEQSTAB_KEEP_HEAP=0``.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "keep_heap"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest on 64-bit (4 * 1024 * 1024 * sizeof(long)); mallopt refuses more
TRIM_THRESHOLD = 2**31 - 1  # the largest an int holds: the heap's top is trimmed only past 2 GiB free


def keep_heap(environ: dict[str, str] | None = None) -> bool:
    """Tune glibc's malloc for a training process (see the module); whether it was done."""
    environ = os.environ if environ is None else environ
    if environ.get("SEQSTAB_KEEP_HEAP", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if "GLIBC_TUNABLES" in environ or any(k.startswith("MALLOC_") and k.endswith("_") for k in environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on (no search, no subprocess)
    except (OSError, AttributeError):  # no mallopt there
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 where a value is refused (musl's is a stub that refuses everything)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
