"""The mechanism stated per task (summary.glance): the circuit's widest path against a brute-force
enumeration of every path, and no field written without the interval that supports it."""

import itertools
import random

from opposites.findings import glance
from opposites.widest import node_of, widest_path


def all_paths(edges, node="logits"):
    """Every embed -> node path, as lists of edges (brute force)."""
    if node == "embed":
        return [[]]
    return [p + [e] for e in edges if node_of(e["dst"]) == node for p in all_paths(edges, node_of(e["src"]))]


def random_circuit(rng):
    """A layered DAG: embed, heads L.H (entered through .q/.k/.v), MLP L, logits."""
    nodes = ["embed"] + [f"{l}.{h}" for l in range(2) for h in range(2)] + ["MLP 0", "MLP 1"]
    layer = lambda n: -1 if n == "embed" else int(n.split()[-1]) + 0.5 if n.startswith("MLP") else int(n[0])  # noqa: E731
    edges = []
    for a, b in itertools.permutations(nodes, 2):
        if layer(a) < layer(b) and rng.random() < 0.6:
            dst = f"{b}.{rng.choice('qkv')}" if not b.startswith("MLP") else b
            edges.append({"src": a, "dst": dst, "score": rng.uniform(-1, 1)})
    edges += [{"src": n, "dst": "logits", "score": rng.uniform(-1, 1)} for n in nodes[1:] if rng.random() < 0.7]
    return edges


def test_widest_path_is_the_best_of_every_path():
    rng = random.Random(0)
    checked = 0
    for _ in range(50):
        edges = random_circuit(rng)
        paths = all_paths(edges)
        got = widest_path(edges)
        if not paths:
            assert got is None
            continue
        best = max(min(abs(e["score"]) for e in p) for p in paths)
        written = {tuple(["embed"] + [x for e in p for x in ([e["dst"]] if e["dst"] != node_of(e["dst"]) else [])
                                      + [node_of(e["dst"])]]): min(abs(e["score"]) for e in p) for p in paths}
        nodes, weakest = got
        assert weakest == best and written[tuple(nodes)] == best  # a real path, and a widest one
        checked += 1
    assert checked >= 10


def facts(recovered_ci, end_ci, does_task=True):
    baseline = {"does_task": does_task, "accuracy": 0.9, "accuracy_ci95": [0.8, 0.95], "n_prompts": 64}
    held_out = {"recovered": 0.8, "recovered_ci95": recovered_ci}  # the paper's circuit on held-out prompts
    in_sample = {"recovered": 0.95, "recovered_ci95": [0.9, 1.0]}  # never the share the glance states
    circuit = {"method": "EAP-IG", "how": "top", "methods": {"EAP-IG": in_sample}, "n_edges": 3,
               "at_size": [{"method": "EAP", "how": "top", "held_out": in_sample},
                           {"method": "EAP-IG", "how": "top", "held_out": held_out}],
               "edges": [{"src": "embed", "dst": "0.1.v", "score": 0.5}, {"src": "0.1", "dst": "MLP 0", "score": 0.4},
                         {"src": "MLP 0", "dst": "logits", "score": 0.9}]}
    end = {"label": "after layer 0", "site": "blocks.0.hook_resid_post", "iia": 0.95, "iia_ci95": end_ci,
           "kind": "resid_post", "layer": 0, "position": "END"}
    locations = [{"label": "before layer 0", "kind": "resid_pre", "layer": 0, "position": "END", "iia": 0.0, "iia_ci95": [0.0, 0.06]},
                 end, {"label": "head 0.1", "kind": "z", "layer": 0, "position": "END", "iia": 0.1, "iia_ci95": [0.0, 0.2]},
                 {"label": "MLP 0", "kind": "mlp_out", "layer": 0, "position": "END", "iia": 0.9, "iia_ci95": [0.8, 1.0]},
                 {"label": "MLP 1", "kind": "mlp_out", "layer": 1, "position": "END", "iia": 0.0, "iia_ci95": [0.0, 0.06]}]
    interchange = {"sweep": {"best_end": end, "n_pairs": 64, "locations": locations}, "end_carries": end_ci[0] > 0.5,
                   "role_left": True, "das_testable": True,
                   "das_k": {"k": 4, "iia": 0.9, "iia_ci95": [0.8, 1.0]}, "n_candidates": 12}
    return {"baseline": {"t": baseline}, "circuit": {"t": circuit}}, interchange


