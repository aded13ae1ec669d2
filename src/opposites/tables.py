"""Table functions, one per table id in paper/outline.yaml: data[analysis][task] -> LaTeX tabular."""

from __future__ import annotations

import re
from typing import Callable

import pandas as pd

from opposites.derived import (CLASSES, COMPONENT_NAME, classify_components, end_attention_to_roles, ioi_head_classes, largest_abs,
                               matched_control, opposite_tasks, role_preferences)
from opposites.derived import head_routes as derived_head_routes  # the table of the same name is below
from opposites.overlap import compare, gpt2_classes, graph_of
from opposites.prompts import CLUSTER_UNIT, load_spec
from opposites.texutil import component_runs, fmt, fmt_ci, tex_escape

TABLES: dict[str, Callable] = {}


def table(fn: Callable) -> Callable:
    TABLES[fn.__name__] = fn
    return fn


def tabular(columns: str, header: list[str], rows: list[list[str]]) -> str:
    """A booktabs tabular; paragraph (p{...}) columns are set ragged right and unhyphenated, so a
    narrow cell never stretches its words apart nor splits one across lines."""
    columns = re.sub(r"(?<![>}])p\{", r">{\\raggedright\\arraybackslash\\hyphenpenalty=10000}p{", columns)
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
                     f"{base['n_prompts']} ({base['n_words']} {CLUSTER_UNIT[spec['family']]})", fmt_ci(base["logit_diff_mean"], base["logit_diff_mean_ci95"]),
                     fmt_ci(base["accuracy"], base["accuracy_ci95"]),
                     *(fmt_ci(base[k], base.get(f"{k}_ci95")) for k in ("top1", "top1_wrong", "top1_other")), own])
    return tabular(r"l p{2.6cm} p{3.1cm} p{1.6cm} p{1.9cm} p{1.8cm} p{1.8cm} p{1.8cm} p{1.8cm} p{1.8cm}",
                   ["task", "example", "corruption; contrast", "$n$ (distinct words)", "logit diff [95\\% CI]",
                    "answer beats wrong [95\\% CI]", "top-1: answer", "top-1: wrong", "top-1: other",
                    "corrupted: own answer wins"], rows)


