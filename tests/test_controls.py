"""Controls and multiplicity read off result files (no model): a matched control needs more than
one possible set; overlap tests over the task pairs are Holm-corrected."""

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
