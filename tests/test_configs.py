"""Every shipped YAML opens with its launch command, parses, and trains 5 steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqstab.cli.train import main
from tests.helpers import REPO

ALL_YAML = sorted((REPO / "configs").rglob("*.yaml"))
ALL_CONFIGS = [pytest.param(p, id=str(p.relative_to(REPO / "configs"))) for p in ALL_YAML]
RUN_CONFIGS = [c for c in ALL_CONFIGS if "sweeps" not in c.values[0].parts]  # sweep files are tested in test_sweep
STOPPED_AT_ONCE = {"cause_time.yaml", "cause_depth.yaml", "overflow.yaml"}  # planted faults stopped at update 0: exit 3


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


@pytest.mark.parametrize("config", RUN_CONFIGS)
def test_config_trains_five_steps(config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(config), *offline_overrides(config)]
    args += ["--trainer.max_steps", "5", "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false"]
    code = main(args)
    assert code == (3 if config.name in STOPPED_AT_ONCE else 0), capsys.readouterr().err[-3000:]
    assert list((tmp_path / "runs").rglob("events.out.tfevents.*"))
