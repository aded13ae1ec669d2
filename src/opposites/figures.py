"""Plot functions, one per figure id in paper/outline.yaml. Each takes
data[analysis][task] (loaded result files) and the task list, and returns a matplotlib Figure.
Adding a figure = one outline entry + one function here decorated with @figure."""

from __future__ import annotations

from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from opposites.summary import largest_abs  # noqa: E402
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


# ---- activation patching -------------------------------------------------------------------------

def position_ticks(ax, df) -> None:
    """x ticks: each position's role (or its token) from a patching table."""
    labels = df.drop_duplicates("pos").sort_values("pos")
    ax.set_xticks(labels.pos, [r.role or repr(r.token.strip() or r.token)[1:-1][:8]
                               for r in labels.itertuples()], rotation=90)


def position_heatmap(ax, df, title: str) -> None:
    grid = df.pivot(index="layer", columns="pos", values="value").to_numpy()  # (layer, pos)
    lim = max(float(np.nanmax(np.abs(grid))), 1e-9)
    im = ax.imshow(grid, cmap="RdBu", norm=TwoSlopeNorm(0, -lim, lim), aspect="auto", origin="lower")
    position_ticks(ax, df)
    ax.set(title=title, ylabel="layer")
    ax.grid(False)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)


@figure
def patch_resid(data: dict, tasks: list[str]):
    fig, axes = panels(len(tasks), height=2.8, max_cols=2)
    for ax, task in zip(axes, tasks):
        df = data["patch_resid"][task]
        position_heatmap(ax, df, f"{task} (n={df.n_prompts.iloc[0]})")
    fig.tight_layout()
    return fig


