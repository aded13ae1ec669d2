"""One intervention, two backends: every kind the hook runner (interventions.py, TransformerLens
hooks: the reference) can express gives, per prompt, the logit difference the fast engine
(patching/engine.py's one Forward, through exact.by_mask and engine.ablated) computes: float64, 1e-6,
on the toy model and on the trained one. A new intervention kind lands as a hook (interventions.py)
and gets a row here when the engine learns it."""

import pytest
import torch

from opposites import models
from opposites.core import batches
from opposites.interventions import Intervention, head_z, mlp_out, resid_post, resid_pre, role_positions, run
from opposites.patching import engine, exact, swaps
from opposites.patching.engine import Weights
from opposites.prompts import make_prompts

ROLE = "ADJ1"  # a role of the size task's prompts, before END
TOLERANCE = 1e-6
NOT_TRIVIAL = 50 * TOLERANCE  # an intervention compared must change some prompt's logit difference by this


@pytest.fixture(scope="module", params=["toy", "trained"])
def setup(request, toy64, trained_dir, tokenizer):
    """(model, batch, pair): one equal-length batch of size prompts, the engine's denoising pair
    (base: corrupted run, source: clean run)."""
    model = toy64 if request.param == "toy" else models.load("trained", trained_dir, "cpu", dtype=torch.float64)
    rows = make_prompts("size", tokenizer, 24, seed=0, min_prompts=8)[0]
    rows = [r for r in rows if r["positions"]["END"] == rows[0]["positions"]["END"]]
    batch = next(batches(model, rows, 16))
    return model, batch, exact.prepare(model, Weights.from_bridge(model), batch, "denoising")


def hooked(model, batch, interventions, source=None) -> torch.Tensor:
    """(batch,) logit difference of the corrupted prompts with the interventions applied by hooks."""
    logits = run(model, batch.corrupted, batch.clean if source is None else source, interventions,
                 role_positions(batch.rows, batch.clean.device))
    return logits.gather(1, batch.answer[:, None])[:, 0] - logits.gather(1, batch.wrong[:, None])[:, 0]


def masks(pair, position: str) -> torch.Tensor:
    """(1, batch, pos) 0/1: each prompt's position of a role, or every position (ALL)."""
    if position == "ALL":
        return torch.ones(1, pair.n, pair.base_tokens.shape[1], dtype=pair.direction.dtype)
    return exact.role_masks(pair, [position])


def diff(pair, key: str) -> torch.Tensor:
    return pair.src[key] - pair.base[key]


KINDS = {  # name -> (interventions(model), engine(pair, position) -> (batch,))
    "resid_pre": (lambda m, p: [resid_pre(1, p)],
                  lambda pair, p: exact.by_mask(pair, 1, "pre", diff(pair, "resid_pre.1"), masks(pair, p))[0]),
    "resid_post (last layer)": (lambda m, p: [resid_post(m.cfg.n_layers - 1, p)],
                                lambda pair, p: exact.by_mask(pair, pair.weights.n_layers, "pre", diff(pair, "resid_final"),
                                                              masks(pair, p))[0]),
    "head_z": (lambda m, p: [head_z(0, 1, p)],
               lambda pair, p: exact.by_mask(pair, 0, "mid", exact.head_writes(pair, 0, pair.src["z.0"])[1], masks(pair, p))[0]),
    "mlp_out": (lambda m, p: [mlp_out(0, p)],
                lambda pair, p: exact.by_mask(pair, 1, "pre", diff(pair, "mlp_out.0"), masks(pair, p))[0]),
    "attn_out": (lambda m, p: [Intervention("blocks.1.hook_attn_out", p)],
                 lambda pair, p: exact.by_mask(pair, 1, "mid", diff(pair, "attn_out.1"), masks(pair, p))[0]),
}


