"""Per-task findings read off result files, each only where its intervals support it: the
located point of the interchange (and the DAS subspace), the circuit's widest path and held-out
recovery. The prose (summary.py) and the glance table (tables.py) state them."""

from __future__ import annotations

import math

from opposites.derived import MIN_CLUSTERS, head_label
from opposites.prompts import load_spec
from opposites.widest import widest_path

EQUIVALENCE_MARGIN = 0.10  # DAS "does what the whole vector does": its IIA at most this much lower (95% interval)
K_IO_HEADS = 4  # second corruption: the heads named, largest restoring share first


def paper_circuit_row(circuit: dict) -> dict:
    """The paper's circuit's row among the methods compared at one size (its held-out numbers)."""
    return next(r for r in circuit["at_size"] if r["method"] == circuit["method"] and r["how"] == circuit["how"])


def glance(data: dict, task: str, interchange: dict | None) -> dict:
    """One task's mechanism in fields (results/<model>/paper/mechanism.json; the paper's paragraph):
    whether the model does the task (accuracy, 95% Wilson interval); the circuit's widest path and
    the share of the logit difference the whole circuit recovers on the prompts held out from its
    selection (exact edge patching, 95% interval over those prompts' words); per head on the path, the
    share its output carries into the path's next node alone (path patching, `circuit_paths`);
    the interchange's located point (IIA, 95% Wilson interval) and the smallest DAS k its intervals
    support, with the number of candidate answers. A field whose support is missing is None: no path
    when the circuit's recovery interval reaches 0 (or, where held-out words are too few for an
    interval, when a path-patching interval along the path does), no located point when END is not
    shown to carry the value."""
    base = data["baseline"][task]
    circuit = data.get("circuit", {}).get(task)
    main = paper_circuit_row(circuit)["held_out"] if circuit else None  # recovery on the held-out prompts
    path = widest_path(circuit["edges"]) if circuit else None
    interval = main.get("recovered_ci95") if main else None
    too_few = interval is not None and all(math.isnan(x) for x in interval)  # held out from < MIN_CLUSTERS words
    paths = data.get("circuit_paths", {}).get(task)
    path_edges = [{"sender": e["sender"], "reader": e["receiver"] + (f".{e['input']}" if e["input"] else ""),
                   "share": e["value"], "share_ci95": [e["ci_low"], e["ci_high"]],
                   "excludes_zero": not e["ci_low"] <= 0 <= e["ci_high"]}
                  for e in paths["edges"]] if paths and path and paths["path"] == path[0] else None
    # the path is stated when the circuit's held-out recovery excludes 0, or, where that interval
    # cannot be had (too few held-out words), when path patching along it excludes 0 at every edge
    supported = (interval is not None and not too_few and interval[0] > 0) or \
        (too_few and bool(path_edges) and all(e["excludes_zero"] for e in path_edges))
    path_edges = path_edges if supported else None
    end = interchange["sweep"]["best_end"] if interchange and interchange["end_carries"] else None
    k = interchange["das_k"] if end else None
    stated = path[0] if path and supported else None
    sets = head_set(data, task, stated)
    movers = [m["head"] for m in data["movers"][task]["movers"]] if task in data.get("movers", {}) else []
    second = io_heads(data, task)
    named = movers + [h for s in sets or [] for h in s["tied"]]  # the heads Table movers_shift lists for every task
    arrived = arrival(interchange)
    return {"task": task, "does_task": base["does_task"], "accuracy": base["accuracy"],
            "head_sets": sets, "keyed": keys(data, task, named), "io_heads": second, "das_status": das_status(interchange),
            "das_too_few_words": interchange.get("das_too_few_words") if interchange else None,
            "arrival": arrived,
            "located_not_separated": bool((arrived or {}).get("before_overlaps")),  # from the point before it
            "accuracy_ci95": base["accuracy_ci95"], "n_prompts": base["n_prompts"],
            "path": path[0] if path and supported else None, "path_weakest_score": path[1] if path and supported else None,
            "path_edges": path_edges, "path_n_prompts": paths["n_prompts"] if path_edges else None,
            "circuit_edges": circuit["n_edges"] if circuit else None,
            "share_carried": main["recovered"] if supported else None,
            "share_carried_ci95": main["recovered_ci95"] if supported else None,
            "held_out_recovered": main["recovered"] if main else None,  # beside its interval, shown or not
            "held_out_recovered_ci95": main["recovered_ci95"] if main else None,
            "located": end["label"] if end else None, "located_site": end["site"] if end else None,
            "iia": end["iia"] if end else None, "iia_ci95": end["iia_ci95"] if end else None,
            "n_pairs": interchange["sweep"]["n_pairs"] if end else None,
            "source_left": interchange["role_left"] if end else None,
            "das_k": k["k"] if k else None, "das_iia": k["iia"] if k else None, "das_iia_ci95": k["iia_ci95"] if k else None,
            "das_train_iia": k.get("train_iia") if k else None,  # on the pairs it was trained on: the fit, beside held-out
            "n_candidates": interchange["n_candidates"] if end else None}


