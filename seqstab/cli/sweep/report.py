"""The sweep's report, read back from its runs' folders: ``report.csv`` (a row per run), ``report.md`` (the same
table, explained, with the plots) and, for a search, the stability map."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from seqstab.cli.sweep.folders import MAP_CSV, REPORT_CSV, REPORT_FILE
from seqstab.cli.sweep.plan import Plan
from seqstab.cli.sweep.plots import write_plots
from seqstab.cli.sweep.readback import TRAIN_TAIL, is_finished, read_run, summarize
from seqstab.cli.sweep.spec import Sweep
from seqstab.cli.sweep.stability_map import map_markdown, map_plot, map_row
from seqstab.core.io import write_text


def write_report(sweep: Sweep, out: Path) -> list[dict[str, Any]]:
    """Write ``report.csv``, ``report.md`` and the plots into the sweep folder; return the rows. A search sweep's
    report opens with the stability map (``stability_map.csv``, ``stability_map.png``)."""
    sweep_dir = out / sweep.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    plan = Plan(sweep, sweep_dir)
    replayed = [] if sweep.search is None else [(c, *plan.replay(c)) for c in sweep.combinations()]
    runs = plan.runs()
    data = {r.id: read_run(sweep_dir / r.id) for r in runs}
    rows = [summarize(r, data[r.id]) for r in runs]
    for r, row in zip(runs, rows, strict=True):
        if r.id in plan.verdicts:
            row["criterion"] = "met" if plan.verdicts[r.id] else "not met"
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    _write_csv(sweep_dir / REPORT_CSV, rows, columns)
    head = None
    if sweep.search is not None:
        map_rows = [map_row(c, bisection, nxt, sweep_dir) for c, bisection, _, nxt in replayed]
        _write_csv(sweep_dir / MAP_CSV, map_rows, list(map_rows[0]) if map_rows else [])
        head = map_markdown(sweep, map_rows, map_plot(sweep, replayed, sweep_dir))
    plots = write_plots(sweep, runs, data, rows, sweep_dir)
    write_text(sweep_dir / REPORT_FILE, _markdown(sweep, rows, columns, plots, head))
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows({c: _csv_value(row.get(c)) for c in columns} for row in rows)
    write_text(path, text.getvalue())


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # every bit: two reports compare equal only if the runs do
    return "" if value is None else value


def _md_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown(
    sweep: Sweep, rows: list[dict[str, Any]], columns: list[str], plots: list[str], head: list[str] | None = None
) -> str:
    shown = [c for c in columns if c != "run"]
    total = sum(r["wall_s"] or 0 for r in rows)
    lines = [
        *(head or [f"# Sweep `{sweep.name}`", ""]),
        f"{len(rows)} runs from {', '.join(f'`{p.name}`' for p in sweep.base) or 'the default config'}; "
        f"{sum(map(is_finished, rows))} finished, {total:.0f} s of run wall time in all.",
        "",
        "Steps are update indices (the x axis of every per-update TensorBoard scalar). `first_explosion_step`: "
        "the first explosion-guard event; `spike_count`: guard events for a spike (pre-clip norm above "
        "`spike_factor` × the running median) or a non-finite norm; `initial_norm`: the first non-zero pre-clip "
        "norm (the weights as initialised); "
        "`max_pre_clip_norm`: the largest finite pre-clip gradient norm; "
        f"`final_train_loss`: mean of the last {TRAIN_TAIL} updates; `final_val/*`: the last validation; "
        "`grad_flow_growth`: median over the run, where the monitor logged it.",
        "",
        "| " + " | ".join(shown) + " |",
        "| " + " | ".join("---" for _ in shown) + " |",
    ]
    lines += ["| " + " | ".join(_md_value(r.get(c)) for c in shown) + " |" for r in rows]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
