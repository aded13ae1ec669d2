"""The logit lens and DLA against invariants and TransformerLens's own reference functions."""

import pytest
import torch

from opposites.analyses import baseline, head_dla, logit_lens
from opposites.core import JobCache, batches, direction, end_state, read_out

TASKS = ("ioi", "size", "antonym", "isa")


@pytest.mark.parametrize("task", TASKS)
def test_final_lens_equals_model_logit_diff(toy, rows, task):
    lens = logit_lens.run(toy, rows[task], batch_size=5, seed=0)
    base = baseline.run(toy, rows[task], batch_size=5, seed=0)
    final = lens[(lens.kind == "accumulated") & (lens.label == "resid_post")].value.item()
    frozen = lens[(lens.kind == "accumulated_final_scale") & (lens.label == "resid_post")].value.item()
    assert final == pytest.approx(base["logit_diff_mean"], abs=1e-4)
    # the frozen-scale lens omits only the constant bias terms
    bias = lens[(lens.kind == "decomposed") & (lens.label == "bias")].value.item()
    assert frozen + bias == pytest.approx(base["logit_diff_mean"], abs=1e-4)


@pytest.mark.parametrize("task", TASKS)
def test_decomposition_sums_to_total(toy, rows, task):
    lens = logit_lens.run(toy, rows[task], batch_size=5, seed=0)
    base = baseline.run(toy, rows[task], batch_size=5, seed=0)
    assert lens[lens.kind == "decomposed"].value.sum() == pytest.approx(base["logit_diff_mean"], abs=1e-4)


def test_heads_plus_other_components_sum_to_total_per_prompt(toy, rows):
    for batch in batches(toy, rows["ioi"], 6):
        s = end_state(toy, batch)
        parts = (read_out(toy, s, s.heads).sum((0, 1)) + read_out(toy, s, s.attn_bias[:, None, :]).sum(0)
                 + read_out(toy, s, s.mlp).sum(0) + read_out(toy, s, s.embed) + s.bias_diff)
        torch.testing.assert_close(parts, s.logit_diff, atol=1e-4, rtol=0)


def test_head_dla_table_matches_per_prompt_mean(toy, rows):
    df = head_dla.run(toy, rows["size"], batch_size=4, seed=0)
    per = head_dla.per_prompt(toy, rows["size"], batch_size=7)  # batching must not matter
    assert len(df) == toy.cfg.n_layers * toy.cfg.n_heads
    torch.testing.assert_close(torch.tensor(df.value.to_numpy()), per.mean(-1).flatten().double(), atol=1e-6, rtol=0)


def test_shared_end_states_follow_the_prompts_answers(toy, rows):
    """The lens stage's analyses share one forward per batch (core.end_states); prompts with the
    same text but answer and wrong swapped must not get the first prompts' run: their DLA is negated."""
    r = rows["size"]
    swapped = [{**x, "answer": x["wrong"], "wrong": x["answer"]} for x in r]
    cache = JobCache()  # what one job's analyses share
    dla = head_dla.per_prompt(toy, r, 8, cache)
    torch.testing.assert_close(head_dla.per_prompt(toy, swapped, 8, cache), -dla, atol=1e-6, rtol=0)
    torch.testing.assert_close(head_dla.per_prompt(toy, r, 8, cache), dla, atol=0, rtol=0)


def _tl_reference(toy, batch):
    _, cache = toy.run_with_cache(batch.clean)
    d, _ = direction(toy, batch)  # (batch, d_model)
    return cache, d


def test_lens_matches_transformer_lens_accumulated_resid(toy, rows):
    batch = next(batches(toy, rows["antonym"], 8))
    cache, d = _tl_reference(toy, batch)
    _, b_u = direction(toy, batch)
    ours = logit_lens.run(toy, batch.rows, batch_size=8, seed=0)
    # TL 4: apply_ln=True recomputes the final LayerNorm on each residual (the logit lens proper)
    acc, labels = cache.accumulated_resid(incl_mid=True, apply_ln=True, pos_slice=-1, return_labels=True)
    reference = ((acc * d).sum(-1) + b_u).mean(-1)  # (component,)
    lens = ours[ours.kind == "accumulated"].value.tolist()
    assert len(labels) == len(lens)
    torch.testing.assert_close(torch.tensor(lens, dtype=torch.float64), reference.double(), atol=1e-4, rtol=0)
    # frozen scale: the raw accumulated residuals through the run's final scale
    raw = cache.accumulated_resid(incl_mid=True, pos_slice=-1)
    frozen_ref = (cache.apply_ln_to_stack(raw, layer=-1, pos_slice=-1) * d).sum(-1).mean(-1)
    frozen = ours[ours.kind == "accumulated_final_scale"].value.tolist()
    torch.testing.assert_close(torch.tensor(frozen, dtype=torch.float64), frozen_ref.double(), atol=1e-4, rtol=0)


def test_decomposition_matches_transformer_lens_decompose_resid(toy, rows):
    batch = next(batches(toy, rows["ioi"], 8))
    cache, d = _tl_reference(toy, batch)
    dec, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)  # embed, pos_embed, L attn, L mlp
    reference = (cache.apply_ln_to_stack(dec, pos_slice=-1) * d).sum(-1).mean(-1)
    ours = logit_lens.run(toy, batch.rows, batch_size=8, seed=0)
    ours = ours[(ours.kind == "decomposed") & (ours.label != "bias")]
    torch.testing.assert_close(torch.tensor(ours.value.sum()), reference.sum().double(), atol=1e-4, rtol=0)
    for layer in range(toy.cfg.n_layers):
        ref_attn = reference[labels.index(f"{layer}_attn_out")].item()
        assert ours[(ours.label == "attn") & (ours.layer == layer)].value.item() == pytest.approx(ref_attn, abs=1e-4)


def test_head_dla_matches_transformer_lens_stack_head_results(toy, rows):
    batch = next(batches(toy, rows["isa"], 8))
    cache, d = _tl_reference(toy, batch)
    heads = cache.stack_head_results(layer=-1, pos_slice=-1)  # (layer*head, batch, d_model)
    reference = (cache.apply_ln_to_stack(heads, layer=-1, pos_slice=-1) * d).sum(-1).mean(-1)
    ours = head_dla.run(toy, batch.rows, batch_size=8, seed=0)
    torch.testing.assert_close(torch.tensor(ours.value.to_numpy()), reference.double(), atol=1e-4, rtol=0)


def test_folded_bias_is_its_own_component(toy, rows):
    """Per-head DLA omits each head's constant write (folded into b_O): the lens shows it as its own
    component, heads + folded bias = the attention term, and on this toy (random biases) it is not 0."""
    r = rows["antonym"]
    lens = logit_lens.run(toy, r, batch_size=5, seed=0).set_index(["kind", "label", "layer"]).value
    dla = head_dla.run(toy, r, batch_size=5, seed=0).groupby("layer").value.sum()
    for layer in range(toy.cfg.n_layers):
        heads, folded = lens[("attn_split", "heads", layer)], lens[("attn_split", "folded_bias", layer)]
        assert heads + folded == pytest.approx(lens[("decomposed", "attn", layer)], abs=1e-6)
        assert heads == pytest.approx(dla[layer], abs=1e-6)
    assert max(abs(lens[("attn_split", "folded_bias", l)]) for l in range(toy.cfg.n_layers)) > 1e-3
