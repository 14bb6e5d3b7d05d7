"""SIGTERM and SIGINT during a fit: the batch in flight completes, ``last.ckpt`` is saved, the closing lines print,
the exit code is 143 / 130, and the run resumed with ``--ckpt_path last`` ends bitwise where an uninterrupted run
ends (weights, optimizer state, clipping state, step and update counts). The signals are real: sent from this
process to a running training process (a fork, see ``tests/fault_injection.py``), or by the run to itself at seeded
points."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from seqstab.cli.train import main
from tests.fault_injection import STEPS, args, check, final_state, point_args, prepare, run, same, stop_from_outside

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the runs are forks of this process")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The data and the uninterrupted run's final state, shared by the tests here."""
    root = tmp_path_factory.mktemp("signals")
    return root, prepare(root)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_from_outside_stops_at_a_batch_boundary_and_resumes_bitwise(prepared, signum):
    root, (data, reference) = prepared
    here = root / f"outside_{signum.name}"
    assert stop_from_outside(here, data, signum) == 128 + signum, (here / "out.log").read_text()[-3000:]
    run_dir = here / "runs" / "seqstab" / "version_0"
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    updates = saved["seqstab"]["updates"]
    assert 4 <= updates < STEPS and updates % 2 == 0  # mid-run, at a batch boundary (2 updates a batch)
    log = (here / "out.log").read_text()
    assert f"seqstab: {signum.name} received: stopping at the end of this batch" in log
    assert f"tensorboard --logdir {run_dir.relative_to(here)}" in log  # the closing lines of a finished fit...
    assert f"seqstab: {updates} of {updates} updates applied" in log
    assert (  # ...and what stopped it, where its state is, how to resume
        f"seqstab: stopped by {signum.name} after update {updates}; its state is saved in "
        f"{run_dir.relative_to(here)}/checkpoints/last.ckpt: resume it with the same command and --ckpt_path last"
    ) in log
    assert run(here, [*args(data), "--ckpt_path", "last"]) == 0
    assert same(reference, final_state(here))


def test_signals_at_seeded_points_resume_bitwise_and_a_second_signal_abandons_the_save(prepared):
    """SIGINT during a validation (the validation and the next batch complete), and SIGTERM twice: the second inside
    the save the first caused, with the file written to its temporary part: the run stops at once, the part goes,
    and the previous last.ckpt (update 8) resumes."""
    root, ready = prepared
    results = check(root / "seeded", [("SIGINT/validation", 6), ("SIGTERM/save", 8)], prepared=ready, jobs=2)
    assert [code for _, _, code, _ in results] == [130, 143], results
    assert all(exact for *_, exact in results), results
    log = (root / "seeded" / "point_1" / "out.log").read_text()
    assert "seqstab: stopped by SIGTERM after update 10; at once, by a second signal, without saving" in log
    assert not list((root / "seeded").rglob("*.part"))


def test_a_signal_in_the_last_batch_lets_the_run_finish(prepared):
    root, (data, reference) = prepared
    here = root / "last_batch"
    assert run(here, point_args(data, "SIGTERM/train", STEPS - 2)) == 0  # it finished: exit 0
    assert "seqstab: SIGTERM arrived as the run was finishing: it finished" in (here / "out.log").read_text()
    assert same(reference, final_state(here))


def test_a_signal_before_training_stops_at_once_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    stop = ["--trainer.callbacks+=tests.fault_injection.Signal", "--trainer.callbacks.signum", "SIGINT"]
    stop += ["--trainer.callbacks.where", "setup"]
    before = signal.getsignal(signal.SIGINT)
    code = main(["fit", "--data.num_train", "20", "--trainer.max_steps", "2", *stop])
    assert code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1:] == [
        "seqstab.train: stopped by SIGINT: before training started: nothing to save"
    ]
    assert not (tmp_path / "runs").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the command put the handlers back


def test_ctrl_c_in_a_tool_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """generate, score and replay: Ctrl-C (a real SIGINT, Python's own handler) ends with one line, no traceback."""
    import time

    from seqstab.cli import lm, score

    def interrupted(path, trust=()):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the KeyboardInterrupt arrives here
        raise AssertionError("no KeyboardInterrupt came of the SIGINT")

    monkeypatch.setattr(lm, "load_lm", interrupted)
    (tmp_path / "text.txt").write_text("a b c\n")
    # Python's own handler, as a tool started from a terminal has it (a shell's background job inherits SIG_IGN)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = score.main(["--ckpt_path", str(tmp_path / "x.ckpt"), str(tmp_path / "text.txt")])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    assert capsys.readouterr().err.splitlines() == ["seqstab.score: stopped by SIGINT"]
