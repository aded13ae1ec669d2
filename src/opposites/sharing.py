"""Shared or coincident? For each pair of tasks, the three tests the sharing section reads (no torch:
table and prose jobs use it):
  overlap      the circuits' head (and edge) overlap against the composition-matched null (overlap.py);
  transfer     cross-task interchange at END (analyses/transfer.py): at a component both circuits
               contain (or END's residual after a layer), does A's activation make B give what B's
               task makes of A's source word, as B's own activation does within B;
  replication  whether the shared components recur in the circuits of models trained from other
               seeds (absent for a single model such as GPT-2: not measured).
Sharing is claimed only where all three support it.

Multiplicity: overlap and transfer are each tested once per pair of tasks (6 pairs for 4 tasks), so
each family is Holm-corrected over the pairs (family-wise error ALPHA, one-sided, as the single
test's SUPPORT_PERCENTILE): overlap over the pairs whose overlap is testable (a pair whose largest
possible overlap cannot reach the threshold can never be a false discovery, so it is not counted:
Tarone's refinement), transfer over the pairs where it is measurable."""

from __future__ import annotations

import math

import numpy as np

from opposites.derived import holm, wilson_p_above

CARRIES = 0.5  # a location carries the source word when its IIA's lower 95% bound exceeds this
SUPPORT_PERCENTILE = 97.5  # observed overlap above this percentile of the null: more than chance
ALPHA = 1 - SUPPORT_PERCENTILE / 100  # one-sided family-wise error of each family of pair tests (Holm)


def _locations(transfer: dict, source: str, disjoint: bool = False) -> dict[str, dict] | None:
    """component -> its entry, in the transfer result of one base task for one source task (None:
    not measurable); `disjoint`: on the prompts of the templates each task has alone."""
    entry = next((s for s in transfer["sources"] if s["source"] == source), None)
    entry = (entry or {}).get("disjoint") if disjoint else entry
    return None if entry is None or "locations" not in entry else {x["component"]: x for x in entry["locations"]}


def component_verdict(within_a: dict, within_b: dict, a_to_b: dict, b_to_a: dict) -> str:
    """One location, from its within-task and cross-task IIA (each with its Wilson interval)."""
    carry = lambda x: x["iia_ci95"][0] > CARRIES  # noqa: E731
    if carry(within_a) and carry(within_b):
        if carry(a_to_b) and carry(b_to_a):
            return "transfers"
        if min(a_to_b["iia_ci95"][1], b_to_a["iia_ci95"][1]) < CARRIES:
            return "does not transfer"
        return "inconclusive"
    if carry(within_a) or carry(within_b):
        return "carries the source word in one task only"
    return "carries the source word in neither task"


def pair_transfer(transfer: dict[str, dict], a: str, b: str, shared: list[str]) -> dict:
    """Transfer between tasks a and b: per shared component and at END's residual after each layer,
    the within-task and both cross-task IIAs and a verdict; `transfers` when a shared component, or
    the earliest residual point carrying the source word in both tasks, transfers both ways."""
    if a not in transfer or b not in transfer:
        return {"measurable": False, "transfers": False, "reason": "no transfer result"}
    into_b, into_a = _locations(transfer[b], a), _locations(transfer[a], b)
    if into_b is None or into_a is None:
        entry = next((s for s in transfer[b]["sources"] if s["source"] == a), {})
        return {"measurable": False, "transfers": False, "reason": entry.get("not_measurable", "no pairs")}
    within_a, within_b = _locations(transfer[a], a), _locations(transfer[b], b)
    rows = []
    for c in [*shared, *(x for x in into_b if x.startswith("resid"))]:
        if c in into_b and c in into_a:
            rows.append({"component": c, "within_a": within_a[c], "within_b": within_b[c], "a_to_b": into_b[c],
                         "b_to_a": into_a[c], "verdict": component_verdict(within_a[c], within_b[c], into_b[c], into_a[c])})
    resid = [r for r in rows if r["component"].startswith("resid") and r["verdict"] in TESTED]
    located = resid[0] if resid else None  # the earliest residual point where both tasks carry the word
    gatekeep(rows, located)
    components = [r for r in rows if not r["component"].startswith("resid")]
    transferring = [r["component"] for r in components if r["verdict"] == "transfers"]
    failing = [r["component"] for r in components if r["verdict"] == "does not transfer"]
    return {"measurable": True, "n_pairs": min(r["a_to_b"]["n"] for r in rows) if rows else 0, "rows": rows,
            "components": components, "located": located, "transferring": transferring, "failing": failing,
            "transfers": bool(transferring) or bool(located and located["verdict"] == "transfers"),
            "disjoint": disjoint_transfer(transfer, a, b, transferring + ([located["component"]] if located else []))}


