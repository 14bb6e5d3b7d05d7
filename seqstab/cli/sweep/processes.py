"""Running one combination as a child process, and the stop switch that ends the children on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from seqstab.cli.sweep.combination import Combination
from seqstab.cli.sweep.command import command
from seqstab.cli.sweep.folders import DONE_FILE, FAILED_FILE, TRAIN_LOG, finished
from seqstab.cli.sweep.spec import Sweep
from seqstab.core.io import write_text

EXIT_INTERRUPTED = 130  # stopped by SIGINT/SIGTERM (128 + SIGINT), as a shell reports Ctrl-C


class Stop:
    """The sweep's stop switch: SIGINT/SIGTERM end the running children and start nothing new; a second signal
    kills the children and the sweep at once."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.children: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def handle(self, signum: int, frame: Any) -> None:
        """The signal handler (``signal.signal(signal.SIGINT, stop.handle)``)."""
        if self.requested.is_set():  # the second Ctrl-C: no waiting for anything
            self.signal_children(signal.SIGKILL)
            os._exit(EXIT_INTERRUPTED)
        self.requested.set()
        self.signal_children(signal.SIGTERM)

    def signal_children(self, signum: int) -> None:
        with self.lock:
            for child in self.children:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signum)  # the child and whatever it started (its own session)

    def start(self, cmd: list[str], log, env: dict[str, str], cwd: str | None = None) -> subprocess.Popen | None:
        """Start ``cmd`` in a session of its own, output to ``log``; None once the sweep is stopped."""
        with self.lock:
            if self.requested.is_set():
                return None
            child = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
            )
            self.children.add(child)
            return child

    def wait(self, child: subprocess.Popen) -> int:
        """The child's exit code, once it ended."""
        try:
            while True:  # in short waits: ray.cancel's KeyboardInterrupt is raised between two, not after the run
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return child.wait(timeout=0.5)
        except KeyboardInterrupt:  # a cancelled Ray task (ray.cancel raises it in the task): end the run first
            self.requested.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            child.wait()
            raise
        finally:
            with self.lock:
                self.children.discard(child)


def execute(
    sweep: Sweep,
    combination: Combination,
    run_dir: Path,
    threads: int | None,
    stop: Stop | None = None,
    cwd: str | None = None,
) -> dict | None:
    """Run one combination to completion; once it finished (:func:`~seqstab.cli.sweep.folders.finished`) mark it
    done, else failed (atomically). Returns its outcome, or None when the sweep was stopped before or while it ran
    (nothing is marked: it runs again next time)."""
    stop = stop or Stop()
    if stop.requested.is_set():
        return None
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted attempt: start clean
    run_dir.mkdir(parents=True)
    cmd = command(sweep, combination, run_dir)
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    with open(run_dir / TRAIN_LOG, "w") as log:
        child = stop.start(cmd, log, env, cwd)
        if child is None:
            return None
        code = stop.wait(child)
    if stop.requested.is_set():
        return None
    wall = round(time.perf_counter() - start, 3)
    outcome = {"run": combination.id, "exit_code": code, "wall_s": wall, "command": cmd}
    write_text(run_dir / (DONE_FILE if finished(code) else FAILED_FILE), json.dumps(outcome, indent=2) + "\n")
    return outcome
