"""Exact activation patching on top of engine.py: one generic sweep, thin named specialisations.

The config's `patch_direction` is decided here once (RUNS): denoising runs the corrupted prompts
and patches in clean activations; noising the reverse. Each sweep returns, per patched component, the *sum over prompts* of the patched logit
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


# patch_direction -> (the run patched into (base), the run patched from (source))
RUNS = {"denoising": ("corrupted", "clean"), "noising": ("clean", "corrupted")}


@dataclass
class Pair:
    """One equal-length batch: the run patched into (base) and the run patched from (source)."""
    weights: Weights
    base: dict[str, Tensor]
    src: dict[str, Tensor]
    prefix: int  # positions before this are identical in both runs
    dir: Tensor  # (batch, d_model)
    bias: Tensor  # (batch,)
    base_ld: Tensor  # (batch,)
    src_ld: Tensor
    base_tokens: Tensor  # (batch, pos)
    clean_ld: Tensor  # (batch,): the clean and corrupted runs' logit differences, whichever is base
    corrupted_ld: Tensor

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


def prepare(model, weights: Weights, batch: Batch, patch_direction: str) -> Pair:
    tokens = {"clean": batch.clean, "corrupted": batch.corrupted}
    base_name, src_name = RUNS[patch_direction]
    d, bias = direction(model, batch)  # the engine's final LayerNorm applies its own bias
    runs = {name: engine.full_forward(weights, tokens[name]) for name in (base_name, src_name)}
    ld = {name: engine.read_logit_diff(weights, run["resid_final"][:, -1], d, bias) for name, run in runs.items()}
    return Pair(weights, runs[base_name], runs[src_name], first_difference(batch.clean, batch.corrupted),
                d.detach(), bias.detach(), ld[base_name], ld[src_name], tokens[base_name],
                ld["clean"], ld["corrupted"])


# ---- the generic sweep ---------------------------------------------------------------------------

def sweep(pair: Pair, layer: int, stage: str, n_variants: int,
          delta: Callable[[slice], Tensor], max_seqs: int = 2048) -> Tensor:
    """Sum over prompts of the logit difference for each variant of the residual stream at
    (layer, stage), stage 'pre' (before the layer; layer == n_layers: the final residual) or 'mid'
    (after its attention). delta(variant slice) -> (variants, batch, pos, d_model) change of the
    base residual there; only positions from pair.prefix on are run."""
    key = f"resid_{stage}.{layer}" if layer < pair.weights.n_layers else "resid_final"
    x0 = pair.base[key][:, pair.prefix:]  # (batch, suffix, d_model)
    out = []
    step = max(1, max_seqs // pair.n)
    for start in range(0, n_variants, step):
        variants = slice(start, min(start + step, n_variants))
        x = x0 + delta(variants)[..., pair.prefix:, :]  # (variant, batch, suffix, d_model)
        out.append(engine.run_from(pair.weights, layer, stage, x, pair.base, pair.prefix, pair.dir, pair.bias).sum(-1))
    return torch.cat(out)


def at_positions(change: Tensor, positions: list[int], variants: slice) -> Tensor:
    """Variants each applying `change` (batch, pos, d_model) at one position."""
    pos = torch.tensor(positions[variants], device=change.device)
    mask = torch.zeros(len(pos), change.shape[1], 1, device=change.device)
    mask[torch.arange(len(pos), device=change.device), pos] = 1.0
    return mask[:, None] * change  # (variant, batch, pos, d_model)


def head_writes(pair: Pair, layer: int, z_new: Tensor) -> Tensor:
    """(head, batch, pos, d_model): what replacing each head's z by z_new adds to the residual."""
    dz = z_new - pair.base[f"z.{layer}"]  # (batch, pos, head, d_head)
    return torch.einsum("bphd,hdm->hbpm", dz, pair.weights.W_O[layer])


# ---- named specialisations -----------------------------------------------------------------------

def suffix_positions(pair: Pair) -> list[int]:
    return list(range(pair.prefix, pair.n_pos))