@table
def followup(data: dict, tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        sel = data["patch_followup"][task]["selection"]
        name = lambda s: f"{COMPONENT_NAME[s['component']]} {s['layer']}"  # noqa: E731
        layers = ", ".join(f"{name(s)} ({fmt_ci(s['direct'], s['direct_ci95'])}; {fmt(s['step'])})" for s in sel["layers"])
        by_step = ", ".join(name(s) for s in sel.get("layers_by_step", []))
        heads = ", ".join(f"{h['label']}~({fmt(h['dla'])})" for h in sel["heads"])
        rows.append([tex_escape(task), layers, by_step, heads])
    return tabular(r"l p{5.0cm} p{2.4cm} p{4.0cm}", ["task", "layers (direct contribution; logit-lens step)",
                                                     "largest steps", "heads (DLA)"], rows)


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
def subject_heads(data: dict, tasks: list[str]) -> str:
    """Heads reading the answer's source (ADJ1; IOI: IO) vs the most recent subject (NAME2; IOI: S2),
    and residual patching at those two positions."""
    rows = []
    for task in tasks:
        spec = load_spec(task)
        if "recent_subject" not in spec:
            continue
        source, recent = spec["copy_role"], spec["recent_subject"]
        att, resid = data["attention"][task], data["patch_resid"][task]
        cells = []
        for a, b in ((source, recent), (recent, source)):
            heads = role_preferences(att, a, b)
            cells.append("; ".join(f"{r.layer}.{r.head}: {fmt_ci(r.value, [r.ci_low, r.ci_high])}"
                                   for r in heads.head(3).itertuples())
                         + (f" (+{len(heads) - 3})" if len(heads) > 3 else "") or "none")
        for role in (source, recent):  # after layer 0, where patching the changed word undoes the corruption
            part = resid[(resid.role == role) & (resid.layer > 0)]
            r = largest_abs(part, 1).iloc[0] if len(part) else None
            cells.append("--" if r is None or not r.normaliser_ok else f"{fmt_ci(r.value, [r.ci_low, r.ci_high])} (L{int(r.layer)})")
        rows.append([tex_escape(task), tex_escape(source), tex_escape(recent), *cells])
    return tabular(r"l l l p{3.0cm} p{3.0cm} p{2.5cm} p{2.5cm}",
                   ["task", "source", "subject", "heads: END $\\to$ source", "heads: END $\\to$ subject",
                    "patch at source", "patch at subject"], rows)


@table
def recency(data: dict, tasks: list[str]) -> str:
    """Dissociating IOI prompts: which name the model prefers, and the heads following each rule."""
    rows = []
    for task in tasks:
        res, att = data["recency"][task], data["attention"][task]
        pref = "; ".join(f"{n} {fmt_ci(res['preferred'][n], res['preferred_ci95'][n])}" for n in ("IO", "S", "S3"))
        cells = []
        for rule, name in (("IOI", "IO"), ("most recent subject", "S3")):
            heads = sorted((h for h in res["heads"] if h["rule"] == rule), key=lambda h: -h[name]["value"])
            cells.append("; ".join(f"{h['layer']}.{h['head']}: {fmt_ci(h[name]['value'], h[name]['ci95'])} "
                                   f"({fmt(end_attention_to_roles(att, h['layer'], h['head'], ['IO']))})"
                                   for h in heads[:3]) + (f" (+{len(heads) - 3})" if len(heads) > 3 else "") or "none")
        rows.append([tex_escape(task), str(res["n"]), pref, fmt_ci(res["io_minus_s3"]["value"], res["io_minus_s3"]["ci95"]),
                     *cells])
    return tabular(r"l r p{2.6cm} p{1.9cm} p{3.6cm} p{3.6cm}",
                   ["task", "$n$", "highest logit (share)", "logit IO $-$ S3",
                    "IOI-rule heads: END $\\to$ IO (on IOI prompts)", "recent-subject heads: END $\\to$ S3 (IOI: $\\to$ IO)"],
                   rows)


@table
def congruence(data: dict, tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        res = data["congruence"][task]
        cells = []
        for part in ("congruent", "incongruent"):
            r = res[part]
            cells.append(f"{fmt_ci(r['logit_diff']['value'], r['logit_diff']['ci95'])}; "
                         f"{fmt_ci(r['accuracy']['value'], r['accuracy']['ci95'])}")
        patch = pd.DataFrame(res["patch"])
        # the share of the pull restored means something only for a pull whose interval lies above 0:
        # one that includes 0, or has the wrong sign (world knowledge favouring the opposite), is not measurable
        measurable = res["pull"]["ci95"][0] > 0
        for component in ("resid", "mlp"):
            part = patch[patch.component == component]
            top = largest_abs(part, 1).iloc[0] if len(part) else None
            cells.append("--" if top is None else "not measurable" if not (measurable and top.normaliser_ok) else
                         f"{tex_escape(top.role)} L{int(top.layer)}: {fmt_ci(top.value, [top.ci_low, top.ci_high])}")
        rows.append([tex_escape(task), str(res["n"]), cells[0], cells[1], fmt_ci(res["pull"]["value"], res["pull"]["ci95"]),
                     cells[2], cells[3]])
    return tabular(r"l r p{2.3cm} p{2.3cm} p{2.0cm} p{2.4cm} p{2.4cm}",
                   ["task", "$n$", "congruent: logit diff; accuracy", "incongruent: logit diff; accuracy",
                    "pull (difference)", "largest residual patch", "largest MLP patch"], rows)


@table
def subject_space(data: dict, tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        res = data["subjects"][task]
        sim = {(x["space"], x["layer"]): x for x in res["similarity"]}
        emb, last = sim[("embed", -1)], sim[("resid", max(x["layer"] for x in res["similarity"]))]
        best = res["most_aligned"]
        above = sum(h["percentile"] >= 0.95 for h in res["heads"])
        rows.append([tex_escape(task), tex_escape(", ".join(res["subject_roles"])),
                     f"{fmt_ci(emb['within'], emb['within_ci95'])} / {fmt_ci(emb['across'], emb['across_ci95'])}",
                     f"{fmt_ci(last['within'], last['within_ci95'])} / {fmt_ci(last['across'], last['across_ci95'])}",
                     f"{best['layer']}.{best['head']}: {fmt(best['share'])} ({fmt(best['random_mean'])}); {fmt(best['end_attention'])}",
                     f"{above} of {len(res['heads'])}",
                     fmt_ci(res["spearman_share_attention"], res["spearman_share_attention_ci95"]),
                     ", ".join(f"L{n['layer']}N{n['neuron']}" for n in res["neurons"][:3]) or "--"])
    return tabular(r"l p{1.2cm} p{2.2cm} p{2.2cm} p{2.1cm} r p{1.5cm} p{1.5cm}",
                   ["task", "subjects", "$W_E$: within / across", "last layer: within / across",
                    "most aligned head: share (random); END attention", "heads $\\geq$ 95th pct",
                    r"$\rho$", "neurons into the space"], rows)


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
    graphs = {t: graph_of(data["edges"][t]) for t in tasks} if "edges" in data else None
    cmp = compare(circuits, opposite_tasks(tasks), gpt2_classes(circuits, ioi_head_classes()), graphs)

    def null(p, what):
        if f"{what}_jaccard_null" not in p:
            return "--", "--"
        lo, mid, hi = p[f"{what}_jaccard_null"]
        return f"{fmt(mid)} [{fmt(lo)}, {fmt(hi)}]", fmt(p[f"{what}_jaccard_percentile"], 0)

    rows = [[tex_escape(f"{p['a']} / {p['b']}"), str(p["heads"]), fmt_ci(p["heads_jaccard"], p["heads_jaccard_ci95"]),
             *null(p, "heads"), null(p, "heads_uniform")[1], str(p["edges"]), fmt_ci(p["edges_jaccard"], p["edges_jaccard_ci95"]),
             *null(p, "edges")] for p in cmp["pairs"]]
    shared = ", ".join(f"{x}" + (f" ({cmp['shared_classes'][x]})" if cmp["shared_classes"][x] else "")
                       for x in cmp["shared_by_opposites"]) or "none"
    rows.append([r"\multicolumn{10}{l}{Shared by all opposite tasks (" + tex_escape(", ".join(cmp["opposite_tasks"]))
                 + "): " + tex_escape(shared) + "}"])
    return tabular("l r r r r r r r r r", ["tasks", "heads", "Jaccard", "null", "pct.", "unif. pct.", "edges", "Jaccard",
                                           "null", "pct."], rows)


def lost_without(held: dict) -> str:
    """The share lost with the circuit's edges cut, and (after the slash) with only its edges out of
    the embedding cut, where measured."""
    lost = fmt_ci(held["completeness_lost"], held["completeness_lost_ci95"])
    return lost + (f" / {fmt(held['completeness_lost_embed'])}" if "completeness_lost_embed" in held else "")


@table
def circuit_methods(data: dict, tasks: list[str]) -> str:
    """Each method's own selection (on the selection half): recovery there and held out, and the
    held-out completeness and CPR/CMD."""
    rows = []
    for task in tasks:
        c = data["circuit"][task]
        for method, m in c["methods"].items():
            held = m["held_out"]
            swept = "sweep" in m  # ACDC: a few sizes from its threshold sweep, so its areas are not comparable
            rows.append([tex_escape(task), tex_escape(method), "--" if swept else fmt_ci(held["cpr"], held["cpr_ci95"]),
                         "--" if swept else fmt_ci(held["cmd"], held["cmd_ci95"]), f"{m['grid_size']} $\\to$ {m['n_edges']}",
                         fmt_ci(m["recovered"], m["recovered_ci95"]), fmt_ci(held["recovered"], held["recovered_ci95"]),
                         lost_without(held),
                         str(m["exact_evaluations"]),
                         fmt_ci(m["spearman_vs_exact"], m["spearman_vs_exact_ci95"]) if "spearman_vs_exact" in m else "--"])
    return tabular("l l r r r r r r r r", ["task", "method", "CPR", "CMD", "edges", "recovered (sel.)",
                                           "recovered (held out)", "lost w/o / emb.", "new evals", r"$\rho$ exact"], rows)


@table
def circuit_compare(data: dict, tasks: list[str]) -> str:
    """The methods at one size per task, on the held-out half; the paper's circuit marked."""
    rows = []
    for task in tasks:
        c = data["circuit"][task]
        for r in c["at_size"]:
            held, paper = r["held_out"], (r["method"], r["how"]) == (c["method"], c["how"])
            # the how in one word (a ranking's "top", EAP-IG's "refined"); ACDC's and the hybrid's are their names
            how = f" ({r['how']})" if r["how"] != r["method"] and " " not in r["how"] else ""
            rows.append([tex_escape(task), tex_escape(r["method"] + how) + (" $\\star$" if paper else ""),
                         str(r["n_edges"]), fmt(r["recovered"]), fmt_ci(held["recovered"], held["recovered_ci95"]),
                         lost_without(held),
                         fmt_ci(r["cpr"], r["cpr_ci95"]) if "cpr" in r else "--",
                         fmt_ci(r["cmd"], r["cmd_ci95"]) if "cmd" in r else "--", fmt(r["seconds"], 1)])
        if "ACDC" not in c["methods"]:
            rows.append([tex_escape(task), r"\multicolumn{8}{l}{ACDC not run: " + f"{c['total_edges']:,}"
                         + " edges, above the " + f"{c['acdc_max_edges']:,}" + " it runs on (one exact forward per edge and threshold)}"])
    return tabular(r"l p{3.0cm} r r r r r r r", ["task", "method (circuit)", "edges", "rec. (sel.)", "recovered (held out)",
                                                "lost w/o / emb.", "CPR", "CMD", "CPU s"], rows)


@table
def component_classes(data: dict, tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        df = classify_components(data["head_logits"][task])
        df = df.assign(size=df.answer.abs() + df.wrong.abs())
        c = data["control"][task]
        if c.get("measurable") is False:  # the reference is unknown words: only the paired difference is measured
            check, up = c["unrelated_check"], df[df.ci_low_difference > 0]
            cells = ", ".join(f"{tex_escape(r.component)} ({fmt_ci(r.difference, [r.ci_low_difference, r.ci_high_difference])})"
                              for r in up.nlargest(5, "difference").itertuples()) or "none"
            rows.append([tex_escape(task), "answer $-$ repeated above 0", str(len(up)), cells])
            rows.append([tex_escape(task), "classes, pair direction, control", "--",
                         f"not measurable: {len(check['out'])} of {len(check['words'])} unrelated adjectives out of "
                         f"distribution (unembedding norm outside [{fmt(check['fences'][0])}, {fmt(check['fences'][1])}])"])
            continue
        for cls in CLASSES:
            part = df[df.cls == cls].nlargest(5, "size")
            cells = ", ".join(f"{tex_escape(r.component)} ({fmt(r.answer)}, {fmt(r.wrong)}; "
                              f"{fmt_ci(r.difference, [r.ci_low_difference, r.ci_high_difference])})"
                              for r in part.itertuples()) or "none"
            rows.append([tex_escape(task), cls, str(int((df.cls == cls).sum())), cells])  # fmt writes LaTeX: not escaped
        if "pair_direction" in c:
            p = c["pair_direction"]
            rows.append([tex_escape(task), "pair direction", str(p["n_components"]),
                         f"$r$(answer, repeated) across components {fmt_ci(p['r'], p['r_ci95'])}"])
        rows.append([tex_escape(task), "control", str(c["n"]),
                     f"answer vs unrelated: clean {fmt_ci(c['answer_rel_clean'], c['answer_rel_clean_ci95'])}, "
                     f"ADJ1 unrelated {fmt_ci(c['answer_rel_control'], c['answer_rel_control_ci95'])}, "
                     f"drop {fmt_ci(c['answer_rel_drop'], c['answer_rel_drop_ci95'])}"])
    return tabular(r"l l r p{9.5cm}", ["task", "class", "count", "components (answer, repeated; answer $-$ repeated; not measurable: answer $-$ repeated) / control"], rows)


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
            named_, others = a["named"], a["random_others"]
            ld = lambda r, m="": r"$\Delta$LD " + fmt_ci(r[f"logit_diff_change{m}"], r[f"logit_diff_change{m}_ci95"])  # noqa: E731
            rs = named_["resample"]
            control = ("no matched control exists" + (" (one possible set)" if others else "")) if not matched_control(a) else (
                fmt_ci(others["accuracy_mean"], others["accuracy_mean_ci95"]) + f" (min {fmt(others['accuracy_min'])}); "
                + ld(others, "_mean") + "; resample " + ld(others["resample"], "_mean"))
            rows.append([tex_escape(task), kind, tex_escape(what), fmt(base["accuracy"]),
                         fmt_ci(named_["accuracy"], named_["accuracy_ci95"]) + "; " + ld(named_),
                         fmt_ci(rs["accuracy"], rs["accuracy_ci95"]) + "; " + ld(rs), control])
    return tabular(r"l l p{3.2cm} r p{2.5cm} p{2.5cm} p{3.0cm}",
                   ["task", "set", "components", "acc.", "named, mean-ablated: acc.; $\\Delta$LD",
                    "named, resample-ablated: acc.; $\\Delta$LD", "matched random: acc.; $\\Delta$LD"], rows)


@table
def interchange(data: dict, tasks: list[str]) -> str:
    """Per task: where END first carries the source word's value (interchange IIA), the source
    word's own position at that point, the number of candidate answers, DAS's verdict (the smallest k
    within the margin of the whole vector, or why none is claimed) with the largest k's held-out IIA
    beside random subspaces and DAS at the source word, and the full interchange. Every k is in the
    figure das_curve."""
    from opposites.findings import interchange_facts

    rows = []
    for task in tasks:
        facts, das = interchange_facts(data, task), data["das"][task]  # what the text claims, from the same test
        sweep, at_end = facts["sweep"], facts["das"]
        end, role = sweep["best_end"], sweep["role_at_best_end"]
        rows.append([tex_escape(task), str(sweep["n_pairs"]), _layer(end["label"]), fmt_ci(end["iia"], end["iia_ci95"]),
                     f"{tex_escape(sweep['role'])}: {fmt_ci(role['iia'], role['iia_ci95'])}",
                     f"{das['n_test']} ({at_end['full']['n_clusters']}) / {das['n_train']}", str(das["n_candidates"]),
                     _das_cell(facts), fmt_ci(at_end["full"]["iia"], at_end["full"]["iia_ci95"])])
    return tabular(r"l r p{1.5cm} p{2.0cm} p{2.3cm} p{1.6cm} r p{5.2cm} p{2.0cm}",
                   ["task", "pairs", "END located", "IIA [95\\% CI]", "source word there", "held out (clusters) / train",
                    "answers", "DAS: verdict; the largest $k$'s held-out IIA", "full"], rows)


def _das_cell(facts: dict) -> str:
    """The DAS verdict the text states, then the largest k's held-out IIA, the random subspaces'
    mean and DAS at the source word's position (run at the largest k of the grid only)."""
    at_end, source = facts["das"], facts["source"]
    if not at_end["k"]:
        return "--"
    if not facts["das_testable"]:
        verdict = (f"not testable (held out from {at_end['k'][0]['n_clusters']} words)" if facts["das_too_few_words"]
                   else "not testable (a perfect match could not pass)")
    else:
        verdict = f"$k = {facts['das_k']['k']}$" if facts["das_k"] else "no $k$ within the margin"
    top = at_end["k"][-1]
    at_source = next((s for s in source["k"] if s["k"] >= top["k"]), None) if source else None  # a larger k bounds it
    return (f"{verdict}; $k = {top['k']}$: {fmt_ci(top['iia'], top['iia_ci95'])} (random {fmt(top['random_iia_mean'])}"
            + (f"; source word, $k = {at_source['k']}$: {fmt(at_source['iia'])}" if at_source else "") + ")")


def _sharing(data: dict, tasks: list[str]) -> list[dict]:
    from opposites.sharing import pair_verdicts, shared_components

    circuits = {t: data["circuit"][t] for t in tasks}
    graphs = {t: graph_of(data["edges"][t]) for t in tasks} if "edges" in data else None
    cmp = compare(circuits, opposite_tasks(tasks), {}, graphs)
    return pair_verdicts(cmp["pairs"], data["transfer"], shared_components(circuits), data.get("replication"))


def _iia(x: dict) -> str:
    return fmt_ci(x["iia"], x["iia_ci95"])


def _layer(label: str) -> str:
    """A location's label for a cell, its layer number kept with the word ("after layer~1")."""
    return tex_escape(label).replace("layer ", "layer~")


def _point(located: dict) -> str:
    """A transfer location in words (sharing.point_name), its layer number kept with the word."""
    from opposites.sharing import point_name

    return _layer(point_name(located["component"]))


@table
def sharing(data: dict, tasks: list[str]) -> str:
    """Per pair of tasks: shared components, head overlap against its null, functional transfer,
    replication across seeds, and whether sharing is claimed (all three support it)."""
    rows = []
    for p in _sharing(data, tasks):
        t, rep = p["transfer"], p["replication"]
        o = p["overlap_pair"]
        overlap = f"{fmt(o['heads_jaccard'])} / {fmt(o['edges_jaccard'])}" + (
            f" (pct. {fmt(o['heads_jaccard_percentile'], 0)} / {fmt(o['edges_jaccard_percentile'], 0)}"
            + (f"; unif. {fmt(o['heads_uniform_jaccard_percentile'], 0)}" if "heads_uniform_jaccard_percentile" in o else "") + ")"
            if "heads_jaccard_percentile" in o else "") + f": {p['overlap']}" + (
            f" ($p = {fmt(p['overlap_p'], 3)}$, Holm over {p['overlap_n_tested']})" if p.get("overlap_n_tested") and p["overlap_p"] == p["overlap_p"] else "")
        held = [r["component"] for r in t.get("rows", []) if r["verdict"] == "inconclusive after Holm"]
        transfer = (("not measurable (task families differ)" if "families differ" in t["reason"] else tex_escape(t["reason"]))
                    if not t["measurable"] else
                    f"not after Holm over {t['n_tested']} pairs ($p = {fmt(t['p_value'], 3)}$)" if t.get("holm_failed") else
                    f"transfers at {_point(t['located'])} (primary), then at " + component_runs(t["transferring"])
                    if t["transferring"] and t["located"] else
                    "transfers: " + component_runs(t["transferring"]) if t["transferring"] else
                    f"transfers at {_point(t['located'])}" if t["transfers"] else
                    f"{t['located']['verdict']} at {_point(t['located'])} (the primary point)" if t["located"] else
                    f"inconclusive after Holm over the locations ({len(held)} clear 0.5 alone)" if held else
                    "does not transfer: " + ", ".join(t["failing"]) if t["failing"] else
                    "no location carries the word within both tasks")
        j = rep.get("heads_jaccard")
        replication = ("not measured (one model)" if not rep["measured"] else
                       f"not testable; {fmt(j['mean'])} ({fmt(j['min'])}--{fmt(j['max'])})" if not rep["testable"] else
                       f"{', '.join(rep['replicated']) or 'none'}"
                       + (f" ({len(rep['by_default'])} by default)" if rep.get("by_default") else "")
                       + f"; {fmt(j['mean'])} ({fmt(j['min'])}--{fmt(j['max'])})")
        rows.append([f"{tex_escape(p['a'])}--{tex_escape(p['b'])}", component_runs(p["shared"]) or "--",
                     overlap, transfer, replication, p["verdict"]])
    return tabular(r"l p{2.6cm} p{3.8cm} p{3.6cm} p{3.0cm} l",
                   ["tasks", "shared components", "Jaccard heads / edges vs null", "transfer",
                    "in every seed beyond composition; head Jaccard", "shared?"], rows)


@table
def transfer(data: dict, tasks: list[str]) -> str:
    """The transfer matrix of each shared component (and END's residual after each layer) for every
    pair of tasks whose words allow it: within each task, and each task's activation in the other."""
    rows = []
    for p in _sharing(data, tasks):
        a, b, t = tex_escape(p["a"]), tex_escape(p["b"]), p["transfer"]
        if not t["measurable"]:
            rows.append([f"{a}--{b}", "--", "--", "--", "--", "--", "not measurable: " + tex_escape(t["reason"])])
            continue
        for r in t["rows"]:
            rows.append([f"{a}--{b}", tex_escape(r["component"]), _iia(r["within_a"]), _iia(r["within_b"]),
                         _iia(r["a_to_b"]), _iia(r["b_to_a"]), r["verdict"]])
    return tabular(r"l l p{1.9cm} p{1.9cm} p{1.9cm} p{1.9cm} p{3.2cm}",
                   ["tasks $a$--$b$", "location (END)", "within $a$", "within $b$", "$a \\to b$", "$b \\to a$", "verdict"], rows)


@table
def glance(data: dict, tasks: list[str]) -> str:
    """Results at a glance, per task: whether the model does it, where the source word's value is
    held (interchange) and in how small a subspace (DAS), how much of the effect the circuit carries on
    held-out prompts, the tasks it shares a function with, and what replicates across seeds."""
    from opposites.sharing import sharing_facts
    from opposites.findings import glance as mechanism_glance, interchange_facts

    circuits = {t: data["circuit"][t] for t in tasks}
    graphs = {t: graph_of(data["edges"][t]) for t in tasks} if "edges" in data else None
    sharing = sharing_facts(data, tasks, compare(circuits, opposite_tasks(tasks), {}, graphs)["pairs"])
    rows = []
    for task in tasks:
        g = mechanism_glance(data, task, interchange_facts(data, task))
        before = (g["arrival"] or {}).get("before")
        located = (f"END {_layer(g['located'])}: {fmt_ci(g['iia'], g['iia_ci95'])}" if g["located"] else "not located") + (
            f" ({_layer(before['label'])}: {fmt_ci(before['iia'], before['iia_ci95'])}, not separated)"
            if g["located_not_separated"] and before else "")
        das = {"found": lambda: f"$k = {g['das_k']}$ of {g['n_candidates']} answers: {fmt_ci(g['das_iia'], g['das_iia_ci95'])}"
                                + (f" (train {fmt(g['das_train_iia'])})" if g.get("das_train_iia") is not None else ""),
               "not testable": lambda: ("not testable (too few held-out words)" if g["das_too_few_words"]
                                        else "not testable (a perfect match could not pass)"),
               "none": lambda: "no tested $k$ is shown equivalent", None: lambda: "--"}[g["das_status"]]()
        carried = (f"{g['circuit_edges']} edges: {fmt_ci(g['share_carried'], g['share_carried_ci95'])}"
                   if g["share_carried"] is not None else
                   f"{g['circuit_edges']} edges: {fmt_ci(g['held_out_recovered'], g['held_out_recovered_ci95'])}"
                   if g["held_out_recovered_ci95"] and g["held_out_recovered_ci95"][0] != g["held_out_recovered_ci95"][0]  # NaN: n too small
                   else "not shown")
        shared = [p["b"] if p["a"] == task else p["a"] for p in sharing["claimed"] if task in (p["a"], p["b"])]
        rep = (sharing["replication"] or {}).get(task)
        replicates = ("one model" if not rep else
                      f"not testable ({len(rep['replicated'])} by index; {rep['n_seeds']} seeds)" if not rep.get("testable", True) else
                      f"{', '.join(rep.get('beyond_chance', [])) or 'none'} beyond composition ({len(rep['replicated'])} "
                      f"by index; {rep['n_seeds']} seeds)")
        rows.append([tex_escape(task), fmt_ci(g["accuracy"], g["accuracy_ci95"]), located, das, carried,
                     ", ".join(map(tex_escape, shared)) or ("not testable here" if rep and not rep.get("testable", True)
                                                            else "none claimed"), replicates])
    return tabular(r"l p{1.8cm} p{2.6cm} p{2.6cm} p{2.2cm} p{1.6cm} p{2.6cm}",
                   ["task", "answer beats wrong", "source word's identity at (IIA)", "DAS subspace (held-out IIA)",
                    "circuit (held-out recovery)", "shares function with", "in every seed's circuit"], rows)


@table
def movers_shift(data: dict, tasks: list[str]) -> str:
    """What the named heads key on (analysis shift): per head (movers, heads tied on the stated
    path), the role it attends to most from END and, per shift of that role's word, END's attention
    to the word's new position minus its old one with its interval, and the verdict; per task, a
    row of the task's logit difference change under each shift."""
    from opposites.findings import glance as mechanism_glance, interchange_facts

    shifts = ("before", "after", "swap")
    rows = []
    for task in tasks:
        k = mechanism_glance(data, task, interchange_facts(data, task))["keyed"]
        for e in (k or {}).get("heads", []):
            verdict = [e["keys_on"] if e["shifts_read"] else "not tested: task broken"]
            if "swap" in e:
                verdict.append(f"swap: {e['swap_keys_on']}" if e["swap_read"] else "swap: task broken")
            rows.append([tex_escape(task), e["head"], tex_escape(e["role"]) + f" {fmt(e['attention'])}",
                         *[fmt_ci(e[how]["follows"], e[how]["follows_ci95"]) if how in e else "--" for how in shifts],
                         tex_escape("; ".join(verdict))])
        if k and k["heads"]:
            change = {(t["role"], t["shift"]): t for t in k["task"]}
            for role in dict.fromkeys(e["role"] for e in k["heads"]):
                rows.append([tex_escape(task), "$\\Delta$LD", tex_escape(role),
                             *[fmt_ci(change[role, how]["change"], change[role, how]["change_ci95"])
                               if (role, how) in change else "--" for how in shifts], ""])
    return tabular(r"l l l p{2.2cm} p{2.2cm} p{2.2cm} p{2.6cm}",
                   ["task", "head", "reads (END)", "before: new $-$ old", "after: new $-$ old", "swap: new $-$ old",
                    "keys on"], rows)
