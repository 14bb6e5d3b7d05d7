"""A search sweep's stability map: per combination, the largest value of the searched key that met the criterion,
as ``stability_map.csv``, the table that opens ``report.md``, and ``stability_map.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seqstab.cli.sweep.combination import Combination, format_value
from seqstab.cli.sweep.folders import FAILED_FILE
from seqstab.cli.sweep.plots import pyplot, save
from seqstab.cli.sweep.search import Bisection
from seqstab.cli.sweep.spec import Sweep

Replayed = tuple[Combination, Bisection, list[Combination], Combination | None]  # see Plan.replay


def map_row(combination: Combination, bisection: Bisection, nxt: Combination | None, sweep_dir: Path) -> dict:
    """One row of the stability map: a combination, the largest value that met the criterion, the bracket."""
    low, high = bisection.bracket
    if nxt is None:
        state = "done"
    elif (sweep_dir / nxt.id / FAILED_FILE).is_file():
        state = f"failed run {nxt.id}"
    else:
        state = "unfinished"
    row: dict[str, Any] = {"combination": combination.id, "variant": combination.variant or ""}
    row.update({k: format_value(v) for k, v in combination.values.items()})
    row.update(
        {
            "largest": bisection.largest,
            "bracket_low": low,
            "bracket_high": high,
            "low_tested": bisection.largest is not None,
            "high_tested": any(not ok for _, ok in bisection.tested),
            "runs": len(bisection.tested),
            "state": state,
        }
    )
    return row


def map_markdown(sweep: Sweep, map_rows: list[dict[str, Any]], plot: str) -> list[str]:
    """The lines that open ``report.md``: the map as a table, then its plot."""
    search = sweep.search
    name = search.key.rsplit(".", 1)[-1]
    criterion = " and ".join(f"`{c}`" for c in search.criterion)
    grid = list(sweep.grid)
    head = ["variant" if sweep.variants else "combination", *(k.rsplit(".", 1)[-1] for k in grid)]
    lines = [
        f"# Sweep `{sweep.name}`",
        "",
        f"## Stability map: the largest `{search.key}` that meets {criterion}",
        "",
        f"Bisection over [{search.low:g}, {search.high:g}] ({search.scale} scale), {search.budget} runs per "
        "combination, run in sequence (the combinations in parallel). The ends of the range are assumed (the low end "
        "meets the criterion, the high end does not) and never run: an end marked * is such an assumption. "
        "`stable`: no non-finite gradient norm or loss, and the final training loss below the first update's.",
        "",
        "| " + " | ".join([*head, f"largest stable {name}", "bracket", "runs", "state"]) + " |",
        "|" + " --- |" * (len(head) + 4),
    ]
    for row in map_rows:
        largest = _md_value(row["largest"]) if row["largest"] is not None else f"< {_md_value(row['bracket_high'])}"
        low = _md_value(row["bracket_low"]) + ("" if row["low_tested"] else "*")
        high = _md_value(row["bracket_high"]) + ("" if row["high_tested"] else "*")
        cells = [row["variant"] or row["combination"], *(str(row[k]) for k in grid), largest, f"[{low}, {high})"]
        lines.append("| " + " | ".join([*cells, f"{row['runs']}/{search.budget}", row["state"]]) + " |")
    return [*lines, "", f"![{plot}]({plot})", "", "## Every run", ""]


def _md_value(value: float) -> str:
    return f"{value:.3g}"


def map_plot(sweep: Sweep, replayed: list[Replayed], sweep_dir: Path) -> str:
    """``stability_map.png``: per combination, its bracket as a bar, the values it ran (o: met, x: not met)."""
    search = sweep.search
    fig, ax = pyplot().subplots(figsize=(7, 0.45 * len(replayed) + 1.4))
    for i, (_, bisection, _, _) in enumerate(replayed):
        low, high = bisection.bracket
        ax.plot([low, high], [i, i], color="tab:blue", lw=6, alpha=0.35, solid_capstyle="butt")
        passed = [v for v, ok in bisection.tested if ok]
        failed = [v for v, ok in bisection.tested if not ok]
        ax.plot(passed, [i] * len(passed), "o", color="tab:green", ms=5, label="met" if i == 0 else None)
        ax.plot(failed, [i] * len(failed), "x", color="tab:red", ms=6, label="not met" if i == 0 else None)
        if bisection.largest is not None:
            ax.plot([bisection.largest], [i], "|", color="black", ms=14, mew=2)
    ax.set_yticks(range(len(replayed)), [combination.id for combination, *_ in replayed], fontsize=8)
    ax.invert_yaxis()
    if search.scale == "log":
        ax.set_xscale("log")
    ax.set_xlim(search.low, search.high)
    ax.set_xlabel(f"{search.key} (bar: the bracket; |: the largest that met the criterion)")
    ax.set_title(f"{sweep.name}: stability map", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save(fig, sweep_dir, "stability_map.png")
