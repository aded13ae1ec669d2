"""Exact activation patching on top of engine.py: one generic sweep, thin named specialisations.

Denoising (default): run the corrupted prompts and patch in clean activations; noising: the
reverse. Each sweep returns, per patched component, the *sum over prompts* of the patched logit
difference, so batches of different lengths add up; `normalise` turns sums into the metric
(patched - corrupted) / (clean - corrupted) on the mean logit difference (0 = corrupted, 1 = clean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from opposites.core import Batch, direction
from opposites.patching import engine
from opposites.patching.engine import Weights


@dataclass
class Pair:
    """One equal-length batch: the run patched into (base) and the run patched from (source)."""
    w: Weights
    base: dict[str, Tensor]
    src: dict[str, Tensor]
    prefix: int  # positions before this are identical in both runs
    dir: Tensor  # (batch, d_model)
    bias: Tensor  # (batch,)
    base_ld: Tensor  # (batch,)
    src_ld: Tensor
    base_tokens: Tensor  # (batch, pos)

    @property
    def n(self) -> int:
        return self.dir.shape[0]

    @property
    def n_pos(self) -> int:
        return self.base["resid_final"].shape[1]


def first_difference(a: Tensor, b: Tensor) -> int:
    """First position where any row of a and b differ (length if none)."""
    diff = (a != b).any(0).nonzero()
    return int(diff[0]) if len(diff) else a.shape[1]


def prepare(model, w: Weights, batch: Batch, mode: str = "denoising") -> Pair:
    clean, corrupted = batch.clean, batch.corrupted
    base_tokens, src_tokens = (corrupted, clean) if mode == "denoising" else (clean, corrupted)
    d, bias = direction(model, batch)  # the engine's final LayerNorm applies its own bias
    base, src = engine.full_forward(w, base_tokens), engine.full_forward(w, src_tokens)
    ld = lambda c: engine.read_logit_diff(w, c["resid_final"][:, -1], d, bias)  # noqa: E731
    return Pair(w, base, src, first_difference(clean, corrupted), d.detach(), bias.detach(), ld(base), ld(src), base_tokens)


# ---- the generic sweep ---------------------------------------------------------------------------

def sweep(p: Pair, layer: int, stage: str, n_variants: int,
          delta: Callable[[slice], Tensor], max_seqs: int = 2048) -> Tensor:
    """Sum over prompts of the logit difference for each variant of the residual stream at
    (layer, stage), stage 'pre' (before the layer; layer == n_layers: the final residual) or 'mid'
    (after its attention). delta(variant slice) -> (variants, batch, pos, d_model) change of the
    base residual there; only positions from p.prefix on are run."""
    key = f"resid_{stage}.{layer}" if layer < p.w.n_layers else "resid_final"
    x0 = p.base[key][:, p.prefix:]  # (batch, suffix, d_model)
    out = []
    step = max(1, max_seqs // p.n)
    for start in range(0, n_variants, step):
        sl = slice(start, min(start + step, n_variants))
        x = x0 + delta(sl)[..., p.prefix:, :]  # (variant, batch, suffix, d_model)
        out.append(engine.run_from(p.w, layer, stage, x, p.base, p.prefix, p.dir, p.bias).sum(-1))
    return torch.cat(out)


def at_positions(change: Tensor, positions: list[int], sl: slice) -> Tensor:
    """Variants each applying `change` (batch, pos, d_model) at one position."""
    pos = torch.tensor(positions[sl], device=change.device)
    mask = torch.zeros(len(pos), change.shape[1], 1, device=change.device)
    mask[torch.arange(len(pos)), pos] = 1.0
    return mask[:, None] * change  # (variant, batch, pos, d_model)


def head_writes(p: Pair, layer: int, z_new: Tensor) -> Tensor:
    """(head, batch, pos, d_model): what replacing each head's z by z_new adds to the residual."""
    dz = z_new - p.base[f"z.{layer}"]  # (batch, pos, head, d_head)
    return torch.einsum("bphd,hdm->hbpm", dz, p.w.W_O[layer])


# ---- named specialisations -----------------------------------------------------------------------

def suffix_positions(p: Pair) -> list[int]:
    return list(range(p.prefix, p.n_pos))


def by_position(p: Pair, layer: int, stage: str, change: Tensor) -> Tensor:
    """(pos,) sums: patch `change` at one position at a time; prefix positions change nothing."""
    out = p.base_ld.sum().expand(p.n_pos).clone()
    pos = suffix_positions(p)
    out[p.prefix:] = sweep(p, layer, stage, len(pos), lambda sl: at_positions(change, pos, sl))
    return out


