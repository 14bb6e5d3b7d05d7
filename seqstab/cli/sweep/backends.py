"""Where the runs run: ``LocalBackend`` (subprocesses of this machine) and ``RayBackend`` (Ray tasks on a cluster).

Both start the same child (:func:`seqstab.cli.sweep.processes.execute`) and answer the driver the same way:
``submit`` a combination, ``wait`` for at least one to end, ``close``.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any

from seqstab.cli.sweep.combination import Combination
from seqstab.cli.sweep.processes import Stop, execute
from seqstab.cli.sweep.spec import Sweep
from seqstab.core.errors import ConfigError


class LocalBackend:
    """Runs as subprocesses of this process, ``jobs`` at a time (a thread pool waiting on them).

    Args:
        jobs: Runs at a time.
        threads: torch threads per run (``OMP_NUM_THREADS``); default: cores / jobs when jobs > 1.
        stop: The sweep's stop switch.
    """

    def __init__(self, jobs: int = 1, threads: int | None = None, stop: Stop | None = None) -> None:
        if threads is None and jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            threads = max(1, (os.cpu_count() or 1) // jobs)
        self.threads, self.stop = threads, stop or Stop()
        self.pool = ThreadPoolExecutor(max_workers=max(1, jobs))

    def submit(self, sweep: Sweep, combination: Combination, run_dir: Path) -> Future:
        return self.pool.submit(execute, sweep, combination, run_dir, self.threads, self.stop)

    def wait(self, handles: list[Future]) -> list[tuple[Future, dict | None]]:
        """Block until at least one run ends; its handle(s) and outcome(s) (None: stopped)."""
        done, _ = futures_wait(handles, return_when=FIRST_COMPLETED)
        return [(h, h.result()) for h in done]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)  # queued runs never start once stopped


def _ray_task(sweep: Sweep, combination: Combination, run_dir: str, threads: int | None, cwd: str) -> dict | None:
    """One run on a Ray worker: the same ``execute`` as the local backend, in the driver's directory when this node
    has it. ``ray.cancel`` ends the run's process group (``Stop.wait``) and marks nothing."""
    # ray.cancel interrupts the task with SIGINT: make sure it raises KeyboardInterrupt here, even in a worker whose
    # Ray was started from a process ignoring SIGINT (a shell's background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return execute(sweep, combination, Path(run_dir), threads, Stop(), cwd if os.path.isdir(cwd) else None)


class RayBackend:
    """Runs as Ray tasks, each an ordinary ``seqstab.train fit`` subprocess on whichever node Ray picks.

    Ray *tasks*, not Ray Tune: the sweep keeps its own skip/rerun logic, run directories and report, identical to the
    local backend's (Tune would own the trial directories, the scheduling and the resuming); Ray only places runs
    on nodes by the resources each asks for.

    Args:
        address: A running cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); None starts Ray on this machine
            (or reuses the Ray this process already started).
        cpus_per_run: CPUs Ray reserves for each run; also its torch threads (``OMP_NUM_THREADS``).
        gpus_per_run: GPUs Ray reserves for each run (Ray sets ``CUDA_VISIBLE_DEVICES`` for it).
        stop: The sweep's stop switch: once it fires, this sweep's tasks are cancelled.
    """

    def __init__(
        self, address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0, stop: Stop | None = None
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray: Ray is not installed (pip install 'seqstab[ray]')") from None
        self.ray, self.stop, self.started = ray, stop or Stop(), False
        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=False, include_dashboard=False)
            except ConnectionError as err:
                raise ConfigError(f"--address {address}: no Ray cluster there ({' '.join(str(err).split())})") from None
            self.started = True
        self.threads = max(1, int(cpus_per_run)) if cpus_per_run else None
        self.task = ray.remote(_ray_task).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)

    def submit(self, sweep: Sweep, combination: Combination, run_dir: Path) -> Any:
        return self.task.remote(sweep, combination, str(run_dir.resolve()), self.threads, os.getcwd())

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict | None]]:
        """Block until at least one run ends (polling, so that Ctrl-C is seen); once stopped: cancel every handle and
        return them all, with None for those cancelled."""
        while not self.stop.requested.is_set():
            ready, _ = self.ray.wait(handles, num_returns=1, timeout=0.5)
            if ready:
                return [(ref, self.ray.get(ref)) for ref in ready]
        for ref in handles:
            self.ray.cancel(ref)  # queued: dropped; running: KeyboardInterrupt in the task, which ends its run
        ended = []
        for ref in handles:
            try:
                ended.append((ref, self.ray.get(ref)))  # finished before the cancel reached it: keep its outcome
            except (self.ray.exceptions.TaskCancelledError, self.ray.exceptions.RayTaskError):
                ended.append((ref, None))
        return ended

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
