"""``python -m seqstab.sweep``: a grid of runs, resumable, with a report.

One job per module:

=================  =====================================================================================
``spec``           the sweep file (:class:`Sweep`) and its combinations
``rules``          what a sweep file may not hold (checked when it is read)
``combination``    a combination (:class:`Combination`) and its run id
``folders``        the files of a sweep folder and a run folder; which names a folder may have
``overrides``      a combination's overrides as a config file's nested mapping
``command``        a combination as its ``python -m seqstab.train fit`` command line
``processes``      running one combination as a child process; the stop switch (:class:`Stop`)
``backends``       where runs run: local subprocesses or Ray tasks
``plan``           what to run next: the grid, each combination's bisection
``driver``         the loop that runs the plan on a backend
``search``         the stability map's bisection and its criterion
``readback``       a finished run read back, as a row of the report
``report``         ``report.md``, ``report.csv``
``stability_map``  a search's map: ``stability_map.csv``, its table, ``stability_map.png``
``plots``          the report's other plots
``main``           the command line
=================  =====================================================================================
"""

from seqstab.cli.sweep.backends import LocalBackend, RayBackend
from seqstab.cli.sweep.combination import Combination, run_id, search_run
from seqstab.cli.sweep.command import command, command_line
from seqstab.cli.sweep.driver import run_sweep
from seqstab.cli.sweep.folders import DONE_FILE, FAILED_FILE, OVERRIDES_FILE, is_done
from seqstab.cli.sweep.main import main
from seqstab.cli.sweep.overrides import nested
from seqstab.cli.sweep.plan import Plan
from seqstab.cli.sweep.processes import EXIT_INTERRUPTED, Stop, execute
from seqstab.cli.sweep.readback import read_run, summarize
from seqstab.cli.sweep.report import write_report
from seqstab.cli.sweep.search import Bisection, Condition, SearchSpec, meets
from seqstab.cli.sweep.spec import Sweep

__all__ = [
    "DONE_FILE",
    "EXIT_INTERRUPTED",
    "FAILED_FILE",
    "OVERRIDES_FILE",
    "Bisection",
    "Combination",
    "Condition",
    "LocalBackend",
    "Plan",
    "RayBackend",
    "SearchSpec",
    "Stop",
    "Sweep",
    "command",
    "command_line",
    "execute",
    "is_done",
    "main",
    "meets",
    "nested",
    "read_run",
    "run_id",
    "run_sweep",
    "search_run",
    "summarize",
    "write_report",
]
