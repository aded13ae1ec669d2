"""ACDC (Conmy et al. 2023, "Towards automated circuit discovery") on the exact edge forward, as a
third way to find a circuit beside ranking by EAP or EAP-IG scores.

Start from the whole graph; visit the readers from the logits backwards (reverse computation
order), and each reader's incoming edges from the latest writer back; cut an edge when cutting it
lowers the recovered share of the clean-minus-corrupted logit difference by less than the threshold
tau (recovery: clean prompts, the corrupted writer output on every cut edge, as everywhere here).
A reader whose component no kept edge leaves is dangling: its edges are cut without a forward.
Each trial differs from the kept circuit by one edge, so it resumes from the kept circuit's trace
(Discovery.try_removal: the step greedy refinement takes too). A sweep of tau gives circuits of
several sizes: the ACDC circuit is the smallest of them that reaches the target share; the sweep is
its faithfulness curve. Started from a smaller circuit (EAP-IG's grid circuit) instead of the whole
graph, the same pass prunes it (circuits.HYBRID).
"""

from __future__ import annotations

from opposites.circuit_metrics import ACDC_THRESHOLDS, prune_dangling
from opposites.nodes import Edge


def whole_graph(d) -> list[Edge]:
    g = d.runs.graph
    ws, rs = g.allowed.nonzero(as_tuple=True)
    return [Edge(g.writers[w], g.readers[r]) for w, r in zip(ws.tolist(), rs.tolist())]


def prune(d, threshold: float, start: list[Edge] | None = None) -> tuple[list[Edge], float]:
    """One ACDC pass at `threshold` from the whole graph (or from the circuit `start`): the circuit
    and its recovery."""
    from opposites.analyses.circuits import Kept

    kept = Kept(whole_graph(d), 1.0) if start is None else Kept(list(start), d.recover([start])[0])
    for reader in reversed(d.runs.graph.readers):
        incoming = [e for e in kept.circuit if e.dst == reader]
        if reader.kind != "logits" and not any(e.src == reader.component for e in kept.circuit):
            kept.circuit = [e for e in kept.circuit if e.dst != reader]  # dangling: these edges change nothing
            continue
        for edge in reversed(incoming):  # the latest writer first
            d.try_removal(kept, edge, lambda got: kept.value - got < threshold)
    circuit = prune_dangling(kept.circuit)
    return circuit, d.recover([circuit])[0]


def discover(d, held, target: float, seed: int, thresholds=ACDC_THRESHOLDS, start: list[Edge] | None = None) -> dict:
    """The sweep (from the whole graph, or from the circuit `start`) on the prompts d weighs, the
    chosen circuit (the smallest reaching `target`; else the largest), and its numbers there and on
    the prompts `held` weighs (circuits.described), in the keys the other methods' descriptions use
    (the "grid size" is the circuit ACDC starts from)."""
    from opposites.analyses.circuits import described

    total = int(d.runs.graph.allowed.sum())
    sweep = [(tau, *prune(d, tau, start)) for tau in thresholds]  # (tau, circuit, recovery)
    reaching = [s for s in sweep if s[2] >= target]
    tau, kept, value = min(reaching, key=lambda s: len(s[1])) if reaching else max(sweep, key=lambda s: len(s[1]))
    by_size = {}  # circuit size -> (circuit, recovery), the whole graph apart
    for _, c, v in sweep:
        if len(c) < total:
            by_size.setdefault(len(c), (c, v))
    points = [(n, by_size[n][1]) for n in sorted(by_size)] + [(total, 1.0)]
    fractions = [n / total for n, _ in points]
    numbers = described(d, held, kept, fractions, [by_size[n][0] for n in sorted(by_size)], seed, whole=True)
    return {"n_edges": len(kept), "grid_size": total if start is None else len(start), "threshold": tau, **numbers,
            "curve": [{"n_edges": n, "recovered": v} for n, v in points],
            "mib_curve": [{"fraction": f, "n_edges": n, "recovered": v} for f, (n, v) in zip(fractions, points)],
            "sweep": [{"threshold": t, "n_edges": len(c), "recovered": v} for t, c, v in sweep]}