def disjoint_transfer(transfer: dict[str, dict], a: str, b: str, where: list[str]) -> list[dict] | None:
    """Cross-task IIA at the locations `where` on the prompts of the templates each task has alone
    (None where the tasks share no template, or one has no template of its own)."""
    into_b, into_a = _locations(transfer[b], a, disjoint=True), _locations(transfer[a], b, disjoint=True)
    if into_b is None or into_a is None:
        return None
    carry = lambda x: x["iia_ci95"][0] > CARRIES  # noqa: E731
    return [{"component": c, "a_to_b": into_b[c], "b_to_a": into_a[c], "transfers": carry(into_b[c]) and carry(into_a[c])}
            for c in where if c in into_b and c in into_a]


def deciding_nulls(pair: dict) -> list[str]:
    """The nulls an overlap is tested against: both head nulls (the uniform one where computed)
    where the composition-matched head null has freedom, else the edge null where it has, else none."""
    heads, edges = pair.get("heads_jaccard_null"), pair.get("edges_jaccard_null")
    if heads and heads[0] != heads[2]:
        return ["heads"] + (["heads_uniform"] if "heads_uniform_jaccard_percentile" in pair else [])
    return ["edges"] if edges and edges[0] != edges[2] else []


NULL_NAMES = {"heads": "composition-matched head null", "heads_uniform": "uniform head null", "edges": "edge null"}


def unreachable_null(pair: dict) -> tuple[str, float] | None:
    """The first deciding null (deciding_nulls) that even the largest overlap of these sizes would
    not beat, with the percentile that overlap would reach; None where every one is reachable."""
    for n in deciding_nulls(pair):
        if pair.get(f"{n}_jaccard_reachable", 100.0) < SUPPORT_PERCENTILE:
            return n, pair[f"{n}_jaccard_reachable"]
    return None


def overlap_support(pair: dict) -> str:
    """'supports', 'chance', 'not testable' or 'not measurable': the head overlap against the
    composition-matched null, or where that null has no freedom (a circuit uses every head of its
    layers), the edge overlap against its null. 'not testable': even the largest overlap sets of
    these sizes can have would not reach SUPPORT_PERCENTILE of the null (few heads, circuits that
    hold most of them), so the test could never support sharing here. The head overlap must beat
    both head nulls (where the uniform one is computed): random circuits of the same composition
    spread over more heads than a real circuit that concentrates on a few layers, so against that
    null alone a circuit holding most heads looks like sharing (an intersection-union test: each
    null at the same level)."""
    nulls = deciding_nulls(pair)
    if not nulls:
        return "not measurable"
    if unreachable_null(pair):
        return "not testable"
    return "supports" if all(pair[f"{n}_jaccard_percentile"] >= SUPPORT_PERCENTILE for n in nulls) else "chance"


def overlap_p_value(pair: dict) -> float:
    """One-sided p-value of the decisive overlap (overlap_support's nulls) against its null: the
    share of null draws above it, ties counted half (1 - percentile / 100), the largest over the
    head nulls where both decide; NaN where the overlap is not testable or not measurable."""
    if overlap_support(pair) not in ("supports", "chance"):
        return math.nan
    return max(1 - pair[f"{n}_jaccard_percentile"] / 100 for n in deciding_nulls(pair))


