"""seqstab.cli.heap: the training process keeps what it frees (glibc), read from the process's own memory map."""

from __future__ import annotations

import sys

import pytest

from seqstab.cli.heap import keep_heap
from tests.helpers import REPO, Started

PROBE = """
import torch
from seqstab.cli.heap import keep_heap
kept = keep_heap()
def heap():  # the [heap] segment (brk) of this process
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            return tuple(int(x, 16) for x in line.split()[0].split("-"))
    return 0, 0
arrays = [torch.empty(5 * 2**20).fill_(1.0) for _ in range(3)]  # an update's arrays: 3 x 20 MiB, alive at once
start, end = heap()
inside = sum(start <= a.data_ptr() < end for a in arrays)
del arrays  # freed: kept for the next update, or given back to the kernel
start, end = heap()
print(kept, inside, (end - start) >> 20)
"""


def start_probe(keep: str) -> Started:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SEQSTAB_KEEP_HEAP": keep}
    return Started([sys.executable, "-c", PROBE], cwd=None, env=env, timeout=120)


def probe(started: Started) -> tuple[str, int, int]:
    out = started.result()
    assert out.returncode == 0, out.stderr
    kept, inside, heap_mib = out.stdout.split()
    return kept, int(inside), int(heap_mib)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_an_updates_arrays_come_from_the_heap_and_stay_there_once_freed():
    default, keeping = start_probe("0"), start_probe("1")  # two fresh processes at once, each reading its own heap
    kept, inside, heap_mib = probe(default)
    assert kept == "False" and inside == 0  # glibc's default: each 20 MiB array a mapping apart, unmapped when freed
    kept, inside_kept, heap_mib_kept = probe(keeping)
    if kept == "False":
        pytest.skip("not glibc: no mallopt")
    assert inside_kept == 3  # from the heap ...
    assert heap_mib_kept >= heap_mib + 55  # ... and still there after the free (3 x 20 MiB): no faults next time


def test_tuning_of_ones_own_wins():
    assert not keep_heap({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert not keep_heap({"MALLOC_ARENA_MAX_": "2"})
    assert not keep_heap({"SEQSTAB_KEEP_HEAP": "0"})