def interchange_facts(data: dict, task: str) -> dict | None:
    """The located point and what its intervals support: END carries the source's value (IIA's
    interval above 1/2); the source word's position no longer does there (its interval wholly below
    END's); the smallest DAS subspace whose held-out IIA lies above every random subspace's and whose
    paired difference from the whole vector (DAS minus full, per pair, word clusters resampled) has
    an interval whose lower end is above -EQUIVALENCE_MARGIN (equivalent within the margin: an
    interval that merely reaches 0 is absence of evidence), where the held-out pairs come from at least MIN_CLUSTERS words (fewer give
    too few distinct resamples for the test); DAS at the source word's position after the same layer (point "source",
    the same k) as the baseline."""
    sweep, das = data.get("interchange", {}).get(task), data.get("das", {}).get(task)
    if sweep is None or das is None:
        return None
    end, role = sweep["best_end"], sweep["role_at_best_end"]
    at_end = next(loc for loc in das["locations"] if loc["site"] == end["site"] and loc["position"] == "END")
    source = next((loc for loc in das["locations"] if loc.get("point") == "source"), None)
    enough_words = bool(at_end["k"]) and at_end["k"][0]["n_clusters"] >= MIN_CLUSTERS
    # even DAS hits equal to the whole vector's would give this paired interval: below the margin, no k can pass
    reachable = at_end["full"].get("perfect_match95", [0.0, 0.0])[0] >= -EQUIVALENCE_MARGIN
    testable = enough_words and reachable
    small = [k for k in at_end["k"] if k["iia_ci95"][0] > k["random_iia_max"]
             and k["minus_full"]["ci95"][0] >= -EQUIVALENCE_MARGIN]
    k = small[0] if small and testable else None
    return {"sweep": sweep, "das": at_end, "n_test": das["n_test"], "n_candidates": das["n_candidates"],
            "end_carries": end["iia_ci95"][0] > 0.5, "role_left": role["iia_ci95"][1] < end["iia_ci95"][0],
            "das_testable": testable, "das_too_few_words": not enough_words, "das_k": k, "das_best": max(at_end["k"], key=lambda k: (k.get("train_iia", 0.0), -k["k"])) if at_end["k"] else None,  # chosen on training pairs
            "source": source, "source_k": next((s for s in source["k"] if k and s["k"] >= k["k"]), None) if source else None}  # a larger k bounds it


def second_corruption_facts(data: dict, task: str, k: int = 3) -> dict | None:
    """Patching under the second corruption (analysis patch_second) beside the main one: the k heads
    whose output patching moves the metric most there, each with its interval and its value under the
    main corruption (patch_heads), and whether each interval excludes 0; those of them that matter more
    here than under the main corruption (interval excluding 0, larger |value|, intervals disjoint;
    never when the main corruption's maps are not interpreted); the last layer before which
    the changed role's residual restores at least half, and the first from which END's does."""
    res = data.get("patch_second", {}).get(task)
    if res is None:
        return None
    main = data["patch_heads"][task]
    main = main[main.activation == "z"].set_index(["layer", "head"])
    heads = sorted(res["heads"], key=lambda r: -abs(r["value"]))[:k]
    at = lambda role: [r["layer"] for r in res["resid"] if r["role"] == role and r["value"] >= 0.5]  # noqa: E731
    held, arrived = [l for l in at(res["role"]) if l > 0], at("END")  # before layer 0: the input itself, by construction
    facts = {**{key: res[key] for key in ("corruption", "role", "n", "n_left_out", "normaliser_ok", "example")},
            "top": [{"head": head_label(r["layer"], r["head"]), "value": r["value"], "ci95": [r["ci_low"], r["ci_high"]],
                     "excludes_zero": not r["ci_low"] <= 0 <= r["ci_high"],
                     "main": float(main.value[(r["layer"], r["head"])]),
                     "main_ci95": [float(main.ci_low[(r["layer"], r["head"])]), float(main.ci_high[(r["layer"], r["head"])])]}
                    for r in heads],
            "last_at_role": max(held) if held else None, "first_at_end": min(arrived) if arrived else None}
    facts["main_ok"] = bool(main.normaliser_ok.iloc[0])  # the main corruption's maps are interpreted at all
    facts["more_here"] = [h["head"] for h in facts["top"] if facts["main_ok"] and h["excludes_zero"] and abs(h["value"]) > abs(h["main"])
                          and (h["ci95"][0] > h["main_ci95"][1] or h["ci95"][1] < h["main_ci95"][0])]
    return facts


