"""Compare discovered circuits across tasks (no torch: figure and table jobs use it)."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from opposites.circuit_metrics import jaccard
from opposites.nodes import Edge, Node, component_nodes, head_nodes

ENDS = {"embed", "logits"}


def edge_set(c: dict) -> set[tuple[str, str]]:
    return {(e["src"], e["dst"]) for e in c["edges"]}


def compare(circuits: dict[str, dict], opposite_tasks: list[str], classes: dict[str, list[str]]) -> dict:
    """Head and edge overlap between every pair of tasks (counts and Jaccard, with a 95% interval over
    the circuits re-discovered on bootstrap resamples where the files have them: resample i of one
    task against resample i of the other), the components (heads and MLPs; embed and logits are in
    every circuit, so they are left out) shared by all opposite tasks, and the IOI classes of the
    shared heads."""
    pairs = []
    for a, b in combinations(circuits, 2):
        ha, hb, ea, eb = head_nodes(circuits[a]), head_nodes(circuits[b]), edge_set(circuits[a]), edge_set(circuits[b])
        pairs.append({"a": a, "b": b, "heads": len(ha & hb), "heads_jaccard": jaccard(ha, hb),
                      "edges": len(ea & eb), "edges_jaccard": jaccard(ea, eb),
                      **_resampled_jaccard(circuits[a], circuits[b])})
    opp = [t for t in opposite_tasks if t in circuits]
    shared = sorted(set.intersection(*(set(circuits[t]["nodes"]) - ENDS for t in opp))) if opp else []
    elsewhere = set().union(*(set(c["nodes"]) for t, c in circuits.items() if t not in opp))
    head_class = {h: cls for cls, hs in classes.items() for h in hs}
    return {"pairs": pairs, "opposite_tasks": opp, "shared_by_opposites": shared,
            "specific_to_opposites": [x for x in shared if x not in elsewhere],
            "other_tasks": [t for t in circuits if t not in opp],
            "shared_classes": {x: head_class.get(x, "") for x in shared}}


GPT2_SMALL_EDGES = 32491  # the edge graph of a 12-layer, 12-head model


def gpt2_classes(circuits: dict[str, dict], classes: dict[str, list[str]]) -> dict[str, list[str]]:
    """GPT-2 small's published head classes apply only to a model of its shape (matched by index;
    on random:gpt2 they are labels without meaning, like everything on random weights)."""
    return classes if circuits and all(c["total_edges"] == GPT2_SMALL_EDGES for c in circuits.values()) else {}


def resampled_edges(circuit: dict) -> list[set[tuple[str, str]]]:
    """The edge sets of the circuits re-discovered on bootstrap resamples (empty if none)."""
    return [{tuple(x.split("->")) for x in c} for c in circuit.get("stability", {}).get("circuits", [])]


def _heads(edges: set[tuple[str, str]]) -> set[str]:
    return {str(n) for n in component_nodes([Edge(Node.parse(s), Node.parse(d)) for s, d in edges]) if n.is_head}


def _resampled_jaccard(a: dict, b: dict) -> dict:
    ra, rb = resampled_edges(a), resampled_edges(b)
    if not ra or len(ra) != len(rb):
        return {"heads_jaccard_ci95": None, "edges_jaccard_ci95": None}
    heads = [jaccard(_heads(x), _heads(y)) for x, y in zip(ra, rb)]
    edges = [jaccard(x, y) for x, y in zip(ra, rb)]
    return {"heads_jaccard_ci95": np.percentile(heads, [2.5, 97.5]).tolist(),
            "edges_jaccard_ci95": np.percentile(edges, [2.5, 97.5]).tolist()}
