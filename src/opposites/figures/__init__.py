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


def render(section: str, item_id: str, data: dict, tasks: list[str], path: str) -> None:
    """Draw one figure and save it as a vector PDF (written atomically, no timestamp)."""
    import matplotlib.pyplot as plt

    from opposites.figures.style import STYLE
    from opposites.io import _atomic

    with plt.rc_context(STYLE):
        fig = plot_function(section, item_id)(data, tasks)
        _atomic(path, lambda tmp: fig.savefig(tmp, format="pdf", metadata={"CreationDate": None}))
        plt.close(fig)
