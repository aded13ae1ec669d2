"""Figures of the 'Circuits' section."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from opposites.figures.style import figure, per_task, task_row
from opposites.findings import paper_circuit_row
from opposites.nodes import Edge, Node, head_nodes


def node_xy(node: Node, n_heads: int, top: float) -> tuple[float, float]:
    """Layout: y = layer (embed below, logits at `top`), x = head index (MLP at the right)."""
    if node.kind == "embed":
        return n_heads / 2, -1.0
    if node.kind == "logits":
        return n_heads / 2, top
    if node.kind == "mlp":
        return float(n_heads + 0.5), node.layer + 0.5
    return float(node.head), float(node.layer)


@figure
def circuit_graph(data: dict, tasks: list[str], max_edges: int = 60):
    def draw(ax, task):
        c = data["circuit"][task]
        nodes = [Node.parse(x) for x in c["nodes"]]
        n_heads = max([x.head for x in nodes if x.is_head] + [0]) + 1
        edges = sorted((Edge.from_record(e) for e in c["edges"]), key=lambda e: -abs(e.score))[:max_edges]
        shown = {e.src for e in edges} | {e.dst.component for e in edges}
        top = max([x.layer + (0.5 if x.kind == "mlp" else 0) for x in shown if x.layer is not None] + [0]) + 1
        xy = {x: node_xy(x, n_heads, top) for x in sorted(shown, key=str)}  # a fixed drawing order: the same bytes every run
        lim = max([abs(e.score) for e in edges] + [1e-9])
        for e in edges:
            (x0, y0), (x1, y1) = xy[e.src], xy[e.dst.component]
            ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(
                arrowstyle="-|>", lw=0.3 + 1.5 * abs(e.score) / lim, alpha=0.7,
                color="#b2182b" if e.score > 0 else "#2166ac", shrinkA=4, shrinkB=4))
        for x, (px, py) in xy.items():  # the box is the label's own, so the label never spills out
            label = str(x.head) if x.is_head else str(x).replace("MLP ", "M").replace("embed", "E").replace("logits", "L")
            box = "circle,pad=0.1" if len(label) == 1 else "round,pad=0.15"  # a circle round "M0" would touch it
            ax.text(px, py, label, ha="center", va="center", fontsize=6, zorder=4, bbox=dict(boxstyle=box, fc="white", lw=0.6))
        held = paper_circuit_row(c)["held_out"]["recovered"]
        ax.set(title=f"{task}: {c['n_edges']} edges\nheld out {held:.2f}", ylabel="layer")
        ax.set(xlim=(-0.8, n_heads + 1.3), ylim=(-1.6, top + 0.6))  # texts do not widen the limits
        layers = sorted({int(x.layer) for x in shown if x.layer is not None})
        ax.set_yticks([-1.0, *layers, top], ["E", *map(str, layers), "L"])  # embedding, layers (heads), logits
        ax.set_xticks([])
        ax.grid(False)

    return task_row(tasks, draw, height=2.6)


METHOD_STYLE = {"EAP-IG": ("#1b9e77", "o"), "EAP": ("#d95f02", "s"), "exact": ("0.3", "^"), "ACDC": ("#7570b3", "D"),
               "EAP-IG+ACDC": ("#e7298a", "v")}


@figure
def faithfulness(data: dict, tasks: list[str]):
    def draw(ax, task):
        df, c = data["faithfulness"][task], data["circuit"][task]
        for method, m in c["methods"].items():
            col, marker = METHOD_STYLE.get(method, ("k", "x"))
            part = df[(df.method == method) & (df.grid == "mib")]
            ax.plot(part.fraction * 100, part.recovered, marker=marker, ms=2.5, color=col,
                    label=f"{method} (CPR {m['cpr']:.2f}, CMD {m['cmd_uncorrected']:.2f})")
            ax.scatter([100 * m["n_edges"] / c["total_edges"]], [m["recovered"]], marker="*", s=60, color=col, zorder=3)
        ax.axhline(c["target"], color="k", lw=0.6, ls="--")
        ax.axhline(0, color="0.5", lw=0.4)
        ax.set_xscale("log")
        ax.set(xlabel="% of edges kept (top by |score|; ACDC: its threshold sweep; selection half)", ylabel="recovered", title=task)
        ax.legend(frameon=False, fontsize=6.5)

    return per_task(tasks, draw, height=2.4, max_cols=2)


@figure
def circuit_overlap(data: dict, tasks: list[str]):
    heads = {t: head_nodes(data["circuit"][t]) for t in tasks}
    grid = np.array([[len(heads[a] & heads[b]) / max(len(heads[a] | heads[b]), 1) for b in tasks] for a in tasks])
    fig, ax = plt.subplots(figsize=(3.6, 3.0))
    im = ax.imshow(grid, cmap="Purples", vmin=0, vmax=1)
    for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
            ax.text(j, i, f"{len(heads[a] & heads[b])}", ha="center", va="center", fontsize=7,
                    color="white" if grid[i, j] > 0.5 else "k")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45)
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_title("Circuit heads: Jaccard (shared count)")
    ax.grid(False)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig
