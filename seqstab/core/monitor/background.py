"""Work the monitor does off the training thread: the recurrent spectra, where the training runs on a GPU.

``rnn/sigma_max/*`` and ``rnn/spectral_radius/*`` take an SVD and an eigendecomposition of every gate block of
``W_hh``, in float64 on the host: cubic in the hidden size. On the 2-core VM of ``benchmarks/RESULTS.md`` a
measurement of a 2-layer LSTM takes 0.1–0.2 s at 200 units, ~2 s at 650 and 9–12 s at 1,500 (``python
benchmarks/bench_monitor.py --spectra 200,650,1500``). Computed at the flush, on the thread that trains, every such
second is a second the loop stops: on a GPU, whose queue runs dry meanwhile, and where 500 updates of such a net
take seconds, it could wait about as long as it trains (an estimate: no GPU was lent to measure it). So there
:class:`Background` runs them on a worker thread (LAPACK releases the GIL), and the training thread writes each
result, at its own step, at a later flush — at the latest before the next checkpoint is saved and at the fit's end,
so a run resumed from a checkpoint misses none.

On the CPU the monitor computes them on the training thread, as before (``GradMonitor(spectra_off_thread=...)``):
there the training's own threads use the cores, and an OpenMP team waits at every barrier for its slowest thread —
a 2-thread LSTM layer's forward and backward ran 2–3× slower on the 2-core VM while a worker computed beside it
(``bench_monitor.py --spectra`` prints it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

__all__ = ["Background"]


class Background:
    """Jobs run one at a time on one worker thread; their results come back in the order the jobs were given.

    A job runs on one torch thread (``torch.set_num_threads(1)`` on the worker: OpenMP's count is per thread).
    A worker that ran a team of several keeps it, and on the 2-core VM the training thread's own parallel work ran
    1.5–2× slower while it lived (``bench_monitor.py --spectra``); one thread also gives the same bits whatever
    the training's thread count. Copies and pickles of the owner get an empty one (the worker is made at the first
    job).
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[Any, Future]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def submit(self, key: Any, job: Callable[..., Any], *args: Any) -> None:
        """Run ``job(*args)`` on the worker; :meth:`results` gives it back with ``key``."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqstab-monitor")
        self._pending.append((key, self._pool.submit(_on_one_thread, job, *args)))

    def results(self, wait: bool = False) -> list[tuple[Any, Any]]:
        """``(key, result)`` of the jobs done, oldest first, up to the first one still running (``wait``: every
        job, waiting for them). A job's exception is raised here, on the caller's thread."""
        done = []
        while self._pending and (wait or self._pending[0][1].done()):
            key, future = self._pending.popleft()
            done.append((key, future.result()))
        return done

    def close(self) -> None:
        """Drop the jobs not taken back and end the worker once the running one is done."""
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_pool": None, "_pending": deque()}


def _on_one_thread(job: Callable[..., Any], *args: Any) -> Any:
    torch.set_num_threads(1)  # this thread's (at::set_num_threads sets OpenMP's count of the calling thread)
    return job(*args)
