"""Facts the prose names, derived from result files (so the text stays true for any numbers)."""

from __future__ import annotations

from itertools import combinations

import pandas as pd

from opposites.derived import (MIN_CLUSTERS, accumulated_lens, classify_components, ioi_head_classes,
                               head_label, head_routes, layer_contributions, opposite_tasks, relation_similarity,
                               signed_top_heads, top_abs_heads)
from opposites.nodes import head_nodes
from opposites.overlap import compare, gpt2_classes, graph_of
from opposites.sharing import sharing_facts


CLASSES = ("opposite-mapping", "copy-like", "copy-suppressing", "pair")


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
    held = [int(l) for l, v in at(role).items() if v >= 0.5]
    arrived = [int(l) for l, v in at("END").items() if v >= 0.5]
    return {
        "route": {"role": role, "last_at_role": max(held) if held else None,
                  "first_at_end": min(arrived) if arrived else None},
        "top_head": head_label(top.layer, top["head"]), "top_head_value": float(top.value),
        "top_head_ci": [float(top.ci_low), float(top.ci_high)],
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


def summarize(data: dict, tasks: list[str], k: int = 5) -> dict:
    per_task = {}
    for t in tasks:
        dla = data["head_dla"][t]
        per_task[t] = {"baseline": data["baseline"][t], "lens": lens_facts(data["logit_lens"][t]),
                       "top_pos": signed_top_heads(dla), "top_neg": signed_top_heads(dla, sign=-1),
                       "top_abs": sorted(head_label(*h) for h in top_abs_heads(dla, k)), "patch": patch_facts(data, t),
                       "heads": head_facts(data, t)}
    for t in tasks:
        per_task[t]["mechanism"] = mechanism_facts(data, t)
        per_task[t]["recency"] = recency_facts(data["recency"][t]) if t in data.get("recency", {}) else None
    for t in opposite_tasks(tasks):
        classes = classify_components(data["head_logits"][t])
        per_task[t]["classes"] = {"counts": {c: int((classes.cls == c).sum()) for c in CLASSES},
                                  "control": data["control"][t]}
    sets = {t: set(per_task[t]["top_abs"]) for t in tasks}
    pairs = [{"a": a, "b": b, "shared": sorted(sets[a] & sets[b])} for a, b in combinations(tasks, 2)]
    shared_all = sorted(set.intersection(*sets.values())) if sets else []
    circuits = circuit_facts(data, tasks)
    return {"tasks": per_task, "k": k, "opposite_tasks": opposite_tasks(tasks), "pairs": pairs,
            "shared_all": shared_all, "circuits": circuits,
            "sharing": sharing_facts(data, tasks, circuits["compare"]["pairs"])}


def carries(ablation: dict | None, margin: float = 0.2) -> bool:
    """A named set carries the task when ablating it leaves accuracy below every random set of the
    same size by at least `margin`, and its interval lies wholly below the random sets' interval;
    never without a matched control (as many other heads and MLP layers)."""
    if not ablation or not ablation.get("random_others"):
        return False
    named, other = ablation["named"], ablation["random_others"]
    return named["accuracy"] + margin <= other["accuracy_min"] and named["accuracy_ci95"][1] < other["accuracy_mean_ci95"][0]


def lowers_logit_diff(ablation: dict | None) -> bool:
    """Ablating the named set lowers the logit difference more than the matched random sets do:
    its change's interval lies wholly below theirs (never without a matched control)."""
    if not ablation or not ablation.get("random_others"):
        return False
    return ablation["named"]["logit_diff_change_ci95"][1] < ablation["random_others"]["logit_diff_change_mean_ci95"][0]


def mechanism_facts(data: dict, task: str) -> dict:
    movers = data["movers"][task]
    mapping = data.get("mapping", {}).get(task)
    facts = {"movers": movers, "movers_carry": carries(movers["ablation"]), "mapping": mapping,
             "mappers_carry": carries(mapping["ablation"]) if mapping else False,
             "mappers_lower_ld": lowers_logit_diff(mapping["ablation"]) if mapping else False,
             "interchange": interchange_facts(data, task)}
    return {**facts, "glance": glance(data, task, facts["interchange"])}


def node_of(endpoint: str) -> str:
    """A circuit edge's endpoint as a node: a head's input channel ("0.1.v") is the head ("0.1")."""
    parts = endpoint.split(".")
    return ".".join(parts[:2]) if len(parts) == 3 else endpoint


def widest_path(edges: list[dict]) -> tuple[list[str], float] | None:
    """The embed -> logits path of the circuit (a DAG: edges run forward through the layers) whose
    weakest edge has the largest |attribution| (a widest path; ties: the first edge listed), as the
    endpoints it passes (a head's input channel kept: "0.1.v"), with that weakest |score|; None
    without such a path."""
    into: dict[str, list[dict]] = {}
    for e in edges:
        into.setdefault(node_of(e["dst"]), []).append(e)
    best: dict[str, tuple[float, list[str]] | None] = {"embed": (float("inf"), ["embed"])}

    def widest(node: str) -> tuple[float, list[str]] | None:  # (weakest |score|, path) into node
        if node not in best:
            options = [(min(abs(e["score"]), w[0]), w[1] + ([e["dst"]] if e["dst"] != node else []) + [node])
                       for e in into.get(node, []) for w in [widest(node_of(e["src"]))] if w]
            best[node] = max(options, key=lambda o: o[0]) if options else None
        return best[node]

    found = widest("logits")
    return (found[1], found[0]) if found else None


def paper_circuit_row(circuit: dict) -> dict:
    """The paper's circuit's row among the methods compared at one size (its held-out numbers)."""
    return next(r for r in circuit["at_size"] if r["method"] == circuit["method"] and r["how"] == circuit["how"])


def glance(data: dict, task: str, interchange: dict | None) -> dict:
    """One task's mechanism in fields (results/<model>/paper/mechanism.json; the paper's paragraph):
    whether the model does the task (accuracy, 95% Wilson interval); the circuit's widest path and
    the share of the logit difference the whole circuit recovers on the prompts held out from its
    selection (exact edge patching, 95% interval over those prompts' words);
    the interchange's located point (IIA, 95% Wilson interval) and the smallest DAS k its intervals
    support, with the number of candidate answers. A field whose support is missing is None: no path
    when the circuit's recovery interval reaches 0, no located point when END is not shown to carry
    the value."""
    base = data["baseline"][task]
    circuit = data.get("circuit", {}).get(task)
    main = paper_circuit_row(circuit)["held_out"] if circuit else None  # recovery on the held-out prompts
    path = widest_path(circuit["edges"]) if circuit else None
    supported = main is not None and main.get("recovered_ci95") is not None and main["recovered_ci95"][0] > 0
    end = interchange["sweep"]["best_end"] if interchange and interchange["end_carries"] else None
    k = interchange["das_k"] if end else None
    return {"task": task, "does_task": base["does_task"], "accuracy": base["accuracy"],
            "accuracy_ci95": base["accuracy_ci95"], "n_prompts": base["n_prompts"],
            "path": path[0] if path and supported else None, "path_weakest_score": path[1] if path and supported else None,
            "circuit_edges": circuit["n_edges"] if circuit else None,
            "share_carried": main["recovered"] if supported else None,
            "share_carried_ci95": main["recovered_ci95"] if supported else None,
            "located": end["label"] if end else None, "located_site": end["site"] if end else None,
            "iia": end["iia"] if end else None, "iia_ci95": end["iia_ci95"] if end else None,
            "n_pairs": interchange["sweep"]["n_pairs"] if end else None,
            "source_left": interchange["role_left"] if end else None,
            "das_k": k["k"] if k else None, "das_iia": k["iia"] if k else None, "das_iia_ci95": k["iia_ci95"] if k else None,
            "n_candidates": interchange["n_candidates"] if end else None}


def interchange_facts(data: dict, task: str) -> dict | None:
    """The located point and what its intervals support: END carries the source's value (IIA's
    interval above 1/2); the source word's position no longer does there (its interval wholly below
    END's); the smallest DAS subspace whose held-out IIA lies above every random subspace's and whose
    paired difference from the whole vector (DAS minus full, per pair, word clusters resampled) has
    an interval reaching 0, where the held-out pairs come from at least MIN_CLUSTERS words (fewer give
    too few distinct resamples for the test); DAS at the source word's position after the same layer (point "source",
    the same k) as the baseline."""
    sweep, das = data.get("interchange", {}).get(task), data.get("das", {}).get(task)
    if sweep is None or das is None:
        return None
    end, role = sweep["best_end"], sweep["role_at_best_end"]
    at_end = next(loc for loc in das["locations"] if loc["site"] == end["site"] and loc["position"] == "END")
    source = next((loc for loc in das["locations"] if loc.get("point") == "source"), None)
    testable = bool(at_end["k"]) and at_end["k"][0]["n_clusters"] >= MIN_CLUSTERS
    small = [k for k in at_end["k"] if k["iia_ci95"][0] > k["random_iia_max"] and k["minus_full"]["ci95"][1] >= 0]
    k = small[0] if small and testable else None
    return {"sweep": sweep, "das": at_end, "n_test": das["n_test"], "n_candidates": das["n_candidates"],
            "end_carries": end["iia_ci95"][0] > 0.5, "role_left": role["iia_ci95"][1] < end["iia_ci95"][0],
            "das_testable": testable, "das_k": k, "das_best": max(at_end["k"], key=lambda k: k["iia"]) if at_end["k"] else None,
            "source": source, "source_k": next((s for s in source["k"] if k and s["k"] == k["k"]), None) if source else None}


def recency_facts(res: dict) -> dict:
    """The dissociating IOI prompts: the model's preference and the heads following each rule."""
    label = lambda h: head_label(h["layer"], h["head"])  # noqa: E731
    low, high = res["io_minus_s3"]["ci95"]
    return {**res, "io_s3_excludes_zero": low > 0 or high < 0,
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
