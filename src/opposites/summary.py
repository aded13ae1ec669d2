"""Facts the prose names, derived from result files (so the text stays true for any numbers)."""

from __future__ import annotations

import pandas as pd

from opposites.derived import (ANSWER_OVER_REPEAT, CLASSES, accumulated_lens, classify_components, ioi_head_classes,
                               head_label, head_routes, layer_contributions, matched_control, opposite_tasks,
                               relation_similarity, signed_top_heads)
from opposites.findings import glance, interchange_facts, second_corruption_facts, seed_replication
from opposites.nodes import head_nodes
from opposites.overlap import compare, gpt2_classes, graph_of
from opposites.sharing import sharing_facts




def lens_facts(lens: pd.DataFrame) -> dict:
    acc = accumulated_lens(lens)
    final = float(acc.value.iloc[-1])
    half = acc[acc.value >= final / 2] if final > 0 else acc.iloc[0:0]
    dec = lens[lens.kind == "decomposed"]
    attn, mlp = dec[dec.label == "attn"], dec[dec.label == "mlp"]
    first = half.iloc[0] if len(half) else None
    layers = layer_contributions(lens)
    step = layers.loc[layers.step.abs().idxmax()]
    direct = layers.loc[layers.direct.abs().idxmax()]
    return {
        "largest_step": {"layer": int(step.layer), "component": str(step.component), "step": float(step.step),
                         "direct": float(step.direct), "ci95": [float(step.ci_low), float(step.ci_high)]},
        "largest_direct": {"layer": int(direct.layer), "component": str(direct.component), "step": float(direct.step),
                           "direct": float(direct.direct), "ci95": [float(direct.ci_low), float(direct.ci_high)]},
        "final": final,
        "half_layer": None if first is None else int(first.layer),
        "half_label": None if first is None else str(first.label),
        "top_attn_layer": int(attn.loc[attn.value.idxmax(), "layer"]),
        "top_attn_value": float(attn.value.max()),
        "top_mlp_layer": int(mlp.loc[mlp.value.idxmax(), "layer"]),
        "top_mlp_value": float(mlp.value.max()),
        "attn_total": float(attn.value.sum()),
        "mlp_total": float(mlp.value.sum()),
    }


def patch_facts(data: dict, task: str) -> dict:
    """What the patching section names: strongest head, residual positions, where the changed word travels."""
    heads = data["patch_heads"][task]
    z = heads[heads.activation == "z"]
    top = z.loc[z.value.abs().idxmax()]
    resid = data["patch_resid"][task]
    last = resid[resid.layer == resid.layer.max()]
    first = resid[resid.layer == 0]
    peak = lambda df: df.loc[df.value.abs().idxmax()]  # noqa: E731
    role = data["prompts"][task][0]["changed"][0]  # where the corruption changes a word
    at = lambda r: resid[resid.role == r].set_index("layer").value  # noqa: E731
    held = [int(l) for l, v in at(role).items() if v >= 0.5 and l > 0]  # before layer 0: the input itself, by construction
    arrived = [int(l) for l, v in at("END").items() if v >= 0.5]
    return {
        "route": {"role": role, "last_at_role": max(held) if held else None,
                  "first_at_end": min(arrived) if arrived else None},
        "top_head": head_label(top.layer, top["head"]), "top_head_value": float(top.value),
        "top_head_ci": [float(top.ci_low), float(top.ci_high)],
        # heads whose interval overlaps the top head's: the data do not single the top one out
        "top_head_tied": [head_label(r.layer, r.head) for r in z.itertuples() if (r.layer, r.head) != (top.layer, top["head"])
                          and r.ci_high >= top.ci_low and r.ci_low <= top.ci_high and r.value * top.value > 0],
        "resid_first": peak(first).to_dict(), "resid_last": peak(last).to_dict(),
        "n": int(resid.n.iloc[0]), "normaliser_ok": bool(resid.normaliser_ok.iloc[0]),
        "directions": both_directions(data, task, peak(first), peak(last), top) if "patch_directions" in data else None,
    }


