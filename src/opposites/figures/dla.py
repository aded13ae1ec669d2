"""Figures of the 'Direct logit attribution of heads' section."""

from __future__ import annotations

from opposites.derived import ANSWER_OVER_REPEAT, classify_components
from opposites.figures.style import figure, heatmap, mark_significant, per_task, task_row


@figure
def head_dla(data: dict, tasks: list[str]):
    def draw(ax, task):
        heatmap(ax, data["head_dla"][task], title=task)
        mark_significant(ax, data["head_dla"][task], "layer", "head")

    return task_row(tasks, draw)


CLASS_COLORS = {"copy-like": "#1b9e77", "copy-suppressing": "#7570b3", ANSWER_OVER_REPEAT: "#d95f02", "pair": "#e7298a",
                "none": "0.7"}


@figure
def answer_vs_wrong(data: dict, tasks: list[str]):
    def draw(ax, task):
        df = classify_components(data["head_logits"][task])
        for cls, part in df.groupby("cls"):
            for is_head, marker in ((True, "o"), (False, "s")):
                sub = part[(part["head"] >= 0) == is_head]
                ax.errorbar(sub.wrong, sub.answer, xerr=[sub.wrong - sub.ci_low_wrong, sub.ci_high_wrong - sub.wrong],
                            yerr=[sub.answer - sub.ci_low_answer, sub.ci_high_answer - sub.answer], fmt=marker, ms=3,
                            lw=0.4, color=CLASS_COLORS[cls], label=cls if is_head else None)
        for r in df.assign(size=df.answer.abs() + df.wrong.abs()).nlargest(4, "size").itertuples():
            ax.annotate(r.component, (r.wrong, r.answer), fontsize=6.5, xytext=(2, 2), textcoords="offset points")
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
        ax.set(title=task, xlabel="contribution to repeated ADJ1 logit", ylabel="contribution to answer logit")
        ax.legend(frameon=False, fontsize=6.5)

    return per_task(tasks, draw, height=2.6)
