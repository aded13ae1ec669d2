"""Figures of the 'Direct logit attribution of heads' section."""

from __future__ import annotations

from opposites.figures.style import figure, heatmap, per_task


@figure
def head_dla(data: dict, tasks: list[str]):
    return per_task(tasks, lambda ax, task: heatmap(ax, data["head_dla"][task], title=task), height=2.6)
