"""The circuit's widest path: the embed -> logits path whose weakest edge has the largest
|attribution| (no torch: the paper's findings and the circuit_paths analysis read it)."""

from __future__ import annotations


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
