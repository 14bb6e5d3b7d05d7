"""``python -m seqstab.sweep --config configs/sweeps/<name>.yaml``: many ordinary runs, one report.

Every combination of the sweep file (spec.py) is an ordinary ``python -m seqstab.train fit`` run in its own folder
under one sweep folder (folders.py); finished runs are skipped when the sweep is started again. At the end (and with
``--report-only``) the sweep reads every run back and writes ``report.md``, ``report.csv`` and PNG plots
(report.py).

Backends: ``--backend local`` (default) runs ``--jobs`` subprocesses from a thread pool; ``--backend ray`` runs each
as a Ray task (``--address``, ``--cpus-per-run``, ``--gpus-per-run``) that starts the same subprocess. One driver
(``Plan`` + ``run_sweep``) decides what runs for both, so skipping, rerunning, Ctrl-C and the report are the same.

Exit codes: 0 every run finished; 1 a run failed (``--report-only``: a run is not finished); 2 a bad sweep file or
option (one line, nothing written); 130 stopped by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from seqstab.cli.sweep.backends import RayBackend
from seqstab.cli.sweep.command import command_line
from seqstab.cli.sweep.driver import run_sweep
from seqstab.cli.sweep.folders import REPORT_FILE, TRAIN_LOG, finished, guard_stopped, is_done
from seqstab.cli.sweep.plan import Plan
from seqstab.cli.sweep.processes import EXIT_INTERRUPTED, Stop
from seqstab.cli.sweep.readback import is_finished
from seqstab.cli.sweep.report import write_report
from seqstab.cli.sweep.spec import Sweep
from seqstab.core.errors import ConfigError, SeqstabError, check_count, check_non_negative

EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m seqstab.sweep``."""
    p = argparse.ArgumentParser(
        prog="python -m seqstab.sweep",
        description="Run a grid of seqstab trainings (resumable) and write report.md, report.csv and plots.",
    )
    p.add_argument("--config", "-c", required=True, type=Path, help="sweep YAML (configs/sweeps/<name>.yaml)")
    p.add_argument("--out", type=Path, default=Path("runs/sweeps"), help="where the sweep folder goes")
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: subprocesses of this machine (default); ray: Ray tasks on a cluster (pip install 'seqstab[ray]')",
    )
    p.add_argument("--jobs", "-j", type=int, default=1, help="local: runs in parallel (processes); default 1")
    p.add_argument(
        "--threads", type=int, default=None, help="local: torch threads per run (OMP_NUM_THREADS); default cores / jobs"
    )
    p.add_argument(
        "--address",
        default=None,
        help="ray: the cluster to use (auto, HOST:PORT, ray://HOST:PORT); default: start Ray on this machine",
    )
    p.add_argument(
        "--cpus-per-run", type=float, default=1, help="ray: CPUs reserved per run, also its torch threads; default 1"
    )
    p.add_argument("--gpus-per-run", type=float, default=0, help="ray: GPUs reserved per run; default 0")
    p.add_argument("--list", action="store_true", help="print each run's id and command, run and write nothing")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the finished runs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        check_count("--jobs", args.jobs)
        check_count("--threads", args.threads)
        check_non_negative(**{"--cpus-per-run": args.cpus_per_run, "--gpus-per-run": args.gpus_per_run})
        if args.backend == "local" and args.address is not None:
            raise ConfigError(f"--address {args.address}: only with --backend ray")
        sweep = Sweep.load(args.config)
        sweep_dir = args.out / sweep.name
        if args.list:
            for run in Plan(sweep, sweep_dir).runs():
                state = "done" if is_done(sweep_dir / run.id) else "todo"
                print(f"{run.id} [{state}]: {' '.join(command_line(sweep, run, sweep_dir / run.id)[1:])}")
            return 0
        start = time.perf_counter()
        stop = Stop()
        backend = None
        if args.backend == "ray" and not args.report_only:  # before our handlers: Ctrl-C is ours, not Ray's
            backend = RayBackend(args.address, args.cpus_per_run, args.gpus_per_run, stop)
        handlers = {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            outcomes = [] if args.report_only else run_sweep(sweep, args.out, args.jobs, args.threads, stop, backend)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        rows = write_report(sweep, args.out)
    except SeqstabError as err:
        print(f"seqstab.sweep: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return _summary(sweep, sweep_dir, rows, outcomes, stop, args.report_only, time.perf_counter() - start)


def _summary(
    sweep: Sweep, sweep_dir: Path, rows: list[dict], outcomes: list[dict], stop: Stop, report_only: bool, wall: float
) -> int:
    """Print how the sweep ended; return its exit code."""
    done = sum(map(is_finished, rows))
    report = sweep_dir / REPORT_FILE
    if stop.requested.is_set():
        print(
            f"seqstab.sweep: stopped: {done}/{len(rows)} runs done, the rest runs when started again; report: {report}"
        )
        return EXIT_INTERRUPTED
    failed = [o for o in outcomes if not finished(o["exit_code"])]
    print(f"sweep {sweep.name}: {len(outcomes)} run(s) now, {done}/{len(rows)} done, {wall:.1f} s; report: {report}")
    stopped = [o["run"] for o in outcomes if guard_stopped(o["exit_code"])]
    if stopped:  # finished: their rows are in the report, like any other
        named = ", ".join(stopped)
        print(f"  {len(stopped)} stopped by the explosion guard (exit 3; 'guard stopped' in the report): {named}")
    for o in failed:
        print(f"  FAILED {o['run']} (exit {o['exit_code']}): see {sweep_dir / o['run'] / TRAIN_LOG}", file=sys.stderr)
    if report_only:
        unfinished = [r for r in rows if not is_finished(r)]
        for r in unfinished:
            print(f"  {r['status'].upper()} {r['run']}", file=sys.stderr)
        return 1 if unfinished else 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