def head_set(data: dict, task: str, path: list[str] | None) -> list[dict] | None:
    """Per head edge of the stated path (analysis path_set): each same-layer circuit head's share
    into the edge's reader (95% interval) and the heads not distinguishable from the largest (tied)."""
    res = data.get("path_set", {}).get(task)
    if not res or not path or res["path"] != path:
        return None
    return [{"sender": e["sender"], "reader": e["reader"], "tied": e["tied"],
             "shares": [{"head": s["sender"], "share": s["value"], "ci95": [s["ci_low"], s["ci_high"]]}
                        for s in sorted(e["shares"], key=lambda s: -s["value"])]} for e in res["edges"] if e["shares"]]


def end_role(data: dict, task: str, head: str) -> tuple[str, float, list[float]] | None:
    """The template role a head attends to most from END (analysis attention), with its mean
    attention and 95% interval."""
    att = data.get("attention", {}).get(task)
    if att is None:
        return None
    layer, index = map(int, head.split("."))
    roles = [r for r in att.src_role.unique() if r not in ("BOS", "END", "other")]
    rows = att[(att.layer == layer) & (att["head"] == index) & (att.dest_role == "END") & att.src_role.isin(roles)]
    if rows.empty:
        return None
    top = rows.sort_values("value", ascending=False).iloc[0]
    return str(top.src_role), float(top.value), [float(top.ci_low), float(top.ci_high)]


def keys(data: dict, task: str, heads: list[str]) -> dict | None:
    """What the named heads key on (analysis shift): per head, the role it attends to most from END
    and its shift entries there (before, after, swap where the templates allow it, each with new
    minus old position attention and its interval), whether the model still does the task on the
    shifted prompts (accuracy's interval above one half, as baseline's does_task: shifts_read for
    before and after together, swap_read), and the task's logit difference under each shift of
    that role; None without the shift results."""
    res = data.get("shift", {}).get(task)
    if res is None:
        return None
    out = []
    for head in dict.fromkeys(heads):
        found = end_role(data, task, head)
        if found is None:
            continue
        entry = next(e for e in res["heads"] if e["head"] == head and e["role"] == found[0])
        read = {t["shift"]: t["accuracy_ci95"][0] > 0.5 for t in res["task"] if t["role"] == found[0]}
        out.append({**entry, "attention": found[1], "attention_ci95": found[2],
                    "shifts_read": read["before"] and read["after"], "swap_read": read.get("swap", False)})
    roles = {e["role"] for e in out}
    return {"heads": out, "task": [t for t in res["task"] if t["role"] in roles], "n_prompts": res["n_prompts"],
            "n_clusters": res["n_clusters"], "unit": res["unit"], "clean_logit_diff": res["clean_logit_diff"],
            "clean_logit_diff_ci95": res["clean_logit_diff_ci95"]}


def das_status(interchange: dict | None) -> str | None:
    """The DAS column's state: found (a k whose intervals support it), not testable (held-out pairs
    from fewer than MIN_CLUSTERS words, or so few effective pairs that even a perfect match's
    paired interval would reach below -EQUIVALENCE_MARGIN), none (no k tested reaches the whole
    vector), or None where END is not located."""
    if not interchange or not interchange["end_carries"]:
        return None
    if not interchange["das_testable"]:
        return "not testable"
    return "found" if interchange["das_k"] else "none"


def io_heads(data: dict, task: str) -> dict | None:
    """The second corruption's heads (analysis patch_second) whose output patching restores an
    interval excluding 0, the K_IO_HEADS largest, each with the role it attends to most from END; None where
    the task has no second corruption."""
    facts = data.get("patch_second", {}).get(task)
    if facts is None:
        return None
    heads = sorted((r for r in facts["heads"] if r["ci_low"] > 0), key=lambda r: -r["value"])[:K_IO_HEADS]
    named = [{"head": head_label(r["layer"], r["head"]), "share": r["value"], "ci95": [r["ci_low"], r["ci_high"]],
              "reads": end_role(data, task, head_label(r["layer"], r["head"]))} for r in heads]
    return {"corruption": facts["corruption"], "role": facts["role"], "n": facts["n"], "heads": named,
            "main_corruption": load_spec(task)["corruption"]}


