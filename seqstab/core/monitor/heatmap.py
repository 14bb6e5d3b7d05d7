"""The ``grad_flow/heatmap`` image: ``‖∂L/∂h_t‖`` by time step and training step.

Drawn with numpy and Pillow, not through matplotlib's axes, whose draws spent their time building ticks and laying
out text in Python, on the training thread, every ``heatmap_every_n_steps`` updates. Here the cells are coloured by
indexing a lookup table, the frames and ticks are rows and columns of pixels, and each label is rasterized once per
:class:`Heatmap` and pasted. Two layers of 35 steps, 20 columns, on the 2-core VM of ``benchmarks/RESULTS.md`` (run
U there): a process's first draw ~65 → ~10 ms, a kept figure's redraw ~35 → ~2 (a fresh :class:`Heatmap` after the
first ~4; ``benchmarks/bench_monitor.py`` prints these two). matplotlib still supplies what it
is good at: the ``magma`` colour map, the font (the DejaVu Sans it bundles) and where ticks go (``MaxNLocator``,
``LogLocator``). The layout::

    ┌─────────────────────── title ────────────────────────┐
    │ t ┌──────────────────────────────────┐ ┌┐ 10⁰         │   one panel per layer: time step t (y, 1 at the
    │   │ layer 0: cells, time step × step │ ││ 10⁻¹        │   bottom) × training step (x); log colour scale
    │   └──────────────────────────────────┘ ││             │   shared by the panels and the bar at the right
    │ t ┌──────────────────────────────────┐ ││ 10⁻²        │
    │   │ layer 1                          │ ││             │
    │   └──────────────────────────────────┘ └┘             │
    │    0     200    400   training step                  │
    └──────────────────────────────────────────────────────┘
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

TITLE = "Gradient flow through time: ‖∂L/∂h_t‖ per chunk (bright at small t = exploding)"
BAR_LABEL = "‖∂L/∂h_t‖ (log scale)"

# geometry in pixels: the 7-inch-wide figure at 90 dpi that matplotlib drew before, 1.7 inches a layer
WIDTH = 630
TOP = 43  # the first panel's top edge: the title above it
LEFT, RIGHT = 63, 529  # the panels' left and right edges (466 pixels of steps)
PANEL, GAP = 131, 22  # a panel's height and the space between two
BOTTOM = 60  # below the last panel: its tick labels and the x label
BAR_LEFT, BAR_RIGHT = 542, 558  # the colour bar
TICK, MINOR_TICK = 4, 2  # tick lengths, outward
SMALL, LARGE = 8.75, 10.0  # font sizes in pixels: tick labels (7 pt at 90 dpi); axis labels (8 pt)
TITLE_SIZE = 11.25  # 9 pt
WHITE = 255  # the background, and the cells with no value (zero, non-finite, above a shorter chunk)


class Heatmap:
    """Draws the heatmap, keeping the fonts and the labels it has rasterized from one draw to the next (a redraw
    reuses the tick labels that did not change). The image is a function of ``history`` alone: a kept
    :class:`Heatmap` draws the pixels a fresh one does. Copies and pickles carry neither: they are made again.

    ``labels`` holds, after a draw, each label's text and box ``(left, top, right, bottom)`` in pixels.
    """

    def __init__(self) -> None:
        self._fonts: dict[float, Any] = {}
        self._texts: dict[tuple[str, float, bool], np.ndarray] = {}  # (text, size, vertical) -> alpha, (h, w) uint8
        self.labels: list[tuple[str, tuple[int, int, int, int]]] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"_fonts": {}, "_texts": {}, "labels": []}

    def render(self, history: list[tuple[int, np.ndarray]]) -> np.ndarray:
        """The image: ``‖∂L/∂h_t‖`` by time step (y) and training step (x), log colour scale. Each pixel column shows
        the measurement whose span holds its centre (with more measurements than the panel's 466 columns, some are
        not shown).

        Args:
            history: ``(training step, (L, k) norms)`` per measurement; one panel per layer. Returns ``(H, W, 3)``
                uint8.
        """
        history = sorted(history, key=lambda column: column[0])  # stable: a step measured twice keeps its order
        steps = np.array([step for step, _ in history], dtype=float)
        layers = history[0][1].shape[0]
        length = max(norms.shape[1] for _, norms in history)
        data = np.full((layers, length, len(history)), np.nan)  # (L, k, columns); a shorter chunk leaves NaN on top
        for c, (_, norms) in enumerate(history):
            data[:, : norms.shape[1], c] = norms
        data[~(data > 0) | ~np.isfinite(data)] = np.nan  # zero or non-finite: no colour
        finite = data[np.isfinite(data)]
        low, high = (finite.min(), finite.max()) if finite.size else (1e-8, 1.0)
        high = high if high > low else low * 10
        gaps = np.diff(steps)
        gap = gaps[gaps > 0].min() if np.any(gaps > 0) else 1.0  # a column's width where the steps are spaced
        x_edges = np.concatenate([[steps[0] - gap / 2], (steps[1:] + steps[:-1]) / 2, [steps[-1] + gap / 2]])

        height = TOP + layers * PANEL + (layers - 1) * GAP + BOTTOM
        image = np.full((height, WIDTH, 3), WHITE, dtype=np.uint8)  # (H, W, 3)
        self.labels = []
        columns = np.searchsorted(x_edges, _centres(x_edges[0], x_edges[-1], RIGHT - LEFT), side="right") - 1
        columns = columns.clip(0, len(history) - 1)  # (W_panel,) the measurement each pixel column shows
        shown, columns = np.unique(columns, return_inverse=True)  # only those shown are coloured (a long run's)
        shade = _shades(data[:, :, shown], low, high)  # (L, k, shown) colour indices; NaN -> WHITE's row
        rows = np.floor(_centres(length + 0.5, 0.5, PANEL) - 0.5).astype(int).clip(0, length - 1)  # (H_panel,) t - 1
        lut = _colour_table()
        for i in range(layers):
            top = TOP + i * (PANEL + GAP)
            image[top : top + PANEL, LEFT:RIGHT] = lut[shade[i][rows][:, columns]]  # (H_panel, W_panel, 3)
            self._frame(image, LEFT, top, RIGHT, top + PANEL)
            self._y_axis(image, top, length, f"layer {i}: time step t" if layers > 1 else "time step t")
            self._x_axis(image, top + PANEL, x_edges[0], x_edges[-1], labelled=i == layers - 1)
        bottom = TOP + layers * PANEL + (layers - 1) * GAP
        self._text(image, "training step", LARGE, (LEFT + RIGHT) // 2, bottom + 28, "center", "top")
        self._text(image, TITLE, TITLE_SIZE, WIDTH // 2, TOP // 2 - 2, "center", "middle")
        self._colour_bar(image, TOP, bottom, low, high)
        return image

    # -- the parts ---------------------------------------------------------------------------------------------

    def _y_axis(self, image: np.ndarray, top: int, length: int, label: str) -> None:
        from matplotlib.ticker import MaxNLocator

        for t in MaxNLocator(nbins=4, integer=True).tick_values(0.5, length + 0.5):
            if not 0.5 <= t <= length + 0.5:
                continue
            y = top + round((length + 0.5 - t) / length * (PANEL - 1))
            image[y, LEFT - 1 - TICK : LEFT - 1] = 0
            self._text(image, f"{t:.0f}", SMALL, LEFT - 3 - TICK, y, "right", "middle")
        self._text(image, label, LARGE, LEFT - 31, top + PANEL // 2, "center", "middle", vertical=True)

    def _x_axis(self, image: np.ndarray, y: int, first: float, last: float, labelled: bool) -> None:
        from matplotlib.ticker import MaxNLocator

        for step in MaxNLocator(nbins=6, integer=True).tick_values(first, last):
            if not first <= step <= last or step != round(step):  # a lone column's span is under one step
                continue
            x = LEFT + round((step - first) / (last - first) * (RIGHT - LEFT - 1))
            image[y + 1 : y + 1 + TICK, x] = 0
            if labelled:
                self._text(image, f"{step:.0f}", SMALL, x, y + 3 + TICK, "center", "top")

    def _colour_bar(self, image: np.ndarray, top: int, bottom: int, low: float, high: float) -> None:
        """The bar from ``high`` (top) to ``low`` on a log scale, its ticks and their labels, skipping a label
        that would overlap one already placed (decades first)."""
        from matplotlib.ticker import LogLocator

        shades = np.linspace(255, 0, bottom - top).round().astype(np.intp)  # (H_bar,) top = high
        image[top:bottom, BAR_LEFT:BAR_RIGHT] = _colour_table()[shades][:, None]
        self._frame(image, BAR_LEFT, top, BAR_RIGHT, bottom)
        span = math.log10(high / low)
        decades = [v for v in LogLocator(base=10).tick_values(low, high) if low <= v <= high]
        minor = [v for v in LogLocator(base=10, subs="auto").tick_values(low, high) if low <= v <= high]
        minor = [v for v in minor if all(not math.isclose(v, d) for d in decades)]
        style = "decades" if span > 1 else "digits" if all(_digit(v) for v in minor) else "plain"
        taken: list[tuple[int, int]] = []  # labels' (top, bottom) rows
        for value, length in [(v, TICK) for v in decades] + [(v, MINOR_TICK) for v in minor]:
            y = top + round(math.log10(high / value) / span * (bottom - top - 1))
            image[y, BAR_RIGHT : BAR_RIGHT + length] = 0
            text = _log_label(value, style)
            if not text:
                continue
            height = self._rasterized(text, SMALL, False).shape[0]
            upper, lower = y - height // 2, y - height // 2 + height  # the rows _text will ink
            if any(upper <= b + 1 and lower >= a - 1 for a, b in taken):
                continue
            taken.append((upper, lower))
            self._text(image, text, SMALL, BAR_RIGHT + TICK + 3, y, "left", "middle")
        self._text(image, BAR_LABEL, LARGE, WIDTH - 12, (top + bottom) // 2, "center", "middle", vertical=True)

    @staticmethod
    def _frame(image: np.ndarray, left: int, top: int, right: int, bottom: int) -> None:
        """A one-pixel black line just outside the box ``[left, right) × [top, bottom)``."""
        image[top - 1, left - 1 : right + 1] = 0
        image[bottom, left - 1 : right + 1] = 0
        image[top - 1 : bottom + 1, left - 1] = 0
        image[top - 1 : bottom + 1, right] = 0

    def _text(
        self,
        image: np.ndarray,
        text: str,
        size: float,
        x: int,
        y: int,
        align: str,
        valign: str,
        vertical: bool = False,
    ) -> None:
        """Black ``text`` anchored at ``(x, y)``: ``align`` left/center/right, ``valign`` top/middle/bottom of its
        inked box (``vertical``: turned a quarter counter-clockwise); clipped to the image."""
        alpha = self._rasterized(text, size, vertical)
        h, w = alpha.shape
        left = x - {"left": 0, "center": w // 2, "right": w}[align]
        top = y - {"top": 0, "middle": h // 2, "bottom": h}[valign]
        self.labels.append((text, (left, top, left + w, top + h)))
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + w, image.shape[1]), min(top + h, image.shape[0])
        if x1 <= x0 or y1 <= y0:
            return
        ink = alpha[y0 - top : y1 - top, x0 - left : x1 - left, None].astype(np.uint16)  # (h, w, 1)
        region = image[y0:y1, x0:x1]
        region[...] = (region * (255 - ink) + 127) // 255  # black over what is there

    def _rasterized(self, text: str, size: float, vertical: bool) -> np.ndarray:
        key = (text, size, vertical)
        alpha = self._texts.get(key)
        if alpha is None:
            from PIL import Image, ImageDraw

            font = self._font(size)
            left, top, right, bottom = font.getbbox(text)
            canvas = Image.new("L", (max(right - left, 1), max(bottom - top, 1)), 0)
            ImageDraw.Draw(canvas).text((-left, -top), text, font=font, fill=255)
            alpha = np.asarray(canvas)  # (h, w) uint8
            alpha = np.ascontiguousarray(np.rot90(alpha)) if vertical else alpha
            self._texts[key] = alpha
        return alpha

    def _font(self, size: float) -> Any:
        font = self._fonts.get(size)
        if font is None:
            from pathlib import Path

            import matplotlib
            from PIL import ImageFont

            path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            font = self._fonts[size] = ImageFont.truetype(str(path), size)
        return font


def _centres(first: float, last: float, pixels: int) -> np.ndarray:
    """The value at each pixel's centre of ``pixels`` spanning ``first`` → ``last``: ``(pixels,)``."""
    return first + (np.arange(pixels) + 0.5) / pixels * (last - first)


