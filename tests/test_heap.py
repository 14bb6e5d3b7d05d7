"""seqstab.cli.heap: the training process keeps what it frees (glibc), measured as the kernel counts it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from seqstab.cli.heap import keep_heap
from tests.helpers import REPO

LOOP = """
import resource, sys, torch
from seqstab.cli.heap import keep_heap
kept = keep_heap()
def update():  # three 20 MB arrays alive at once, then freed: an update's logits, their gradient, a copy
    arrays = [torch.empty(5 * 2**20).fill_(1.0) for _ in range(3)]
    del arrays
update()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    update()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(keep: str) -> tuple[str, int]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SEQSTAB_KEEP_HEAP": keep}
    out = subprocess.run([sys.executable, "-c", LOOP], env=env, capture_output=True, text=True, timeout=120, check=True)
    kept, count = out.stdout.split()
    return kept, int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_heap_serves_an_updates_arrays_without_faulting_them_in_again():
    kept, without = faults("0")
    assert kept == "False"
    if without < 20 * 3 * 5120 / 2:  # most arrays mapped and faulted in afresh, in 4 KiB pages, where glibc maps them
        pytest.skip(f"{without} page faults without: this machine's malloc and kernel fault little here anyway")
    kept, with_kept = faults("1")
    if kept == "False":
        pytest.skip("not glibc: no mallopt")
    assert with_kept < without / 4  # (measured: 214,524 against 35,841)


def test_tuning_of_ones_own_wins():
    assert not keep_heap({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert not keep_heap({"MALLOC_ARENA_MAX_": "2"})
    assert not keep_heap({"SEQSTAB_KEEP_HEAP": "0"})
