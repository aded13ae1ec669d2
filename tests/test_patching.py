"""Exact patching against TransformerLens's reference functions, a plain-PyTorch patch, a planted
head, and attribution patching against TransformerLens 4's attribution_patch."""

import pandas as pd
import pytest
import torch
import transformer_lens.patching as tlp

from opposites import models
from opposites.analyses.patching import dataset_sweep
from opposites.core import batches, direction, logit_diff, prompt_clusters
from opposites.patching import exact
from opposites.patching.attribution import head_attribution
from opposites.patching.engine import Weights
from opposites.prompts import load_spec

def by_pos(fn):
    """Per-position patching, as TransformerLens's reference does it: a role mask per position."""
    return lambda p: fn(p, exact.position_masks(p))


SWEEPS = {  # ours (layer-major, per prompt) -> TransformerLens reference
    "resid_pre": (by_pos(exact.resid_pre_by_role), tlp.get_act_patch_resid_pre),
    "attn_out": (by_pos(exact.attn_out_by_role), tlp.get_act_patch_attn_out),
    "mlp_out": (by_pos(exact.mlp_out_by_role), tlp.get_act_patch_mlp_out),
    "head_z": (lambda p: exact.head_all_pos(p, "z"), tlp.get_act_patch_attn_head_out_all_pos),
    "head_q": (lambda p: exact.head_all_pos(p, "q"), tlp.get_act_patch_attn_head_q_all_pos),
    "head_k": (lambda p: exact.head_all_pos(p, "k"), tlp.get_act_patch_attn_head_k_all_pos),
    "head_v": (lambda p: exact.head_all_pos(p, "v"), tlp.get_act_patch_attn_head_v_all_pos),
    "head_pattern": (lambda p: exact.head_all_pos(p, "pattern"), tlp.get_act_patch_attn_head_pattern_all_pos),
    "head_by_pos": (lambda p: by_pos(exact.head_by_role)(p).permute(0, 2, 1, 3), tlp.get_act_patch_attn_head_out_by_pos),
}


def layout_group(rows):
    """The rows sharing the first row's token layout (the reference patches by position)."""
    return [r for r in rows if r["positions"] == rows[0]["positions"]]


def one_batch(model, rows):
    return next(batches(model, layout_group(rows), 64))


def reference_setup(model, batch, mode="denoising"):
    clean_logits, clean_cache = model.run_with_cache(batch.clean)
    corr_logits, corr_cache = model.run_with_cache(batch.corrupted)
    c, k = logit_diff(clean_logits, batch).mean().item(), logit_diff(corr_logits, batch).mean().item()
    metric = lambda logits: (logit_diff(logits, batch).mean() - k) / (c - k)  # noqa: E731
    base_tokens, src_cache = (batch.corrupted, clean_cache) if mode == "denoising" else (batch.clean, corr_cache)
    return base_tokens, src_cache, metric, c, k


