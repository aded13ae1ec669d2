"""The methods find what is there (issue 13): on the model trained offline on the tasks, whose
answer depends only on the role tokens, the analyses must show information entering at the role and
arriving at END, a mover head attending to the role, agreement between DLA, patching, attribution
and the circuit, and named components whose ablation hurts the task (claimed to carry it only
against as many other heads of the same layers). Trained once per test session (conftest: trained_dir)."""

import pytest

from opposites import models
from opposites.analyses import baseline, circuits, head_dla, heads, mechanism, opposite, patching
from opposites.derived import top_abs_heads, top_patched_heads
from opposites.nodes import head_nodes
from opposites.prompts import load_spec, make_prompts
from opposites.summary import carries

TASKS = ("ioi", "size", "antonym", "isa")
SEED = 0


@pytest.fixture(scope="module")
def trained(trained_dir):
    return models.load(str(trained_dir), None, "cpu")


@pytest.fixture(scope="module")
def task_rows(trained):
    return {t: make_prompts(t, trained.tokenizer, 48, seed=SEED, min_prompts=8)[0] for t in TASKS}


@pytest.fixture(scope="module")
def results(trained, task_rows):
    """Every analysis the assertions read, once per task."""
    out = {}
    for t in TASKS:
        r = task_rows[t]
        res = {"baseline": baseline.run(trained, r, 16, seed=SEED),
               "head_dla": head_dla.run(trained, r, 16, seed=SEED),
               "patch_resid": patching.patch_resid(trained, r, 16, "denoising", SEED),
               "patch_heads": patching.patch_heads(trained, r, 16, "denoising", SEED),
               "patch_attribution": patching.patch_attribution(trained, r, 16, "denoising", SEED),
               "attention": heads.attention(trained, r, 16, seed=0)}
        res["edges"] = circuits.edges(trained, r, 16, ig_steps=5)
        res["circuit"] = circuits.circuit(trained, r, 16, circuit_share=0.8, ig_steps=5, stability_resamples=4,
                                          seed=SEED, edges=res["edges"])
        res["movers"] = mechanism.movers(trained, r, 16, SEED, patch_heads=res["patch_heads"], attention=res["attention"])
        if load_spec(t)["family"] == "opposite":
            res["head_logits"] = opposite.head_logits(trained, r, 16, seed=SEED)
            res["mapping"] = mechanism.mapping(trained, r, 16, SEED, head_logits=res["head_logits"], movers=res["movers"])
        out[t] = res
    return out


def corrupted_role(rows) -> str:
    """The role whose word the corruption changes (ADJ1, S2, ENTITY)."""
    (role,) = {k for r in rows for k in r["changed"]}
    return role


@pytest.mark.parametrize("task", TASKS)
def test_the_model_does_the_task(results, task):
    b = results[task]["baseline"]
    assert b["does_task"] and b["top1"] >= 0.9 and b["logit_diff_mean_ci95"][0] > 2
    if b["corrupted_has_own_answer"]:
        assert b["corrupted_accuracy"] >= 0.9  # the corrupted prompt is answered with its own answer


@pytest.mark.parametrize("task", TASKS)
def test_information_enters_at_the_role_and_arrives_at_end(results, task_rows, task):
    df = results[task]["patch_resid"]
    assert df.normaliser_ok.all()
    role = corrupted_role(task_rows[task])
    first = df[df.layer == 0].set_index("role").value
    assert first[role] > 0.8 and first.drop(role).abs().max() < 0.2
    end = df[df.role == "END"].set_index("layer").value
    assert end.max() > 0.5 and end.idxmax() > 0  # moved to END by some layer (not there at the start)


@pytest.mark.parametrize("task", TASKS)
def test_a_top_patching_head_attends_from_end_to_the_role(results, task):
    att = results[task]["attention"]
    roles = load_spec(task)["roles"]
    end = att[(att.dest_role == "END") & att.src_role.isin(roles)]
    best = max(end[(end.layer == l) & (end["head"] == h)].value.max() for l, h in top_patched_heads(results[task]["patch_heads"], 3))
    assert best >= 0.5


@pytest.mark.parametrize("task", TASKS)
def test_methods_agree(results, task):
    res = results[task]
    by_dla, by_patch = set(top_abs_heads(res["head_dla"], 3)), set(top_patched_heads(res["patch_heads"], 3))
    in_circuit = {tuple(map(int, h.split("."))) for h in head_nodes(res["circuit"])}
    assert by_dla & by_patch and by_patch & in_circuit
    merged = res["patch_heads"].merge(res["patch_attribution"], on=["layer", "head", "activation"])
    z = merged[merged.activation == "z"]
    assert z.value_x.corr(z.value_y) > 0.5  # attribution patching tracks exact patching


@pytest.mark.parametrize("task", TASKS)
def test_circuit_recovers_the_target_with_few_edges(results, task):
    c = results[task]["circuit"]
    assert c["recovered"] >= c["target"] and c["n_edges"] < 0.2 * c["total_edges"]


@pytest.mark.parametrize("task", TASKS)
def test_ablating_the_named_movers_hurts_the_task_and_the_claim_needs_a_layer_matched_control(results, task):
    """Mean-ablating the named movers (layer-0 heads on this model) takes accuracy from about 1 to at
    most 0.8, interval below 0.95 (measured: 0.58-0.63). Whether they matter more than other heads
    is asked of as many other heads of the same layers: where the movers fill their layer there is
    no such control, and the paper must not claim that they carry the task (summary.carries)."""
    A = results[task]["movers"]["ablation"]
    assert A["named"]["accuracy"] <= 0.8 and A["named"]["accuracy_ci95"][1] < 0.95, A["named"]
    if not A["matched_control"]:
        assert not carries(A)


@pytest.mark.parametrize("task", ["size", "antonym"])
def test_the_movers_alone_map_adj1_to_its_opposite(results, task):
    """Where the opposite mapping happens on this model: with every other head and every MLP
    mean-ablated, the mover heads alone (their OV circuits, on the direct path) still prefer the
    opposite to the repeated word on most prompts (interval above chance, 0.5) and on average by a
    logit; ablating the movers instead collapses the task (test above). Measured (800 steps, 48
    prompts): size 0.67 [0.54, 0.79], antonym similar; not the whole mapping, so the paper says
    'part of'."""
    only = results[task]["mapping"]["movers_only"]
    assert only["accuracy_ci95"][0] > 0.5 and only["logit_diff"] > 1, only