def _shades(data: np.ndarray, low: float, high: float) -> np.ndarray:
    """Each value's row of the colour table on the log scale ``low`` → ``high`` (0 → 255); NaN → 256, white."""
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.log(data / low) / math.log(high / low)
    shade = np.full(data.shape, 256, dtype=np.intp)
    known = np.isfinite(scaled)
    shade[known] = (scaled[known].clip(0.0, 1.0) * 255).round().astype(np.intp)
    return shade


_TABLE: np.ndarray | None = None


def _colour_table() -> np.ndarray:
    """matplotlib's ``magma`` as 256 RGB rows, then white: ``(257, 3)`` uint8."""
    global _TABLE
    if _TABLE is None:
        import matplotlib

        magma = matplotlib.colormaps["magma"](np.linspace(0.0, 1.0, 256), bytes=True)[:, :3]
        _TABLE = np.concatenate([magma, np.full((1, 3), WHITE, dtype=np.uint8)])
    return _TABLE


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def _digit(value: float) -> int | None:
    """``d`` where ``value`` is ``d × 10ⁿ`` for a digit ``d`` (1–9), else None."""
    scaled = value / 10.0 ** math.floor(math.log10(value) + 1e-9)
    return round(scaled) if math.isclose(scaled, round(scaled), rel_tol=1e-6) else None


def _log_label(value: float, style: str) -> str:
    """A colour-bar tick's label in plain text ("" for none), in the ``style`` of the bar's span: ``decades`` (over
    a decade) labels only ``10⁻²``; ``digits`` also ``2×10⁻³``; ``plain`` (matplotlib's linear ticks within a
    narrow span) ``0.35``."""
    if style == "plain":
        return f"{value:.3g}"
    exponent = math.floor(math.log10(value) + 1e-9)
    power = "10" + str(exponent).translate(_SUPERSCRIPT)
    digit = _digit(value)
    if digit == 1:
        return power
    return f"{digit}\u00d7{power}" if style == "digits" and digit is not None else ""


def render_heatmap(history: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """The ``grad_flow/heatmap`` image of ``history`` drawn by a fresh :class:`Heatmap`.

    Args:
        history: ``(training step, (L, k) norms)`` per measurement; one panel per layer. Returns ``(H, W, 3)`` uint8.
    """
    return Heatmap().render(history)