def test_glance_writes_only_what_the_intervals_support():
    data, ic = facts([0.7, 0.9], [0.9, 1.0])
    g = glance(data, "t", ic)
    assert g["path"] == ["embed", "0.1.v", "0.1", "MLP 0", "logits"] and g["share_carried_ci95"] == [0.7, 0.9]
    assert g["located"] == "after layer 0" and g["das_k"] == 4 and g["n_candidates"] == 12
    data, ic = facts([-0.1, 0.9], [0.4, 0.7])  # recovery interval reaches 0; END not shown to carry it
    g = glance(data, "t", ic)
    assert g["path"] is None and g["share_carried"] is None
    assert g["located"] is None and g["iia"] is None and g["das_k"] is None


def test_glance_states_path_patching_shares_of_its_own_path_only():
    data, ic = facts([0.7, 0.9], [0.9, 1.0])
    edge = {"sender": "0.1", "receiver": "MLP 0", "input": "", "value": 0.6, "ci_low": 0.5, "ci_high": 0.7}
    data["circuit_paths"] = {"t": {"path": ["embed", "0.1.v", "0.1", "MLP 0", "logits"], "n_prompts": 64, "edges": [edge]}}
    g = glance(data, "t", ic)
    assert g["path_edges"] == [{"sender": "0.1", "reader": "MLP 0", "share": 0.6, "share_ci95": [0.5, 0.7],
                                "excludes_zero": True}] and g["path_n_prompts"] == 64
    data["circuit_paths"]["t"]["path"] = ["embed", "0.2.v", "0.2", "MLP 0", "logits"]  # another path's shares
    assert glance(data, "t", ic)["path_edges"] is None


def test_second_corruption_names_heads_that_matter_more_under_it():
    import pandas as pd

    from opposites.findings import second_corruption_facts

    heads = [{"layer": 0, "head": h, "value": v, "ci_low": lo, "ci_high": hi}
             for h, v, lo, hi in [(0, 0.6, 0.4, 0.8), (1, 0.5, 0.3, 0.7), (2, 0.1, -0.1, 0.3), (3, 0.0, -0.1, 0.1)]]
    resid = [{"layer": l, "role": r, "value": v} for l, r, v in [(0, "IO", 1.0), (1, "IO", 0.2), (0, "END", 0.0), (1, "END", 0.9)]]
    second = {"corruption": "IO replaced", "role": "IO", "n": 8, "n_left_out": 0, "normaliser_ok": True, "example": None,
              "heads": heads, "resid": resid}
    main = pd.DataFrame([{"activation": "z", "layer": 0, "head": h, "value": v, "ci_low": lo, "ci_high": hi, "normaliser_ok": True}
                         for h, v, lo, hi in [(0, 0.0, -0.2, 0.2), (1, 0.5, 0.3, 0.7), (2, 0.0, -0.1, 0.1), (3, 0.9, 0.8, 1.0)]])
    data = {"patch_second": {"t": second}, "patch_heads": {"t": main}}
    f = second_corruption_facts(data, "t")
    assert [h["head"] for h in f["top"]] == ["0.0", "0.1", "0.2"] and f["more_here"] == ["0.0"]  # 0.1: the same both ways
    assert f["last_at_role"] is None and f["first_at_end"] == 1  # IO before layer 0 is the input itself: not a finding
    data["patch_heads"]["t"] = main.assign(normaliser_ok=False)  # the main maps are not interpreted: no comparison
    assert second_corruption_facts(data, "t")["more_here"] == []
    assert second_corruption_facts({"patch_heads": {"t": main}}, "t") is None


def test_glance_names_the_tied_head_set_das_state_and_arrival():
    data, ic = facts([0.7, 0.9], [0.9, 1.0])
    share = lambda h, v, lo, hi: {"sender": h, "receiver": "MLP 0", "input": "", "value": v, "ci_low": lo, "ci_high": hi}  # noqa: E731
    shares = [share("0.0", 0.08, 0.05, 0.11), share("0.1", 0.21, 0.15, 0.27), share("0.2", 0.24, 0.19, 0.30)]
    data["path_set"] = {"t": {"path": ["embed", "0.1.v", "0.1", "MLP 0", "logits"], "n_prompts": 64,
                              "edges": [{"sender": "0.1", "reader": "MLP 0", "shares": shares, "tied": ["0.2", "0.1"]}]}}
    g = glance(data, "t", ic)
    assert g["head_sets"][0]["tied"] == ["0.2", "0.1"] and [x["head"] for x in g["head_sets"][0]["shares"]] == ["0.2", "0.1", "0.0"]
    assert g["das_status"] == "found"
    assert g["arrival"]["before"] is None  # END before layer 0 holds the same token in both prompts: no contrast
    assert [x["label"] for x in g["arrival"]["parts"]] == ["head 0.1", "MLP 0"]  # outputs up to the located layer
    assert g["arrival"]["carriers"] == ["MLP 0"]  # interval above one half
    assert glance(data, "t", {**ic, "das_k": None})["das_status"] == "none"
    assert glance(data, "t", {**ic, "das_k": None, "das_testable": False})["das_status"] == "not testable"
    data["path_set"]["t"]["path"] = ["embed", "0.2.v", "0.2", "MLP 0", "logits"]  # another path's set
    assert glance(data, "t", ic)["head_sets"] is None


