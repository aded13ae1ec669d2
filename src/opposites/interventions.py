"""Interventions as data, run through TransformerLens hooks (the reference backend).

An Intervention says *what* is done to a run: at a site (a TransformerLens hook name such as
blocks.3.hook_resid_post or blocks.2.attn.hook_z with a head), at a position (a template role,
resolved per prompt from row["positions"]; "END", the last token; or "ALL"), the base run's
activation is replaced by a source run's. With a basis B (d x k, orthonormal columns) only its
projection is swapped: h <- h + B B^T (h_src - h_base) (the interchange DAS learns).

`run` applies a list of them to a batch of base prompts, with the paired source prompts (or their
activations, cached once), and returns the logits at the final position. It stops the forward pass
at the final LayerNorm's output and unembeds only the last position (the full unembedding of every
position is most of a small model's cost), so a DAS step is cheap.

Why not pyvene: hooks on the TransformerBridge work for every model TransformerLens loads, with the
hook names the rest of the pipeline already uses (so nothing assumes GPT-2's module layout), and
they add no dependency."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

FINAL = "ln_final.hook_out"  # the final LayerNorm's output, what the unembedding reads


@dataclass(frozen=True)
class Intervention:
    site: str  # TransformerLens hook name
    position: str = "END"  # a role of row["positions"], END (last token) or ALL (every position)
    head: int | None = None  # attn.hook_z/q/k/v (batch, pos, head, d_head): this head only
    basis: Tensor | None = field(default=None, compare=False)  # (d, k) or (batch, d, k) orthonormal:
    #                                                            swap the projection only

    @property
    def layer(self) -> int | None:
        parts = self.site.split(".")
        return int(parts[1]) if parts[0] == "blocks" else None


# ---- thin named specialisations ------------------------------------------------------------------

def resid_pre(layer: int, position: str = "END", basis: Tensor | None = None) -> Intervention:
    return Intervention(f"blocks.{layer}.hook_resid_pre", position, basis=basis)


def resid_post(layer: int, position: str = "END", basis: Tensor | None = None) -> Intervention:
    return Intervention(f"blocks.{layer}.hook_resid_post", position, basis=basis)


def head_z(layer: int, head: int, position: str = "END") -> Intervention:
    return Intervention(f"blocks.{layer}.attn.hook_z", position, head=head)


def attn_out(layer: int, position: str = "END") -> Intervention:
    return Intervention(f"blocks.{layer}.hook_attn_out", position)


def mlp_out(layer: int, position: str = "END") -> Intervention:
    return Intervention(f"blocks.{layer}.hook_mlp_out", position)


# ---- running -------------------------------------------------------------------------------------

def role_positions(rows: list[dict], device) -> dict[str, Tensor]:
    """role -> (batch,) token index of that role in each prompt (END included)."""
    return {role: torch.tensor([r["positions"][role] for r in rows], device=device) for role in rows[0]["positions"]}


def interchange(base: Tensor, source: Tensor, basis: Tensor | None) -> Tensor:
    """(..., d): the source's activation, or with a basis only its projection onto the basis's span;
    the basis (d, k) is shared, or (..., d, k) one per prompt (or per variant), broadcast against
    the activations' leading axes."""
    if basis is None:
        return source
    if basis.dim() == 2:
        return base + (source - base) @ basis @ basis.T
    coef = torch.einsum("...d,...dk->...k", source - base, basis)
    return base + torch.einsum("...k,...dk->...d", coef, basis)


def open_gates(model, sites) -> None:
    """hook_mlp_in fires only once switched on (TransformerLens leaves it off by default)."""
    if any(site.endswith("hook_mlp_in") for site in sites) and not model.cfg.use_hook_mlp_in:
        model.set_use_hook_mlp_in(True)


def source_activations(model, source_tokens: Tensor, interventions: list[Intervention]) -> dict[str, Tensor]:
    """site -> the source run's activation (batch, pos, ...), to reuse across many base runs."""
    sites = {iv.site for iv in interventions}
    open_gates(model, sites)
    _, cache = model.run_with_cache(source_tokens, names_filter=lambda name: name in sites)
    return {site: cache[site] for site in sites}


class _Done(Exception):
    """Raised by the final hook: the run has what it needs (the unembedding is done by hand)."""


def run(model, base_tokens: Tensor, source: Tensor | dict[str, Tensor], interventions: list[Intervention],
        positions: dict[str, Tensor] | None = None, ids: Tensor | None = None) -> Tensor:
    """Logits at the last position of the base prompts (batch, vocab), or of the token ids `ids`
    only (batch, n_ids), with every intervention applied. `source` is the paired source prompts'
    tokens (batch, pos) or their activations (source_activations); `positions` maps a role to its
    (batch,) index (role_positions; END and ALL need none). Runs under the caller's grad mode."""
    if isinstance(source, Tensor):
        source = source_activations(model, source, interventions)
    open_gates(model, {iv.site for iv in interventions})
    batch = torch.arange(base_tokens.shape[0], device=base_tokens.device)  # (batch,)
    last = torch.full_like(batch, base_tokens.shape[1] - 1)

    def patcher(iv: Intervention):
        where = (slice(None), slice(None)) if iv.position == "ALL" else \
            (batch, last if iv.position == "END" else positions[iv.position])
        where = where if iv.head is None else (*where, iv.head)

        def hook(act, hook):  # act (batch, pos, d) or (batch, pos, head, d_head)
            act = act.clone()
            act[where] = interchange(act[where], source[iv.site][where], iv.basis)
            return act
        return hook

    final = {}

    def stop(act, hook):  # act (batch, pos, d_model): keep the last position, skip the unembedding
        final["x"] = act[:, -1]
        raise _Done

    try:
        with model.hooks(fwd_hooks=[(iv.site, patcher(iv)) for iv in interventions] + [(FINAL, stop)]):
            model(base_tokens)
    except _Done:
        pass
    W_U, b_U = (model.W_U, model.b_U) if ids is None else (model.W_U[:, ids], model.b_U[ids])
    return final["x"] @ W_U + b_U  # (batch, vocab) or (batch, n_ids)