@pytest.mark.parametrize("position", ["END", ROLE, "ALL"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_agrees_on_both_backends(setup, kind, position):
    model, batch, pair = setup
    hooks, fast = KINDS[kind]
    ref = hooked(model, batch, hooks(model, position))
    torch.testing.assert_close(fast(pair, position), ref, atol=TOLERANCE, rtol=0)
    if position != ROLE:  # not 0 against 0 (at the source word a late patch may not reach END)
        assert (ref - pair.base_ld).abs().max() > NOT_TRIVIAL


def test_a_subspace_interchange_agrees_on_both_backends(setup):
    """Swapping only a 2-dimensional subspace of the residual stream (DAS's intervention)."""
    model, batch, pair = setup
    basis = torch.linalg.qr(torch.randn(model.cfg.d_model, 2, generator=torch.Generator().manual_seed(0),
                                        dtype=torch.float64))[0]  # (d_model, 2) orthonormal
    ref = hooked(model, batch, [resid_pre(1, "END", basis)])
    fast = exact.by_mask(pair, 1, "pre", diff(pair, "resid_pre.1") @ basis @ basis.T, masks(pair, "END"))[0]
    torch.testing.assert_close(fast, ref, atol=TOLERANCE, rtol=0)
    full = hooked(model, batch, [resid_pre(1, "END")])
    assert (ref - full).abs().max() > NOT_TRIVIAL  # the projection is not the whole swap


def test_replacing_activations_by_given_values_agrees_on_both_backends(setup):
    """Mean ablation's intervention: a head's z and an MLP's output replaced by given values (here
    the batch means), on the clean run, through engine.ablated and through hooks."""
    model, batch, pair = setup
    run_clean = engine.full_forward(pair.weights, batch.clean)
    z_mean = run_clean["z.0"][:, :, 1].mean(0, keepdim=True).expand(pair.n, -1, -1)  # (batch, pos, d_head)
    mlp_mean = run_clean["mlp_out.0"].mean(0, keepdim=True).expand(pair.n, -1, -1)  # (batch, pos, d_model)
    d, bias = pair.direction, pair.bias
    fast = engine.ablated(pair.weights, run_clean, {("z", 0, 1): z_mean, ("mlp", 0): mlp_mean}, d, bias)
    z_full = torch.zeros_like(run_clean["z.0"])
    z_full[:, :, 1] = z_mean
    source = {"blocks.0.attn.hook_z": z_full, "blocks.0.hook_mlp_out": mlp_mean}
    logits = run(model, batch.clean, source, [Intervention("blocks.0.attn.hook_z", "ALL", head=1), mlp_out(0, "ALL")])
    ref = logits.gather(1, batch.answer[:, None])[:, 0] - logits.gather(1, batch.wrong[:, None])[:, 0]
    torch.testing.assert_close(fast, ref, atol=TOLERANCE, rtol=0)
    clean = engine.read_logit_diff(pair.weights, run_clean["resid_final"][:, -1], d, bias)
    assert (ref - clean).abs().max() > NOT_TRIVIAL


# ---- interchange interventions at one location: patching/swaps.py against the hooks ---------------

SWAPS = {"resid_pre": lambda m: resid_pre(1), "resid_post": lambda m: resid_post(0),
         "resid_post (last layer)": lambda m: resid_post(m.cfg.n_layers - 1), "mlp_out": lambda m: mlp_out(0),
         "attn_out": lambda m: Intervention("blocks.1.hook_attn_out"),
         "head_z": lambda m: head_z(0, 1)}


def swap_pair(model, batch, iv: Intervention, position: str):
    """(hooks, engine) logits (batch, n_ids) of the corrupted prompts with iv's activation at `position`
    taken from the clean prompts, over the answer and wrong tokens."""
    ids = torch.cat([batch.answer, batch.wrong]).unique()
    iv = Intervention(iv.site, position, head=iv.head, basis=iv.basis)
    positions = role_positions(batch.rows, batch.clean.device)
    ref = run(model, batch.corrupted, batch.clean, [iv], positions, ids)
    weights = Weights.from_bridge(model)
    base, source = swaps.run(weights, batch.corrupted), swaps.run(weights, batch.clean)
    index = positions[position] if position != "END" else torch.full_like(positions["END"], batch.clean.shape[1] - 1)
    return ref, swaps.logits(weights, base, iv, swaps.value(weights, source, iv, index), index, ids)


@pytest.mark.parametrize("position", ["END", ROLE])
@pytest.mark.parametrize("kind", list(SWAPS))
def test_a_swap_at_one_location_agrees_on_both_backends(setup, kind, position):
    model, batch, _ = setup
    ref, fast = swap_pair(model, batch, SWAPS[kind](model), position)
    torch.testing.assert_close(fast, ref, atol=TOLERANCE, rtol=0)
    plain = run(model, batch.corrupted, batch.clean, [], ids=torch.cat([batch.answer, batch.wrong]).unique())
    if position == "END":  # not 0 against 0 (at the source word a late swap may not reach END)
        assert (ref - plain).abs().max() > NOT_TRIVIAL


def test_a_subspace_swap_per_variant_agrees_on_both_backends(setup):
    """DAS's training forward: one basis per variant (leading axis), each equal to its own hook run."""
    model, batch, _ = setup
    g = torch.Generator().manual_seed(1)
    bases = torch.stack([torch.linalg.qr(torch.randn(model.cfg.d_model, 2, generator=g, dtype=torch.float64))[0]
                         for _ in range(3)])  # (variant, d_model, 2)
    ids = torch.cat([batch.answer, batch.wrong]).unique()
    positions = role_positions(batch.rows, batch.clean.device)
    weights = Weights.from_bridge(model)
    base, source = swaps.run(weights, batch.corrupted), swaps.run(weights, batch.clean)
    for position in ("END", ROLE):
        iv = resid_post(0, position, bases[:, None])  # (variant, 1, d, k): shared by the batch
        index = positions[position] if position != "END" else torch.full_like(positions["END"], batch.clean.shape[1] - 1)
        fast = swaps.logits(weights, base, iv, swaps.value(weights, source, iv, index), index, ids)  # (variant, batch, n_ids)
        for v in range(len(bases)):
            ref = run(model, batch.corrupted, batch.clean, [resid_post(0, position, bases[v])], positions, ids)
            torch.testing.assert_close(fast[v], ref, atol=TOLERANCE, rtol=0)
