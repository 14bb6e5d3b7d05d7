"""The files of a sweep folder and of a run folder in it.

::

    <out>/<name>/                   the sweep folder
        report.md  report.csv       the report (report.py); a search's stability_map.csv too
        *.png                       the plots (plots.py, stability_map.py)
        <run id>/                   one combination (combination.py): overrides.yaml, train.log, the run's own
                                    files (TensorBoard events, config.yaml, manifest.json, explosions.jsonl,
                                    checkpoints), then done.json or failed.json
"""

from __future__ import annotations

from pathlib import Path

DONE_FILE = "done.json"  # a run that exited 0: skipped when the sweep is started again
FAILED_FILE = "failed.json"  # a run that exited non-zero: run again when the sweep is started again
OVERRIDES_FILE = "overrides.yaml"  # the run's overrides, the config file read after the base
TRAIN_LOG = "train.log"  # the run's stdout and stderr
REPORT_FILE = "report.md"
REPORT_CSV = "report.csv"
MAP_CSV = "stability_map.csv"


def is_done(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` finished (exit 0)."""
    return (run_dir / DONE_FILE).is_file()
