"""The stability map's search: the largest value of one config key at which a run still meets a criterion.

A sweep file's ``search:`` block (see :mod:`seqstab.sweep`)::

    search:
      key: optimizer.lr            # the dotted config key searched, in every variant of the grid
      range: [1.0e-4, 10.0]        # assumed: the low end meets the criterion, the high end does not (neither is run)
      scale: log                   # log (bisect the exponent) or linear
      budget: 5                    # runs per variant; the bracket narrows to range / 2**budget (in log10 for log)
      criterion: stable            # default; or a condition, or a list of them, all of which must hold:
                                   #   "val/loss < 0.1", "final_train_loss <= 0.2", [stable, "val/loss < 0.1"]

``stable``: no non-finite gradient norm or training loss in any update, and the final training loss (the mean of
the last updates, as the sweep report's ``final_train_loss``) below the first update's loss. A condition's name is a
logged scalar (its last value, e.g. ``val/loss``) or a column of the sweep report (e.g. ``final_train_loss``); a
missing or non-finite value fails it.

Bisection assumes the criterion holds below some boundary in the range and fails above it. Each run tests the
midpoint of the current bracket (the geometric midpoint on a log scale); a pass raises the bracket's low end, a fail
lowers its high end. The answer is the largest value that passed, with the bracket it narrowed to; the ends of the
range are never run, so a variant that passes every run is marked "at least", one that fails every run "below".
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any

from seqstab.core.errors import ConfigError

SEARCH_KEYS = {"key", "range", "scale", "budget", "criterion"}
OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
SIGNIFICANT = 6  # a tested value is rounded to this many significant digits: run ids stay readable


@dataclass(frozen=True)
class Condition:
    """One part of a criterion: ``stable``, or ``<name> <op> <threshold>``."""

    name: str
    op: str | None = None
    threshold: float | None = None

    @classmethod
    def parse(cls, text: Any, where: str) -> Condition:
        text = str(text).strip()
        if text == "stable":
            return cls("stable")
        match = re.fullmatch(r"(\S+)\s*(<=|>=|<|>)\s*(\S+)", text)
        try:
            threshold = float(match.group(3)) if match else None
        except ValueError:
            threshold = None
        if threshold is None:
            raise ConfigError(f"{where}: criterion {text!r}: expected 'stable' or '<metric> <|<=|>|>= <number>'")
        return cls(match.group(1), match.group(2), threshold)

    def __str__(self) -> str:
        return self.name if self.op is None else f"{self.name} {self.op} {self.threshold:g}"


@dataclass
class SearchSpec:
    """A parsed ``search:`` block."""

    key: str
    low: float
    high: float
    scale: str = "log"
    budget: int = 5
    criterion: list[Condition] = field(default_factory=lambda: [Condition("stable")])

    @classmethod
    def parse(cls, spec: Any, where: str) -> SearchSpec:
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: search must be a mapping with keys {sorted(SEARCH_KEYS)}")
        unknown = set(spec) - SEARCH_KEYS
        if unknown:
            raise ConfigError(f"{where}: search: unknown key(s) {sorted(unknown)}; allowed: {sorted(SEARCH_KEYS)}")
        key = spec.get("key")
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: search.key must name a config key, e.g. optimizer.lr")
        bounds = spec.get("range")
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
            or not bounds[0] < bounds[1]
        ):
            raise ConfigError(f"{where}: search.range={bounds!r}: must be [low, high] with low < high")
        scale = spec.get("scale", "log")
        if scale not in ("log", "linear"):
            raise ConfigError(f"{where}: search.scale={scale!r}: must be log or linear")
        if scale == "log" and bounds[0] <= 0:
            raise ConfigError(f"{where}: search.range={bounds!r}: a log scale needs low > 0")
        budget = spec.get("budget", 5)
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise ConfigError(f"{where}: search.budget={budget!r}: must be an integer >= 1")
        criterion = spec.get("criterion", "stable")
        parts = criterion if isinstance(criterion, list) else [criterion]
        if not parts:
            raise ConfigError(f"{where}: search.criterion: empty")
        conditions = [Condition.parse(p, f"{where}: search") for p in parts]
        return cls(key, float(bounds[0]), float(bounds[1]), scale, budget, conditions)

    def bisection(self) -> Bisection:
        return Bisection(self.low, self.high, self.scale, self.budget)


class Bisection:
    """Bisection for the largest passing value in ``[low, high]``: ``next_value()`` to test, ``record()`` its result.

    Args:
        low: Low end of the range (assumed to pass; never tested).
        high: High end (assumed to fail; never tested).
        scale: ``log`` bisects log10 of the value, ``linear`` the value.
        budget: Number of values tested.
    """

    def __init__(self, low: float, high: float, scale: str = "log", budget: int = 5) -> None:
        self.low, self.high, self.scale, self.budget = low, high, scale, budget
        self.tested: list[tuple[float, bool]] = []

    @property
    def bracket(self) -> tuple[float, float]:
        """The largest passing value (or the range's low end) and the smallest failing one (or the high end)."""
        passed = [v for v, ok in self.tested if ok]
        failed = [v for v, ok in self.tested if not ok]
        return max(passed, default=self.low), min(failed, default=self.high)

    @property
    def largest(self) -> float | None:
        """The largest value that passed; None when none did."""
        return max((v for v, ok in self.tested if ok), default=None)

    @property
    def finished(self) -> bool:
        return len(self.tested) >= self.budget

    def next_value(self) -> float | None:
        """The midpoint of the bracket, rounded to 6 significant digits; None once the budget is spent."""
        if self.finished:
            return None
        lo, hi = self.bracket
        mid = 10 ** ((math.log10(lo) + math.log10(hi)) / 2) if self.scale == "log" else (lo + hi) / 2
        return float(f"{mid:.{SIGNIFICANT}g}")

    def record(self, value: float, ok: bool) -> None:
        self.tested.append((value, bool(ok)))


def meets(criterion: list[Condition], scalars: dict[str, list[tuple[int, float]]], row: dict[str, Any]) -> bool:
    """Whether a finished run meets every condition. ``scalars``: its logged series; ``row``: its report row."""
    return all(_holds(c, scalars, row) for c in criterion)


def _holds(condition: Condition, scalars: dict[str, list[tuple[int, float]]], row: dict[str, Any]) -> bool:
    if condition.name == "stable":
        losses = [v for _, v in scalars.get("train/loss", [])]
        norms = [v for _, v in scalars.get("grad/norm_total", [])]
        final = row.get("final_train_loss")
        return (
            bool(losses) and all(math.isfinite(v) for v in losses + norms) and final is not None and final < losses[0]
        )
    series = scalars.get(condition.name)
    value = series[-1][1] if series else row.get(condition.name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return OPERATORS[condition.op](value, condition.threshold)
