"""What to run next: a grid sweep's unfinished combinations, or the next value each combination's bisection tests."""

from __future__ import annotations

from pathlib import Path

from seqstab.cli.sweep.combination import Combination, search_run
from seqstab.cli.sweep.folders import finished, is_done
from seqstab.cli.sweep.readback import read_run, summarize
from seqstab.cli.sweep.search import Bisection, meets
from seqstab.cli.sweep.spec import Sweep


class Plan:
    """Which runs to start, and which run follows a finished one.

    A grid sweep: every unfinished combination, at once. A search sweep: for each combination, the next value its
    bisection tests; when that run ends, the one after it (the runs of a combination in sequence, the combinations
    in parallel). The bisection is replayed from the finished runs' folders, so a search resumes where it stopped.

    Args:
        sweep: The sweep.
        sweep_dir: Its folder (``<out>/<name>``).
    """

    def __init__(self, sweep: Sweep, sweep_dir: Path) -> None:
        self.sweep, self.sweep_dir = sweep, sweep_dir
        self.verdicts: dict[str, bool] = {}  # run id -> met the criterion (finished runs, read once)

    def total(self) -> int:
        """Runs in all (a search: its budget for each combination)."""
        combinations = self.sweep.combinations()
        return len(combinations) * self.sweep.search.budget if self.sweep.search else len(combinations)

    def runs(self) -> list[Combination]:
        """Every run so far: a grid's combinations; a search's runs its bisections have reached (the next included)."""
        if self.sweep.search is None:
            return self.sweep.combinations()
        return [run for combination in self.sweep.combinations() for run in self.replay(combination)[1]]

    def finished(self) -> int:
        """Runs already finished (a search: those its bisections replay)."""
        return sum(is_done(self.sweep_dir / run.id) for run in self.runs())

    def start(self) -> list[Combination]:
        """The runs to start now."""
        if self.sweep.search is None:
            return [c for c in self.sweep.combinations() if not is_done(self.sweep_dir / c.id)]
        return [nxt for c in self.sweep.combinations() if (nxt := self.replay(c)[2]) is not None]

    def after(self, run: Combination, outcome: dict) -> list[Combination]:
        """The runs to start once ``run`` ended with ``outcome``."""
        if self.sweep.search is None or not finished(outcome["exit_code"]):
            return []  # a failed run ends its combination's search until the sweep is started again
        nxt = self.replay(self.combinations()[run.parent])[2]
        return [nxt] if nxt is not None else []

    def combinations(self) -> dict[str, Combination]:
        """The sweep's combinations by id."""
        return {c.id: c for c in self.sweep.combinations()}

    def replay(self, combination: Combination) -> tuple[Bisection, list[Combination], Combination | None]:
        """The combination's bisection from its finished runs: the state, the runs so far and the next one (None:
        done)."""
        search = self.sweep.search
        bisection = search.bisection()
        runs: list[Combination] = []
        while (value := bisection.next_value()) is not None:
            run = search_run(combination, search.key, value)
            runs.append(run)
            run_dir = self.sweep_dir / run.id
            if not is_done(run_dir):
                return bisection, runs, run
            if run.id not in self.verdicts:
                data = read_run(run_dir)
                self.verdicts[run.id] = meets(search.criterion, data["scalars"], summarize(run, data))
            bisection.record(value, self.verdicts[run.id])
        return bisection, runs, None
