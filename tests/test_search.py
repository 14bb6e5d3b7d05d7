"""The stability map's bisection (seqstab/search.py) on synthetic criteria, and its ``search:`` block."""

from __future__ import annotations

import math

import pytest

from seqstab.cli.sweep.search import Bisection, Condition, SearchSpec, meets
from seqstab.core.errors import ConfigError


def search(boundary: float, low: float, high: float, scale: str, budget: int) -> Bisection:
    """Bisect the synthetic criterion ``value <= boundary`` to the end of the budget."""
    bisection = Bisection(low, high, scale, budget)
    while (value := bisection.next_value()) is not None:
        bisection.record(value, value <= boundary)
    return bisection


@pytest.mark.parametrize("budget", [1, 3, 6, 10])
@pytest.mark.parametrize("boundary", [1.1e-4, 3.3e-3, 0.0316228, 0.1, 0.7, 9.9])
def test_log_bisection_brackets_the_boundary_as_tightly_as_the_budget_allows(boundary, budget):
    b = search(boundary, 1e-4, 10.0, "log", budget)
    lo, hi = b.bracket
    assert lo <= boundary < hi  # the boundary is inside the bracket it narrowed to
    assert len(b.tested) == budget and b.next_value() is None
    width = math.log10(hi) - math.log10(lo)
    # 5 decades halved once per run (up to rounding each tested value to 6 digits: < 2.2e-6 decades an end)
    assert width == pytest.approx(5 / 2**budget, abs=5e-6)
    assert b.largest == (lo if lo > 1e-4 else None)


@pytest.mark.parametrize("boundary", [0.0, 0.25, 1.0 / 3.0, 0.5, 0.999])
def test_linear_bisection_brackets_the_boundary(boundary):
    b = search(boundary, 0.0, 1.0, "linear", 8)
    lo, hi = b.bracket
    assert lo <= boundary < hi and hi - lo == pytest.approx(1 / 2**8, abs=5e-6)


def test_the_ends_of_the_range_are_assumed_not_run():
    always = search(100.0, 1e-4, 10.0, "log", 4)  # passes everywhere: the bracket's top is the range's end
    assert always.bracket[1] == 10.0 and always.largest == always.bracket[0] < 10.0
    never = search(1e-6, 1e-4, 10.0, "log", 4)  # fails everywhere: nothing passed
    assert never.largest is None and never.bracket[0] == 1e-4
    assert [v for v, _ in never.tested][0] == pytest.approx(10**-1.5, rel=1e-6)  # the first run: the midpoint


def test_criterion_stable_and_thresholds():
    scalars = {"train/loss": [(0, 1.0), (1, 0.5)], "grad/norm_total": [(0, 2.0), (1, 3.0)], "val/loss": [(1, 0.05)]}
    stable = [Condition("stable")]
    assert meets(stable, scalars, {"final_train_loss": 0.5})
    assert not meets(stable, scalars, {"final_train_loss": 1.5})  # no lower than the first update's loss
    assert not meets(stable, {**scalars, "grad/norm_total": [(0, math.inf)]}, {"final_train_loss": 0.5})
    assert not meets(stable, {}, {"final_train_loss": None})  # a run that logged nothing
    assert meets([Condition.parse("val/loss < 0.1", "f")], scalars, {})
    assert not meets([Condition.parse("val/loss < 0.01", "f")], scalars, {})
    assert meets([Condition.parse("final_train_loss <= 0.5", "f")], scalars, {"final_train_loss": 0.5})
    assert not meets([Condition.parse("test/loss < 1", "f")], scalars, {})  # missing: fails


def test_search_block_defaults_and_errors():
    spec = SearchSpec.parse({"key": "optimizer.lr", "range": [1e-4, 10]}, "f.yaml")
    assert (spec.scale, spec.budget, [str(c) for c in spec.criterion]) == ("log", 5, ["stable"])
    spec = SearchSpec.parse(
        {"key": "k", "range": [0, 1], "scale": "linear", "criterion": ["stable", "val/loss<0.1"]}, "f"
    )
    assert [str(c) for c in spec.criterion] == ["stable", "val/loss < 0.1"]
    for bad, needle in [
        ({"key": "k", "range": [0, 1]}, "log scale needs low > 0"),
        ({"key": "k", "range": [2, 1]}, "low < high"),
        ({"key": "k", "range": [1, 2], "budget": 0}, "budget=0"),
        ({"key": "k", "range": [1, 2], "scale": "ln"}, "scale='ln'"),
        ({"key": "k", "range": [1, 2], "criterion": "val/loss ~ 1"}, "criterion 'val/loss ~ 1'"),
        ({"range": [1, 2]}, "search.key"),
        ({"key": "k", "range": [1, 2], "steps": 3}, "unknown key(s) ['steps']"),
    ]:
        with pytest.raises(ConfigError, match=None) as err:
            SearchSpec.parse(bad, "f.yaml")
        assert needle in str(err.value) and str(err.value).startswith("f.yaml: "), str(err.value)
