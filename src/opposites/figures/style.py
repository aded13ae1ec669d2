"""Style and plot primitives shared by the figure modules: rc settings, task colours, panel grids,
layer x head and layer x position heatmaps."""

from __future__ import annotations

from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

STYLE = {
    "figure.figsize": (6.0, 3.2), "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8,
    "legend.fontsize": 7, "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "lines.linewidth": 1.4,
    "pdf.fonttype": 42, "savefig.bbox": "tight",
}
TASK_COLORS = {"ioi": "#1b9e77", "size": "#d95f02", "antonym": "#7570b3", "isa": "#e7298a"}


def figure(fn: Callable) -> Callable:
    """Marks a plot function: (data[analysis][task], tasks) -> matplotlib Figure, named as its outline id."""
    fn.is_figure = True
    return fn


def color(task: str) -> str:
    return TASK_COLORS.get(task, "0.3")


def panels(n: int, width: float = 6.0, height: float = 2.4, max_cols: int = 4):
    cols = min(n, max_cols)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def per_task(tasks: list[str], draw: Callable, height: float = 2.4, max_cols: int = 2, width: float = 6.0):
    """A figure with one panel per task; draw(ax, task) fills each panel."""
    fig, axes = panels(len(tasks), width, height, max_cols)
    for ax, task in zip(axes, tasks):
        draw(ax, task)
    fig.tight_layout()
    return fig


def task_rows(tasks: list[str], n_cols: int, draw_row: Callable, height: float, width: float = 6.0):
    """A figure with one row of n_cols panels per task; draw_row(row_of_axes, task) fills each row."""
    fig, axes = plt.subplots(len(tasks), n_cols, figsize=(width, height * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        draw_row(row, task)
    fig.tight_layout()
    return fig


def heatmap(ax, df, title: str, value: str = "value"):
    """Layer x head grid of `value`, diverging around 0, each panel on its own symmetric scale."""
    grid = df.pivot(index="layer", columns="head", values=value).to_numpy()  # (layer, head)
    lim = max(float(np.abs(grid).max()), 1e-9)
    im = ax.imshow(grid, cmap="RdBu", norm=TwoSlopeNorm(0, -lim, lim), aspect="auto", origin="lower")
    ax.set(title=title, xlabel="head", ylabel="layer")
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    ax.grid(False)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)


def position_ticks(ax, df) -> None:
    """x ticks: each position's role (or its token) from a patching table."""
    labels = df.drop_duplicates("pos").sort_values("pos")
    ax.set_xticks(labels.pos, [r.role or repr(r.token.strip() or r.token)[1:-1][:8]
                               for r in labels.itertuples()], rotation=90)


def position_heatmap(ax, df, title: str) -> None:
    grid = df.pivot(index="layer", columns="pos", values="value").to_numpy()  # (layer, pos)
    lim = max(float(np.nanmax(np.abs(grid))), 1e-9)
    im = ax.imshow(grid, cmap="RdBu", norm=TwoSlopeNorm(0, -lim, lim), aspect="auto", origin="lower")
    position_ticks(ax, df)
    ax.set(title=title, ylabel="layer")
    ax.grid(False)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
