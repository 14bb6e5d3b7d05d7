"""The files of a sweep folder and of a run folder in it, and which names a folder of the sweep may have.

::

    <out>/<name>/                   the sweep folder
        report.md  report.csv       the report (report.py); a search's stability_map.csv too
        *.png                       the plots (plots.py, stability_map.py)
        <run id>/                   one combination (combination.py): overrides.yaml, train.log, the run's own
                                    files (TensorBoard events, config.yaml, manifest.json, explosions.jsonl,
                                    checkpoints), then done.json or failed.json
"""

from __future__ import annotations

import re
from pathlib import Path

from seqstab.cli.console import EXIT_NOTHING_APPLIED
from seqstab.core.errors import ConfigError

DONE_FILE = "done.json"  # a run that finished (see finished): skipped when the sweep is started again
FAILED_FILE = "failed.json"  # a run that failed (any other exit code): run again when the sweep is started again
OVERRIDES_FILE = "overrides.yaml"  # the run's overrides, the config file read after the base
TRAIN_LOG = "train.log"  # the run's stdout and stderr
GUARD_STOPPED = "guard stopped"  # the report's status of a run that guard_stopped, and the progress bar's word
REPORT_FILE = "report.md"
REPORT_CSV = "report.csv"
MAP_CSV = "stability_map.csv"
REPORT_SUFFIXES = (".md", ".csv", ".png")  # the report's own files in the sweep folder
FOLDER_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")


def is_done(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` finished (see :func:`finished`)."""
    return (run_dir / DONE_FILE).is_file()


def guard_stopped(exit_code: int) -> bool:
    """Whether a run's ``exit_code`` is 3 (``EXIT_NOTHING_APPLIED``): the explosion guard applied no update, or
    stopped the run after ``max_consecutive_skips`` withheld updates in a row. Its report row says
    :data:`GUARD_STOPPED`."""
    return exit_code == EXIT_NOTHING_APPLIED


def finished(exit_code: int) -> bool:
    """Whether a run that exited with ``exit_code`` finished: 0, or stopped by the guard (:func:`guard_stopped`). A
    sweep that drives runs into divergence (the stability map, the explode sweeps) gets the second as an outcome to
    report, the same at every rerun, not a failure to run again."""
    return exit_code == 0 or guard_stopped(exit_code)


def check_folder_name(what: str, name: str, beside_report: bool = True) -> None:
    """Refuse a ``name`` that is not a plain folder name; ``beside_report``: one that could be a report's file.

    Args:
        what: The setting, for the message (``variant 'x'``, ``name``).
        name: The folder name.
        beside_report: The folder lies in the sweep folder, beside the report's files.
    """
    reserved = beside_report and name.lower().endswith(REPORT_SUFFIXES)
    if not FOLDER_NAME.fullmatch(name) or reserved:
        suffixes = ", ".join(REPORT_SUFFIXES[:-1]) + f" or {REPORT_SUFFIXES[-1]}"
        rule = f"; not ending in {suffixes} (the report's files)" if beside_report else ""
        raise ConfigError(
            f"{what} {name!r}: must be a plain folder name: letters, digits and _ . + -, not starting with '.'{rule}"
        )
