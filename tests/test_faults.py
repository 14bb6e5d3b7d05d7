"""Fault injection: a stateful language-model run SIGKILLed at 5 seeded points (during training, during validation,
inside a checkpoint save) and resumed with ``--ckpt_path last`` ends bitwise where an uninterrupted run ends."""

from __future__ import annotations

import pytest

from tests.fault_injection import check, points


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="the runs are forks of this process")
def test_five_kills_at_seeded_points_each_resume_bitwise_exact(tmp_path):
    results = check(tmp_path, points(5), jobs=2)  # two runs at a time, each a fork with one torch thread
    assert [killed for *_, killed, _ in results] == [-9] * 5, results  # every point was reached and killed the run
    assert all(exact for *_, exact in results), results
