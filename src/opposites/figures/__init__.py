"""Figures, one module per outline section: the figure with outline id X in section S is the function
X in figures/S.py, decorated with @figure (style.py holds the decorator, rc settings and the plot
primitives). Each takes data[analysis][task] (loaded result files) and the task list and returns a
matplotlib Figure. A figure's rule depends on its own section's module (and what that imports,
opposites.codedeps), so editing one plot reruns only that section's figures."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

HERE = Path(__file__).parent


def module_file(section: str) -> str:
    return str(HERE / f"{section}.py")


def plot_function(section: str, item_id: str) -> Callable | None:
    """The @figure function for an outline figure, or None when there is none."""
    if not Path(module_file(section)).exists():
        return None
    fn = getattr(importlib.import_module(f"opposites.figures.{section}"), item_id, None)
    return fn if getattr(fn, "is_figure", False) else None


MIN_PRINT_PT = 6.0  # the smallest font a figure may print at in the paper


class FigureLayoutError(ValueError):
    pass


def render(section: str, item_id: str, data: dict, tasks: list[str], path: str,
           box: tuple[float, float] | None = None) -> None:
    """Draw one figure and save it as a vector PDF (written atomically, no timestamp). With `box`
    (inches the paper scales it into), refuse a figure whose text would print below MIN_PRINT_PT or
    whose tick labels overlap."""
    import matplotlib.pyplot as plt

    from opposites.figures.style import STYLE
    from opposites.io import _atomic

    with plt.rc_context(STYLE):
        fig = plot_function(section, item_id)(data, tasks)
        if box is not None:
            thin_numeric_ticks(fig)
            problem = layout_problem(fig, box)
            if problem:
                plt.close(fig)
                raise FigureLayoutError(f"Figure {item_id!r} (src/opposites/figures/{section}.py): {problem}")
        _atomic(path, lambda tmp: fig.savefig(tmp, format="pdf", metadata={"CreationDate": None}))
        plt.close(fig)


def drawn_texts(fig) -> list:
    """The figure's non-empty text artists that are drawn (visible, in a visible axes)."""
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()
            and (t.axes is None or t.axes.get_visible())]


def print_scale(fig, box: tuple[float, float]) -> float:
    """The factor the paper scales the saved figure by: its tight bounding box (savefig's
    bbox='tight') fitted into `box` (inches), aspect kept."""
    bbox = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
    return min(box[0] / bbox.width, box[1] / bbox.height)


def overlapping_xticks(ax, renderer) -> tuple[str, str] | None:
    """The first two neighbouring x tick labels of `ax` whose boxes overlap, or None."""
    labels = [t for t in ax.get_xticklabels() if t.get_text().strip() and t.get_visible()]
    boxes = [t.get_window_extent(renderer) for t in labels]
    for a, b, box_a, box_b in zip(labels, labels[1:], boxes, boxes[1:]):
        if box_a.overlaps(box_b):
            return a.get_text(), b.get_text()
    return None


def thin_numeric_ticks(fig) -> None:
    """Fewer ticks on a numeric x axis whose labels overlap (their width depends on the data:
    -0.0015 is wider than 0.5), down to three; labelled categories are left to layout_problem."""
    from matplotlib.ticker import AutoLocator, MaxNLocator

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        bins = 6
        while isinstance(ax.xaxis.get_major_locator(), (AutoLocator, MaxNLocator)) and bins >= 2 \
                and overlapping_xticks(ax, renderer):
            ax.xaxis.set_major_locator(MaxNLocator(nbins=bins))
            fig.canvas.draw()
            bins -= 1


def layout_problem(fig, box: tuple[float, float]) -> str | None:
    """A sentence naming the first text that prints below MIN_PRINT_PT, or two x tick labels of one
    axes that overlap; None when the figure is fine."""
    fig.canvas.draw()
    scale = print_scale(fig, box)
    for t in drawn_texts(fig):
        if t.get_fontsize() * scale < MIN_PRINT_PT - 1e-6:
            return (f"its text {t.get_text()!r} prints at {t.get_fontsize() * scale:.1f} pt, below "
                    f"{MIN_PRINT_PT:g} pt, once the figure is scaled by {scale:.2f} into its "
                    f"{box[0]:.1f} x {box[1]:.1f} in box in the paper. Make the figure smaller (figsize) "
                    "or its fonts larger, or fewer panels per row.")
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        if pair := overlapping_xticks(ax, renderer):
            return (f"its x tick labels {pair[0]!r} and {pair[1]!r} overlap in the panel "
                    f"{ax.get_title()!r}: rotate them, use fewer ticks or a wider panel.")
    return None