def arrival(interchange: dict | None) -> dict | None:
    """How the source word's identity arrives at END's located point (interchange): END's point one
    step earlier (after the previous layer; none before layer 0, where END holds the same token in
    both prompts) with its IIA and interval, and whether
    that interval overlaps the located point's (where it also lies above one half, the two points
    are not separated); each head's output, attention output (all heads) or MLP output of the
    located layer or an earlier one that the sweep tested at END alone, with its IIA and interval,
    and those whose interval lies above one half (carriers: that output alone carries the source's
    answer to END, as end_carries); None where END is not located."""
    if not interchange or not interchange["end_carries"]:
        return None
    sweep, best = interchange["sweep"], interchange["sweep"]["best_end"]
    at_end = [loc for loc in sweep["locations"] if loc["position"] == "END"]
    # END before layer 0 is the same token in base and source prompts: 0 by construction, not a contrast
    before = next((loc for loc in at_end if loc["kind"] == "resid_post" and loc["layer"] == best["layer"] - 1), None)
    parts = [loc for loc in at_end if loc["kind"] in ("z", "attn_out", "mlp_out") and loc["layer"] <= best["layer"]]
    pick = lambda loc: {"label": loc["label"], "iia": loc["iia"], "iia_ci95": loc["iia_ci95"]}  # noqa: E731
    earlier = before if before and before is not best else None
    carriers = [p for p in parts if p["iia_ci95"][0] > 0.5]
    return {"before": pick(earlier) if earlier else None, "parts": [pick(p) for p in parts],
            # the earlier point's interval overlaps the located one's: the data do not separate them
            "before_overlaps": bool(earlier) and earlier["iia_ci95"][1] >= best["iia_ci95"][0] and earlier["iia_ci95"][0] > 0.5,
            "carriers": [p["label"] for p in carriers], "n_pairs": sweep["n_pairs"],
            # an attention output and the MLP of the same layer both carrying: the MLP reads the attention's output
            "chained": sorted({p["layer"] for p in carriers if p["kind"] == "attn_out"}
                              & {p["layer"] for p in carriers if p["kind"] == "mlp_out"})}


REPLICATES_SHARE = 0.5  # a circuit replicates when at least this share of its components is in every seed's circuit


def seed_replication(replication: dict | None, circuit: dict) -> dict | None:
    """Whether one task's circuit replicates across training seeds (replication analysis; None for
    one model): of the components (heads and MLPs) in the paper's model's circuit, how many are in
    every seed's circuit, the edge and head counts per seed (min, max), and the head Jaccard between
    every two seeds' circuits (mean, min). It replicates when at least REPLICATES_SHARE of the
    paper's components recur in every seed beyond the seeds' circuits' composition (the analysis's
    beyond_chance: a component whose layer's heads, or MLP, every circuit keeps recurs by default).
    No interval: with a handful of seeds (fewer than MIN_CLUSTERS) a resampling interval says
    nothing, so the numbers are stated as they are, with the count composition alone would give."""
    if not replication or not replication.get("measured"):
        return None
    seeds = replication["seeds"]
    own = [x for x in circuit["nodes"] if x not in ("embed", "logits")]  # the paper's model's circuit
    kept = [c for c in own if c in replication["replicated"]]
    heads = [set(s["heads"]) for s in seeds.values()]
    jac = [len(a & b) / len(a | b) if a | b else 1.0 for i, a in enumerate(heads) for b in heads[i + 1:]]
    beyond = [c for c in kept if c in replication.get("beyond_chance", [])]
    share = len(beyond) / len(own) if own else 0.0
    chance = replication.get("chance", {})
    return {"n_seeds": len(seeds), "n_components": len(own), "n_replicated": len(kept), "share": share,
            "replicated": kept, "beyond_chance": beyond, "expected_by_composition": sum(chance.get(c, 0.0) for c in kept),
            "replicates": share >= REPLICATES_SHARE, "testable": replication.get("testable", True),
            "differs": (len(kept) / len(own) if own else 0.0) < REPLICATES_SHARE,  # fails even by index
            "edges": [min(s["n_edges"] for s in seeds.values()), max(s["n_edges"] for s in seeds.values())],
            "heads": [min(len(h) for h in heads), max(len(h) for h in heads)],
            "heads_jaccard_mean": sum(jac) / len(jac) if jac else None, "heads_jaccard_min": min(jac) if jac else None,
            "too_few_for_interval": len(seeds) < MIN_CLUSTERS}
