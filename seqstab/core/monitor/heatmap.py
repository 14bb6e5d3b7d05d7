"""The ``grad_flow/heatmap`` image: ``‖∂L/∂h_t‖`` by time step and training step."""

from __future__ import annotations

import numpy as np


def render_heatmap(history: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """The ``grad_flow/heatmap`` image: ``‖∂L/∂h_t‖`` by time step (y) and training step (x), log colour scale.

    Args:
        history: ``(training step, (L, k) norms)`` per measurement; one panel per layer. Returns ``(H, W, 3)`` uint8.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

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

    height = 0.9 + 1.7 * layers  # inches: fixed margins, no layout engine (it costs more than the drawing)
    fig = Figure(figsize=(7.0, height), dpi=90)
    canvas = FigureCanvasAgg(fig)
    top, bottom, panel = 1 - 0.35 / height, 0.55 / height, 1.7 / height
    for i in range(layers):
        ax = fig.add_axes((0.1, top - (i + 1) * panel + 0.12 / height, 0.74, panel - 0.24 / height))
        mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(data[i]), norm=norm, cmap="magma", shading="flat")
        ax.set_ylabel(f"layer {i}: time step t" if layers > 1 else "time step t", fontsize=8)
        ax.tick_params(labelsize=7, labelbottom=i == layers - 1)
    ax.set_xlabel("training step", fontsize=8)
    bar = fig.colorbar(mesh, cax=fig.add_axes((0.87, bottom, 0.025, top - bottom)))
    bar.set_label("‖∂L/∂h_t‖ (log scale)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle("Gradient flow through time: ‖∂L/∂h_t‖ per chunk (bright at small t = exploding)", fontsize=9)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
