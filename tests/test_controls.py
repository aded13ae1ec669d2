"""Controls and multiplicity read off result files (no model): a matched control needs more than
one possible set; overlap tests over the task pairs are Holm-corrected."""

import pytest

from opposites.derived import matched_control
from opposites.summary import carries, lowers_logit_diff


def ablation(distinct_sets):
    """Planted: ablating the named set drops accuracy to 0.5 and the logit difference by 3; the
    control leaves accuracy at 1 and the logit difference nearly unchanged."""
    named = {"accuracy": 0.5, "accuracy_ci95": [0.4, 0.6], "logit_diff_change_ci95": [-3.5, -2.6]}
    others = {"accuracy_min": 1.0, "accuracy_mean": 1.0, "accuracy_mean_ci95": [1.0, 1.0],
              "logit_diff_change_mean_ci95": [-0.8, -0.4], "distinct_sets": distinct_sets}
    return {"named": named, "random_others": others, "matched_control": True}


def test_a_control_with_one_possible_set_is_no_matched_control():
    """With one possible set (distinct_sets 1, e.g. MLP 0+1 against MLP 2+3 in a 4-layer model) every
    'random' draw is that set: no matched control exists, so nothing is said to carry the task or
    to lower the logit difference beyond it (before, both were claimed). Two sets: a control."""
    one, two = ablation(1), ablation(2)
    assert matched_control(one) is None and not carries(one) and not lowers_logit_diff(one)
    assert matched_control(two) is two["random_others"] and carries(two) and lowers_logit_diff(two)
    assert matched_control({"named": {}, "random_others": None}) is None and matched_control(None) is None


def test_holm_controls_the_family_wise_error_on_planted_nulls():
    """Holm against an independent count: over 2000 planted families of 6 null p-values (uniform),
    the share of families with any rejection at alpha stays <= alpha (uncorrected: about 6 alpha);
    planted effects (p = 1e-4) are still found, and Holm equals Bonferroni's first step."""
    import numpy as np
    from opposites.derived import holm
    rng = np.random.default_rng(0)
    alpha = 0.025
    nulls = rng.uniform(size=(2000, 6))
    any_holm = np.mean([holm(p, alpha).any() for p in nulls])
    any_raw = np.mean((nulls <= alpha).any(1))
    assert any_holm <= alpha + 0.01 and any_raw > 4 * alpha
    assert holm([1e-4, 1e-4, 0.9, float("nan")], alpha).tolist() == [True, True, False, False]
    assert holm([0.01, 0.02], alpha).tolist() == [True, True] and holm([0.013, 0.02], alpha).tolist() == [False, False]


def overlap_pair(a, b, percentile, reachable=100.0):
    return {"a": a, "b": b, "heads_jaccard_null": [0.1, 0.3, 0.5], "heads_jaccard_percentile": percentile,
            "heads_jaccard_reachable": reachable, "edges_jaccard_null": [0.1, 0.2, 0.3], "edges_jaccard_percentile": 50.0}


def test_overlap_support_is_holm_corrected_over_the_testable_pairs():
    """Planted: three testable pairs at the 99th, 98th and 60th percentiles of their nulls, and one
    that cannot reach the threshold. Each of the first two beats the single-test threshold (97.5,
    'supports' before), but not Holm's over the 3 testable pairs (0.01 > 0.025 / 3); a pair at the
    99.9th percentile survives. The untestable pair is not counted in m."""
    from opposites.sharing import pair_verdicts
    pairs = [overlap_pair("a", "b", 99.0), overlap_pair("a", "c", 98.0), overlap_pair("b", "c", 60.0),
             overlap_pair("a", "d", 90.0, reachable=90.0)]
    shared = {(p["a"], p["b"]): [] for p in pairs}
    got = pair_verdicts(pairs, {}, shared)
    assert [v["overlap"] for v in got] == ["chance after Holm", "chance after Holm", "chance", "not testable"]
    assert all(v["overlap_n_tested"] == 3 for v in got)
    pairs[0]["heads_jaccard_percentile"] = 99.9
    assert pair_verdicts(pairs, {}, shared)[0]["overlap"] == "supports"


def test_transfer_p_value_inverts_the_wilson_bound():
    """The transfer p-value is the score test Wilson's interval inverts: the lower 95% bound lies
    above 0.5 exactly when the one-sided p-value is below 0.025 (checked on a grid of k/n)."""
    from opposites.derived import wilson_p_above
    from opposites.stats import wilson
    for n in (6, 21, 64):
        for k in range(n + 1):
            low, high = wilson(k, n)
            p = wilson_p_above(k / n, [low, high], 0.5)
            assert (low > 0.5) == (p < 0.025), (k, n, low, p)