def check_against_reference(model, batch, names, mode="denoising"):
    base_tokens, src_cache, metric, c, k = reference_setup(model, batch, mode)
    pair = exact.prepare(model, Weights.from_bridge(model), batch, mode)
    for name in names:
        ours_fn, ref_fn = SWEEPS[name]
        ours = exact.normalise(ours_fn(pair), c, k)
        ref = ref_fn(model, base_tokens, src_cache, metric)
        torch.testing.assert_close(ours.double(), ref.double(), atol=1e-4, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("task", ["ioi", "size"])
def test_exact_against_transformer_lens_reference(toy64, rows, task):
    check_against_reference(toy64, one_batch(toy64, rows[task]), list(SWEEPS))


def test_noising_against_transformer_lens_reference(toy64, rows):
    check_against_reference(toy64, one_batch(toy64, rows["antonym"]), ["resid_pre", "head_z", "head_q"], mode="noising")


@pytest.fixture(scope="module")
def gpt2_shaped(tmp_path_factory):
    d = models.build_offline_model("random:gpt2", tmp_path_factory.mktemp("rgpt2") / "model", seed=0)
    return models.load("random:gpt2", d, "cpu", dtype=torch.float64)


def test_exact_on_gpt2_shaped_model(gpt2_shaped, rows):
    batch = next(batches(gpt2_shaped, layout_group(rows["isa"])[:3], 3))
    check_against_reference(gpt2_shaped, batch, ["resid_pre", "head_z", "head_v"])


def test_clean_into_clean_gives_one_everywhere(toy64, rows):
    batch = one_batch(toy64, rows["ioi"])
    _, _, _, _, k = reference_setup(toy64, batch)
    same = exact.prepare(toy64, Weights.from_bridge(toy64), batch, "noising")  # base = clean
    same.src, same.prefix = same.base, 0  # patch clean into clean; recompute every position
    c = same.base_ld.mean().item()
    for name in ("resid_pre", "attn_out", "mlp_out", "head_z", "head_q", "head_pattern", "head_by_pos"):
        got = exact.normalise(SWEEPS[name][0](same), c, k)
        torch.testing.assert_close(got.double(), torch.ones_like(got).double(), atol=1e-6, rtol=0)
    paths = exact.normalise(exact.path_to_receivers(same, (0, 1)), c, k)
    assert torch.allclose(paths[1:].double(), torch.ones(1, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("sender", [(0, 1), (1, 3)])
def test_path_patching_against_transformer_lens_direct_path(toy64, rows, sender):
    """Our direct-path sweep against TransformerLens 4's get_act_patch_direct_path, for q, k and v:
    the sender's clean-minus-corrupted write reaches one receiver's input alone, on the corrupted run.
    The sender's write differs between the runs, so the comparison is not 0 against 0."""
    batch = one_batch(toy64, rows["ioi"])
    base_tokens, src_cache, metric, c, k = reference_setup(toy64, batch)
    _, corr_cache = toy64.run_with_cache(batch.corrupted)
    pair = exact.prepare(toy64, Weights.from_bridge(toy64), batch, "denoising")
    assert exact.head_writes(pair, sender[0], pair.src[f"z.{sender[0]}"])[sender[1]].abs().max() > 1e-5  # small: random init, std 0.02
    ours = exact.normalise(exact.path_to_receivers(pair, sender), c, k)  # (layer, head, 3)
    later = slice(sender[0] + 1, None)
    for i, component in enumerate("qkv"):
        ref = tlp.get_act_patch_direct_path(toy64, batch.corrupted, src_cache, corr_cache, metric, *sender,
                                            component=component, verbose=False)
        torch.testing.assert_close(ours[later, :, i].double(), ref[later].double(), atol=1e-4, rtol=0,
                                   msg=lambda m: f"{component}: {m}")
    assert ours[later].isfinite().all() and ours[: sender[0] + 1].isnan().all()
    assert (ours[later] - 0).abs().max() > 1e-3  # the paths move the metric


@pytest.mark.parametrize("sender", [(0, 1), (2, 3)])
def test_path_patching_into_mlps_and_logits_against_hooks(toy64, rows, sender):
    """path_to_mlps against TransformerLens hooks on the corrupted run: the sender's clean-minus-
    corrupted write is added to MLP l's LayerNorm input alone (blocks.l.ln2.hook_in), or to the final
    LayerNorm's input alone (ln_final.hook_in: the direct path to the logits); per prompt, before
    normalising (float64, 1e-6)."""
    batch = one_batch(toy64, rows["ioi"])
    _, clean_cache = toy64.run_with_cache(batch.clean)
    _, corr_cache = toy64.run_with_cache(batch.corrupted)
    ls, hs = sender
    W_O = toy64.blocks[ls].attn.W_O[hs]
    z = f"blocks.{ls}.attn.hook_z"
    write = clean_cache[z][:, :, hs] @ W_O - corr_cache[z][:, :, hs] @ W_O  # (batch, pos, d_model)
    add = lambda x, hook: x + write  # noqa: E731
    pair = exact.prepare(toy64, Weights.from_bridge(toy64), batch, "denoising")
    ours = exact.path_to_mlps(pair, sender)  # (layer + 1, prompt)
    L = toy64.cfg.n_layers
    readers = [f"blocks.{l}.ln2.hook_in" for l in range(ls, L)] + ["ln_final.hook_in"]
    corrupted = logit_diff(toy64(batch.corrupted), batch)
    for row, name in zip(range(ls, L + 1), readers):
        ref = logit_diff(toy64.run_with_hooks(batch.corrupted, fwd_hooks=[(name, add)]), batch)
        torch.testing.assert_close(ours[row].double(), ref.double(), atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
        assert (ref - corrupted).abs().max() > 1e-6  # the path moves the logit difference
    assert ours[:ls].isnan().all()
    # one reader only (path_set's use): that row as in the full sweep, every other row NaN
    for only in (ls, L):
        one = exact.path_to_mlps(pair, sender, [only])
        assert torch.equal(one[only], ours[only]) and one[[r for r in range(L + 1) if r != only]].isnan().all()
    if ls + 1 < L:
        full, one = exact.path_to_receivers(pair, sender), exact.path_to_receivers(pair, sender, [ls + 1])
        assert torch.equal(one[ls + 1], full[ls + 1]) and one[ls + 2:].isnan().all()


def test_plain_pytorch_head_patch(toy64, hf_toy, rows):
    """Patch head 2.1's z with a forward pre-hook on the HF model's c_proj: the convention check."""
    layer, head = 2, 1
    hf = hf_toy.double()
    batch = one_batch(toy64, rows["size"])
    d_head = hf.config.n_embd // hf.config.n_head
    cols = slice(head * d_head, (head + 1) * d_head)
    proj = hf.transformer.h[layer].attn.c_proj
    store = {}
    h = proj.register_forward_pre_hook(lambda m, a: store.__setitem__("z", a[0].clone()))
    with torch.no_grad():
        hf(batch.clean)  # the hook stores the clean z
    h.remove()

    def patch(m, a):
        z = a[0].clone()
        z[..., cols] = store["z"][..., cols]
        return (z,)

    with torch.no_grad():
        corrupted = hf(batch.corrupted).logits
        h = proj.register_forward_pre_hook(patch)
        patched = hf(batch.corrupted).logits
        h.remove()
    p = logit_diff(patched, batch)  # (prompt,)
    pair = exact.prepare(toy64, Weights.from_bridge(toy64), batch, "denoising")
    ours = exact.head_all_pos(pair, "z")[layer, head]  # (prompt,) patched logit differences
    # compared before normalising: on this random toy clean - corrupted is ~2e-4, which would amplify
    # rounding past any fixed tolerance on the ratio. 1e-6: the bridge folds the (random, non-unit)
    # LayerNorm weights at float32 precision before casting to float64 (seen: 3e-8)
    torch.testing.assert_close(ours.double(), p.double(), atol=1e-6, rtol=0)
    assert (p - logit_diff(corrupted, batch)).abs().max() > 1e-6  # the patch changes something


def planted_model(tmp_path, layer=1, head=2):
    """Toy GPT-2 whose only head that carries information is (layer, head): every other head's value
    weights are zero, so its output is constant."""
    from transformers import GPT2LMHeadModel

    d = models.build_offline_model("toy", tmp_path / "planted", seed=1)
    hf = GPT2LMHeadModel.from_pretrained(d)
    n = hf.config.n_embd
    d_head = n // hf.config.n_head
    with torch.no_grad():
        for i, blk in enumerate(hf.transformer.h):
            for h in range(hf.config.n_head):
                if (i, h) != (layer, head):
                    blk.attn.c_attn.weight[:, 2 * n + h * d_head: 2 * n + (h + 1) * d_head] = 0
    hf.save_pretrained(d)
    return models.load("toy", d, "cpu", dtype=torch.float64)


def test_planted_head_is_found(tmp_path, rows):
    model = planted_model(tmp_path)
    heads = dataset_sweep(model, rows["ioi"], 8, "denoising", lambda p: exact.head_all_pos(p, "z")).normalised()
    assert heads[1, 2].item() == pytest.approx(1.0, abs=1e-6)
    others = torch.cat([heads.flatten()[:6], heads.flatten()[7:]])
    assert others.abs().max().item() < 1e-6


def test_chosen_heads_patch_like_the_whole_grid(toy64, rows):
    """heads_all_pos on a list of heads from several layers, in any order, equals those heads of the
    full grid; patch_heads patches q, k, v and pattern exactly for the QKV_HEADS heads of largest
    |z| effect, with the values and intervals the full grid gives them."""
    from opposites.analyses import patching as analyses
    from opposites.derived import top_patched_heads

    pair = exact.prepare(toy64, Weights.from_bridge(toy64), one_batch(toy64, rows["ioi"]), "denoising")
    heads = [(1, 3), (0, 2), (1, 0), (0, 0)]
    for act in ("q", "pattern"):
        grid = exact.head_all_pos(pair, act)
        torch.testing.assert_close(exact.heads_all_pos(pair, heads, act), torch.stack([grid[l, h] for l, h in heads]),
                                   atol=1e-5, rtol=0)

    k, analyses.QKV_HEADS = analyses.QKV_HEADS, 3  # patch_heads reads the name it imported
    try:
        df = analyses.patch_heads(toy64, rows["ioi"], 16, "denoising", 0)
    finally:
        analyses.QKV_HEADS = k
    full = dataset_sweep(toy64, rows["ioi"], 16, "denoising",
                         lambda p: {a: exact.head_all_pos(p, a) for a in ("z", "v")})
    top = top_patched_heads(df, 3)
    assert len(df[df.activation == "z"]) == toy64.cfg.n_layers * toy64.cfg.n_heads
    for act in ("q", "k", "v", "pattern"):
        assert [tuple(x) for x in df[df.activation == act][["layer", "head"]].to_numpy()] == top
    v = analyses.table(full.patched["v"], full, analyses._heads(toy64), 0, prompt_clusters(rows["ioi"])).set_index(["layer", "head"])
    got = df[df.activation == "v"].set_index(["layer", "head"])
    for col in ("value", "ci_low", "ci_high", "p_value"):
        torch.testing.assert_close(torch.tensor(got[col].to_numpy()), torch.tensor(v.loc[top, col].to_numpy()),
                                   atol=1e-6, rtol=0)


def test_attribution_matches_transformer_lens(toy64, rows):
    """Our batched head-output attribution equals TransformerLens 4's attribution_patch (node
    granularity, attn_head_out summed over positions), run per prompt and averaged."""
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    batch = one_batch(toy64, rows["ioi"])
    pair = exact.prepare(toy64, Weights.from_bridge(toy64), batch, "denoising")
    ours = (head_attribution(pair)["z"] - pair.base_ld).mean(-1)  # (layer, head) mean estimate
    ref = torch.zeros_like(ours)
    for i in range(pair.n):
        metric = lambda logits, i=i: logits[0, -1, batch.answer[i]] - logits[0, -1, batch.wrong[i]]  # noqa: E731
        with torch.enable_grad():
            result = attribution_patch(toy64, batch.clean[i:i + 1], batch.corrupted[i:i + 1], metric)
        for node, score in result.node_scores.items():
            if node.kind == "attn_head_out":
                ref[node.layer, node.head] += score / pair.n
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours.double(), ref.double(), atol=1e-6, rtol=1e-5)


def test_flop_counter_matches_the_analytic_minimum(toy64, rows):
    """Head-output patching over all positions runs exactly the minimal suffix computation."""
    from opposites.patching import engine

    batch = one_batch(toy64, rows["ioi"])
    w = Weights.from_bridge(toy64)
    pair = exact.prepare(toy64, w, batch, "denoising")
    w.flops[0] = 0.0
    exact.head_all_pos(pair, "z")
    P = batch.clean.shape[1]
    minimum = pair.n * w.n_heads * sum(engine.suffix_flops(w, l, "mid", P - pair.prefix, P) for l in range(w.n_layers))
    assert w.flops[0] == pytest.approx(minimum, rel=1e-9)


def test_role_patching_runs_only_from_each_roles_first_position(toy64, rows):
    """Attention is causal: a patch at END changes nothing before it, so patching END alone runs one
    position (the minimum), and a batch of roles costs the sum of each role's own suffix."""
    from opposites.patching import engine

    batch = one_batch(toy64, rows["ioi"])
    w = Weights.from_bridge(toy64)
    pair = exact.prepare(toy64, w, batch, "denoising")
    P, L = batch.clean.shape[1], w.n_layers
    roles = ["S2", "END"]
    starts = [batch.rows[0]["positions"][role] for role in roles]  # one layout: the same for every prompt
    assert starts[0] < P - 1 and starts[0] >= pair.prefix
    w.flops[0] = 0.0
    exact.resid_pre_by_role(pair, exact.role_masks(pair, roles))
    minimum = pair.n * sum(engine.suffix_flops(w, l, "pre", P - start, P) for l in range(L) for start in starts)
    assert w.flops[0] == pytest.approx(minimum, rel=1e-9)


def test_followup_selection_follows_direct_contributions_and_dla():
    """Layers are chosen by direct contribution, not by the lens's steps: here the largest step
    (MLP 0, 2.0) writes little directly (0.3) and attention 1 writes most (-1.5, step -1.1); both
    numbers are kept, and the steps' own choice is listed beside."""
    import pandas as pd

    from opposites.analyses.patch_followup import select
    from opposites.derived import lens_steps

    lens = pd.DataFrame({"kind": "accumulated", "label": ["resid_pre", "resid_mid", "resid_pre", "resid_mid", "resid_post"],
                         "layer": [0, 0, 1, 1, 1], "value": [0.0, 0.1, 2.1, 1.0, 1.2], "ci_low": 0.0, "ci_high": 0.0})
    direct = pd.DataFrame({"kind": "decomposed", "label": ["attn", "mlp", "attn", "mlp"], "layer": [0, 0, 1, 1],
                           "value": [0.2, 0.3, -1.5, 0.9], "ci_low": [0.1, 0.2, -1.9, 0.5], "ci_high": [0.3, 0.4, -1.1, 1.3]})
    lens = pd.concat([lens, direct], ignore_index=True)
    steps = lens_steps(lens)
    assert steps.to_dict("list") == {"layer": [0, 0, 1, 1], "component": ["attn", "mlp", "attn", "mlp"],
                                     "step": pytest.approx([0.1, 2.0, -1.1, 0.2])}
    dla = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "value": [0.1, -3.0, 2.0, 0.5]})
    chosen = select(lens, dla, k_layers=2, k_heads=2)
    assert [(s["component"], s["layer"]) for s in chosen["layers"]] == [("attn", 1), ("mlp", 1)]
    assert chosen["layers"][0]["step"] == pytest.approx(-1.1) and chosen["layers"][0]["direct_ci95"] == [-1.9, -1.1]
    assert [(s["component"], s["layer"]) for s in chosen["layers_by_step"]] == [("mlp", 0), ("attn", 1)]
    assert [h["label"] for h in chosen["heads"]] == ["0.1", "1.0"]


def test_role_aligned_patching_patches_each_prompt_at_its_own_position(toy64, rows):
    """Prompts of different templates in one batch (IOI: ABBA and BABA of equal length): the role
    variant equals, prompt by prompt, TransformerLens's reference patch at that prompt's position."""
    ioi = rows["ioi"]
    by_len = {}
    for r in ioi:
        by_len.setdefault(r["positions"]["END"], []).append(r)
    mixed = max(by_len.values(), key=lambda rs: len({tuple(sorted(r["positions"].items())) for r in rs}))
    assert len({r["positions"]["IO"] for r in mixed}) > 1, "the fixture should mix IO positions in one batch"
    mixed = sorted(mixed, key=lambda r: r["positions"]["IO"])
    mixed = mixed[:2] + mixed[-2:]  # both layouts, few prompts (the reference runs one prompt at a time)
    batch = next(batches(toy64, mixed, 64))
    pair = exact.prepare(toy64, Weights.from_bridge(toy64), batch, "denoising")
    roles = ["IO", "S1", "S2", "END", "other"]
    ours = exact.resid_pre_by_role(pair, exact.role_masks(pair, roles))  # (layer, role, prompt)
    _, clean_cache = toy64.run_with_cache(batch.clean)
    for i, row in enumerate(batch.rows):
        metric = lambda logits, i=i: logits[0, -1, batch.answer[i]] - logits[0, -1, batch.wrong[i]]  # noqa: E731
        cache_i = {k: v[i:i + 1] for k, v in clean_cache.items()}
        ref = tlp.get_act_patch_resid_pre(toy64, batch.corrupted[i:i + 1], cache_i, metric)  # (layer, pos)
        for r, role in enumerate(roles[:4]):
            torch.testing.assert_close(ours[:, r, i].double(), ref[:, row["positions"][role]].double(), atol=1e-6, rtol=0)
    masks = exact.role_masks(pair, roles)
    assert masks[:, :, 0].sum() == 0 and (masks.sum(0) <= 1).all()  # BOS never patched; roles disjoint
    assert (masks.sum(0)[:, 1:] == 1).all()  # every other position belongs to exactly one role or 'other'


def _grid(values: dict) -> "pd.DataFrame":
    import pandas as pd

    rows = [{"layer": l, "head": h, "activation": a, "value": v, "ci_low": lo, "ci_high": hi, "normaliser_ok": True}
            for (a, l, h), (v, lo, hi) in values.items()]
    return pd.DataFrame(rows)


def test_head_routes_on_hand_made_effects():
    """Top heads by |z|; values vs pattern by their intervals and the factor ROUTE_RATIO."""
    from opposites.derived import head_routes

    z = {("z", 0, 0): (0.9, 0.8, 1.0), ("z", 0, 1): (0.8, 0.7, 0.9), ("z", 1, 0): (0.7, 0.6, 0.8),
         ("z", 1, 1): (0.6, 0.5, 0.7), ("z", 2, 0): (0.01, -0.1, 0.1)}
    effects = {("v", 0, 0): (0.8, 0.7, 0.9), ("pattern", 0, 0): (0.1, -0.05, 0.2),  # values
               ("v", 0, 1): (0.1, 0.05, 0.15), ("pattern", 0, 1): (0.5, 0.4, 0.6),  # attention
               ("v", 1, 0): (0.4, 0.3, 0.5), ("pattern", 1, 0): (0.3, 0.2, 0.4),  # both
               ("v", 1, 1): (0.2, -0.1, 0.5), ("pattern", 1, 1): (0.1, -0.2, 0.4),  # unclear
               ("v", 2, 0): (0.0, 0.0, 0.0), ("pattern", 2, 0): (0.0, 0.0, 0.0)}
    grid = _grid({**z, **effects})
    routes = head_routes(grid, k=4).set_index("head").route.to_dict()
    assert routes == {"0.0": "values", "0.1": "attention", "1.0": "both", "1.1": "unclear"}
    assert set(head_routes(grid.assign(normaliser_ok=False), k=2).route) == {"not meaningful"}


def test_head_routes_on_a_planted_uniform_attention_model(tmp_path, rows):
    """Every head of the planted chain attends uniformly (no queries or keys), so patching a pattern
    changes nothing: the heads that matter act through their values. (Its mean clean - corrupted
    logit difference is not distinguishable from 0, so the table says 'not meaningful'; the split
    is checked with that guard lifted.)"""
    import importlib

    from opposites.analyses import patching as patching_analyses
    from opposites.derived import head_routes

    chain = importlib.import_module("test_circuits").planted_chain(tmp_path, 1)
    heads = patching_analyses.patch_heads(chain, rows["ioi"], 8, "denoising", 0)
    pattern = heads[heads.activation == "pattern"]
    assert pattern.value.abs().max() < 1e-9
    assert set(head_routes(heads, k=2).route) == {"not meaningful"}  # clean - corrupted is ~0 on average here
    routes = head_routes(heads.assign(normaliser_ok=True), k=2)  # the split itself, on this model's scale
    assert set(routes["head"]) == {"0.0", "1.0"} and set(routes.route) == {"values"}, routes


def test_congruence_swaps_the_things_and_patching_agrees_with_the_model(toy64, rows, tokenizer):
    """Congruent and incongruent prompts share the adjective and the answer and swap the two things
    (the congruent one's first thing fits the adjective); their logit differences are the model's own;
    the pull is their paired difference; and patching the residual at layer 0 where both prompts have
    the same token changes nothing, while patching a thing's position does."""
    from opposites.analyses import congruence

    spec = load_spec("size")["congruence"]
    size_of = {w: "big" for w in spec["big"]} | {w: "small" for w in spec["small"]}
    big_adjs = {a for a, _ in spec["pairs"]}
    pairs = congruence.prompts("size", tokenizer, 12, seed=0)
    assert len(pairs) == 12
    for r in pairs:
        words = lambda text: text.replace(",", "").replace(".", "").split()  # noqa: E731
        c, i = words(r["clean"]), words(r["corrupted"])
        diff = [k for k in range(len(c)) if c[k] != i[k]]
        assert len(diff) == 2 and (c[diff[0]], c[diff[1]]) == (i[diff[1]], i[diff[0]])  # things swapped
        first, adj = c[diff[0]], r["wrong"].strip()
        assert size_of[first] == ("big" if adj in big_adjs else "small")  # congruent: the first thing fits
    res = congruence.run(toy64, rows["size"], 6, "denoising", seed=0)
    lds = {}
    for key in ("clean", "corrupted"):  # one prompt at a time: the templates differ in length
        last = torch.cat([toy64(toy64.to_tokens(r[key]))[:, -1] for r in pairs])
        a = torch.tensor([toy64.to_single_token(r["answer"]) for r in pairs])
        w = torch.tensor([toy64.to_single_token(r["wrong"]) for r in pairs])
        lds[key] = (last.gather(1, a[:, None]) - last.gather(1, w[:, None]))[:, 0]
    assert res["congruent"]["logit_diff"]["value"] == pytest.approx(lds["clean"].mean().item(), abs=1e-8)
    assert res["incongruent"]["logit_diff"]["value"] == pytest.approx(lds["corrupted"].mean().item(), abs=1e-8)
    assert res["pull"]["value"] == pytest.approx((lds["clean"] - lds["corrupted"]).mean().item(), abs=1e-8)
    patch = pd.DataFrame(res["patch"]).set_index(["component", "layer", "role"]).value
    for role in ("ADJ1", "END", "other"):
        assert patch[("resid", 0, role)] == pytest.approx(0.0, abs=1e-8)
    assert abs(patch[("resid", 0, "E1")]) > 1e-3 or abs(patch[("resid", 0, "E2")]) > 1e-3


def test_the_engine_uses_the_models_own_gelu(tmp_path, rows):
    """GPT-2's gelu_new (tanh approximation) and the exact GELU: the engine's forward equals the
    model's logit difference under either, and the two differ (so the wrong one would show)."""
    from opposites.patching.edges import edge_forward

    def exact_gelu(net):
        models.randomize_norms_and_biases(net)
        net.config.activation_function = "gelu"

    b, lds = None, {}
    for act, edit in (("gelu_new", models.randomize_norms_and_biases), ("gelu", exact_gelu)):
        model = models.load("toy", models.build_gpt2(tmp_path / act, 2, 4, 64, seed=3, edit=edit), "cpu", dtype=torch.float64)
        assert model.cfg.act_fn == act
        b = next(batches(model, rows["size"], 8))
        d, bias = direction(model, b)
        lds[act] = edge_forward(Weights.from_bridge(model), b.clean, d, bias)[0]
        logits = model(b.clean)[:, -1]
        ref = logits.gather(1, b.answer[:, None])[:, 0] - logits.gather(1, b.wrong[:, None])[:, 0]
        torch.testing.assert_close(lds[act], ref, atol=1e-9, rtol=0)
    assert (lds["gelu"] - lds["gelu_new"]).abs().max() > 1e-6


@pytest.mark.parametrize("act", ["gelu_new", "gelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_blocked_in_place_activation_has_the_bits_of_the_plain_one(act, dtype, monkeypatch):
    """engine.bias_act (in place, a block of rows at a time) equals gelu(pre + b) bit for bit:
    several blocks and a shorter last one; and under autograd, the same values and gradients."""
    from opposites.patching import engine

    monkeypatch.setattr(engine, "BLOCK", 5 * 48)  # 5 rows of 48 per block: 23 rows = 4 blocks and 3 rows
    gen = torch.Generator().manual_seed(0)
    pre = 3 * torch.randn(23, 48, generator=gen, dtype=dtype)
    b = torch.randn(48, generator=gen, dtype=dtype)
    ref = engine.gelu(pre + b, act)
    assert torch.equal(engine.bias_act(pre.clone(), b, act), ref)
    assert torch.equal(engine.bias_act(pre.clone().view(23, 1, 48), b, act).view(23, 48), ref)
    with torch.enable_grad():  # (loading a model elsewhere may have turned autograd off)
        leaf = pre.clone().requires_grad_()
        out = engine.bias_act(leaf, b, act)
        assert torch.equal(out, ref) and torch.equal(leaf, pre)  # out of place: the input is untouched
        out.sum().backward()
        x = pre.clone().requires_grad_()
        engine.gelu(x + b, act).sum().backward()
    assert torch.equal(leaf.grad, x.grad)


def test_mlp_patching_restricted_to_some_layers_equals_the_full_sweep_there(toy64, rows):
    pair = next(exact.batches_of_pairs(toy64, batches(toy64, rows["size"], 8), "denoising"))
    masks = exact.role_masks(pair, ["ADJ1", "END"])
    full = exact.mlp_out_by_role(pair, masks)
    some = exact.mlp_out_by_role(pair, masks, layers=[1])
    torch.testing.assert_close(some[1], full[1], atol=0, rtol=0)
    assert some[0].isnan().all() and not full.isnan().any() and (full[1] - pair.base_ld).abs().max() > 0


@pytest.mark.parametrize("pull, expected", [([0.1, 0.5], "E1 L1"), ([-0.1, 0.4], "not measurable"),
                                            ([-0.5, -0.1], "not measurable")])
def test_congruence_patching_is_not_measurable_without_a_positive_pull(pull, expected):
    """The share of the pull restored is shown only when the pull's interval lies above 0; one that
    includes 0 or has the wrong sign reads 'not measurable' instead of a normalised value."""
    from opposites.tables import congruence

    est = {"value": 0.2, "ci95": [0.1, 0.3]}
    patch = [{"component": c, "layer": 1, "role": "E1", "value": 0.6, "ci_low": 0.4, "ci_high": 0.8,
              "normaliser_ok": pull[0] > 0 or pull[1] < 0} for c in ("resid", "mlp")]
    res = {"n": 8, "congruent": {"logit_diff": est, "accuracy": est}, "incongruent": {"logit_diff": est, "accuracy": est},
           "pull": {"value": sum(pull) / 2, "ci95": pull}, "patch": patch}
    row = next(line for line in congruence({"congruence": {"size": res}}, ["size"]).splitlines() if line.startswith("size"))
    assert row.count(expected) == 2


def test_headline_patching_in_both_directions(toy64, rows):
    """patch_directions reports the residual stream and every head's output both ways, as the share
    of the clean-minus-corrupted difference moved: denoising equals patch_resid's metric, noising is
    1 - the noising metric; before layer 0 at the only changed position (ADJ1), patching makes the
    run the other prompt, so both directions move all of it (1); and the two directions differ
    somewhere (noising is not denoising relabelled)."""
    from opposites.analyses import patching as analyses

    r = rows["size"]
    both = analyses.patch_directions(toy64, r, 16, "denoising", seed=0)
    resid = both[both.kind == "resid"].set_index(["direction", "layer", "role"])
    for way in ("denoising", "noising"):
        ref = analyses.patch_resid(toy64, r, 16, way, 0).set_index(["layer", "role"]).value
        expect = ref if way == "denoising" else 1 - ref
        pd.testing.assert_series_equal(resid.loc[way].value, expect, check_names=False, atol=1e-12)
        assert resid.loc[(way, 0, "ADJ1"), "value"] == pytest.approx(1.0, abs=1e-6)
    assert ((both.ci_low <= both.value + 1e-12) & (both.value <= both.ci_high + 1e-12)).all()
    z = both[both.kind == "z"].set_index(["direction", "layer", "head"]).value
    assert (z.loc["denoising"] - z.loc["noising"]).abs().max() > 1e-3


def test_circuit_paths_patch_each_head_into_its_next_node(toy64, rows):
    """circuit_paths finds the circuit's widest path and reports, per head on it, the path patching
    of that head into the next node: the same numbers as the sweeps run directly."""
    from opposites.analyses.circuit_paths import circuit_paths

    edges = [{"src": "embed", "dst": "0.1.v", "score": 0.5}, {"src": "0.1", "dst": "1.2.k", "score": 0.6},
             {"src": "1.2", "dst": "logits", "score": 0.7}, {"src": "0.1", "dst": "MLP 0", "score": 0.1},
             {"src": "MLP 0", "dst": "logits", "score": 0.9}]
    got = circuit_paths(toy64, rows["ioi"], 16, "denoising", 0, circuit={"edges": edges})
    assert got["path"] == ["embed", "0.1.v", "0.1", "1.2.k", "1.2", "logits"]
    assert [(e["sender"], e["receiver"], e["input"]) for e in got["edges"]] == [("0.1", "1.2", "k"), ("1.2", "logits", "")]
    direct = dataset_sweep(toy64, rows["ioi"], 16, "denoising",
                           lambda p: {"k": exact.path_to_receivers(p, (0, 1))[1, 2, 1],
                                      "logits": exact.path_to_mlps(p, (1, 2))[-1]}).normalised()
    assert got["edges"][0]["value"] == pytest.approx(direct["k"].item(), abs=1e-9)
    assert got["edges"][1]["value"] == pytest.approx(direct["logits"].item(), abs=1e-9)
    assert got["edges"][0]["ci_low"] <= got["edges"][0]["value"] <= got["edges"][0]["ci_high"]


def test_second_corruption_patching_sees_only_io(toy64, rows):
    """IOI's second corruption changes IO alone: patching IO's position before layer 0 restores the
    clean run exactly and S2's (unchanged) restores nothing, unlike ABC, where S2 carries it all."""
    from opposites.analyses.second_corruption import run

    got = run(toy64, rows["ioi"], 16, "denoising", 0)
    resid = pd.DataFrame(got["resid"]).set_index(["layer", "role"]).value
    assert got["role"] == "IO" and got["n"] == len(rows["ioi"]) - got["n_left_out"] > 0
    assert resid[(0, "IO")] == pytest.approx(1.0, abs=1e-6) and resid[(0, "S2")] == pytest.approx(0.0, abs=1e-6)
    assert len(got["heads"]) == toy64.cfg.n_layers * toy64.cfg.n_heads


def test_path_patching_from_a_last_layer_head_reaches_only_the_logits(toy64, rows):
    """A sender in the last layer has no later head to reach: no head rows, and its MLP-kind rows
    are its own layer's MLP and the logits; with `layer` only that reader's row comes back."""
    from opposites.analyses.patch_followup import path_patch

    L = toy64.cfg.n_layers
    sender = [((L - 1, 0), "heads"), ((L - 1, 0), "mlps")]
    got = path_patch(toy64, rows["ioi"][:16], 8, "denoising", 0, sender)
    assert {r["receiver"] for r in got} == {f"MLP {L - 1}", "logits"}
    only = path_patch(toy64, rows["ioi"][:16], 8, "denoising", 0, [((L - 1, 0), "mlps")], layer=L)
    assert [r["receiver"] for r in only] == ["logits"]
    assert only[0]["value"] == next(r["value"] for r in got if r["receiver"] == "logits")