def resid_pre_by_pos(p: Pair) -> Tensor:
    """(layer, pos)"""
    return torch.stack([by_position(p, l, "pre", p.src[f"resid_pre.{l}"] - p.base[f"resid_pre.{l}"])
                        for l in range(p.w.n_layers)])


def attn_out_by_pos(p: Pair) -> Tensor:
    return torch.stack([by_position(p, l, "mid", p.src[f"attn_out.{l}"] - p.base[f"attn_out.{l}"])
                        for l in range(p.w.n_layers)])


def mlp_out_by_pos(p: Pair) -> Tensor:
    return torch.stack([by_position(p, l + 1, "pre", p.src[f"mlp_out.{l}"] - p.base[f"mlp_out.{l}"])
                        for l in range(p.w.n_layers)])


def new_z(p: Pair, layer: int, activation: str) -> Tensor:
    """Every head's z when its `activation` (z, q, k, v or pattern) comes from the source run and
    the rest of its layer from the base run (heads are independent, so all at once)."""
    b, s = (lambda n: p.base[f"{n}.{layer}"]), (lambda n: p.src[f"{n}.{layer}"])
    if activation == "z":
        return s("z")
    if activation == "pattern":
        return torch.einsum("bhqk,bkhd->bqhd", s("pattern"), b("v"))
    q, k, v = (s(n) if n == activation else b(n) for n in "qkv")
    return engine.attend(p.w, q, k, v)[0]


def head_all_pos(p: Pair, activation: str = "z") -> Tensor:
    """(layer, head)"""
    out = []
    for layer in range(p.w.n_layers):
        writes = head_writes(p, layer, new_z(p, layer, activation))  # (head, batch, pos, d_model)
        out.append(sweep(p, layer, "mid", p.w.n_heads, lambda sl: writes[sl]))
    return torch.stack(out)


def head_by_pos(p: Pair, layers: list[int] | None = None, heads: list[tuple[int, int]] | None = None) -> Tensor:
    """(layer, head, pos) head-output patching at one position at a time (NaN where not computed:
    layers/heads restrict the sweep)."""
    L, H = p.w.n_layers, p.w.n_heads
    out = torch.full((L, H, p.n_pos), float("nan"), dtype=p.base_ld.dtype)
    pos = suffix_positions(p)
    for layer in range(L) if layers is None else layers:
        writes = head_writes(p, layer, p.src[f"z.{layer}"])
        chosen = [h for h in range(H) if heads is None or (layer, h) in heads]
        for h in chosen:
            out[layer, h] = p.base_ld.sum()
            out[layer, h, p.prefix:] = sweep(p, layer, "mid", len(pos), lambda sl: at_positions(writes[h], pos, sl))
    return out


def path_to_receivers(p: Pair, sender: tuple[int, int]) -> Tensor:
    """(layer, head, 3) path patching: the sender head's source-run output reaches only the q, k or v
    input of one later receiver head (direct path; everything else stays the base run), and the
    receiver's changed output flows on normally. Layers up to the sender's are NaN."""
    ls, hs = sender
    L, H = p.w.n_layers, p.w.n_heads
    out = torch.full((L, H, 3), float("nan"), dtype=p.base_ld.dtype)
    write = head_writes(p, ls, p.src[f"z.{ls}"])[hs]  # (batch, pos, d_model)
    for lr in range(ls + 1, L):
        h = engine.layer_norm(p.base[f"resid_pre.{lr}"] + write, p.w.ln1[lr], p.w.eps)
        moved = engine.qkv(p.w, lr, h)
        base = {n: p.base[f"{n}.{lr}"] for n in "qkv"}
        writes = torch.cat([head_writes(p, lr, engine.attend(p.w, *(moved[n] if n == kind else base[n] for n in "qkv"))[0])
                            for kind in "qkv"])  # (3*head, batch, pos, d_model), kind-major
        out[lr] = sweep(p, lr, "mid", 3 * H, lambda sl: writes[sl]).view(3, H).T
    return out


def batches_of_pairs(model, batches: Iterator[Batch], mode: str) -> Iterator[Pair]:
    w = Weights.from_bridge(model)
    for b in batches:
        yield prepare(model, w, b, mode)


def normalise(patched_sum: Tensor, n: int, clean_mean: float, corrupted_mean: float) -> Tensor:
    return (patched_sum / n - corrupted_mean) / (clean_mean - corrupted_mean)