def point_name(component: str) -> str:
    """A transfer location in words: END's residual after a layer ("resid after 0", transfer.label),
    or the component's own name."""
    return f"END's residual after layer {component.split()[-1]}" if component.startswith("resid after") else component


TESTED = ("transfers", "does not transfer", "inconclusive")  # the location carries the word within both tasks


def location_p_value(row: dict) -> float:
    """One-sided p-value that a location transfers: the larger of the two directions' p-values of
    IIA > CARRIES (both must hold)."""
    return max(wilson_p_above(row[d]["iia"], row[d]["iia_ci95"], CARRIES) for d in ("a_to_b", "b_to_a"))


def gatekeep(rows: list[dict], primary: dict | None) -> None:
    """A pair is tested first at its primary location, the earliest residual point that carries the
    word within both tasks, at ALPHA; only if it transfers there are the other locations that carry
    the word within both tasks tested, Holm-corrected among themselves (a fixed-sequence procedure:
    the family-wise error stays ALPHA). Without a primary point those locations are the family. A
    location whose own interval clears CARRIES but that the procedure does not reach, or that fails
    the correction, is marked so instead of "transfers"."""
    secondary = [r for r in rows if r is not primary and r["verdict"] in TESTED]
    if primary is not None and primary["verdict"] != "transfers":
        for r in secondary:
            if r["verdict"] == "transfers":
                r["verdict"] = "not tested (the primary point does not transfer)"
        return
    for r, kept in zip(secondary, holm([location_p_value(r) for r in secondary], ALPHA)):
        if r["verdict"] == "transfers" and not kept:
            r["verdict"] = "inconclusive after Holm"


def transfer_p_value(t: dict) -> float:
    """One-sided p-value that a pair transfers: its primary location's (gatekeep), else the smallest
    location p-value times the number of locations tested (Bonferroni, at most 1); NaN where
    transfer is not measurable or no location carries the word within both tasks."""
    if not t.get("measurable"):
        return math.nan
    if t.get("located") is not None:
        return location_p_value(t["located"])
    p = [x for x in (location_p_value(r) for r in t["rows"] if r["verdict"] in TESTED + ("inconclusive after Holm",))
         if not math.isnan(x)]
    return min(1.0, len(p) * min(p)) if p else math.nan


def replication_support(replication: dict[str, dict] | None, a: str, b: str, shared: list[str]) -> dict:
    """Which of the components shared by a and b are in both tasks' circuits in every seed's model
    beyond what the circuits' composition gives (replicated; the analysis's beyond_chance), which
    recur only by default (by_default), and the pair's head Jaccard per seed as mean and range
    (measured: false for one model)."""
    ra, rb = (replication or {}).get(a), (replication or {}).get(b)
    if not ra or not rb or not ra["measured"] or not rb["measured"] or ra["seeds"].keys() != rb["seeds"].keys():
        return {"measured": False, "replicated": []}
    jac = []
    for s in ra["seeds"]:
        ha, hb = set(ra["seeds"][s]["heads"]), set(rb["seeds"][s]["heads"])
        jac.append(len(ha & hb) / len(ha | hb) if ha | hb else 0.0)
    beyond = set(ra.get("beyond_chance", [])) & set(rb.get("beyond_chance", []))
    recurring = set(ra["replicated"]) & set(rb["replicated"])
    return {"measured": True, "testable": ra.get("testable", True) and rb.get("testable", True),
            "n_seeds": ra["n_seeds"], "seeds": list(ra["seeds"]),
            "replicated": [c for c in shared if c in beyond],
            "by_default": [c for c in shared if c in recurring - beyond],
            "heads_jaccard": {"mean": sum(jac) / len(jac), "min": min(jac), "max": max(jac)}}


