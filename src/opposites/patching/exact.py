"""Exact activation patching on top of engine.py: one generic sweep, thin named specialisations.

The config's `patch_direction` decides the runs (RUNS): denoising runs the corrupted prompts and
patches in clean activations; noising the reverse. Each sweep returns the patched logit difference
of every prompt (last axis: the batch); `normalise` turns them into (patched - corrupted) /
(clean - corrupted) on the mean (0 = corrupted, 1 = clean). Position-wise sweeps patch a (batch,
pos) mask per variant: one variant patches every prompt at its own position of a role (`role_masks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from opposites.core import Batch, direction
from opposites.patching import engine
from opposites.patching.engine import Weights


# patch_direction -> (the run patched into (base), the run patched from (source))
RUNS = {"denoising": ("corrupted", "clean"), "noising": ("clean", "corrupted")}


@dataclass
class Pair:
    """One equal-length batch: the run patched into (base) and the run patched from (source)."""
    weights: Weights
    base: dict[str, Tensor]
    src: dict[str, Tensor]
    prefix: int  # positions before this are identical in both runs
    direction: Tensor  # (batch, d_model)
    bias: Tensor  # (batch,)
    base_ld: Tensor  # (batch,)
    base_tokens: Tensor  # (batch, pos)
    rows: list[dict]  # the prompts, for their role positions
    clean_ld: Tensor  # (batch,): the clean and corrupted runs' logit differences, whichever is base
    corrupted_ld: Tensor

    @property
    def n(self) -> int:
        return self.direction.shape[0]


def prepare(model, weights: Weights, batch: Batch, patch_direction: str) -> Pair:
    tokens = {"clean": batch.clean, "corrupted": batch.corrupted}
    base_name, src_name = RUNS[patch_direction]
    d, bias = direction(model, batch)  # the engine's final LayerNorm applies its own bias
    runs = {name: engine.full_forward(weights, tokens[name]) for name in (base_name, src_name)}
    ld = {name: engine.read_logit_diff(weights, run["resid_final"][:, -1], d, bias) for name, run in runs.items()}
    return Pair(weights, runs[base_name], runs[src_name], engine.first_difference(batch.clean, batch.corrupted),
                d.detach(), bias.detach(), ld[base_name], tokens[base_name], batch.rows,
                ld["clean"], ld["corrupted"])


# ---- the generic sweep ---------------------------------------------------------------------------

MAX_SEQS = 2048  # sequences per forward of a sweep


def sweep(pair: Pair, layer: int, stage: str, n_variants: int, delta: Callable[[slice], Tensor],
          first: int | None = None) -> Tensor:
    """(variant, batch): the logit difference of each prompt for each variant of the residual stream
    at (layer, stage), 'pre' (before the layer; layer == n_layers: the final residual) or 'mid' (after
    its attention); delta(variant slice) -> (variants, batch, pos, d_model) changes the base residual
    there. Only positions from `first` (default pair.prefix) on run; earlier keys/values are the base's."""
    first = pair.prefix if first is None else first
    key = f"resid_{stage}.{layer}" if layer < pair.weights.n_layers else "resid_final"
    x0 = pair.base[key][:, first:]  # (batch, suffix, d_model)
    out = []
    step = max(1, MAX_SEQS // pair.n)
    for start in range(0, n_variants, step):
        variants = slice(start, min(start + step, n_variants))
        x = x0 + delta(variants)[..., first:, :]  # (variant, batch, suffix, d_model)
        past = lambda lay: tuple(pair.base[f"{n}.{lay}"][:, :first].expand(len(x), -1, -1, -1, -1) for n in "kv")  # noqa: E731
        out.append(engine.Forward(pair.weights, pair.direction, pair.bias, past=past).run(x, layer, stage))
    return torch.cat(out)


def role_masks(pair: Pair, roles: list[str]) -> Tensor:
    """(role, batch, pos) 0/1 masks: each prompt's own position of each role; the role 'other'
    covers every position that is neither BOS nor a named role (the tokens in between)."""
    n_pos = pair.base_tokens.shape[1]
    masks = torch.zeros(len(roles), pair.n, n_pos, dtype=pair.direction.dtype, device=pair.direction.device)
    for b, row in enumerate(pair.rows):
        named = set(row["positions"].values())
        for r, role in enumerate(roles):
            if role == "other":
                masks[r, b, [p for p in range(1, n_pos) if p not in named]] = 1.0
            elif role in row["positions"]:
                masks[r, b, row["positions"][role]] = 1.0
    return masks


def position_masks(pair: Pair) -> Tensor:
    """(pos, batch, pos): one variant per position, the same for every prompt (for equal layouts)."""
    eye = torch.eye(pair.base_tokens.shape[1], dtype=pair.direction.dtype, device=pair.direction.device)  # (pos, pos)
    return eye[:, None, :].expand(len(eye), pair.n, len(eye))


def head_writes(pair: Pair, layer: int, z_new: Tensor) -> Tensor:
    """(head, batch, pos, d_model): what replacing each head's z by z_new adds to the residual."""
    dz = z_new - pair.base[f"z.{layer}"]  # (batch, pos, head, d_head)
    return torch.einsum("bphd,hdm->hbpm", dz, pair.weights.W_O[layer])


# ---- named specialisations -----------------------------------------------------------------------

def by_mask(pair: Pair, layer: int, stage: str, change: Tensor, masks: Tensor) -> Tensor:
    """(mask, batch): patch `change` where each mask is 1. A mask that touches only the shared
    prefix (where both runs are identical) changes nothing: its rows are the base run's."""
    touched = masks[:, :, pair.prefix:].ne(0).any(1)  # (mask, suffix): positions any prompt patches
    live = touched.any(1)
    out = pair.base_ld.expand(masks.shape[0], pair.n).clone()
    firsts = pair.prefix + touched.int().argmax(1)  # (mask,) the first position each mask changes
    for first in firsts[live].unique().tolist():  # masks that start later run fewer positions
        group = (live & (firsts == first)).nonzero()[:, 0]
        group_masks = masks[group]
        out[group] = sweep(pair, layer, stage, len(group),
                           lambda variants: group_masks[variants, :, :, None] * change, first=first)  # (variant, batch, pos, d_model)
    return out


def resid_pre_by_role(pair: Pair, masks: Tensor) -> Tensor:
    """(layer, role, batch)"""
    return torch.stack([by_mask(pair, l, "pre", pair.src[f"resid_pre.{l}"] - pair.base[f"resid_pre.{l}"], masks)
                        for l in range(pair.weights.n_layers)])


def attn_out_by_role(pair: Pair, masks: Tensor) -> Tensor:
    return torch.stack([by_mask(pair, l, "mid", pair.src[f"attn_out.{l}"] - pair.base[f"attn_out.{l}"], masks)
                        for l in range(pair.weights.n_layers)])


def mlp_out_by_role(pair: Pair, masks: Tensor, layers: list[int] | None = None) -> Tensor:
    """(layer, role, batch); only `layers` when given (the others NaN)."""
    L = pair.weights.n_layers
    out = torch.full((L, masks.shape[0], pair.n), float("nan"), dtype=pair.base_ld.dtype, device=pair.base_ld.device)
    for l in range(L) if layers is None else layers:
        out[l] = by_mask(pair, l + 1, "pre", pair.src[f"mlp_out.{l}"] - pair.base[f"mlp_out.{l}"], masks)
    return out


def new_z(pair: Pair, layer: int, activation: str) -> Tensor:
    """Every head's z when its `activation` (z, q, k, v or pattern) comes from the source run and
    the rest of its layer from the base run (heads are independent, so all at once)."""
    base = lambda name: pair.base[f"{name}.{layer}"]  # noqa: E731
    source = lambda name: pair.src[f"{name}.{layer}"]  # noqa: E731
    if activation == "z":
        return source("z")
    if activation == "pattern":
        return torch.einsum("bhqk,bkhd->bqhd", source("pattern"), base("v"))
    q, k, v = (source(name) if name == activation else base(name) for name in "qkv")
    return engine.attend(pair.weights, q, k, v)[0]


def head_all_pos(pair: Pair, activation: str = "z") -> Tensor:
    """(layer, head, batch)"""
    L, H = pair.weights.n_layers, pair.weights.n_heads
    return heads_all_pos(pair, [(l, h) for l in range(L) for h in range(H)], activation).view(L, H, pair.n)


def heads_all_pos(pair: Pair, heads: list[tuple[int, int]], activation: str) -> Tensor:
    """(len(heads), batch): each listed (layer, head)'s `activation` patched over all positions, in
    the list's order."""
    out = torch.empty(len(heads), pair.n, dtype=pair.base_ld.dtype, device=pair.base_ld.device)
    for layer in sorted({l for l, _ in heads}):
        idx = [i for i, (l, _) in enumerate(heads) if l == layer]
        chosen = torch.tensor([heads[i][1] for i in idx], dtype=torch.long, device=pair.direction.device)
        writes = head_writes(pair, layer, new_z(pair, layer, activation))[chosen]  # (chosen, batch, pos, d_model)
        out[idx] = sweep(pair, layer, "mid", len(idx), lambda variants: writes[variants])
    return out


def head_by_role(pair: Pair, masks: Tensor, layers: list[int] | None = None,
                 heads: list[tuple[int, int]] | None = None) -> Tensor:
    """(layer, head, role, batch) head-output patching at one role's positions at a time (NaN where
    not computed: layers/heads restrict the sweep)."""
    L, H = pair.weights.n_layers, pair.weights.n_heads
    out = torch.full((L, H, masks.shape[0], pair.n), float("nan"), dtype=pair.base_ld.dtype, device=pair.base_ld.device)
    for layer in range(L) if layers is None else layers:
        writes = head_writes(pair, layer, pair.src[f"z.{layer}"])
        for h in [h for h in range(H) if heads is None or (layer, h) in heads]:
            out[layer, h] = by_mask(pair, layer, "mid", writes[h], masks)
    return out


def path_to_receivers(pair: Pair, sender: tuple[int, int], layers: list[int] | None = None) -> Tensor:
    """(layer, head, 3, batch) path patching: the sender head's source-run output reaches only the q,
    k or v input of one later receiver head (direct path; everything else stays the base run), and
    the receiver's changed output flows on normally. Layers up to the sender's, and those outside
    `layers` where given, are NaN."""
    ls, hs = sender
    L, H = pair.weights.n_layers, pair.weights.n_heads
    out = torch.full((L, H, 3, pair.n), float("nan"), dtype=pair.base_ld.dtype, device=pair.base_ld.device)
    write = head_writes(pair, ls, pair.src[f"z.{ls}"])[hs]  # (batch, pos, d_model)
    for lr in (l for l in range(ls + 1, L) if layers is None or l in layers):
        h = engine.layer_norm(pair.base[f"resid_pre.{lr}"] + write, pair.weights.ln1[lr], pair.weights.eps)
        moved = engine.qkv(pair.weights, lr, h)
        base = {n: pair.base[f"{n}.{lr}"] for n in "qkv"}
        writes = torch.cat([head_writes(pair, lr, engine.attend(pair.weights, *(moved[n] if n == kind else base[n] for n in "qkv"))[0])
                            for kind in "qkv"])  # (3*head, batch, pos, d_model), kind-major
        out[lr] = sweep(pair, lr, "mid", 3 * H, lambda variants: writes[variants]).view(3, H, pair.n).transpose(0, 1)
    return out


def path_to_mlps(pair: Pair, sender: tuple[int, int], layers: list[int] | None = None) -> Tensor:
    """(layer + 1, batch) path patching: row l < n_layers, the sender head's source-run output
    reaches only MLP l's input (from the sender's own layer on) and that MLP's change flows on; row
    n_layers, only the logits (its direct path). Rows before the sender's, or not in `layers`, are NaN."""
    ls, hs = sender
    L = pair.weights.n_layers
    out = torch.full((L + 1, pair.n), float("nan"), dtype=pair.base_ld.dtype, device=pair.base_ld.device)
    write = head_writes(pair, ls, pair.src[f"z.{ls}"])[hs]  # (batch, pos, d_model)
    for lr in (l for l in range(ls, L) if layers is None or l in layers):
        change = engine.mlp(pair.weights, lr, pair.base[f"resid_mid.{lr}"] + write) - pair.base[f"mlp_out.{lr}"]  # (batch, pos, d_model)
        out[lr] = sweep(pair, lr + 1, "pre", 1, lambda variants: change[None])[0]
    if layers is None or L in layers:
        out[L] = sweep(pair, L, "pre", 1, lambda variants: write[None])[0]
    return out


def batches_of_pairs(model, batches: Iterator[Batch], patch_direction: str) -> Iterator[Pair]:
    weights = Weights.from_bridge(model)
    for batch in batches:
        yield prepare(model, weights, batch, patch_direction)


def normalise(patched: Tensor, clean_mean: float, corrupted_mean: float) -> Tensor:
    """(mean patched - corrupted) / (clean - corrupted), patched (..., prompt)."""
    return (patched.mean(-1) - corrupted_mean) / (clean_mean - corrupted_mean)
