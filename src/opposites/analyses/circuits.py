"""Circuit discovery on the task's own prompts: edge attribution patching scores every edge of the
computational graph; ACDC-style pruning keeps edges in score order until exact edge patching
(corrupted writer outputs on every removed edge) recovers `circuit_share` of the clean metric;
the faithfulness curve records recovery against circuit size. Cross-task comparison: `compare`."""

from __future__ import annotations

import pandas as pd
import torch

from opposites.core import batches, direction
from opposites.patching.edges import Graph, edge_attribution, edge_forward
from opposites.patching.engine import Weights


def _runs(model, rows, batch_size):
    """Per batch: what edge patching needs, with the clean and corrupted logit differences."""
    w = Weights.from_bridge(model)
    out = []
    for b in batches(model, rows, batch_size, desc="edge runs"):
        d, bias = direction(model, b)
        ld_clean, _, _ = edge_forward(w, b.clean, d, bias)
        ld_corr, corr_out, _ = edge_forward(w, b.corrupted, d, bias)
        out.append({"batch": b, "dir": d, "bias": bias, "corr_out": corr_out, "clean": ld_clean, "corr": ld_corr})
    return w, out


def _means(runs) -> tuple[float, float, int]:
    n = sum(len(r["clean"]) for r in runs)
    return sum(r["clean"].sum().item() for r in runs) / n, sum(r["corr"].sum().item() for r in runs) / n, n


def edges(model, rows, batch_size) -> pd.DataFrame:
    """Every edge's attribution score, normalised like patching: the estimated share of the
    clean-minus-corrupted logit difference that restoring this edge alone recovers."""
    w = Weights.from_bridge(model)
    g = Graph(w.n_layers, w.n_heads)
    total, n, clean, corr = 0, 0, 0.0, 0.0
    for b in batches(model, rows, batch_size, desc="edge attribution"):
        d, bias = direction(model, b)
        scores, ld_c, ld_k = edge_attribution(w, b.clean, b.corrupted, d, bias)
        total = total + scores
        n, clean, corr = n + len(b.rows), clean + ld_c.sum().item(), corr + ld_k.sum().item()
    scores = total / n / ((clean - corr) / n)
    ws, rs = g.allowed.nonzero(as_tuple=True)
    return pd.DataFrame({"src": [g.writers[i] for i in ws.tolist()], "dst": [g.readers[i] for i in rs.tolist()],
                         "score": scores[ws, rs].double().tolist()})


def recovered(w, runs, keep: torch.Tensor, clean: float, corr: float, n: int) -> float:
    """Exact: clean prompts, every edge outside `keep` fed the corrupted writer output."""
    total = sum(edge_forward(w, r["batch"].clean, r["dir"], r["bias"], r["corr_out"], keep)[0].sum().item() for r in runs)
    return (total / n - corr) / (clean - corr)


def circuit(model, rows, batch_size, circuit_share: float = 0.8, edges=None) -> dict:
    w, runs = _runs(model, rows, batch_size)
    g = Graph(w.n_layers, w.n_heads)
    clean, corr, n = _means(runs)
    wi = {name: i for i, name in enumerate(g.writers)}
    ri = {name: i for i, name in enumerate(g.readers)}
    ranked = edges.assign(a=edges.score.abs()).sort_values("a", ascending=False, kind="stable")
    idx = [(wi[s], ri[d]) for s, d in zip(ranked.src, ranked.dst)]
    total = len(idx)

    def keep_top(k: int) -> torch.Tensor:
        keep = torch.zeros_like(g.allowed)
        if k:
            ws, rs = zip(*idx[:k])
            keep[list(ws), list(rs)] = True
        return keep

    curve: dict[int, float] = {}

    def at(k: int) -> float:
        if k not in curve:
            curve[k] = recovered(w, runs, keep_top(k), clean, corr, n)
        return curve[k]

    grid = sorted({0, total} | {min(total, 2 ** i) for i in range(total.bit_length() + 1)})
    for k in grid:
        at(k)
    hit = next((k for k in grid if curve[k] >= circuit_share), total)
    lo = max([k for k in grid if k < hit] or [0])
    while hit - lo > 1:  # bisect between grid points (recovery is close to monotone there)
        mid = (lo + hit) // 2
        lo, hit = (lo, mid) if at(mid) >= circuit_share else (mid, hit)
    kept = ranked.iloc[:hit]
    nodes = sorted({*kept.src, *(d.rsplit(".", 1)[0] if d.count(".") == 2 else d for d in kept.dst)},
                   key=lambda s: (s != "embed", s == "logits", s))
    return {"target": circuit_share, "n_edges": int(hit), "total_edges": total, "recovered": curve[hit],
            "threshold": float(kept.a.iloc[-1]) if hit else None, "clean_logit_diff": clean,
            "corrupted_logit_diff": corr, "nodes": nodes,
            "edges": [{"src": s, "dst": d, "score": float(v)} for s, d, v in zip(kept.src, kept.dst, kept.score)],
            "faithfulness": [{"n_edges": k, "recovered": v} for k, v in sorted(curve.items())]}


def faithfulness(model, rows, batch_size, circuit=None) -> pd.DataFrame:
    """The faithfulness curve measured during pruning, as a table."""
    return pd.DataFrame(circuit["faithfulness"])
