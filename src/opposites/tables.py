"""Table functions, one per table id in paper/outline.yaml: data[analysis][task] -> LaTeX tabular."""

from __future__ import annotations

from typing import Callable

from opposites.derived import classify_components, end_attention_to_roles, ioi_head_classes, opposite_tasks
from opposites.derived import head_routes as derived_head_routes  # the table of the same name is below
from opposites.overlap import compare, gpt2_classes
from opposites.prompts import load_spec
from opposites.texutil import fmt, fmt_ci, tex_escape

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
        own = fmt_ci(base["corrupted_accuracy"], base["corrupted_accuracy_ci95"]) if base["corrupted_has_own_answer"] else "--"
        rows.append([tex_escape(task),
                     tex_escape(example["clean"]) + r" $\to$ \texttt{" + tex_escape(example["answer"].strip()) + "}",
                     tex_escape(spec["corruption"]) + "; contrast: " + tex_escape(spec["contrast"]),
                     str(base["n_prompts"]), fmt_ci(base["logit_diff_mean"], base["logit_diff_mean_ci95"]),
                     " / ".join(fmt(base[k]) for k in ("top1", "top1_wrong", "top1_other")), own])
    return tabular(r"l p{3.2cm} p{3.8cm} r p{2.0cm} p{1.6cm} p{1.6cm}",
                   ["task", "example", "corruption; contrast", "$n$", "logit diff [95\\% CI]",
                    "top-1: answer / wrong / other", "corrupted: own answer wins"], rows)


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
        roles = [load_spec(task)["copy_role"]]
        for kind in ("copy", "negative_copy", "opposite"):
            part = df[df.score_type == kind].nlargest(3, "value")
            if part.empty:
                continue
            cells = [f"{r.layer}.{r.head}: {fmt(r.value)} ({fmt(end_attention_to_roles(att, r.layer, r.head, roles))})"
                     for r in part.itertuples()]
            rows.append([tex_escape(task), tex_escape(kind.replace("_", " ")), fmt(df[df.score_type == kind].value.mean()),
                         "; ".join(cells)])
    return tabular(r"l l r p{8cm}", ["task", "score", "mean", "top heads: score (END attention to the copied role)"], rows)