def test_a_circuit_that_differs_between_seeds_is_reported_as_not_replicating():
    """Planted from the trained IOI numbers: the paper's circuit has 18 components, the other seeds'
    3 and 4, with only MLP 0 and MLP 1 in all three: it does not replicate (2 of 18), and the numbers
    stated are the counts (6 to 60 edges); a circuit whose components all recur replicates. One model
    (no seed axis): None, nothing stated."""
    from opposites.findings import REPLICATES_SHARE, seed_replication
    big = ["0.0", "0.1", "0.2", "0.3", "1.0", "1.1", "1.2", "2.0", "2.2", "2.3", "3.0", "3.1", "3.2", "3.3",
           "MLP 0", "MLP 1", "MLP 2", "MLP 3"]
    seed = lambda comps, edges: {"components": comps, "heads": [c for c in comps if not c.startswith("MLP")],  # noqa: E731
                                 "n_edges": edges}
    rep = {"measured": True, "replicated": ["MLP 0", "MLP 1"],
           "seeds": {"0": seed(big, 60), "1": seed(["0.0", "MLP 0", "MLP 1", "MLP 2"], 7), "2": seed(["0.1", "MLP 0", "MLP 1"], 6)}}
    got = seed_replication(rep, {"nodes": ["embed", *big, "logits"]})
    assert not got["replicates"] and (got["n_replicated"], got["n_components"]) == (2, 18)
    assert got["edges"] == [6, 60] and got["heads"] == [1, 14] and got["heads_jaccard_min"] == 0.0
    same = {"measured": True, "replicated": ["0.1", "1.2"], "beyond_chance": ["0.1", "1.2"],
            "chance": {"0.1": 1 / 1728, "1.2": 1 / 1728}, "seeds": {s: seed(["0.1", "1.2"], 5) for s in "012"}}
    ok = seed_replication(same, {"nodes": ["embed", "0.1", "1.2", "logits"]})
    assert ok["replicates"] and ok["share"] == 1.0 >= REPLICATES_SHARE and ok["heads_jaccard_mean"] == 1.0
    # every seed keeps every head of its layer and the MLP: all recur, as composition alone gives
    full = {"measured": True, "replicated": ["0.0", "0.1", "MLP 0"], "beyond_chance": [],
            "chance": {"0.0": 1.0, "0.1": 1.0, "MLP 0": 1.0}, "seeds": {s: seed(["0.0", "0.1", "MLP 0"], 5) for s in "012"}}
    default = seed_replication(full, {"nodes": ["embed", "0.0", "0.1", "MLP 0", "logits"]})
    assert not default["replicates"] and default["n_replicated"] == 3 and default["expected_by_composition"] == 3.0
    assert seed_replication({"measured": False}, {"nodes": []}) is None and seed_replication(None, {"nodes": []}) is None


def test_das_training_iia_is_shown_beside_held_out():
    """The glance states DAS's IIA on its training pairs beside the held-out IIA (before: held out
    only, so a subspace that fits its training words but not new ones looked the same as one that
    generalises)."""
    from opposites.findings import glance
    k = {"k": 2, "iia": 0.9, "iia_ci95": [0.7, 0.97], "train_iia": 1.0}
    interchange = {"sweep": {"best_end": {"label": "after 0", "site": "s", "iia": 1.0, "iia_ci95": [0.9, 1.0], "layer": 0},
                             "n_pairs": 64, "locations": []},
                   "end_carries": True, "role_left": True, "das_testable": True, "das_k": k, "n_candidates": 12}
    data = {"baseline": {"t": {"does_task": True, "accuracy": 1.0, "accuracy_ci95": [0.6, 1.0], "n_prompts": 64}}}
    got = glance(data, "t", interchange)
    assert (got["das_iia"], got["das_train_iia"]) == (0.9, 1.0)


def test_head_overlap_must_beat_the_uniform_head_null_too():
    """Trained ioi-size: head Jaccard 0.29, the largest possible (size's 4 heads inside ioi's 14),
    at percentile 99 of the composition-matched null (its random circuits spread over more heads)
    but near the middle of the uniform head null: not support for sharing."""
    from opposites.sharing import overlap_p_value, overlap_support, unreachable_null

    pair = {"heads_jaccard_null": [0.1, 0.2, 0.27], "heads_jaccard_percentile": 99.3, "heads_jaccard_reachable": 99.3,
            "edges_jaccard_null": [0.2, 0.27, 0.33], "edges_jaccard_percentile": 49.0,
            "heads_uniform_jaccard_percentile": 62.0, "heads_uniform_jaccard_reachable": 99.0}
    assert overlap_support(pair) == "chance" and overlap_p_value(pair) == pytest.approx(0.38)
    assert overlap_support({**pair, "heads_uniform_jaccard_percentile": 98.0}) == "supports"
    assert overlap_support({**pair, "heads_uniform_jaccard_reachable": 90.0}) == "not testable"
    # the text names the null that cannot be reached, not the composition-matched one (reachable at 99.3)
    assert unreachable_null(pair) is None
    assert unreachable_null({**pair, "heads_uniform_jaccard_reachable": 90.0}) == ("heads_uniform", 90.0)
