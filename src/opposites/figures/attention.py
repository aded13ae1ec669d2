"""Figures of the 'Attention and copying' section."""

from __future__ import annotations

import numpy as np

from opposites.derived import top_abs_heads
from opposites.figures.style import color, figure, per_task, task_columns, task_row, task_rows


@figure
def attention_patterns(data: dict, tasks: list[str]):
    """One row per task, one column per head (a row shares its tokens: labelled on its first panel)."""
    n_heads = 2

    def draw_row(row, task):
        ex = data["attention_example"][task]
        labels = [t.replace("<|endoftext|>", "BOS") for t in ex["tokens"]]
        for ax in row[len(ex["heads"][:n_heads]):]:
            ax.set_visible(False)
        for ax, head in zip(row, ex["heads"][:n_heads]):
            ax.imshow(np.array(head["pattern"]), cmap="Blues", vmin=0, vmax=1)
            ax.set_xticks(range(len(labels)), [])  # columns: the same tokens as the rows
            ax.set_yticks(range(len(labels)), labels if ax is row[0] else [], fontsize=6.5)
            ax.set_title(f"{task}: {head['label']} ({head['reason']})", fontsize=7.5)
            ax.grid(False)

    return task_rows(tasks, n_heads, draw_row, height=2.1, width=5.0)


@figure
def attention_roles(data: dict, tasks: list[str]):
    def draw(ax, task):
        att = data["attention"][task]
        att = att[att.dest_role == "END"]
        heads = top_abs_heads(data["head_dla"][task], 3)
        srcs = [s for s in att.src_role.unique() if s != "END"] + ["END"]
        width = 0.8 / len(heads)
        for i, (l, h) in enumerate(heads):
            part = att[(att.layer == l) & (att["head"] == h)].set_index("src_role").value
            ax.bar(np.arange(len(srcs)) + (i - (len(heads) - 1) / 2) * width, [part.get(s, 0.0) for s in srcs],
                   width=width, label=f"{l}.{h}")
        ax.set_xticks(range(len(srcs)), srcs, rotation=90)
        ax.set(title=f"{task}: attention from END", ylim=(0, 1))
        ax.legend(frameon=False, fontsize=7)

    return task_row(tasks, draw, height=2.1)


@figure
def head_logit(data: dict, tasks: list[str]):
    def draw(ax, task):
        df = data["head_logit"][task]
        (l, h), = top_abs_heads(data["head_dla"][task], 1)
        part = df[(df.layer == l) & (df["head"] == h)]
        ax.scatter(part.contribution, part.answer_logit, s=6, color=color(task))
        ax.set(title=f"{task}: head {l}.{h} (r = {part.contribution.corr(part.answer_logit):.2f})",
               xlabel="head's direct contribution to answer logit", ylabel="answer logit")

    return per_task(tasks, draw, height=2.3, max_cols=2)


@figure
def copy_scores(data: dict, tasks: list[str]):
    types = ["copy", "negative_copy", "opposite"]

    def draw_col(col, task):
        df = data["copy_scores"][task]
        for ax, kind in zip(col, types):
            part = df[df.score_type == kind]
            if part.empty:
                ax.set_visible(False)
                continue
            grid = part.pivot(index="layer", columns="head", values="value").to_numpy()
            im = ax.imshow(grid, cmap="Greens", vmin=0, vmax=1, aspect="auto", origin="lower")
            ax.set(title=f"{task}: {kind.replace('_', ' ')}", xlabel="head", ylabel="layer")
            ax.grid(False)
            ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)

    return task_columns(tasks, 3, draw_col, height=1.7)