def pair_verdicts(pairs: list[dict], transfer: dict[str, dict], shared: dict[tuple[str, str], list[str]],
                  replication: dict[str, dict] | None = None) -> list[dict]:
    """Per pair of tasks (overlap.compare's pairs): overlap against its null, transfer and
    replication, and the claim: sharing only where all three support it; the verdict: yes (the
    claim), no (a test ran and does not support it) or not testable (none failed, but one cannot
    be run on this model)."""
    transfers = [pair_transfer(transfer, p["a"], p["b"], shared[(p["a"], p["b"])]) for p in pairs]
    overlap_p, transfer_p = [overlap_p_value(p) for p in pairs], [transfer_p_value(t) for t in transfers]
    overlap_holm, transfer_holm = holm(overlap_p, ALPHA), holm(transfer_p, ALPHA)
    out = []
    for i, (p, t) in enumerate(zip(pairs, transfers)):
        a, b = p["a"], p["b"]
        rep = replication_support(replication, a, b, shared[(a, b)])
        ov = overlap_support(p)
        if ov == "supports" and not overlap_holm[i]:
            ov = "chance after Holm"  # beyond the null alone, not once the pairs tested are counted
        if t.get("transfers") and not transfer_holm[i]:
            t = {**t, "transfers": False, "holm_failed": True}
        t = {**t, "p_value": transfer_p[i], "n_tested": int((~np.isnan(transfer_p)).sum())}
        functional = t.get("transfers", False) and rep["measured"] and bool(rep["replicated"])  # transfer and replication
        claim = ov == "supports" and functional
        failed = (ov in ("chance", "chance after Holm") or (t["measurable"] and not t["transfers"])
                  or (rep["measured"] and rep["testable"] and not rep["replicated"]))  # a test ran and does not support it
        out.append({"a": a, "b": b, "overlap": ov, "overlap_pair": p, "overlap_p": overlap_p[i],
                    "overlap_n_tested": int((~np.isnan(overlap_p)).sum()), "transfer": t, "replication": rep,
                    "shared": shared[(a, b)], "functional": functional, "claim": claim,
                    "verdict": "yes" if claim else "no" if failed else "not testable"})
    return out



def shared_components(circuits: dict[str, dict]) -> dict[tuple[str, str], list[str]]:
    """(a, b) -> the components (heads and MLPs) in both tasks' circuits, in the circuits' order."""
    ends = {"embed", "logits"}
    return {(a, b): [x for x in circuits[a]["nodes"] if x in circuits[b]["nodes"] and x not in ends]
            for a in circuits for b in circuits if a != b}


def prompt_overlap(a: str, b: str, prompts: dict[str, list[dict]]) -> dict:
    """What the two tasks' prompts have in common by construction: templates (the same string: the
    same positions and END token), names, and source words (the copy role's words in the prompts)."""
    from opposites.prompts import load_spec

    sa, sb = load_spec(a), load_spec(b)
    words = lambda t, s: {r["words"][s["copy_role"]] for r in prompts[t]}  # noqa: E731
    return {"templates": sorted(set(sa["templates"]) & set(sb["templates"])),
            "n_templates": [len(sa["templates"]), len(sb["templates"])],
            "names": sorted(set(sa.get("names", [])) & set(sb.get("names", []))),
            "n_names": [len(sa.get("names", [])), len(sb.get("names", []))],
            "source_words": sorted(words(a, sa) & words(b, sb))}


def sharing_facts(data: dict, tasks: list[str], overlap_pairs: list[dict]) -> dict:
    """What the sharing section states, per pair of tasks (pair_verdicts), and whether the seed axis
    exists (replication measured: model=trained with more than one seed)."""
    if "transfer" not in data:
        return {"pairs": [], "replication": None}
    circuits = {t: data["circuit"][t] for t in tasks}
    replication = data.get("replication")
    measured = bool(replication) and all(replication[t]["measured"] for t in tasks if t in replication)
    pairs = pair_verdicts(overlap_pairs, data["transfer"], shared_components(circuits), replication)
    for p in pairs:
        p["prompts"] = prompt_overlap(p["a"], p["b"], data["prompts"])
    return {"pairs": pairs, "measurable": [p for p in pairs if p["transfer"]["measurable"]],
            "claimed": [p for p in pairs if p["claim"]], "replication": replication if measured else None,
            "untestable_but_functional": [p for p in pairs if p["overlap"] == "not testable" and p["functional"]]}
