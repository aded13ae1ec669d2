"""Figures of the 'Logit lens' section."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from opposites.derived import accumulated_lens
from opposites.figures.style import color, figure, per_task


@figure
def logit_lens(data: dict, tasks: list[str]):
    fig, ax = plt.subplots(figsize=(6.0, 2.0))
    for task in tasks:
        df = accumulated_lens(data["logit_lens"][task])
        ax.plot(df.x, df.value, marker="o", ms=2.5, label=task, color=color(task))
        ax.fill_between(df.x, df.ci_low, df.ci_high, color=color(task), alpha=0.2, lw=0)
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
    def draw(ax, task):
        df = data["logit_lens"][task]
        df = df[(df.kind == "decomposed") & df.label.isin(["attn", "mlp"])]
        for offset, (label, shade) in enumerate((("attn", color(task)), ("mlp", "0.55"))):
            part = df[df.label == label].sort_values("layer")
            ax.bar(part.layer + (offset - 0.5) * 0.4, part.value, width=0.4, color=shade, label=label,
                   yerr=[part.value - part.ci_low, part.ci_high - part.value], error_kw={"lw": 0.5})
        ax.axhline(0, color="k", lw=0.6)
        ax.set(title=task, xlabel="layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers, thinned where they would overlap
        ax.legend(frameon=False)
        if task == tasks[0]:
            ax.set_ylabel("direct logit difference")

    return per_task(tasks, draw, max_cols=4)
