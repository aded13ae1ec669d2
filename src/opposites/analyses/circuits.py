"""Circuit discovery on the task's own prompts: edge attribution patching scores every edge of the
computational graph; ACDC-style pruning keeps edges in score order until exact edge patching
(corrupted writer outputs on every removed edge) recovers `circuit_share` of the clean metric;
the faithfulness curve records recovery against circuit size. Cross-task comparison: `compare`."""

from __future__ import annotations

import pandas as pd
import torch

from opposites.core import batches, direction
from opposites.nodes import Edge, component_nodes
from opposites.patching.edges import Graph, edge_attribution, edge_forward
from opposites.patching.engine import Weights


def _runs(model, rows, batch_size):
    """Per batch: what edge patching needs, with the clean and corrupted logit differences."""
    weights = Weights.from_bridge(model)
    out = []
    for batch in batches(model, rows, batch_size, desc="edge runs"):
        d, bias = direction(model, batch)
        ld_clean, _, _ = edge_forward(weights, batch.clean, d, bias)
        ld_corrupted, corrupted_out, _ = edge_forward(weights, batch.corrupted, d, bias)
        out.append({"batch": batch, "dir": d, "bias": bias, "corrupted_out": corrupted_out,
                    "clean": ld_clean, "corrupted": ld_corrupted})
    return weights, out


def _means(runs) -> tuple[float, float, int]:
    n = sum(len(r["clean"]) for r in runs)
    return sum(r["clean"].sum().item() for r in runs) / n, sum(r["corrupted"].sum().item() for r in runs) / n, n


def edges(model, rows, batch_size) -> pd.DataFrame:
    """Every edge's attribution score, normalised like patching: the estimated share of the
    clean-minus-corrupted logit difference that restoring this edge alone recovers."""
    weights = Weights.from_bridge(model)
    graph = Graph(weights.n_layers, weights.n_heads)
    total, n, clean, corrupted = 0, 0, 0.0, 0.0
    for batch in batches(model, rows, batch_size, desc="edge attribution"):
        d, bias = direction(model, batch)
        scores, ld_clean, ld_corrupted = edge_attribution(weights, batch.clean, batch.corrupted, d, bias)
        total = total + scores
        n, clean, corrupted = n + len(batch.rows), clean + ld_clean.sum().item(), corrupted + ld_corrupted.sum().item()
    scores = (total / n / ((clean - corrupted) / n)).cpu()
    ws, rs = graph.allowed.nonzero(as_tuple=True)
    return pd.DataFrame({"src": [str(graph.writers[i]) for i in ws.tolist()],
                         "dst": [str(graph.readers[i]) for i in rs.tolist()],
                         "score": scores[ws, rs].double().tolist()})


def recovered(weights, runs, keep: torch.Tensor, clean: float, corrupted: float, n: int) -> float:
    """Exact: clean prompts, every edge outside `keep` fed the corrupted writer output."""
    total = sum(edge_forward(weights, r["batch"].clean, r["dir"], r["bias"], r["corrupted_out"], keep)[0].sum().item()
                for r in runs)
    return (total / n - corrupted) / (clean - corrupted)


def _node_order(label: str) -> tuple:
    return label != "embed", label == "logits", label


def circuit(model, rows, batch_size, circuit_share: float, edges=None) -> dict:
    weights, runs = _runs(model, rows, batch_size)
    graph = Graph(weights.n_layers, weights.n_heads)
    clean, corrupted, n = _means(runs)
    writer_index = {node: i for i, node in enumerate(graph.writers)}
    reader_index = {node: i for i, node in enumerate(graph.readers)}
    ranked = edges.assign(a=edges.score.abs()).sort_values("a", ascending=False, kind="stable")
    ranked_edges = [Edge.from_record(r) for r in ranked.to_dict("records")]
    index = [(writer_index[e.src], reader_index[e.dst]) for e in ranked_edges]
    total = len(index)

    def keep_top(size: int) -> torch.Tensor:
        keep = torch.zeros_like(graph.allowed)
        if size:
            ws, rs = zip(*index[:size])
            keep[list(ws), list(rs)] = True
        return keep

    curve: dict[int, float] = {}

    def at(size: int) -> float:
        if size not in curve:
            curve[size] = recovered(weights, runs, keep_top(size), clean, corrupted, n)
        return curve[size]

    grid = sorted({0, total} | {min(total, 2 ** i) for i in range(total.bit_length() + 1)})
    for size in grid:
        at(size)
    hit = next((size for size in grid if curve[size] >= circuit_share), total)
    lo = max([size for size in grid if size < hit] or [0])
    while hit - lo > 1:  # bisect between grid points (recovery is close to monotone there)
        mid = (lo + hit) // 2
        lo, hit = (lo, mid) if at(mid) >= circuit_share else (mid, hit)
    kept = ranked_edges[:hit]
    nodes = sorted((str(node) for node in component_nodes(kept)), key=_node_order)
    return {"target": circuit_share, "n_edges": int(hit), "total_edges": total, "recovered": curve[hit],
            "threshold": float(ranked.a.iloc[hit - 1]) if hit else None, "clean_logit_diff": clean,
            "corrupted_logit_diff": corrupted, "nodes": nodes,
            "edges": [{"src": str(e.src), "dst": str(e.dst), "score": float(s)}
                      for e, s in zip(kept, ranked.score.iloc[:hit])],
            "faithfulness": [{"n_edges": size, "recovered": v} for size, v in sorted(curve.items())]}


def faithfulness(model, rows, batch_size, circuit=None) -> pd.DataFrame:
    """The faithfulness curve measured during pruning, as a table."""
    return pd.DataFrame(circuit["faithfulness"])
