"""Table functions, one per table id in paper/outline.yaml: data[analysis][task] -> LaTeX tabular."""

from __future__ import annotations

from typing import Callable

from opposites.derived import end_attention_to_roles, head_classes, opposite_tasks
from opposites.overlap import compare
from opposites.prompts import load_spec
from opposites.texutil import fmt, tex_escape

TABLES: dict[str, Callable] = {}


def table(fn: Callable) -> Callable:
    TABLES[fn.__name__] = fn
    return fn


def tabular(columns: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"\\begin{{tabular}}{{{columns}}}", "\\toprule", " & ".join(header) + r" \\", "\\midrule"]
    lines += [" & ".join(r) + r" \\" for r in rows]
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}", ""])


@table
def datasets(data: dict, tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        spec, base = load_spec(task), data["baseline"][task]
        example = data["prompts"][task][0]
        rows.append([tex_escape(task), tex_escape(spec["templates"][0]),
                     tex_escape(example["clean"]) + r" $\to$ \texttt{" + tex_escape(example["answer"].strip()) + "}",
                     str(base["n_prompts"]),
                     f"{fmt(base['logit_diff_mean'])} $\\pm$ {fmt(base['logit_diff_std'])}",
                     fmt(base["accuracy"]), fmt(base["top1"]), fmt(base["corrupted_logit_diff_mean"])])
    return tabular(r"l p{4.2cm} p{4.2cm} r r r r r",
                   ["task", "first template", "example", "$n$", "logit diff", "acc.", "top-1", "corr. diff"], rows)


@table
def followup(data: dict, tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        sel = data["patch_followup"][task]["selection"]
        layers = ", ".join(f"{s['component']} {s['layer']} ({fmt(s['step'])})" for s in sel["layers"])
        heads = ", ".join(f"{h['label']} ({fmt(h['dla'])})" for h in sel["heads"])
        rows.append([tex_escape(task), layers, heads])
    return tabular(r"l p{5.5cm} p{5.5cm}", ["task", "layers (logit-lens step)", "heads (DLA)"], rows)


@table
def copy_top(data: dict, tasks: list[str]) -> str:
    """Top heads per score, with the QK check: how much END attends to the task's role tokens."""
    rows = []
    for task in tasks:
        df, att = data["copy_scores"][task], data["attention"][task]
        roles = load_spec(task)["roles"]
        for kind in ("copy", "negative_copy", "opposite"):
            part = df[df.score_type == kind].nlargest(3, "value")
            if part.empty:
                continue
            cells = [f"{r.layer}.{r.head}: {fmt(r.value)} ({fmt(end_attention_to_roles(att, r.layer, r.head, roles))})"
                     for r in part.itertuples()]
            rows.append([tex_escape(task), tex_escape(kind.replace("_", " ")), fmt(df[df.score_type == kind].value.mean()),
                         "; ".join(cells)])
    return tabular(r"l l r p{8cm}", ["task", "score", "mean", "top heads: score (END attention to roles)"], rows)


@table
def neurons(data: dict, tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        for r in data["neurons"][task].head(3).itertuples():
            rows.append([tex_escape(task), f"L{r.layer}N{r.neuron}", fmt(r.value), fmt(r.act_task), fmt(r.act_control),
                         r"\texttt{" + tex_escape(", ".join(t.strip() or repr(t) for t in r.top_tokens.split("|"))) + "}"])
    return tabular(r"l l r r r p{5cm}", ["task", "neuron", "effect", "act.", "control act.", "promotes"], rows)


@table
def circuit_shared(data: dict, tasks: list[str]) -> str:
    cmp = compare({t: data["circuit"][t] for t in tasks}, opposite_tasks(tasks), head_classes())
    rows = [[tex_escape(f"{p['a']} / {p['b']}"), str(p["heads"]), fmt(p["heads_jaccard"]), str(p["edges"]),
             fmt(p["edges_jaccard"])] for p in cmp["pairs"]]
    shared = ", ".join(f"{x}" + (f" ({cmp['shared_classes'][x]})" if cmp["shared_classes"][x] else "")
                       for x in cmp["shared_by_opposites"]) or "none"
    rows.append([r"\multicolumn{5}{l}{Shared by all opposite tasks (" + tex_escape(", ".join(cmp["opposite_tasks"]))
                 + "): " + tex_escape(shared) + "}"])
    return tabular("l r r r r", ["tasks", "shared heads", "Jaccard", "shared edges", "Jaccard"], rows)
