"""The driver: one loop for both backends, so that skipping, rerunning, Ctrl-C and the progress bar are the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seqstab.cli.sweep.backends import LocalBackend, RayBackend
from seqstab.cli.sweep.combination import Combination
from seqstab.cli.sweep.folders import GUARD_STOPPED, guard_stopped
from seqstab.cli.sweep.plan import Plan
from seqstab.cli.sweep.processes import Stop
from seqstab.cli.sweep.spec import Sweep


def run_sweep(
    sweep: Sweep,
    out: Path,
    jobs: int = 1,
    threads: int | None = None,
    stop: Stop | None = None,
    backend: LocalBackend | RayBackend | None = None,
) -> list[dict[str, Any]]:
    """Run every unfinished run under ``out/<name>`` on ``backend`` (default: local, ``jobs`` at a time), with a
    progress bar. With a ``stop`` switch that fires: the running runs end, no new one starts, and what finished is
    returned."""
    from tqdm import tqdm

    stop = stop or Stop()
    backend = backend or LocalBackend(jobs, threads, stop)
    sweep_dir = out / sweep.name
    plan = Plan(sweep, sweep_dir)
    todo = plan.start()
    outcomes = []
    bar = tqdm(total=plan.total(), initial=plan.finished(), desc=f"sweep {sweep.name}", unit="run")
    pending: dict[Any, Combination] = {}
    try:
        for run in todo:
            pending[backend.submit(sweep, run, sweep_dir / run.id)] = run
        while pending:
            for handle, outcome in backend.wait(list(pending)):
                run = pending.pop(handle)
                if outcome is None:
                    continue
                outcomes.append(outcome)
                bar.set_postfix_str(f"{outcome['run']} ({_outcome_word(outcome['exit_code'])})")
                bar.update()
                if stop.requested.is_set():
                    continue
                for nxt in plan.after(run, outcome):
                    pending[backend.submit(sweep, nxt, sweep_dir / nxt.id)] = nxt
    finally:
        backend.close()
        bar.close()
    return outcomes


def _outcome_word(exit_code: int) -> str:
    """How the progress bar names a run's end."""
    if exit_code == 0:
        return "ok"
    return GUARD_STOPPED if guard_stopped(exit_code) else "FAILED"