def by_position(pair: Pair, layer: int, stage: str, change: Tensor) -> Tensor:
    """(pos,) sums: patch `change` at one position at a time; prefix positions change nothing."""
    out = pair.base_ld.sum().expand(pair.n_pos).clone()
    pos = suffix_positions(pair)
    out[pair.prefix:] = sweep(pair, layer, stage, len(pos), lambda variants: at_positions(change, pos, variants))
    return out


def resid_pre_by_pos(pair: Pair) -> Tensor:
    """(layer, pos)"""
    return torch.stack([by_position(pair, l, "pre", pair.src[f"resid_pre.{l}"] - pair.base[f"resid_pre.{l}"])
                        for l in range(pair.weights.n_layers)])


def attn_out_by_pos(pair: Pair) -> Tensor:
    return torch.stack([by_position(pair, l, "mid", pair.src[f"attn_out.{l}"] - pair.base[f"attn_out.{l}"])
                        for l in range(pair.weights.n_layers)])


def mlp_out_by_pos(pair: Pair) -> Tensor:
    return torch.stack([by_position(pair, l + 1, "pre", pair.src[f"mlp_out.{l}"] - pair.base[f"mlp_out.{l}"])
                        for l in range(pair.weights.n_layers)])


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
    """(layer, head)"""
    out = []
    for layer in range(pair.weights.n_layers):
        writes = head_writes(pair, layer, new_z(pair, layer, activation))  # (head, batch, pos, d_model)
        out.append(sweep(pair, layer, "mid", pair.weights.n_heads, lambda variants: writes[variants]))
    return torch.stack(out)


def head_by_pos(pair: Pair, layers: list[int] | None = None, heads: list[tuple[int, int]] | None = None) -> Tensor:
    """(layer, head, pos) head-output patching at one position at a time (NaN where not computed:
    layers/heads restrict the sweep)."""
    L, H = pair.weights.n_layers, pair.weights.n_heads
    out = torch.full((L, H, pair.n_pos), float("nan"), dtype=pair.base_ld.dtype, device=pair.base_ld.device)
    pos = suffix_positions(pair)
    for layer in range(L) if layers is None else layers:
        writes = head_writes(pair, layer, pair.src[f"z.{layer}"])
        chosen = [h for h in range(H) if heads is None or (layer, h) in heads]
        for h in chosen:
            out[layer, h] = pair.base_ld.sum()
            out[layer, h, pair.prefix:] = sweep(pair, layer, "mid", len(pos), lambda variants: at_positions(writes[h], pos, variants))
    return out


def path_to_receivers(pair: Pair, sender: tuple[int, int]) -> Tensor:
    """(layer, head, 3) path patching: the sender head's source-run output reaches only the q, k or v
    input of one later receiver head (direct path; everything else stays the base run), and the
    receiver's changed output flows on normally. Layers up to the sender's are NaN."""
    ls, hs = sender
    L, H = pair.weights.n_layers, pair.weights.n_heads
    out = torch.full((L, H, 3), float("nan"), dtype=pair.base_ld.dtype, device=pair.base_ld.device)
    write = head_writes(pair, ls, pair.src[f"z.{ls}"])[hs]  # (batch, pos, d_model)
    for lr in range(ls + 1, L):
        h = engine.layer_norm(pair.base[f"resid_pre.{lr}"] + write, pair.weights.ln1[lr], pair.weights.eps)
        moved = engine.qkv(pair.weights, lr, h)
        base = {n: pair.base[f"{n}.{lr}"] for n in "qkv"}
        writes = torch.cat([head_writes(pair, lr, engine.attend(pair.weights, *(moved[n] if n == kind else base[n] for n in "qkv"))[0])
                            for kind in "qkv"])  # (3*head, batch, pos, d_model), kind-major
        out[lr] = sweep(pair, lr, "mid", 3 * H, lambda variants: writes[variants]).view(3, H).T
    return out


def batches_of_pairs(model, batches: Iterator[Batch], patch_direction: str) -> Iterator[Pair]:
    weights = Weights.from_bridge(model)
    for batch in batches:
        yield prepare(model, weights, batch, patch_direction)


def normalise(patched_sum: Tensor, n: int, clean_mean: float, corrupted_mean: float) -> Tensor:
    return (patched_sum / n - corrupted_mean) / (clean_mean - corrupted_mean)
