"""The sweep's Ray backend on a local Ray (``num_cpus=2``): the same report as the local backend, bit for bit.

One test: Ray's start-up costs seconds on a 2-core machine."""

from __future__ import annotations

import csv
import os
import sys

import pytest

from seqstab.cli.sweep import main as sweep_main
from tests.helpers import Started
from tests.test_sweep import write_sweep

ray = pytest.importorskip("ray")

# A run that trains (its metrics compared to the last bit) and one that fails (reported, then run again), side by side
# on Ray's two CPUs; whichever ends first, the report lists them in the sweep file's order
TWO = """\
base: base.yaml
args:
  optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1}}
variants:
  normclip:
    model.clipping: {class_path: seqstab.clipping.NormClip, init_args: {max_norm: 0.5}}
  broken: {model.net.hidden_size: -1}
"""


def report(sweep_dir) -> list[dict[str, str]]:
    """report.csv without the wall times (the one column that differs from run to run)."""
    with open(sweep_dir / "report.csv") as f:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]


def test_ray_backend_report_equals_local_reruns_only_unfinished_and_reports_failures(tmp_path, capsys):
    path = write_sweep(tmp_path, TWO)
    common = ["--config", str(path)]
    # the local backend's sweep, as a command of its own, one run at a time: it runs on what Ray leaves idle while
    # it starts and while one run is left (its runs are the same commands, one torch thread each)
    local_sweep = [sys.executable, "-m", "seqstab.sweep", *common, "--out", "local", "--jobs", "1", "--threads", "1"]
    on_local = Started(local_sweep, cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = [*common, "--out", str(tmp_path / "ray"), "--backend", "ray", "--cpus-per-run", "1"]
        assert sweep_main(on_ray) == 1
        captured = capsys.readouterr()
        assert "2 run(s) now, 1/2 done" in captured.out and "FAILED broken (exit 2)" in captured.err
        sweep_dir = tmp_path / "ray" / "tiny"
        rows = report(sweep_dir)
        assert [r["status"] for r in rows] == ["done", "failed (exit 2)"]
        assert float(rows[0]["final_train_loss"]) > 0 and rows[0]["frac_clipped"] not in ("", "0.0")

        events = sorted(sweep_dir.rglob("events.out.tfevents.*"))
        assert sweep_main(on_ray) == 1  # again: the finished runs are skipped, the failed one runs again
        captured = capsys.readouterr()
        assert "1 run(s) now, 1/2 done" in captured.out and "FAILED broken (exit 2)" in captured.err
        assert sorted(sweep_dir.rglob("events.out.tfevents.*")) == events
        rerun = report(sweep_dir)
    except BaseException:
        on_local.stop()
        raise
    finally:
        ray.shutdown()
    done = on_local.result()
    assert done.returncode == 1 and "FAILED broken (exit 2)" in done.stderr, done.stderr[-2000:]
    assert "2 run(s) now, 1/2 done" in done.stdout
    local = report(tmp_path / "local" / "tiny")
    assert rows == local  # same statuses, same metrics to the last bit (floats written as repr)
    assert rerun == local
