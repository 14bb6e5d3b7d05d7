"""The report's plots (PNG, in the sweep folder): ``norms.png`` always; ``growth_vs_<x>.png`` and
``metric_vs_<x>.png`` when the sweep has an x key, else ``metric_by_run.png``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from seqstab.cli.sweep.combination import Combination, labelled
from seqstab.cli.sweep.spec import Sweep

DPI = 90


def pyplot():
    """``matplotlib.pyplot`` drawing to files only (imported when a report is written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, sweep_dir: Path, name: str) -> str:
    """Write ``fig`` as ``sweep_dir/name``, close it, return ``name``."""
    fig.savefig(sweep_dir / name, dpi=DPI)
    pyplot().close(fig)
    return name


def final_metric(rows: list[dict[str, Any]]) -> str:
    """The column a run's result is read from: the last validation loss, else the final training loss."""
    return "final_val/loss" if any("final_val/loss" in row for row in rows) else "final_train_loss"


def chance(rows: list[dict[str, Any]], metric: str) -> float | None:
    """The chance loss the task reported, for a loss metric."""
    found = [row["chance_loss"] for row in rows if _is_number(row.get("chance_loss"))]
    return found[0] if found and "loss" in metric else None


def write_plots(
    sweep: Sweep, runs: list[Combination], data: dict[str, Any], rows: list[dict[str, Any]], sweep_dir: Path
) -> list[str]:
    """Draw the plots of ``runs`` (``data``: each read back; ``rows``: their report rows); the file names written."""
    written = [_norms(sweep, runs, data, sweep_dir)]
    if sweep.x is None:
        return [*written, _metric_bars(sweep, rows, sweep_dir)]
    return written + _against_x(sweep, runs, rows, sweep_dir)


def _norms(sweep: Sweep, runs: list[Combination], data: dict[str, Any], sweep_dir: Path) -> str:
    """``norms.png``: every run's pre-clip gradient norm over the updates, a panel per variant."""
    plt = pyplot()
    groups: dict[str, list[Combination]] = {}
    for r in runs:
        groups.setdefault(r.variant or "runs", []).append(r)
    cols = min(3, len(groups))
    nrows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.4 * nrows), squeeze=False, sharey=True)
    for ax, (group, members) in zip(axes.flat, groups.items(), strict=False):
        for r in members:
            series = data[r.id]["scalars"].get("grad/norm_total", [])
            shown = [(s, v) for s, v in series if math.isfinite(v) and v > 0]  # log scale
            marker = "o" if len(shown) < 5 else None  # a run that died at once is still a visible point
            xs, ys = [s for s, _ in shown], [v for _, v in shown]
            (line,) = ax.plot(xs, ys, lw=0.9, marker=marker, ms=3, label=labelled(r.values) or r.id)
            bad = [s for s, v in series if not math.isfinite(v)]
            if bad:
                ax.axvline(bad[0], color=line.get_color(), ls=":", lw=0.9)
        ax.set_yscale("log")
        ax.set_title(group)
        ax.set_xlabel("update")
        ax.set_ylabel("pre-clip grad norm")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.suptitle(f"{sweep.name}: pre-clip gradient norm (dotted: first non-finite)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / (3.4 * nrows)))  # room for the title
    return save(fig, sweep_dir, "norms.png")


def _against_x(sweep: Sweep, runs: list[Combination], rows: list[dict[str, Any]], sweep_dir: Path) -> list[str]:
    """``growth_vs_<x>.png`` and ``metric_vs_<x>.png``: a line per group of the other swept values."""
    plt = pyplot()
    xname = sweep.x.rsplit(".", 1)[-1]
    by_group: dict[str, list[tuple[Combination, dict[str, Any]]]] = {}
    for r, row in zip(runs, rows, strict=True):
        if sweep.x in r.values and _is_number(r.values[sweep.x]):
            by_group.setdefault(_group_label(r, sweep.x), []).append((r, row))
    metric = final_metric(rows)
    written = []
    for name, column, ylabel, log in (
        (f"growth_vs_{xname}.png", "grad_flow_growth", "grad_flow/growth (median)", False),
        (f"metric_vs_{xname}.png", metric, metric, True),
    ):
        points = {
            g: sorted((float(r.values[sweep.x]), row[column]) for r, row in members if _is_float(row.get(column)))
            for g, members in by_group.items()
        }
        points = {g: p for g, p in points.items() if p}
        if not any(math.isfinite(y) for p in points.values() for _, y in p):
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4))
        top = ax.get_xaxis_transform()  # x in data, y in axes coordinates
        for g, p in points.items():
            ys = [y if math.isfinite(y) else math.nan for _, y in p]
            (line,) = ax.plot([x for x, _ in p], ys, marker="o", label=g)
            bad = [x for x, y in p if not math.isfinite(y)]  # non-finite: an x at the top edge
            ax.plot(bad, [0.97] * len(bad), "x", color=line.get_color(), transform=top, clip_on=False)
        if column == metric and (line_at := chance(rows, metric)) is not None:
            ax.axhline(line_at, color="grey", ls="--", lw=1, label="chance")
        if log and all(y > 0 for p in points.values() for _, y in p if math.isfinite(y)):
            ax.set_yscale("log")
        ax.set_xlabel(xname)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{sweep.name}: {ylabel} against {xname} (x at the top: non-finite)", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(save(fig, sweep_dir, name))
    return written


def _metric_bars(sweep: Sweep, rows: list[dict[str, Any]], sweep_dir: Path) -> str:
    """``metric_by_run.png``: the final validation loss of every run as a bar (log scale), chance as a line."""
    metric = final_metric(rows)
    names = [row["run"] for row in rows]
    values = [row.get(metric) for row in rows]
    finite = [v for v in values if _is_number(v) and v > 0]
    top = max(finite) * 10 if finite else 1.0
    fig, ax = pyplot().subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    for i, v in enumerate(values):
        ok = _is_number(v) and v > 0
        ax.barh(i, v if ok else top, color="tab:blue" if ok else "tab:red", alpha=1.0 if ok else 0.35)
        if not ok:
            ax.text(top, i, " non-finite" if _is_float(v) else " missing", va="center", fontsize=7)
    if (line_at := chance(rows, metric)) is not None:
        ax.axvline(line_at, color="grey", ls="--", lw=1, label="chance")
        ax.legend(fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(metric)
    ax.set_title(f"{sweep.name}: {metric} per run", fontsize=10)
    fig.tight_layout()
    return save(fig, sweep_dir, "metric_by_run.png")


def _group_label(run: Combination, x: str) -> str:
    others = labelled({k: v for k, v in run.values.items() if k != x})
    return ", ".join(part for part in (run.variant, others) if part) or "runs"


def _is_float(value: Any) -> bool:
    """A number, finite or not (inf/nan are drawn as markers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_float(value) and math.isfinite(value)
