"""The ``grad_flow/heatmap`` image: ``‖∂L/∂h_t‖`` by time step and training step."""

from __future__ import annotations

from typing import Any

import numpy as np

TITLE = "Gradient flow through time: ‖∂L/∂h_t‖ per chunk (bright at small t = exploding)"


class Heatmap:
    """Draws the heatmap, keeping its figure from one draw to the next.

    A run redraws the image every ``heatmap_every_n_steps`` updates with more columns; most of a fresh figure's cost
    is matplotlib building its axes and their ticks, so the figure, its panels and the colour bar are made once and
    only the meshes are replaced, the colour bar following their new scale (two layers, 20–40 columns, on the 2-core
    VM of ``benchmarks/RESULTS.md``: ~130 ms a fresh draw, ~55 ms a kept one; in the VM's state of 2026-12-07 a
    process's first draw ~75 ms, a kept one ~31, with the colour bar labelled in plain text and at most ~6 ticks on
    an axis, 37 before). Copies and pickles carry no figure: it is made again at the next draw.
    """

    def __init__(self) -> None:
        self._figure: tuple[Any, Any, list[Any], Any] | None = None  # (figure, canvas, panels, colour bar axes)
        self._bar: Any = None  # the colour bar drawn on the kept figure
        self._labels: Any = None  # its tick labels' formatter

    def __getstate__(self) -> dict[str, Any]:
        return {"_figure": None, "_bar": None, "_labels": None}

    def render(self, history: list[tuple[int, np.ndarray]]) -> np.ndarray:
        """The image: ``‖∂L/∂h_t‖`` by time step (y) and training step (x), log colour scale.

        Args:
            history: ``(training step, (L, k) norms)`` per measurement; one panel per layer. Returns ``(H, W, 3)``
                uint8.
        """
        from matplotlib.colors import LogNorm

        steps = np.array([step for step, _ in history], dtype=float)
        layers = history[0][1].shape[0]
        length = max(norms.shape[1] for _, norms in history)
        data = np.full((layers, length, len(history)), np.nan)  # (L, k, columns); a shorter chunk leaves NaN on top
        for c, (_, norms) in enumerate(history):
            data[:, : norms.shape[1], c] = norms
        data[~(data > 0) | ~np.isfinite(data)] = np.nan  # zero or non-finite: no colour
        gap = np.diff(steps).min() if len(steps) > 1 else 1.0
        x_edges = np.concatenate([[steps[0] - gap / 2], (steps[1:] + steps[:-1]) / 2, [steps[-1] + gap / 2]])
        y_edges = np.arange(length + 1) + 0.5  # time step t = 1..k at the cell centres
        finite = data[np.isfinite(data)]
        low, high = (finite.min(), finite.max()) if finite.size else (1e-8, 1.0)
        norm = LogNorm(vmin=low, vmax=high if high > low else low * 10)

        figure, canvas, panels, bar_axes = self._panels(layers)
        for i, ax in enumerate(panels):
            for old in list(ax.collections):
                old.remove()
            cells = np.ma.masked_invalid(data[i])
            mesh = ax.pcolormesh(x_edges, y_edges, cells, norm=norm, cmap="magma", shading="flat")
            ax.set_xlim(x_edges[0], x_edges[-1])
            ax.set_ylim(y_edges[0], y_edges[-1])
        if self._bar is None:
            self._bar = figure.colorbar(mesh, cax=bar_axes)
            self._bar.set_label("‖∂L/∂h_t‖ (log scale)", fontsize=8)
            self._bar.ax.tick_params(which="both", labelsize=7)  # minor ticks labelled within a decade too
        else:  # the kept colour bar follows the new mesh's scale (its axis and ticks are reused)
            self._bar.update_normal(mesh)
        self._bar.formatter = self._labels  # after each new norm, which resets it to mathtext's
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()

    def _panels(self, layers: int) -> tuple[Any, Any, list[Any], Any]:
        """The figure for ``layers`` panels: the kept one, or a new one (the first draw, or the count changed)."""
        if self._figure is not None and len(self._figure[2]) == layers:
            return self._figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        height = 0.9 + 1.7 * layers  # inches: fixed margins, no layout engine (it costs more than the drawing)
        figure = Figure(figsize=(7.0, height), dpi=90)
        canvas = FigureCanvasAgg(figure)
        top, bottom, panel = 1 - 0.35 / height, 0.55 / height, 1.7 / height
        panels = []
        for i in range(layers):
            ax = figure.add_axes((0.1, top - (i + 1) * panel + 0.12 / height, 0.74, panel - 0.24 / height))
            ax.set_ylabel(f"layer {i}: time step t" if layers > 1 else "time step t", fontsize=8)
            ax.tick_params(labelsize=7, labelbottom=i == layers - 1)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))  # fewer ticks than matplotlib's ~9:
            ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))  # ~20 % of a redraw is drawing them
            panels.append(ax)
        panels[-1].set_xlabel("training step", fontsize=8)
        bar_axes = figure.add_axes((0.86, bottom, 0.025, top - bottom))  # room for its labels at the right
        figure.suptitle(TITLE, fontsize=9)
        self._figure, self._bar, self._labels = (figure, canvas, panels, bar_axes), None, _plain_log_formatter()
        return self._figure


def _plain_log_formatter() -> Any:
    """The colour bar's tick labels as matplotlib's ``LogFormatterSciNotation`` gives them (``10^-2``,
    ``2×10^-3``), in plain text with superscript digits instead of mathtext, whose parser and fonts are set up at a
    process's first draw: 112 → ~75 ms for that draw (one scratch timing on the 2-core VM of
    ``benchmarks/RESULTS.md``)."""
    import re

    from matplotlib.ticker import LogFormatterSciNotation

    math = re.compile(r"^\$\\mathdefault\{(.*)\}\$$")
    power = re.compile(r"\^\{(-?\d+)\}")
    superscript = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")

    class PlainLogFormatter(LogFormatterSciNotation):
        def __call__(self, x: float, pos: int | None = None) -> str:
            label = super().__call__(x, pos)
            found = math.match(label)
            if found is None:
                return label
            text = found.group(1).replace("\\times", "\u00d7")
            return power.sub(lambda m: m.group(1).translate(superscript), text)

    return PlainLogFormatter()


def render_heatmap(history: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """The ``grad_flow/heatmap`` image of ``history`` on a fresh figure (:class:`Heatmap` keeps one across draws).

    Args:
        history: ``(training step, (L, k) norms)`` per measurement; one panel per layer. Returns ``(H, W, 3)`` uint8.
    """
    return Heatmap().render(history)
