"""Path patching along the circuit's widest path (opposites.widest): each head on it patched into
the path's next node alone, so the paper states the share each of the path's head edges carries,
not only the attribution score that chose the path."""

from __future__ import annotations

from opposites.analyses.patch_followup import path_patch
from opposites.derived import head_label
from opposites.nodes import Node
from opposites.widest import widest_path


def circuit_paths(model, rows, batch_size, patch_direction: str, seed: int, circuit=None) -> dict:
    """The circuit's widest path (opposites.widest: the embed -> logits path whose weakest edge
    has the largest |attribution|) and, for each head on it, path patching of that head's output
    into the next node of the path alone (a later head's q/k/v input, an MLP's input or the logits):
    the share of the clean - corrupted logit difference that edge carries by itself."""
    found = widest_path(circuit["edges"])
    if found is None:
        return {"path": None, "n_prompts": len(rows), "edges": []}
    path = found[0]
    wanted = []  # (sender head, reader, input)
    for here, there in zip(path, path[1:]):
        node, reader = Node.parse(here), Node.parse(there)
        if node.kind == "head" and node.input is None:
            wanted.append(((node.layer, node.head), str(Node("head", reader.layer, reader.head)) if reader.kind == "head" else there,
                           reader.input or ""))
    senders = sorted({(s, "heads" if i else "mlps") for s, _, i in wanted})
    found_rows = path_patch(model, rows, batch_size, patch_direction, seed, senders) if senders else []
    edges = [next(r for r in found_rows if r["sender"] == head_label(*s) and r["receiver"] == rec and r["input"] == i)
             for s, rec, i in wanted]
    return {"path": path, "weakest_score": found[1], "n_prompts": len(rows), "edges": edges}
