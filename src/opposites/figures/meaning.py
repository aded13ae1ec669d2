"""Figures of the 'Meaning' section."""

from __future__ import annotations

import numpy as np

from opposites.figures.style import color, figure, panels, per_task, task_rows

RELATION_COLORS = {"opposite": "#d95f02", "synonym": "#1b9e77", "random": "0.6"}


@figure
def similarity(data: dict, tasks: list[str]):
    def draw_row(row, task):
        ax = row[0]
        df = data["similarity"][task]
        df = df[df.in_distribution] if "in_distribution" in df else df  # pairs of words the model knows
        spaces = [("embed", -1, "W_E"), ("unembed", -1, "W_U")] + \
                 [("resid", l, f"L{l}") for l in sorted(df[df.space == "resid"].layer.unique())]
        rels = list(RELATION_COLORS)
        for j, rel in enumerate(rels):
            vals = [df[(df.space == s) & (df.layer == l) & (df.relation == rel)].cosine.to_numpy() for s, l, _ in spaces]
            pos = np.arange(len(spaces)) + (j - 1) * 0.27
            keep = [i for i, v in enumerate(vals) if len(v)]
            if not keep:  # no pair of this relation whose words the model knows: not measurable
                ax.plot([], [], color=RELATION_COLORS[rel], lw=6, label=f"{rel}: not measurable")
                continue
            bp = ax.boxplot([vals[i] for i in keep], positions=pos[keep], widths=0.22, patch_artist=True,
                            showfliers=False, manage_ticks=False)
            for box in bp["boxes"]:
                box.set(facecolor=RELATION_COLORS[rel], alpha=0.8)
            ax.plot([], [], color=RELATION_COLORS[rel], lw=6, label=rel)
        ax.set_xticks(range(len(spaces)), [lab for *_, lab in spaces])
        ax.set(title=task, ylabel="cosine similarity")
        ax.legend(frameon=False, ncol=3, fontsize=6)

    return task_rows(tasks, 1, draw_row, height=2.4)


@figure
def neuron_acts(data: dict, tasks: list[str]):
    def draw(ax, task):
        df = data["neurons"][task].head(5)
        x = np.arange(len(df))
        for shift, col, c, label in ((-0.2, "act_task", color(task), task), (0.2, "act_control", "0.6", "control")):
            err = [df[col] - df[f"{col}_ci_low"], df[f"{col}_ci_high"] - df[col]]
            ax.bar(x + shift, df[col], width=0.4, color=c, label=label, yerr=err, capsize=2, error_kw={"lw": 0.6})
        ax.set_xticks(x, [f"L{r.layer}\nN{r.neuron}" for r in df.itertuples()])  # two lines: GPT-2's indices are long
        ax.set(title=f"{task}: top neurons by direct effect", ylabel="activation at END")
        ax.legend(frameon=False, fontsize=6)

    return per_task(tasks, draw, height=2.3, max_cols=2)


@figure
def relation_probe(data: dict, tasks: list[str]):
    """Left: held-out accuracy of the relation-type probe by layer, true and shuffled labels, with
    chance; right: the heads whose END output the relation types separate most."""
    task = tasks[0]
    res = data["relation"][task]
    fig, (left, right) = panels(2, width=6.0, height=2.3, max_cols=2)
    x = np.array([r["layer"] for r in res["layers"]])
    for key, c, label in (("accuracy", color(task), "labels"), ("shuffled", "0.6", "shuffled labels")):
        v = np.array([r[key]["value"] for r in res["layers"]])
        lo, hi = (np.array([r[key]["ci95"][i] for r in res["layers"]]) for i in (0, 1))
        left.errorbar(x, v, yerr=[v - lo, hi - v], marker="o", ms=3, lw=1, capsize=2, color=c, label=label)
    left.axhline(res["chance"], color="k", lw=0.6, ls=":", label="chance")
    left.set(xlabel="residual before layer (last: after the final layer)", ylabel="held-out accuracy", ylim=(-0.02, 1.05),
             title=f"{' / '.join(res['classes'])} (n test = {res['n_test']})")
    left.legend(frameon=False, fontsize=6)
    top = res["heads"][:8]
    right.barh(range(len(top))[::-1], [h["separation"] for h in top], color=color(task))
    right.set_yticks(range(len(top))[::-1], [f"{h['layer']}.{h['head']}" for h in top])
    right.set(xlabel="variance explained by relation type", title="heads' END output")
    fig.tight_layout()
    return fig
