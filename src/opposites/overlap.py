"""Compare discovered circuits across tasks (no torch: figure and table jobs use it)."""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

import numpy as np

from opposites.circuit_metrics import jaccard
from opposites.nodes import Edge, Node, component_nodes, head_nodes

ENDS = {"embed", "logits"}


def edge_set(c: dict) -> set[tuple[str, str]]:
    return {(e["src"], e["dst"]) for e in c["edges"]}


def compare(circuits: dict[str, dict], opposite_tasks: list[str], classes: dict[str, list[str]],
            graphs: dict[str, list[tuple[str, str]]] | None = None) -> dict:
    """Head and edge overlap between every pair of tasks (counts and Jaccard, with a 95% interval over
    the circuits re-discovered on bootstrap resamples where the files have them: resample i of one
    task against resample i of the other; with `graphs`, each task's whole edge graph, also the
    overlap expected by chance: null_overlap), the components (heads and MLPs; embed and logits are
    in every circuit, so they are left out) shared by all opposite tasks, and the IOI classes of the
    shared heads."""
    pairs = []
    for a, b in combinations(circuits, 2):
        ha, hb, ea, eb = head_nodes(circuits[a]), head_nodes(circuits[b]), edge_set(circuits[a]), edge_set(circuits[b])
        null = null_overlap(ea, eb, graphs[a]) if graphs and a in graphs and set(graphs[a]) == set(graphs.get(b, ())) else {}
        pairs.append({"a": a, "b": b, "heads": len(ha & hb), "heads_jaccard": jaccard(ha, hb),
                      "edges": len(ea & eb), "edges_jaccard": jaccard(ea, eb),
                      **_resampled_jaccard(circuits[a], circuits[b]), **null})
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


NULL_DRAWS = 1000  # pairs of random circuits per pair of tasks
NULL_SEED = 0


def _stratum(edge: tuple[str, str]) -> tuple:
    """What a random circuit keeps of a real one: the kind and layer of each end (and which input of
    a head it reads), so the null has the same composition by layer and component type."""
    src, dst = Node.parse(edge[0]), Node.parse(edge[1])
    return src.kind, src.layer, dst.kind, dst.layer, dst.input


def null_overlap(a: set[tuple[str, str]], b: set[tuple[str, str]], graph: list[tuple[str, str]],
                 draws: int = NULL_DRAWS, seed: int = NULL_SEED) -> dict:
    """The head and edge Jaccard between two circuits against chance: `draws` pairs of random
    circuits drawn from the model's edge graph, each with the same number of edges in every stratum
    (_stratum) as the real circuit it stands for; and, for heads, pairs of head sets of the circuits'
    sizes drawn uniformly from all heads (heads_uniform: composition can fix the first null
    completely, when a circuit uses every head of its layers). Returns, for each, the null's 2.5th,
    50th and 97.5th percentiles and the observed value's percentile in the null (ties count half):
    a percentile near 100 is more overlap than the null gives; a null whose 2.5th and 97.5th
    percentiles are equal leaves no freedom and cannot tell sharing from coincidence. `reachable`:
    the percentile the largest Jaccard two sets of these sizes can have (the smaller over the
    larger) would get; below the support threshold the test cannot reject, whatever is observed."""
    graph = sorted(set(graph))
    index = {e: i for i, e in enumerate(graph)}
    pools: dict[tuple, list[int]] = defaultdict(list)
    for i, e in enumerate(graph):
        pools[_stratum(e)].append(i)
    label = lambda n: str(n.component) if n.is_head else None  # noqa: E731
    heads = sorted({h for e in graph for h in (label(Node.parse(e[0])), label(Node.parse(e[1]))) if h})
    hid = {h: i for i, h in enumerate(heads)}
    ends = np.array([[hid.get(label(Node.parse(s)), -1), hid.get(label(Node.parse(d)), -1)] for s, d in graph])  # (edges, 2)
    rng = np.random.default_rng(seed)

    def composition(edges):
        counts = defaultdict(int)
        for e in edges:
            counts[_stratum(e)] += 1
        return [(np.array(pools[st]), k) for st, k in sorted(counts.items(), key=str)]

    def draws_of(comp) -> np.ndarray:  # (draws, edges) indices into graph: one random circuit per row
        # per stratum, the k smallest of uniform keys: a uniform k-subset of its pool in every row
        picks = [pool[np.argpartition(rng.random((draws, len(pool))), k - 1, axis=1)[:, :k]] for pool, k in comp]
        return np.concatenate(picks, axis=1) if picks else np.zeros((draws, 0), int)

    def head_set(idx: np.ndarray) -> np.ndarray:
        ids = ends[idx].ravel()
        return np.unique(ids[ids >= 0])

    def jac(x: np.ndarray, y: np.ndarray) -> float:
        union = len(np.union1d(x, y))
        return len(np.intersect1d(x, y)) / union if union else 0.0

    def masks(rows: np.ndarray, n: int) -> np.ndarray:  # (draws, n) bool: which of n items each row holds
        out = np.zeros((len(rows), n + 1), bool)  # the last column takes the -1 of an end that is no head
        out[np.arange(len(rows))[:, None], rows] = True
        return out[:, :n]

    def jaccards(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # row-wise Jaccard of (draws, n) masks
        union = (x | y).sum(1)
        return np.where(union > 0, (x & y).sum(1) / np.maximum(union, 1), 0.0)

    x, y = draws_of(composition(a)), draws_of(composition(b))
    head_masks = [masks(ends[z].reshape(draws, -1), len(heads)) for z in (x, y)]
    null = np.stack([jaccards(*head_masks), jaccards(masks(x, len(graph)), masks(y, len(graph)))], axis=1)
    real_a, real_b = np.array([index[e] for e in a], int), np.array([index[e] for e in b], int)
    observed = {"heads": jac(head_set(real_a), head_set(real_b)), "edges": jac(real_a, real_b)}
    # a coarser null that composition cannot pin down: as many heads, drawn uniformly from all heads
    n_a, n_b = len(head_set(real_a)), len(head_set(real_b))
    uniform = np.array([jac(rng.choice(len(heads), n_a, replace=False), rng.choice(len(heads), n_b, replace=False))
                        for _ in range(draws)])
    largest = {"heads": min(n_a, n_b) / max(n_a, n_b, 1), "edges": min(len(a), len(b)) / max(len(a), len(b), 1)}
    out = {}
    for what, values in (("heads", null[:, 0]), ("edges", null[:, 1]), ("heads_uniform", uniform)):
        obs = observed[what.split("_")[0]]
        out[f"{what}_jaccard_null"] = np.percentile(values, [2.5, 50, 97.5]).tolist()
        out[f"{what}_jaccard_percentile"] = percentile_in(values, obs)
        out[f"{what}_jaccard_reachable"] = percentile_in(values, largest[what.split("_")[0]])
    return out


def percentile_in(values: np.ndarray, x: float) -> float:
    """x's percentile among the null's values, ties counted half (floats equal within 1e-12)."""
    equal = np.isclose(values, x, rtol=0, atol=1e-12)
    return float(100 * ((values < x) & ~equal).mean() + 50 * equal.mean())


def graph_of(edge_scores) -> list[tuple[str, str]]:
    """Every edge of the model's graph, from an `edges` result (one row per method and edge)."""
    return sorted(set(zip(edge_scores["src"], edge_scores["dst"])))