def test_key_tests_read_the_role_each_head_attends_and_only_shifts_the_model_still_reads():
    import pandas as pd

    from opposites.findings import io_heads, keys

    att = pd.DataFrame([{"layer": 0, "head": 1, "dest_role": "END", "src_role": r, "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1}
                        for r, v in [("IO", 0.3), ("S1", 0.6), ("BOS", 0.9), ("other", 0.9)]])
    entry = lambda role: {"head": "0.1", "role": role, "keys_on": "content", "before": {}, "after": {}}  # noqa: E731
    task = lambda role, how, low: {"role": role, "shift": how, "accuracy_ci95": [low, 1.0]}  # noqa: E731
    shift = {"heads": [entry("IO"), entry("S1")], "n_prompts": 8, "n_clusters": 4, "unit": "source word",
             "clean_logit_diff": 1.0, "clean_logit_diff_ci95": [0.5, 1.5],
             "task": [task("S1", "before", 0.9), task("S1", "after", 0.3), task("S1", "swap", 0.9), task("IO", "before", 0.9)]}
    k = keys({"attention": {"t": att}, "shift": {"t": shift}}, "t", ["0.1", "0.1"])
    assert [(e["head"], e["role"]) for e in k["heads"]] == [("0.1", "S1")]  # the role it reads most, once
    assert not k["heads"][0]["shifts_read"] and k["heads"][0]["swap_read"]  # 'after' breaks the task
    assert {t["role"] for t in k["task"]} == {"S1"}
    heads = [{"layer": 0, "head": h, "value": v, "ci_low": lo, "ci_high": 1.0} for h, v, lo in
             [(0, 0.1, 0.05), (1, 0.5, 0.4), (2, 0.3, -0.1), (3, 0.2, 0.1), (4, 0.05, 0.01), (5, 0.4, 0.3)]]
    second = {"corruption": "IO replaced", "role": "IO", "n": 8, "heads": heads}
    got = io_heads({"patch_second": {"ioi": second}, "attention": {"ioi": att}}, "ioi")
    assert [h["head"] for h in got["heads"]] == ["0.1", "0.5", "0.3", "0.0"]  # intervals above 0, the four largest


def test_arrival_flags_an_earlier_point_it_cannot_separate_and_lists_earlier_outputs():
    """Trained ioi: END after layer 1 98% [85, 100] is located, but after layer 0 is 83% [64, 93]:
    overlapping and above one half, so the two are not separated; outputs of layer 0 (attention 0,
    MLP 0) swapped alone are reported too, with the attention-to-MLP chain named."""
    from opposites.findings import arrival

    loc = lambda label, kind, layer, iia, ci: {"label": label, "kind": kind, "layer": layer, "position": "END",  # noqa: E731
                                               "iia": iia, "iia_ci95": ci}
    best = loc("after layer 1", "resid_post", 1, 0.98, [0.85, 1.0])
    sweep = {"best_end": best, "n_pairs": 64, "locations": [
        loc("after layer 0", "resid_post", 0, 0.83, [0.64, 0.93]), best,
        loc("attention 0", "attn_out", 0, 0.83, [0.64, 0.93]), loc("MLP 0", "mlp_out", 0, 0.80, [0.61, 0.91]),
        loc("head 0.3", "z", 0, 0.42, [0.30, 0.55]), loc("MLP 2", "mlp_out", 2, 0.9, [0.8, 0.95])]}
    got = arrival({"end_carries": True, "sweep": sweep})
    assert got["before_overlaps"] and got["before"]["label"] == "after layer 0"
    assert [p["label"] for p in got["parts"]] == ["attention 0", "MLP 0", "head 0.3"]  # not MLP 2: after the located layer
    assert got["carriers"] == ["attention 0", "MLP 0"] and got["chained"] == [0]
    apart = {**sweep, "locations": [loc("after layer 0", "resid_post", 0, 0.3, [0.2, 0.45]), *sweep["locations"][1:]]}
    assert not arrival({"end_carries": True, "sweep": apart})["before_overlaps"]