def both_directions(data: dict, task: str, first, last, head) -> dict:
    """The headline cells (the residual stream's peaks before the first and the last layer, the top
    head) in both patching directions: {cell: {direction: (value, low, high, excludes 0)}}, as the
    share of the clean-minus-corrupted difference restored (denoising) or destroyed (noising)."""
    both = data["patch_directions"][task]
    cells = {"resid_first": (both.kind == "resid") & (both.layer == first.layer) & (both.role == first.role),
             "resid_last": (both.kind == "resid") & (both.layer == last.layer) & (both.role == last.role),
             "top_head": (both.kind == "z") & (both.layer == head.layer) & (both["head"] == head["head"])}
    return {name: {r.direction: {"value": float(r.value), "ci95": [float(r.ci_low), float(r.ci_high)],
                                 "excludes_zero": bool(r.ci_low > 0 or r.ci_high < 0)}
                   for r in both[mask].itertuples()} for name, mask in cells.items()}


def head_facts(data: dict, task: str) -> dict:
    """Attention, copying and neurons: what the 'Attention and copying' and 'Meaning' sections name."""
    n = data["neurons"][task].iloc[0]
    routes = head_routes(data["patch_heads"][task])
    facts = {"routes": {r: sorted(routes[routes.route == r]["head"]) for r in routes.route.unique()},
             "neuron": {"label": f"L{int(n.layer)}N{int(n.neuron)}", "value": float(n.value), "act": float(n.act_task),
                        "control": float(n.act_control), "tokens": [t for t in n.top_tokens.split("|")]}}
    if task in data.get("similarity", {}):
        sim = data["similarity"][task]
        last = sim[sim.space == "resid"].layer.max()
        facts["similarity"] = {
            space: sim[(sim.space == space) & ((sim.layer == last) if space == "resid" else True)]
            .groupby("relation").cosine.mean().to_dict() for space in ("embed", "unembed", "resid")}
        facts["similarity_ci"] = {space: relation_similarity(sim, space, layer)
                                  for space, layer in (("embed", -1), ("unembed", -1), ("resid", last))}
    return facts


def summarize(data: dict, tasks: list[str]) -> dict:
    per_task = {}
    for t in tasks:
        dla = data["head_dla"][t]
        per_task[t] = {"baseline": data["baseline"][t], "lens": lens_facts(data["logit_lens"][t]),
                       "top_pos": signed_top_heads(dla), "top_neg": signed_top_heads(dla, sign=-1),
                       "patch": patch_facts(data, t),
                       "heads": head_facts(data, t)}
    for t in tasks:
        per_task[t]["mechanism"] = mechanism_facts(data, t)
        per_task[t]["recency"] = recency_facts(data["recency"][t], data["baseline"][t]) if t in data.get("recency", {}) else None
        per_task[t]["second"] = second_corruption_facts(data, t)
    for t in opposite_tasks(tasks):
        classes = classify_components(data["head_logits"][t])
        per_task[t]["classes"] = {"counts": {c: int((classes.cls == c).sum()) for c in CLASSES},
                                  "difference_above_0": int((classes.ci_low_difference > 0).sum()), "n": len(classes),
                                  "control": data["control"][t]}
    for t in tasks:  # does the circuit replicate across training seeds (None: one model)
        per_task[t]["seed_replication"] = seed_replication(data.get("replication", {}).get(t), data["circuit"][t])
    circuits = circuit_facts(data, tasks)
    return {"tasks": per_task, "opposite_tasks": opposite_tasks(tasks), "circuits": circuits,
            "sharing": sharing_facts(data, tasks, circuits["compare"]["pairs"])}


def carries(ablation: dict | None, margin: float = 0.2) -> bool:
    """A named set carries the task when ablating it leaves accuracy below every random set of the
    same size by at least `margin`, and its interval lies wholly below the random sets' interval;
    never without a matched control (as many other heads and MLP layers)."""
    if not matched_control(ablation):
        return False
    named, other = ablation["named"], ablation["random_others"]
    return named["accuracy"] + margin <= other["accuracy_min"] and named["accuracy_ci95"][1] < other["accuracy_mean_ci95"][0]


