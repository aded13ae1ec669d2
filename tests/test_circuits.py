"""Edge patching and circuit discovery: exact endpoints, edge attribution against TransformerLens 4,
a planted two-step circuit, and the cross-task comparison."""

import pytest
import torch

from opposites import models
from opposites.analyses import circuits
from opposites.nodes import Edge, Node
from opposites.overlap import compare
from opposites.core import batches, direction
from opposites.patching.edges import Graph, edge_attribution, edge_forward
from opposites.patching.engine import Weights


def test_graph_shape_matches_acdc_count_for_gpt2_small():
    g = Graph(12, 12)
    assert len(g.writers) == 1 + 12 * 13 and len(g.readers) == 12 * 37 + 1
    assert 30_000 < int(g.allowed.sum()) < 35_000  # ACDC: "about 32,000 edges"


def test_keeping_all_edges_is_clean_and_none_is_corrupted(toy64, rows):
    w, runs = circuits._runs(toy64, rows["ioi"], 8)
    clean, corr, n = circuits._means(runs)
    g = Graph(w.n_layers, w.n_heads)
    assert circuits.recovered(w, runs, g.allowed.clone(), clean, corr, n) == pytest.approx(1.0, abs=1e-4)
    assert circuits.recovered(w, runs, torch.zeros_like(g.allowed), clean, corr, n) == pytest.approx(0.0, abs=1e-4)


def test_edge_forward_is_the_model(toy64, rows):
    b = next(batches(toy64, rows["size"], 8))
    d, bias = direction(toy64, b)
    ld, _, _ = edge_forward(Weights.from_bridge(toy64), b.clean, d, bias)
    logits = toy64(b.clean)[:, -1]
    ref = logits.gather(1, b.answer[:, None])[:, 0] - logits.gather(1, b.wrong[:, None])[:, 0]
    torch.testing.assert_close(ld, ref, atol=1e-8, rtol=0)


def test_edge_attribution_matches_transformer_lens(toy64, rows):
    """Ours (summed over positions, batched) = TL 4's attribution_patch at edge granularity, summed
    over positions and averaged over prompts."""
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    b = next(batches(toy64, rows["isa"], 4))
    w = Weights.from_bridge(toy64)
    g = Graph(w.n_layers, w.n_heads)
    d, bias = direction(toy64, b)
    ours = edge_attribution(w, b.clean, b.corrupted, d, bias)[0] / len(b.rows)
    name = lambda node: ("embed" if node.kind == "embed" else f"MLP {node.layer}" if node.kind.startswith("mlp")  # noqa: E731
                         else "logits" if node.kind == "logits" else f"{node.layer}.{node.head}"
                         + ({"q_input": ".q", "k_input": ".k", "v_input": ".v"}.get(node.kind, "")))
    ref = torch.zeros_like(ours)
    for i in range(len(b.rows)):
        metric = lambda logits, i=i: logits[0, -1, b.answer[i]] - logits[0, -1, b.wrong[i]]  # noqa: E731
        with torch.enable_grad():
            res = attribution_patch(toy64, b.clean[i:i + 1], b.corrupted[i:i + 1], metric,
                                    EdgeAttributionConfig(granularity="edge"))
        for (src, dst), score in res.edge_scores.items():
            ref[g.writers.index(Node.parse(name(src))), g.readers.index(Node.parse(name(dst)))] += score / len(b.rows)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-4)


def planted_two_step(tmp_path):
    """2 layers x 2 heads, d_model 64. Token embeddings live in dims 0-31, positions are zero, MLPs
    and heads x.1 write nothing. Head 0.0 reads the tokens and writes into dims 32-63; head 1.0 reads
    its value only from dims 32-63 and writes into dims 0-31, which the (tied) unembedding reads.
    The only way the tokens reach the logits: embed -> 0.0 -> 1.0 -> logits."""
    def edit(net):
        n, dh = 64, 32
        net.transformer.wte.weight[:, 32:] = 0
        net.transformer.wpe.weight.zero_()
        for layer, blk in enumerate(net.transformer.h):
            blk.mlp.c_proj.weight.zero_()
            blk.mlp.c_proj.bias.zero_()
            blk.attn.c_attn.bias.zero_()
            blk.attn.c_proj.bias.zero_()
            W_V = blk.attn.c_attn.weight[:, 2 * n:]  # (d_model, heads * d_head)
            W_V[:, dh:] = 0  # head 1 of each layer: no value
            W_O = blk.attn.c_proj.weight  # rows: head dims, columns: d_model
            W_O[dh:] = 0
            if layer == 0:
                W_O[:dh, :32] = 0  # 0.0 writes only into dims 32-63, and little (LayerNorm's mean and
                W_O[:dh] *= 0.1  # scale mix every dim, so a big write would reach the logits directly)
            else:
                W_V[:32, :dh] = 0  # 1.0 reads only dims 32-63 ...
                W_V[32:, :dh] -= W_V[32:, :dh].mean(0)  # ... and ignores LayerNorm's shift there
                W_O[:dh, 32:] = 0  # and writes, strongly, into the token dims
                W_O[:dh] *= 30.0
    d = models.build_gpt2(tmp_path / "two-step", 2, 2, 64, seed=3, edit=edit)
    return models.load("toy", d, "cpu", dtype=torch.float64)


