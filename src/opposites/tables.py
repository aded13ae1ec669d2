"""Table functions, one per table id in paper/outline.yaml: data[analysis][task] -> LaTeX tabular."""

from __future__ import annotations

from typing import Callable

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