@table
def neurons(data: dict, tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        for r in data["neurons"][task].head(3).itertuples():
            rows.append([tex_escape(task), f"L{r.layer}N{r.neuron}", fmt_ci(r.value, [r.ci_low, r.ci_high]),
                         fmt_ci(r.act_task, [r.act_task_ci_low, r.act_task_ci_high]),
                         fmt_ci(r.act_control, [r.act_control_ci_low, r.act_control_ci_high]),
                         r"\texttt{" + tex_escape(", ".join(t.strip() or repr(t) for t in r.top_tokens.split("|"))) + "}"])
    return tabular(r"l l r r r p{5cm}", ["task", "neuron", "effect", "act.", "control act.", "promotes"], rows)


@table
def head_routes(data: dict, tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        copies = data["copy_scores"][task].set_index(["score_type", "layer", "head"]).value
        for r in derived_head_routes(data["patch_heads"][task]).itertuples():
            rows.append([tex_escape(task), r.head, fmt(r.z), fmt_ci(r.v, r.v_ci), fmt_ci(r.pattern, r.pattern_ci),
                         fmt(copies.get(("copy", r.layer, r.index))), r.route])
    return tabular("l l r r r r l", ["task", "head", "output (z)", "values (v)", "pattern", "OV copy", "route"], rows)


@table
def circuit_shared(data: dict, tasks: list[str]) -> str:
    circuits = {t: data["circuit"][t] for t in tasks}
    cmp = compare(circuits, opposite_tasks(tasks), gpt2_classes(circuits, ioi_head_classes()))
    rows = [[tex_escape(f"{p['a']} / {p['b']}"), str(p["heads"]), fmt_ci(p["heads_jaccard"], p["heads_jaccard_ci95"]),
             str(p["edges"]), fmt_ci(p["edges_jaccard"], p["edges_jaccard_ci95"])] for p in cmp["pairs"]]
    shared = ", ".join(f"{x}" + (f" ({cmp['shared_classes'][x]})" if cmp["shared_classes"][x] else "")
                       for x in cmp["shared_by_opposites"]) or "none"
    rows.append([r"\multicolumn{5}{l}{Shared by all opposite tasks (" + tex_escape(", ".join(cmp["opposite_tasks"]))
                 + "): " + tex_escape(shared) + "}"])
    return tabular("l r r r r", ["tasks", "shared heads", "Jaccard", "shared edges", "Jaccard"], rows)


@table
def circuit_methods(data: dict, tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        c = data["circuit"][task]
        for method, m in c["methods"].items():
            stab = c["stability"] if method == c["method"] else None
            rows.append([tex_escape(task), tex_escape(method), fmt(m["cpr"]), fmt(m["cmd"]),
                         f"{m['grid_size']} $\\to$ {m['n_edges']}", fmt(m["recovered"]), fmt(m["completeness_lost"]),
                         str(m["exact_evaluations"]), fmt(m.get("spearman_vs_exact")),
                         fmt(stab["mean_jaccard"]) if stab and stab["mean_jaccard"] is not None else "--"])
    return tabular("l l r r r r r r r r", ["task", "method", "CPR", "CMD", "edges", "recovered", "lost w/o",
                                           "exact evals", r"$\rho$ exact", "stability"], rows)


@table
def component_classes(data: dict, tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        df = classify_components(data["head_logits"][task])
        df = df.assign(size=df.answer.abs() + df.wrong.abs())
        for cls in ("opposite-mapping", "copy-like", "copy-suppressing"):
            part = df[df.cls == cls].nlargest(5, "size")
            cells = ", ".join(f"{r.component} ({fmt(r.answer)}, {fmt(r.wrong)})" for r in part.itertuples()) or "none"
            rows.append([tex_escape(task), cls, str(int((df.cls == cls).sum())), tex_escape(cells)])
        c = data["control"][task]
        rows.append([tex_escape(task), "control", str(c["n"]),
                     f"answer vs unrelated: clean {fmt_ci(c['answer_rel_clean'], c['answer_rel_clean_ci95'])}, "
                     f"ADJ1 unrelated {fmt_ci(c['answer_rel_control'], c['answer_rel_control_ci95'])}, "
                     f"drop {fmt_ci(c['answer_rel_drop'], c['answer_rel_drop_ci95'])}"])
    return tabular(r"l l r p{9.5cm}", ["task", "class", "count", "components (answer, repeated) / control"], rows)


@table
def mechanism(data: dict, tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        base = data["baseline"][task]
        tests = [("movers", data["movers"][task])]
        if task in data.get("mapping", {}) and data["mapping"][task]["ablation"]:
            tests.append(("mappers", data["mapping"][task]))
        for kind, result in tests:
            named = result["movers"] if kind == "movers" else result["mappers"]
            what = "; ".join(f"{m['head']} moves {m['moves']} ({fmt(m['attention'])})" if kind == "movers"
                             else f"{m['component']} (answer {fmt(m['answer'])})" for m in named)
            a = result["ablation"]
            rows.append([tex_escape(task), kind, tex_escape(what), fmt(base["accuracy"]),
                         fmt_ci(a["named"]["accuracy"], a["named"]["accuracy_ci95"]),
                         fmt_ci(a["random_others"]["accuracy_mean"], a["random_others"]["accuracy_mean_ci95"])
                         + f" (min {fmt(a['random_others']['accuracy_min'])})"])
    return tabular(r"l l p{4.6cm} r p{2.4cm} p{2.4cm}",
                   ["task", "set", "components", "acc.", "acc. named ablated", "acc. random ablated"], rows)
