"""Interchange interventions on the engine: the fast backend of interventions.run for one location.

interventions.run (TransformerLens hooks, the reference) runs the whole model for every swap. A swap
at one location changes the residual stream from one position on, so here it resumes the base run
there: from the swapped layer, over the positions from the batch's earliest swapped one, reusing the
base run's keys and values before them (engine.Forward's `past`), and at the last layer only the
final position. A swap at END then costs about one position of the layers after it.

Every kind is a change of the residual stream at (layer, stage):
  blocks.L.hook_resid_pre            before layer L            (source - base)
  blocks.L.hook_resid_post           before layer L + 1        (source - base)
  blocks.L.hook_mlp_out              before layer L + 1        (source - base)
  blocks.L.hook_attn_out             after layer L's heads     (source - base): all heads at once
  blocks.L.attn.hook_z, head h       after layer L's heads     (source - base) @ W_O[L, h]
with a basis B only the projection (source - base) B B^T is swapped (residual sites; DAS).
tests/test_backends.py checks each against the hooks."""

from __future__ import annotations

import torch
from torch import Tensor

from opposites.interventions import Intervention, interchange
from opposites.patching import engine
from opposites.patching.engine import Weights


def run(weights: Weights, tokens: Tensor) -> dict[str, Tensor]:
    """A batch's ordinary forward, kept to resume from or to read a source activation from
    (engine.full_forward's cache, shapes (batch, pos, ...))."""
    return engine.full_forward(weights, tokens)


def _kind(site: str) -> str:
    return site.rsplit("hook_", 1)[1]  # resid_pre, resid_post, mlp_out, z


def _resumes_at(weights: Weights, iv: Intervention) -> tuple[int, str, str]:
    """(layer, stage, cache key of the residual there) where iv's change enters the residual."""
    layer, kind = iv.layer, _kind(iv.site)
    if kind == "resid_pre":
        return layer, "pre", f"resid_pre.{layer}"
    if kind in ("z", "attn_out"):
        return layer, "mid", f"resid_mid.{layer}"
    if kind in ("resid_post", "mlp_out"):
        after = layer + 1
        return after, "pre", f"resid_pre.{after}" if after < weights.n_layers else "resid_final"
    raise ValueError(f"swaps.logits: {iv.site} is not a site the engine swaps (resid_pre, resid_post, attn_out, "
                     "mlp_out, attn.hook_z); run it through interventions.run (the hooks) or teach this module its kind")


def value(weights: Weights, cache: dict[str, Tensor], iv: Intervention, index: Tensor) -> Tensor:
    """(batch, d) iv's activation in a run (run()'s cache) at each prompt's position `index` (batch,):
    the residual, the MLP's output, or the head's z (batch, d_head)."""
    layer, kind = iv.layer, _kind(iv.site)
    key = {"resid_pre": f"resid_pre.{layer}", "mlp_out": f"mlp_out.{layer}", "z": f"z.{layer}", "attn_out": f"attn_out.{layer}",
           "resid_post": f"resid_pre.{layer + 1}" if layer + 1 < weights.n_layers else "resid_final"}[kind]
    act = cache[key][torch.arange(len(index), device=index.device), index]  # (batch, d) or (batch, head, d_head)
    return act[:, iv.head] if kind == "z" else act


def logits(weights: Weights, base: dict[str, Tensor], iv: Intervention, source: Tensor, index: Tensor,
           ids: Tensor) -> Tensor:
    """Logits of the token ids `ids` (n_ids,) at the base prompts' last position (..., batch, n_ids),
    with iv's activation at each prompt's position `index` (batch,) taken from the source: source is
    (..., batch, d) (value() of the source run; leading variant axes allowed), iv.basis None, (d, k)
    or (..., batch or 1, d, k) swaps only its span. base: run() of the base prompts."""
    layer, stage, key = _resumes_at(weights, iv)
    batch = torch.arange(len(index), device=index.device)
    own = value(weights, base, iv, index)  # (batch, d)
    change = interchange(own, source, iv.basis) - own  # (..., batch, d)
    if _kind(iv.site) == "z":
        change = change @ weights.W_O[layer, iv.head]  # (..., batch, d_model)
    first = int(index.min())  # positions before it keep the base run's values
    x = base[key][:, first:]  # (batch, suffix, d_model)
    x = x.expand(*change.shape[:-2], *x.shape).clone()
    x[..., batch, index - first, :] += change
    lead = x.shape[:-3]

    def past(lay: int) -> tuple[Tensor, Tensor]:  # the base run's keys/values before `first`
        return tuple(base[f"{name}.{lay}"][:, :first].expand(*lead, -1, -1, -1, -1) for name in "kv")

    return _unembed(weights, engine.Forward(weights, past=past).run(x, layer, stage)[..., -1, :], ids)


def plain_logits(weights: Weights, cache: dict[str, Tensor], ids: Tensor) -> Tensor:
    """(batch, n_ids) a run's own logits of `ids` at the last position."""
    return _unembed(weights, cache["resid_final"][:, -1], ids)


def _unembed(weights: Weights, final: Tensor, ids: Tensor) -> Tensor:
    """(..., n_ids) logits of `ids` from final residuals (..., d_model)."""
    return engine.layer_norm(final, weights.ln_f, weights.eps) @ weights.W_U[:, ids] + weights.b_U[ids]
