"""``python -m seqstab.train fit`` on each kind of data, from the shipped configs, and on a user's own module.

The config runs call ``seqstab.train.main`` in-process (the entry point ``python -m seqstab.train`` runs) to keep
the test budget; the user-module run is a real subprocess with the module's folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from seqstab.cli.train import main
from tests.data_paths import REPO, SHARED_DATA, config_overrides
from tests.helpers import run_cli, scalars

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2"]
SMALL_NET = ["--model.net.hidden_size", "16"]


def fit(config: str, *extra: str) -> tuple[Path, dict[str, list[tuple[int, float]]]]:
    """Train ``configs/<config>`` offline for 3 updates and one short validation; the run dir and its scalars."""
    path = REPO / "configs" / config
    assert main(["fit", "--config", str(path), *config_overrides(path), *SHORT, *QUIET, *extra]) == 0
    (run_dir,) = Path("runs").glob("*/version_*")
    return run_dir, scalars(run_dir)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ lands in tmp_path
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: one thread is as fast and never oversubscribes a shared CI machine
    yield tmp_path
    torch.set_num_threads(threads)


def test_lstm_on_wikitext2_from_a_local_directory():
    run_dir, series = fit("lm/wikitext2_lstm.yaml", *SMALL_NET, "--model.net.num_layers", "1")
    losses = [value for _, value in series["train/loss"]]
    assert len(losses) == 3
    assert abs(losses[0] - math.log(33_278)) < 0.5  # an untrained model over WikiText-2's 33,278 types
    (val_loss,), (val_ppl,) = ([v for _, v in series[tag]] for tag in ("val/loss", "val/ppl"))
    assert val_ppl == pytest.approx(math.exp(val_loss), rel=1e-4)
    config = (run_dir / "config.yaml").read_text()
    assert "datamodules.text.WikiText2" in config and "cell: lstm" in config


def test_lstm_on_a_csv_with_calendar_features():
    run_dir, series = fit("timeseries/etth1_lstm.yaml", *SMALL_NET)
    assert len(series["train/loss"]) == 3 and {"val/mae", "val/rmse"} <= series.keys()
    config = (run_dir / "config.yaml").read_text()
    assert "cell: lstm" in config and "- hour" in config


def test_vanilla_rnn_on_a_csv_reports_metrics_in_original_units():
    run_dir, series = fit("timeseries/airline_rnn.yaml", *SMALL_NET)
    assert "cell: rnn" in (run_dir / "config.yaml").read_text()
    with open(SHARED_DATA / "timeseries" / "airline-passengers.csv", newline="") as f:
        passengers = np.array([float(row["Passengers"]) for row in csv.DictReader(f)])
    train_std = passengers[:96].std()  # 1949-1956: the train split before 1957-01
    (val_loss,), (val_rmse,) = ([v for _, v in series[tag]] for tag in ("val/loss", "val/rmse"))
    assert val_rmse == pytest.approx(train_std * math.sqrt(val_loss), rel=1e-3)  # thousands of passengers


def test_vanilla_rnn_on_the_adding_problem():
    run_dir, series = fit("synthetic/adding_rnn.yaml", *SMALL_NET)
    assert len(series["train/loss"]) == 3 and "val/loss" in series
    config = (run_dir / "config.yaml").read_text()
    assert "cell: rnn" in config and "datamodules.synthetic.AddingProblem" in config


def test_a_datamodule_from_outside_the_repository_trains(in_tmp):
    """The example datamodule, copied into a user's folder on PYTHONPATH, trains via --data mymod.DelayedEcho."""
    user = in_tmp / "user_code"
    user.mkdir()
    (user / "mymod.py").write_text((REPO / "datamodules" / "example.py").read_text())
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(user), env_path) if p)
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        result = run_cli(
            "fit", "--model", "seqstab.tasks.SequenceRegressor", "--model.net.hidden_size", "8",
            "--data", "mymod.DelayedEcho", "--data.num_sequences", "80", "--data.delay", "3",
            "--trainer.max_epochs", "1", *QUIET, cwd=in_tmp,
        )  # fmt: skip
    finally:
        os.environ["PYTHONPATH"] = env_path
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = threads
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (in_tmp / "runs").glob("*/version_*")
    series = scalars(run_dir)
    assert [step for step, _ in series["train/loss"]] == [0, 1]  # 64 training sequences, batches of 32
    assert "val/loss" in series and "mymod.DelayedEcho" in (run_dir / "config.yaml").read_text()


def test_bad_data_is_one_line_on_the_command_line(in_tmp, capsys):
    missing = str(in_tmp / "nope.csv")
    config = str(REPO / "configs/timeseries/airline_rnn.yaml")
    code = main(["fit", "--config", config, "--data.path", missing, "--data.url", "null", *QUIET])  # no download
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("seqstab.train: error:")]
    assert len(errors) == 1 and f"{missing}: no such file" in errors[0]
    assert not (in_tmp / "runs").exists()


def test_the_planted_data_spike_demo_needs_nothing_from_the_tests(in_tmp):
    """``configs/explode/cause_data.yaml`` as the README runs it, from a folder that is not a checkout and with a
    ``tests`` package that cannot be imported (an installed seqstab has none): the guard stops at the planted batch
    and its diagnosis names the data."""
    shadow = in_tmp / "shadow" / "tests"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no tests package where seqstab is installed')\n")
    path = os.pathsep.join(p for p in (str(shadow.parent), os.environ.get("PYTHONPATH", "")) if p)
    result = run_cli(
        "fit", "-c", str(REPO / "configs/explode/cause_data.yaml"), "--trainer.limit_val_batches", "1", *QUIET,
        cwd=in_tmp, PYTHONPATH=path, OMP_NUM_THREADS="1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (in_tmp / "runs").glob("*/version_*")
    (event,) = [json.loads(line) for line in (run_dir / "explosions.jsonl").read_text().splitlines()]
    assert (event["update"], event["action"], event["diagnosis"]["top"]) == (8, "stop", "data")
    assert "seqstab: why: data (" in result.stdout
