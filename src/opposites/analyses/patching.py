"""Exact activation patching analyses (metric: (patched - corrupted) / (clean - corrupted) on the
mean logit difference). Position-wise analyses use the largest group of prompts that share one
token layout (length and role positions), so that a position means the same thing in every prompt;
whole-head analyses use every prompt."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import pandas as pd
import torch
from torch import Tensor

from opposites.core import batches
from opposites.patching import exact
from opposites.patching.attribution import ACTIVATIONS, head_attribution


def layout(row: dict) -> tuple:
    return tuple(sorted(row["positions"].items()))


def layout_group(rows: list[dict]) -> list[dict]:
    """The largest set of rows with identical length and role positions (ties: first seen)."""
    counts = Counter(layout(r) for r in rows)
    best = max(counts, key=lambda k: (counts[k], -[layout(r) for r in rows].index(k)))
    return [r for r in rows if layout(r) == best]


def position_labels(model, rows: list[dict]) -> pd.DataFrame:
    """pos, role ('' for none) and token (of the first prompt) of every position of a layout group."""
    roles = {pos: role for role, pos in rows[0]["positions"].items()}
    tokens = model.to_str_tokens(rows[0]["clean"])
    return pd.DataFrame({"pos": range(len(tokens)), "role": [roles.get(p, "") for p in range(len(tokens))],
                         "token": tokens})


def dataset_sweep(model, rows: list[dict], batch_size: int, patch_direction: str,
                  fn: Callable[[exact.Pair], Any]) -> Any:
    """fn's patched logit-difference sums (a tensor, or a dict of them) over all batches, normalised."""
    total, n, clean, corrupted = None, 0, 0.0, 0.0
    for pair in exact.batches_of_pairs(model, batches(model, rows, batch_size, desc="patching"), patch_direction):
        out = fn(pair)
        total = out if total is None else _tree(lambda a, b: a + b, total, out)
        n += pair.n
        clean, corrupted = clean + pair.clean_ld.sum().item(), corrupted + pair.corrupted_ld.sum().item()
    return _tree(lambda t: exact.normalise(t, n, clean / n, corrupted / n), total)


def _tree(fn, *trees):
    """Apply fn leafwise to tensors or dicts of tensors."""
    if isinstance(trees[0], dict):
        return {k: fn(*(t[k] for t in trees)) for k in trees[0]}
    return fn(*trees)


def _grid(t: Tensor, names: list[str]) -> pd.DataFrame:
    """Long table of an n-d tensor with one column per axis (index values) plus value."""
    idx = torch.cartesian_prod(*[torch.arange(s, device="cpu") for s in t.shape]).reshape(-1, t.dim())
    df = pd.DataFrame(idx.cpu().numpy(), columns=names)
    df["value"] = t.detach().flatten().double().cpu().numpy()
    return df


def _with_labels(df: pd.DataFrame, labels: pd.DataFrame, n: int) -> pd.DataFrame:
    return df.merge(labels, on="pos").assign(n_prompts=n)


def patch_resid(model, rows, batch_size, patch_direction: str) -> pd.DataFrame:
    group = layout_group(rows)
    t = dataset_sweep(model, group, batch_size, patch_direction, exact.resid_pre_by_pos)
    df = _with_labels(_grid(t, ["layer", "pos"]), position_labels(model, group), len(group))
    return df[["layer", "pos", "role", "token", "value", "n_prompts"]]


def patch_layers(model, rows, batch_size, patch_direction: str) -> pd.DataFrame:
    group = layout_group(rows)
    labels = position_labels(model, group)
    sums = dataset_sweep(model, group, batch_size, patch_direction,
                         lambda p: {"attn": exact.attn_out_by_pos(p), "mlp": exact.mlp_out_by_pos(p)})
    parts = [_grid(t, ["layer", "pos"]).assign(component=name) for name, t in sums.items()]
    df = _with_labels(pd.concat(parts), labels, len(group))
    return df[["component", "layer", "pos", "role", "token", "value", "n_prompts"]]


def patch_heads(model, rows, batch_size, patch_direction: str) -> pd.DataFrame:
    sums = dataset_sweep(model, rows, batch_size, patch_direction,
                         lambda p: {act: exact.head_all_pos(p, act) for act in ACTIVATIONS})
    parts = [_grid(t, ["layer", "head"]).assign(activation=act) for act, t in sums.items()]
    return pd.concat(parts)[["layer", "head", "activation", "value"]]


def patch_heads_by_pos(model, rows, batch_size, patch_direction: str) -> pd.DataFrame:
    group = layout_group(rows)
    t = dataset_sweep(model, group, batch_size, patch_direction, exact.head_by_pos)
    df = _with_labels(_grid(t, ["layer", "head", "pos"]), position_labels(model, group), len(group))
    return df[["layer", "head", "pos", "role", "token", "value", "n_prompts"]]


def patch_attribution(model, rows, batch_size, patch_direction: str) -> pd.DataFrame:
    """Attribution-patching estimates of the patch_heads grid (same metric)."""
    est = dataset_sweep(model, rows, batch_size, patch_direction, head_attribution)
    return pd.concat([_grid(est[act], ["layer", "head"]).assign(activation=act)
                      for act in ACTIVATIONS])[["layer", "head", "activation", "value"]]
