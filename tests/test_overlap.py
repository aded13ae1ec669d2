"""Overlap between tasks' circuits against chance: random circuits of the same composition."""

from opposites.nodes import Edge, Node, component_nodes
from opposites.overlap import compare, null_overlap


def graph(layers: int, heads: int) -> list[tuple[str, str]]:
    """Every edge of a GPT-2-style graph: the embedding, heads and MLPs write; heads' q/k/v, MLPs
    and the logits read what was written before them."""
    writers = [Node("embed")] + [n for l in range(layers) for n in [*(Node("head", l, h) for h in range(heads)), Node("mlp", l)]]
    readers = [n for l in range(layers) for n in [*(Node("head", l, h, i) for h in range(heads) for i in "qkv"), Node("mlp", l)]]
    readers.append(Node("logits"))
    return [(str(w), str(r)) for w in writers for r in readers if w.step < r.step]


def circuit(edges) -> dict:
    nodes = component_nodes([Edge(Node.parse(s), Node.parse(d)) for s, d in edges])
    return {"nodes": sorted(map(str, nodes)), "edges": [{"src": s, "dst": d} for s, d in edges]}


def test_identical_circuits_in_a_large_graph_overlap_more_than_chance():
    g = graph(4, 8)
    a = {("embed", "1.3.v"), ("1.3", "2.5.q"), ("2.5", "MLP 3"), ("MLP 3", "logits"), ("0.6", "logits")}
    null = null_overlap(a, a, g)
    assert null["edges_jaccard_percentile"] > 99 and null["heads_jaccard_percentile"] > 97.5
    assert null["edges_jaccard_null"][2] < 0.5


def test_overlap_forced_by_composition_is_at_chance():
    """Both circuits hold every edge of their strata (all embed -> layer-0 value inputs): any random
    circuit of that composition is the same circuit, so Jaccard 1 is what chance gives."""
    g = graph(2, 4)
    a = {("embed", f"0.{h}.v") for h in range(4)}
    null = null_overlap(a, set(a), g)
    assert null["edges_jaccard_null"] == [1.0, 1.0, 1.0] and null["edges_jaccard_percentile"] == 50
    assert null["heads_jaccard_percentile"] == 50


def test_disjoint_circuits_are_below_chance_and_the_null_is_seeded():
    g = graph(3, 4)
    a = {("embed", f"0.{h}.v") for h in range(2)} | {("0.0", "logits")}
    b = {("embed", f"0.{h}.v") for h in range(2, 4)} | {("0.3", "logits")}
    null = null_overlap(a, b, g)
    assert null["edges_jaccard_percentile"] < 50 and null == null_overlap(a, b, g)
    assert null != null_overlap(a, b, g, seed=1)


def test_compare_reports_the_null_when_the_graphs_are_given():
    g = graph(2, 4)
    a, b = circuit([("embed", "0.1.v"), ("0.1", "logits")]), circuit([("embed", "0.1.v"), ("0.2", "logits")])
    pair = compare({"x": a, "y": b}, [], {}, {"x": g, "y": g})["pairs"][0]
    assert pair["heads_jaccard"] == 1 / 2 and 0 <= pair["heads_jaccard_percentile"] <= 100
    assert "edges_jaccard_null" not in compare({"x": a, "y": b}, [], {})["pairs"][0]