def lowers_logit_diff(ablation: dict | None) -> bool:
    """Ablating the named set lowers the logit difference more than the matched random sets do:
    its change's interval lies wholly below theirs (never without a matched control)."""
    if not matched_control(ablation):
        return False
    return ablation["named"]["logit_diff_change_ci95"][1] < ablation["random_others"]["logit_diff_change_mean_ci95"][0]


def mechanism_facts(data: dict, task: str) -> dict:
    movers = data["movers"][task]
    mapping = data.get("mapping", {}).get(task)
    facts = {"movers": movers, "movers_carry": carries(movers["ablation"]), "mapping": mapping,
             "mappers_carry": carries(mapping["ablation"]) if mapping else False,
             "mappers_lower_ld": lowers_logit_diff(mapping["ablation"]) if mapping else False,
             "movers_control": matched_control(movers["ablation"]) is not None,  # a matched control exists
             "mappers_control": bool(mapping) and matched_control(mapping["ablation"]) is not None,
             "interchange": interchange_facts(data, task)}
    return {**facts, "glance": glance(data, task, facts["interchange"])}












def recency_facts(res: dict, baseline: dict | None = None) -> dict:
    """The dissociating IOI prompts: the model's preference and the heads following each rule; with
    the task's baseline, whether IO beats S less often on the new template than on the task's own
    (Wilson intervals disjoint: the behaviour depends on the template)."""
    label = lambda h: head_label(h["layer"], h["head"])  # noqa: E731
    low, high = res["io_minus_s3"]["ci95"]
    beats = res.get("io_beats_s_ci95")
    return {**res, "io_s3_excludes_zero": low > 0 or high < 0,
            "template_dependent": bool(baseline and beats and beats[1] < baseline["accuracy_ci95"][0]),
            "ioi_heads": [label(h) for h in res["heads"] if h["rule"] == "IOI"],
            "recent_heads": [label(h) for h in res["heads"] if h["rule"] == "most recent subject"]}


def paper_row(c: dict) -> dict:
    """The paper's circuit among the circuits compared at one size."""
    return next(r for r in c["at_size"] if (r["method"], r["how"]) == (c["method"], c["how"]))


def best_held_out(c: dict) -> dict:
    """The circuit of at most the compared size that recovers the most on the held-out half."""
    return max((r for r in c["at_size"] if r["n_edges"] <= c["compared_size"]), key=lambda r: r["held_out"]["recovered"])


def circuit_facts(data: dict, tasks: list[str]) -> dict:
    circuits = {t: data["circuit"][t] for t in tasks}
    graphs = {t: graph_of(data["edges"][t]) for t in tasks} if "edges" in data else None
    cmp = compare(circuits, opposite_tasks(tasks), gpt2_classes(circuits, ioi_head_classes()), graphs)
    best = max(cmp["pairs"], key=lambda p: p["heads_jaccard"]) if cmp["pairs"] else None
    per = {t: {"n_edges": c["n_edges"], "total": c["total_edges"], "recovered": c["recovered"], "n": c["n_prompts"],
               "n_heads": len(head_nodes(c)), "heads": sorted(head_nodes(c))[:8], "method": c["method"],
               "main": paper_row(c), "methods": c["methods"], "stability": c["stability"],
               "at_size": {f"{r['method']} ({r['how']})": r for r in c["at_size"]}, "size": c["compared_size"],
               "n_selection": c["n_selection"], "n_held_out": c["n_held_out"], "best_held_out": best_held_out(c),
               "unstable": [f"{e['src']}->{e['dst']}" for e in c["stability"]["inclusion"] if e["frequency"] < 0.5]}
           for t, c in circuits.items()}
    return {"per_task": per, "compare": cmp, "closest": best}
