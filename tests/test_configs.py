"""Every shipped YAML opens with its launch command, parses, and trains 5 steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqstab.cli.train import main
from tests.helpers import REPO, start_cli, until_teardown

ALL_YAML = sorted((REPO / "configs").rglob("*.yaml"))
ALL_CONFIGS = [pytest.param(p, id=str(p.relative_to(REPO / "configs"))) for p in ALL_YAML]
RUN_CONFIGS = [c for c in ALL_CONFIGS if "sweeps" not in c.values[0].parts]  # sweep files are tested in test_sweep
STOPPED_AT_ONCE = {"cause_time.yaml", "cause_depth.yaml", "overflow.yaml"}  # planted faults stopped at update 0: exit 3

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def offline_overrides(config: Path) -> list[str]:
    """Extra arguments that point a config at the shared test data instead of a download."""
    try:
        from tests.data_paths import config_overrides
    except ImportError:
        return []
    return config_overrides(config)


@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_config_opens_with_its_launch_command(config):
    first = config.read_text().splitlines()[0]
    assert first.startswith("# python -m seqstab.") and str(config.relative_to(REPO)) in first, first


def five_steps(config: Path) -> list[str]:
    """``fit`` on the config for 5 updates and 2 validation batches, offline."""
    args = ["fit", "--config", str(config), *offline_overrides(config), "--trainer.max_steps", "5"]
    return args + ["--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false"]


# The slowest to train (a 2 x 650 LSTM on a 33k-word vocabulary; AWD's weight drop) run as `python -m seqstab.train`,
# started with the first of these tests: on one core, beside the in-process runs of the others on the other (one torch
# thread each: two spin-waiting threads crawl on a busy 2-core machine). Their tests come last.
STARTED = ["lm/ptb_zaremba_medium.yaml", "lm/wikitext2_lstm_awd_bptt.yaml"]


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    runs = {}
    for name in STARTED:
        config = REPO / "configs" / name
        runs[name] = start_cli(*five_steps(config), cwd=tmp_path_factory.mktemp(config.stem), OMP_NUM_THREADS="1")
    yield from until_teardown(runs)


@pytest.mark.parametrize("config", sorted(RUN_CONFIGS, key=lambda c: c.id in STARTED))
def test_config_trains_five_steps(config, started, tmp_path, monkeypatch, capsys):
    name = config.relative_to(REPO / "configs").as_posix()
    if name in started:
        result, cwd = started[name].result(), started[name].cwd
        code, err = result.returncode, result.stderr
    else:
        cwd = tmp_path
        monkeypatch.chdir(cwd)
        code = main(five_steps(config))
        err = capsys.readouterr().err
    assert code == (3 if config.name in STOPPED_AT_ONCE else 0), err[-3000:]
    assert list((cwd / "runs").rglob("events.out.tfevents.*"))
