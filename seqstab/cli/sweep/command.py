"""A combination as the ``python -m seqstab.train fit`` command line that runs it, and its overrides file.

The overrides go to ``<run folder>/overrides.yaml``, a config file read after the base: a YAML value (``null``
included) reaches a key at any depth that way, typed as in any config file, and the command line stays short.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from seqstab.cli.sweep.combination import Combination
from seqstab.cli.sweep.folders import OVERRIDES_FILE
from seqstab.cli.sweep.overrides import nested
from seqstab.cli.sweep.spec import Sweep
from seqstab.core.io import write_text


def command(sweep: Sweep, combination: Combination, run_dir: Path) -> list[str]:
    """Write the combination's ``run_dir/overrides.yaml``; return the command line that runs it into ``run_dir``."""
    if combination.overrides:
        write_text(run_dir / OVERRIDES_FILE, yaml.safe_dump(nested(combination.overrides), sort_keys=False))
    return command_line(sweep, combination, run_dir)


def command_line(sweep: Sweep, combination: Combination, run_dir: Path) -> list[str]:
    """The ``python -m seqstab.train fit`` command line of one combination, logging into ``run_dir`` (its overrides
    file is read from there: see :func:`command`)."""
    cmd = [sys.executable, "-m", "seqstab.train", "fit"]
    for base in sweep.base:
        cmd += ["--config", str(base)]
    if combination.overrides:
        cmd += ["--config", str(run_dir / OVERRIDES_FILE)]
    cmd += [
        "--trainer.logger.init_args.save_dir",
        str(run_dir.parent),
        "--trainer.logger.init_args.name",
        "",
        "--trainer.logger.init_args.version",
        run_dir.name,
        "--trainer.enable_progress_bar",
        "false",
    ]
    return cmd
