"""Plot functions, one per figure id in paper/outline.yaml. Each takes
data[analysis][task] (loaded result files) and the task list, and returns a matplotlib Figure.
Adding a figure = one outline entry + one function here decorated with @figure."""

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
FIGURES: dict[str, Callable] = {}


def figure(fn: Callable) -> Callable:
    FIGURES[fn.__name__] = fn
    return fn


def render(name: str, data: dict, tasks: list[str], path: str) -> None:
    """Draw figure `name` and save it as a vector PDF (written atomically, no timestamp)."""
    from opposites.io import _atomic

    with plt.rc_context(STYLE):
        fig = FIGURES[name](data, tasks)
        _atomic(path, lambda tmp: fig.savefig(tmp, format="pdf", metadata={"CreationDate": None}))
        plt.close(fig)


def color(task: str) -> str:
    return TASK_COLORS.get(task, "0.3")


def panels(n: int, width: float = 6.0, height: float = 2.4, max_cols: int = 4):
    cols = min(n, max_cols)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


LENS_ORDER = {"resid_pre": 0, "resid_mid": 1, "resid_post": 2}


def lens_x(df) -> np.ndarray:
    """x position of each residual: 2*layer for resid_pre, +1 for resid_mid, final at 2L."""
    return 2 * df["layer"].to_numpy() + df["label"].map(LENS_ORDER).to_numpy()


@figure
def logit_lens(data: dict, tasks: list[str]):
    fig, ax = plt.subplots()
    for task in tasks:
        df = data["logit_lens"][task]
        df = df[df.kind == "accumulated"].assign(x=lambda d: lens_x(d)).sort_values("x")
        ax.plot(df.x, df.value, marker="o", ms=2.5, label=task, color=color(task))
    n = int(df.x.max())
    ticks = list(range(0, n + 1, 2))
    ax.set_xticks(ticks, [f"{t // 2}" if t < n else "final" for t in ticks])
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel="layer (residual stream before it; odd points: after its attention)",
           ylabel="logit difference (answer − wrong)", title="Logit lens, accumulated residual stream")
    ax.legend(frameon=False)
    return fig


@figure
def attn_mlp(data: dict, tasks: list[str]):
    fig, axes = panels(len(tasks))
    for ax, task in zip(axes, tasks):
        df = data["logit_lens"][task]
        df = df[(df.kind == "decomposed") & df.label.isin(["attn", "mlp"])]
        for offset, (label, shade) in enumerate((("attn", color(task)), ("mlp", "0.55"))):
            part = df[df.label == label].sort_values("layer")
            ax.bar(part.layer + (offset - 0.5) * 0.4, part.value, width=0.4, color=shade, label=label)
        ax.axhline(0, color="k", lw=0.6)
        ax.set(title=task, xlabel="layer")
        ax.set_xticks(sorted(df.layer.unique()))
        ax.legend(frameon=False)
    axes[0].set_ylabel("direct logit difference")
    fig.tight_layout()
    return fig


@figure
def head_dla(data: dict, tasks: list[str]):
    fig, axes = panels(len(tasks), height=2.6, max_cols=2)
    for ax, task in zip(axes, tasks):
        heatmap(ax, data["head_dla"][task], title=task)
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