@figure
def patch_attn_mlp(data: dict, tasks: list[str]):
    fig, axes = plt.subplots(len(tasks), 2, figsize=(6.0, 2.4 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        df = data["patch_layers"][task]
        for ax, component in zip(row, ("attn", "mlp")):
            position_heatmap(ax, df[df.component == component], f"{task}: {component} output")
    fig.tight_layout()
    return fig


@figure
def patch_heads(data: dict, tasks: list[str]):
    fig, axes = panels(len(tasks), height=2.6, max_cols=2)
    for ax, task in zip(axes, tasks):
        df = data["patch_heads"][task]
        heatmap(ax, df[df.activation == "z"], title=task)
    fig.tight_layout()
    return fig


def top_patched_heads(df, k: int = 3) -> list[tuple[int, int]]:
    z = df[df.activation == "z"]
    return [(int(r.layer), int(r.head)) for r in largest_abs(z, k).itertuples()]


@figure
def patch_qkv(data: dict, tasks: list[str]):
    fig, axes = panels(len(tasks), height=2.3, max_cols=2)
    acts = ["z", "q", "k", "v", "pattern"]
    shades = plt.cm.viridis(np.linspace(0.1, 0.9, len(acts)))
    for ax, task in zip(axes, tasks):
        df = data["patch_heads"][task].set_index(["layer", "head", "activation"]).value
        heads = top_patched_heads(data["patch_heads"][task])
        for i, act in enumerate(acts):
            ax.bar(np.arange(len(heads)) + (i - 2) * 0.16, [df[(l, h, act)] for l, h in heads], width=0.16,
                   color=shades[i], label=act)
        ax.set_xticks(range(len(heads)), [f"{l}.{h}" for l, h in heads])
        ax.axhline(0, color="k", lw=0.6)
        ax.set(title=task, ylabel="patching metric")
    axes[0].legend(frameon=False, ncol=5, fontsize=6)
    fig.tight_layout()
    return fig


@figure
def patch_path(data: dict, tasks: list[str]):
    fig, axes = panels(len(tasks), height=2.4, max_cols=2)
    for ax, task in zip(axes, tasks):
        path = pd.DataFrame(data["patch_followup"][task]["path"])
        if path.empty:
            ax.set_title(f"{task}: no later heads")
            continue
        top = largest_abs(path, 8)
        labels = [f"{r.sender}→{r.receiver}.{r.input}" for r in top.itertuples()]
        ax.barh(range(len(top)), top.value, color=color(task))
        ax.set_yticks(range(len(top)), labels)
        ax.invert_yaxis()
        ax.axvline(0, color="k", lw=0.6)
        ax.set(title=task, xlabel="patching metric")
    fig.tight_layout()
    return fig


@figure
def attribution_scatter(data: dict, tasks: list[str]):
    fig, axes = panels(len(tasks), height=2.4, max_cols=2)
    for ax, task in zip(axes, tasks):
        merged = attribution_vs_exact(data["patch_heads"][task], data["patch_attribution"][task])
        for act, part in merged.groupby("activation"):
            ax.scatter(part.exact, part.attribution, s=6, label=act, alpha=0.8)
        lo, hi = merged[["exact", "attribution"]].min().min(), merged[["exact", "attribution"]].max().max()
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.6)
        ax.set(title=f"{task} (r = {merged.exact.corr(merged.attribution):.2f})", xlabel="exact patching",
               ylabel="attribution patching")
    axes[0].legend(frameon=False, fontsize=6, markerscale=2)
    fig.tight_layout()
    return fig


def attribution_vs_exact(exact_df, attribution_df):
    return exact_df.merge(attribution_df, on=["layer", "head", "activation"], suffixes=("_e", "_a")).rename(
        columns={"value_e": "exact", "value_a": "attribution"})



# ---- attention and copying -----------------------------------------------------------------------

def top_dla_heads(dla, k: int = 3) -> list[tuple[int, int]]:
    return [(int(r.layer), int(r.head)) for r in largest_abs(dla, k).itertuples()]


@figure
def attention_roles(data: dict, tasks: list[str]):
    fig, axes = panels(len(tasks), height=2.3, max_cols=2)
    for ax, task in zip(axes, tasks):
        att = data["attention"][task]
        att = att[att.dest_role == "END"]
        heads = top_dla_heads(data["head_dla"][task])
        srcs = [s for s in att.src_role.unique() if s != "END"] + ["END"]
        width = 0.8 / len(heads)
        for i, (l, h) in enumerate(heads):
            part = att[(att.layer == l) & (att["head"] == h)].set_index("src_role").value
            ax.bar(np.arange(len(srcs)) + (i - (len(heads) - 1) / 2) * width, [part.get(s, 0.0) for s in srcs],
                   width=width, label=f"{l}.{h}")
        ax.set_xticks(range(len(srcs)), srcs, rotation=45)
        ax.set(title=f"{task}: attention from END", ylim=(0, 1))
        ax.legend(frameon=False, fontsize=6)
    fig.tight_layout()
    return fig


@figure
def attention_patterns(data: dict, tasks: list[str]):
    n_heads = 3
    fig, axes = plt.subplots(len(tasks), n_heads, figsize=(6.0, 2.2 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        ex = data["attention_example"][task]
        labels = [t.replace("<|endoftext|>", "BOS") for t in ex["tokens"]]
        for ax, head in zip(row, ex["heads"][:n_heads]):
            ax.imshow(np.array(head["pattern"]), cmap="Blues", vmin=0, vmax=1)
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5)
            ax.set_yticks(range(len(labels)), labels, fontsize=5)
            ax.set_title(f"{task}: {head['label']} ({head['reason']})", fontsize=7)
            ax.grid(False)
    fig.tight_layout()
    return fig


@figure
def head_logit(data: dict, tasks: list[str]):
    fig, axes = panels(len(tasks), height=2.3, max_cols=2)
    for ax, task in zip(axes, tasks):
        df = data["head_logit"][task]
        (l, h), = top_dla_heads(data["head_dla"][task], 1)
        part = df[(df.layer == l) & (df["head"] == h)]
        ax.scatter(part.contribution, part.answer_logit, s=6, color=color(task))
        ax.set(title=f"{task}: head {l}.{h} (r = {part.contribution.corr(part.answer_logit):.2f})",
               xlabel="head's direct contribution to answer logit", ylabel="answer logit")
    fig.tight_layout()
    return fig


@figure
def copy_scores(data: dict, tasks: list[str]):
    types = ["copy", "negative_copy", "opposite"]
    fig, axes = plt.subplots(len(tasks), 3, figsize=(6.0, 2.0 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        df = data["copy_scores"][task]
        for ax, kind in zip(row, types):
            part = df[df.score_type == kind]
            if part.empty:
                ax.set_visible(False)
                continue
            grid = part.pivot(index="layer", columns="head", values="value").to_numpy()
            im = ax.imshow(grid, cmap="Greens", vmin=0, vmax=1, aspect="auto", origin="lower")
            ax.set(title=f"{task}: {kind.replace('_', ' ')}", xlabel="head", ylabel="layer")
            ax.grid(False)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    fig.tight_layout()
    return fig


# ---- meaning ---------------------------------------------------------------------------------------

RELATION_COLORS = {"opposite": "#d95f02", "synonym": "#1b9e77", "random": "0.6"}


@figure
def similarity(data: dict, tasks: list[str]):
    fig, axes = plt.subplots(len(tasks), 1, figsize=(6.0, 2.4 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        df = data["similarity"][task]
        spaces = [("embed", -1, "W_E"), ("unembed", -1, "W_U")] + \
                 [("resid", l, f"L{l}") for l in sorted(df[df.space == "resid"].layer.unique())]
        rels = list(RELATION_COLORS)
        for j, rel in enumerate(rels):
            vals = [df[(df.space == s) & (df.layer == l) & (df.relation == rel)].cosine.to_numpy() for s, l, _ in spaces]
            pos = np.arange(len(spaces)) + (j - 1) * 0.27
            keep = [i for i, v in enumerate(vals) if len(v)]
            bp = ax.boxplot([vals[i] for i in keep], positions=pos[keep], widths=0.22, patch_artist=True,
                            showfliers=False, manage_ticks=False)
            for box in bp["boxes"]:
                box.set(facecolor=RELATION_COLORS[rel], alpha=0.8)
            ax.plot([], [], color=RELATION_COLORS[rel], lw=6, label=rel)
        ax.set_xticks(range(len(spaces)), [lab for *_, lab in spaces])
        ax.set(title=task, ylabel="cosine similarity")
        ax.legend(frameon=False, ncol=3, fontsize=6)
    fig.tight_layout()
    return fig


@figure
def neuron_acts(data: dict, tasks: list[str]):
    fig, axes = panels(len(tasks), height=2.3, max_cols=2)
    for ax, task in zip(axes, tasks):
        df = data["neurons"][task].head(5)
        x = np.arange(len(df))
        ax.bar(x - 0.2, df.act_task, width=0.4, color=color(task), label=task)
        ax.bar(x + 0.2, df.act_control, width=0.4, color="0.6", label="control")
        ax.set_xticks(x, [f"L{r.layer}N{r.neuron}" for r in df.itertuples()], rotation=30)
        ax.set(title=f"{task}: top neurons by direct effect", ylabel="activation at END")
        ax.legend(frameon=False, fontsize=6)
    fig.tight_layout()
    return fig


# ---- circuits --------------------------------------------------------------------------------------

def node_xy(node: str, n_heads: int) -> tuple[float, float]:
    """Layout: y = layer (embed below, logits on top), x = head index (MLP at the right)."""
    if node == "embed":
        return n_heads / 2, -1.0
    if node == "logits":
        return n_heads / 2, 1e9  # replaced by the top layer + 1
    if node.startswith("MLP"):
        return float(n_heads + 0.5), int(node.split()[1]) + 0.5
    layer, head = node.split(".")[:2]
    return float(head), float(layer)


@figure
def circuit_graph(data: dict, tasks: list[str], max_edges: int = 60):
    fig, axes = panels(len(tasks), height=3.0, max_cols=2)
    for ax, task in zip(axes, tasks):
        c = data["circuit"][task]
        n_heads = max([int(x.split(".")[1]) for x in c["nodes"] if x[0].isdigit()] + [0]) + 1
        edges = sorted(c["edges"], key=lambda e: -abs(e["score"]))[:max_edges]
        nodes = {e["src"] for e in edges} | {e["dst"].rsplit(".", 1)[0] if e["dst"].count(".") == 2 else e["dst"] for e in edges}
        top = max([node_xy(x, n_heads)[1] for x in nodes if x != "logits"] + [0]) + 1
        xy = {x: (node_xy(x, n_heads)[0], top if x == "logits" else node_xy(x, n_heads)[1]) for x in nodes}
        lim = max([abs(e["score"]) for e in edges] + [1e-9])
        for e in edges:
            dst = e["dst"].rsplit(".", 1)[0] if e["dst"].count(".") == 2 else e["dst"]
            (x0, y0), (x1, y1) = xy[e["src"]], xy[dst]
            ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(
                arrowstyle="-|>", lw=0.3 + 1.5 * abs(e["score"]) / lim, alpha=0.7,
                color="#b2182b" if e["score"] > 0 else "#2166ac", shrinkA=4, shrinkB=4))
        for x, (px, py) in xy.items():
            ax.scatter(px, py, s=90, color="white", edgecolor="k", zorder=3)
            ax.text(px, py, x.replace("MLP ", "M"), ha="center", va="center", fontsize=4.5, zorder=4)
        ax.set(title=f"{task}: {c['n_edges']} edges, recovers {c['recovered']:.2f}", ylabel="layer")
        ax.set_xticks([])
        ax.grid(False)
    fig.tight_layout()
    return fig


@figure
def faithfulness(data: dict, tasks: list[str]):
    fig, ax = plt.subplots()
    for task in tasks:
        df = data["faithfulness"][task]
        ax.plot(df.n_edges + 1, df.recovered, marker="o", ms=2.5, color=color(task), label=task)
        c = data["circuit"][task]
        ax.scatter([c["n_edges"] + 1], [c["recovered"]], marker="*", s=60, color=color(task), zorder=3)
    ax.axhline(data["circuit"][tasks[0]]["target"], color="k", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set(xlabel="edges kept + 1 (in attribution-score order)", ylabel="share of clean metric recovered",
           title="Faithfulness of the discovered circuits")
    ax.legend(frameon=False)
    return fig


@figure
def circuit_overlap(data: dict, tasks: list[str]):
    from opposites.overlap import head_nodes

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
