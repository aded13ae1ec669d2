"""Figures of the 'Causal localization: activation patching' section."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from opposites.derived import attribution_vs_exact, head_label, largest_abs, top_patched_heads
from opposites.figures.style import (color, figure, heatmap, mark_significant, not_meaningful, per_task,
                                     role_heatmap, task_columns, task_row)


@figure
def patch_resid(data: dict, tasks: list[str]):
    def draw(ax, task):
        df = data["patch_resid"][task]
        # before layer 0 the residual is the input itself: a cell there restores the share of the
        # changed tokens the role holds, by construction
        role_heatmap(ax, df, f"{task} (n={df.n.iloc[0]})", by_construction=df.layer == 0)

    return task_row(tasks, draw, height=2.2)


@figure
def patch_attn_mlp(data: dict, tasks: list[str]):
    def draw_col(col, task):
        df = data["patch_layers"][task]
        for ax, component in zip(col, ("attn", "mlp")):
            role_heatmap(ax, df[df.component == component], f"{task}: {component} output")

    return task_columns(tasks, 2, draw_col, height=2.4)


@figure
def patch_heads(data: dict, tasks: list[str]):
    def draw(ax, task):
        df = data["patch_heads"][task]
        z = df[df.activation == "z"]
        if not z.normaliser_ok.all():
            not_meaningful(ax, task)
            return
        heatmap(ax, z, title=task, label="share restored")
        mark_significant(ax, z, "layer", "head")

    return task_row(tasks, draw)


@figure
def patch_qkv(data: dict, tasks: list[str]):
    acts = ["z", "q", "k", "v", "pattern"]
    shades = plt.cm.viridis(np.linspace(0.1, 0.9, len(acts)))

    def draw(ax, task):
        df = data["patch_heads"][task].set_index(["layer", "head", "activation"])
        heads = top_patched_heads(data["patch_heads"][task])
        for i, act in enumerate(acts):
            rows = df.loc[[(l, h, act) for l, h in heads]]
            ax.bar(np.arange(len(heads)) + (i - 2) * 0.16, rows.value, width=0.16, color=shades[i], label=act,
                   yerr=[rows.value - rows.ci_low, rows.ci_high - rows.value], error_kw={"lw": 0.5})
        ax.set_xticks(range(len(heads)), [head_label(l, h) for l, h in heads])
        ax.axhline(0, color="k", lw=0.6)
        ax.set(title=task, ylabel="patching metric")
        if task == tasks[0]:
            ax.legend(frameon=False, ncol=5, fontsize=6)

    return per_task(tasks, draw, height=2.3, max_cols=2)


@figure
def patch_path(data: dict, tasks: list[str]):
    def draw(ax, task):
        path = pd.DataFrame(data["patch_followup"][task]["path"])
        if path.empty:
            ax.set_title(f"{task}: no later heads")
            return
        top = largest_abs(path, 8)
        labels = [f"{r.sender}→{r.receiver}" + (f".{r.input}" if r.input else "") for r in top.itertuples()]
        ax.barh(range(len(top)), top.value, color=color(task))
        ax.set_yticks(range(len(top)), labels)
        ax.invert_yaxis()
        ax.axvline(0, color="k", lw=0.6)
        ax.set(title=task, xlabel="patching metric")

    return per_task(tasks, draw, height=2.4, max_cols=2)


@figure
def attribution_scatter(data: dict, tasks: list[str]):
    def draw(ax, task):
        merged = attribution_vs_exact(data["patch_heads"][task], data["patch_attribution"][task])
        for act, part in merged.groupby("activation", sort=False):
            ax.scatter(part.exact, part.attribution, s=6, alpha=0.8,
                       label=f"{act}: r = {part.exact.corr(part.attribution):.2f}, {len(part)} heads")
        lo, hi = merged[["exact", "attribution"]].min().min(), merged[["exact", "attribution"]].max().max()
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.6)
        ax.set(title=task, xlabel="exact patching", ylabel="attribution patching")
        ax.legend(frameon=False, fontsize=6.5, markerscale=2)

    return per_task(tasks, draw, height=2.4, max_cols=2)
