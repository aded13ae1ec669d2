"""Is the widest path's head one head or one of a set? For each head edge on the circuit's widest path
(a head's output into the path's next node), every head of the circuit in the same layer is
path-patched into that same node alone, and the heads whose share's 95% interval overlaps the
largest share's interval are named together: the data do not tell them apart, so a statement must
name the set, not the one head the path happens to pass."""

from __future__ import annotations

from opposites.analyses.patch_followup import path_patch
from opposites.nodes import Node
from opposites.widest import widest_path


def tied(shares: list[dict]) -> list[str]:
    """The senders whose interval overlaps the largest share's interval (the largest among them),
    largest share first."""
    best = max(shares, key=lambda s: s["value"])
    overlap = [s for s in shares if s["ci_high"] >= best["ci_low"] and s["ci_low"] <= best["ci_high"]]
    return [s["sender"] for s in sorted(overlap, key=lambda s: -s["value"])]


def path_set(model, rows, batch_size, patch_direction: str, seed: int, circuit=None) -> dict:
    """Per head edge of the widest path: each same-layer head of the circuit path-patched into the
    edge's reader alone (share of the clean - corrupted logit difference, 95% cluster-bootstrap
    interval over source words), and the set not distinguishable from the largest (tied)."""
    found = widest_path(circuit["edges"])
    if found is None:
        return {"path": None, "n_prompts": len(rows), "edges": []}
    path, nodes = found[0], [Node.parse(x) for x in circuit["nodes"]]
    edges = []
    for here, there in zip(path, path[1:]):
        node, reader = Node.parse(here), Node.parse(there)
        if node.kind != "head" or node.input is not None:
            continue
        target = str(Node("head", reader.layer, reader.head)) if reader.kind == "head" else there
        heads = sorted({(n.layer, n.head) for n in nodes if n.is_head and n.layer == node.layer} | {(node.layer, node.head)})
        at = model.cfg.n_layers if reader.kind == "logits" else reader.layer  # only the edge's reader is patched
        found_rows = path_patch(model, rows, batch_size, patch_direction, seed,
                                [(h, "heads" if reader.input else "mlps") for h in heads], layer=at)
        shares = [r for r in found_rows if r["receiver"] == target and r["input"] == (reader.input or "")]
        edges.append({"sender": here, "reader": there, "shares": shares, "tied": tied(shares)})
    return {"path": path, "n_prompts": len(rows), "edges": edges}