def test_planted_two_step_circuit_is_found(tmp_path, rows):
    model = planted_two_step(tmp_path)
    edges = circuits.edges(model, rows["ioi"], 8)
    c = circuits.circuit(model, rows["ioi"], 8, circuit_share=0.8, edges=edges)
    kept = {(e["src"], e["dst"]) for e in c["edges"]}
    assert ("1.0", "logits") in kept
    assert any(s == "0.0" and d.startswith("1.0.") for s, d in kept)
    assert set(c["nodes"]) <= {"embed", "0.0", "1.0", "logits"}
    assert c["recovered"] >= 0.8 and c["faithfulness"][-1]["recovered"] == pytest.approx(1.0, abs=1e-6)


def test_compare_counts_and_jaccard():
    a = {"nodes": ["embed", "9.9", "9.6", "MLP 2", "logits"],
         "edges": [{"src": "9.9", "dst": "logits", "score": 1}, {"src": "MLP 2", "dst": "9.9.v", "score": 1}]}
    b = {"nodes": ["embed", "9.9", "7.3", "MLP 2", "logits"],
         "edges": [{"src": "9.9", "dst": "logits", "score": 2}, {"src": "7.3", "dst": "9.9.q", "score": 1}]}
    c = {"nodes": ["embed", "9.9", "logits"], "edges": [{"src": "embed", "dst": "9.9.v", "score": 1}]}
    cmp = compare({"size": a, "antonym": b, "ioi": c}, ["size", "antonym"], {"name mover": ["9.9"]})
    p = {(x["a"], x["b"]): x for x in cmp["pairs"]}
    assert list(p) == [("size", "antonym"), ("size", "ioi"), ("antonym", "ioi")]
    x = p[("size", "antonym")]
    assert (x["heads"], x["heads_jaccard"], x["edges"], x["edges_jaccard"]) == (1, pytest.approx(1 / 3), 1, pytest.approx(1 / 3))
    assert (p[("size", "ioi")]["heads"], p[("size", "ioi")]["edges"]) == (1, 0)
    # embed and logits are in every circuit: never "shared components"; the IOI circuit is not an opposite task
    assert cmp["shared_by_opposites"] == ["9.9", "MLP 2"] and cmp["shared_classes"] == {"9.9": "name mover", "MLP 2": ""}
    assert compare({"size": a, "antonym": c}, ["size", "antonym"], {})["shared_by_opposites"] == ["9.9"]


@pytest.mark.parametrize("text", ["embed", "logits", "MLP 3", "9.9", "9.9.q", "11.10.v"])
def test_node_text_round_trips(text):
    node = Node.parse(text)
    assert str(node) == text and Node.parse(str(node)) == node


def test_node_parse_reads_the_fields_and_rejects_junk():
    assert Node.parse("9.6.k") == Node("head", 9, 6, "k") and Node.parse("9.6.k").component == Node("head", 9, 6)
    assert Node.parse("MLP 11") == Node("mlp", 11)
    edge = Edge.from_record({"src": "embed", "dst": "0.1.v", "score": 0.5})
    assert edge.record() == {"src": "embed", "dst": "0.1.v", "score": 0.5}
    for bad in ("9", "MLP", "head 9.9", "9.9.x", "9.9.q.k", ""):
        with pytest.raises(ValueError, match="not a circuit node"):
            Node.parse(bad)


def test_graph_nodes_are_typed_in_computation_order():
    g = Graph(2, 2)
    assert g.writers[:4] == [Node("embed"), Node("head", 0, 0), Node("head", 0, 1), Node("mlp", 0)]
    assert g.readers[:3] == [Node("head", 0, 0, "q"), Node("head", 0, 1, "q"), Node("head", 0, 0, "k")]
    assert g.readers[-1] == Node("logits")
