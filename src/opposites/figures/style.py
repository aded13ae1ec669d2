"""Style and plot primitives shared by the figure modules: rc settings, task colours, panel grids,
layer x head and layer x position heatmaps."""

from __future__ import annotations

from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from opposites.derived import significant  # noqa: E402

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


def task_row(tasks: list[str], draw: Callable, height: float = 2.0):
    """One panel per task side by side across the text width (main-text heatmaps: a 2 x 2 grid would
    be scaled down to its height box, and its text below a readable size)."""
    return per_task(tasks, draw, height=height, max_cols=4, width=6.9)


def task_rows(tasks: list[str], n_cols: int, draw_row: Callable, height: float, width: float = 6.0):
    """A figure with one row of n_cols panels per task; draw_row(row_of_axes, task) fills each row."""
    fig, axes = plt.subplots(len(tasks), n_cols, figsize=(width, height * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        draw_row(row, task)
    fig.tight_layout()
    return fig


def task_columns(tasks: list[str], n_rows: int, draw_col: Callable, height: float, width: float = 6.8):
    """A figure with one column of n_rows panels per task (wide rather than tall, so it fits beside
    text at a readable size); draw_col(column_of_axes, task) fills each column."""
    fig, axes = plt.subplots(n_rows, len(tasks), figsize=(width, height * n_rows), squeeze=False)
    for col, task in zip(axes.T, tasks):
        draw_col(col, task)
    fig.tight_layout()
    return fig


def heatmap(ax, df, title: str, value: str = "value", label: str | None = None):
    """Layer x head grid of `value`, diverging around 0, each panel on its own symmetric scale; the
    colour bar labelled `label`."""
    grid = df.pivot(index="layer", columns="head", values=value).to_numpy()  # (layer, head)
    lim = max(float(np.abs(grid).max()), 1e-9)
    im = ax.imshow(grid, cmap="RdBu", norm=TwoSlopeNorm(0, -lim, lim), aspect="auto", origin="lower")
    ax.set(title=title, xlabel="head", ylabel="layer")
    for axis in (ax.xaxis, ax.yaxis):  # integer ticks, thinned where they would overlap (GPT-2: 12 heads)
        axis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(False)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label=label)


def not_meaningful(ax, title: str) -> bool:
    """Blank a panel whose normalised metric has a normaliser indistinguishable from 0 (say so)."""
    ax.text(0.5, 0.5, "clean and corrupted\nnot distinguishable:\nnormalised patching\nnot meaningful",
            ha="center", va="center", fontsize=6, transform=ax.transAxes)
    ax.set(title=title, xticks=[], yticks=[])
    ax.grid(False)
    return True


def mark_significant(ax, df, index: str, columns: str, order: list | None = None,
                     untested: pd.Series | None = None) -> None:
    """A dot on each heatmap cell that is a discovery of its panel (derived.significant: Benjamini-
    Hochberg at FDR_Q over the cells' p-values, and |effect| >= EFFECT_FLOOR x the panel's largest);
    cells of `untested` (rows of df, bool: fixed by construction) are left out of the family."""
    tested = df if untested is None else df[~untested]
    sig = df.assign(sig=significant(tested).reindex(df.index, fill_value=False)).pivot(index=index, columns=columns,
                                                                                      values="sig")
    if order is not None:
        sig = sig[order]
    ys, xs = np.nonzero(sig.to_numpy(dtype=bool))
    ax.scatter(xs, ys, s=3, color="k", marker="o", linewidths=0)


def role_heatmap(ax, df, title: str, by_construction: pd.Series | None = None) -> None:
    """Layer x role grid of a role-aligned patching table (roles in the table's order), diverging
    around 0; dots mark the panel's discoveries (mark_significant); cells of `by_construction` (rows
    of df, bool) are hatched and not tested."""
    if not df.normaliser_ok.all():
        not_meaningful(ax, title)
        return
    roles = list(dict.fromkeys(df.role))
    grid = df.pivot(index="layer", columns="role", values="value")[roles].to_numpy()  # (layer, role)
    lim = max(float(np.nanmax(np.abs(grid))), 1e-9)
    im = ax.imshow(grid, cmap="RdBu", norm=TwoSlopeNorm(0, -lim, lim), aspect="auto", origin="lower")
    mark_significant(ax, df, "layer", "role", roles, untested=by_construction)
    if by_construction is not None:
        for _, r in df[by_construction].iterrows():
            ax.add_patch(Rectangle((roles.index(r.role) - 0.5, r.layer - 0.5), 1, 1, fill=False, hatch="////",
                                   edgecolor="0.45", linewidth=0))
    ax.set_xticks(range(len(roles)), roles, rotation=90)
    ax.set(title=title, ylabel="layer")
    ax.grid(False)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03).set_label("normalised LD")
