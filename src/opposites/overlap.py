"""Compare discovered circuits across tasks (no torch: figure and table jobs use it)."""

from __future__ import annotations

from itertools import combinations

from opposites.nodes import head_nodes

ENDS = {"embed", "logits"}


def edge_set(c: dict) -> set[tuple[str, str]]:
    return {(e["src"], e["dst"]) for e in c["edges"]}


def compare(circuits: dict[str, dict], opposite_tasks: list[str], classes: dict[str, list[str]]) -> dict:
    """Head and edge overlap between every pair of tasks (counts and Jaccard), the components (heads
    and MLPs; embed and logits are in every circuit, so they are left out) shared by all opposite
    tasks, and the IOI classes of the shared heads."""
    jac = lambda a, b: len(a & b) / len(a | b) if a | b else 0.0  # noqa: E731
    pairs = []
    for a, b in combinations(circuits, 2):
        ha, hb, ea, eb = head_nodes(circuits[a]), head_nodes(circuits[b]), edge_set(circuits[a]), edge_set(circuits[b])
        pairs.append({"a": a, "b": b, "heads": len(ha & hb), "heads_jaccard": jac(ha, hb),
                      "edges": len(ea & eb), "edges_jaccard": jac(ea, eb)})
    opp = [t for t in opposite_tasks if t in circuits]
    shared = sorted(set.intersection(*(set(circuits[t]["nodes"]) - ENDS for t in opp))) if opp else []
    head_class = {h: cls for cls, hs in classes.items() for h in hs}
    return {"pairs": pairs, "opposite_tasks": opp, "shared_by_opposites": shared,
            "shared_classes": {x: head_class.get(x, "") for x in shared}}
