"""``python -m seqstab.sweep``: a grid of runs, resumable, with a report (:mod:`seqstab.cli.sweep.main`)."""

from seqstab.cli.sweep.main import *  # noqa: F403
from seqstab.cli.sweep.main import main as main
