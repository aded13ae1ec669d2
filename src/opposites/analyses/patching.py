"""Exact activation patching analyses (metric: (patched - corrupted) / (clean - corrupted) on the
mean logit difference), each value with a 95% bootstrap interval over prompts. Position-wise
analyses are aligned by role: each prompt is patched at its own position of the role (its template's
IO, S1, S2, ADJ1, NAME2, ENTITY or END; 'other' = the tokens in between), so every prompt and
every template counts. When the normaliser (clean - corrupted) is not distinguishable from 0, the
ratio is not meaningful and the table says so (`normaliser_ok`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from opposites.core import JobCache, batches, prompt_clusters, shared
from opposites.derived import QKV_HEADS, top_patched_heads
from opposites.patching import exact
from opposites.patching.attribution import ACTIVATIONS, head_attribution
from opposites.prompts import load_spec
from opposites.stats import ratio_ci


def patch_roles(rows: list[dict]) -> list[str]:
    """The roles position-wise patching reports, in template order: the task's roles, END, other."""
    return [*load_spec(rows[0]["task"])["roles"], "END", "other"]


@dataclass
class Sweep:
    """Per-prompt patched logit differences (a tensor (..., prompt), or a dict of them) and the clean
    and corrupted runs' logit differences (prompt,), in the same prompt order."""
    patched: Any
    clean: Tensor
    corrupted: Tensor

    def normalised(self) -> Any:
        c, k = self.clean.double().mean().item(), self.corrupted.double().mean().item()
        return _tree(lambda t: exact.normalise(t.double(), c, k), self.patched)


def prompts_key(rows: list[dict]) -> tuple:
    return tuple((r["clean"], r["corrupted"]) for r in rows)


def prepared_pairs(model, rows: list[dict], batch_size: int, patch_direction: str,
                   cache: JobCache | None = None) -> list[exact.Pair]:
    """The prompts' batches with their clean and corrupted runs, prepared once per job (the job's
    cache holds them for the stage's next analysis of the same prompts)."""
    key = (prompts_key(rows), batch_size, patch_direction)
    return shared(cache, "patch_pairs", key, lambda: list(exact.batches_of_pairs(
        model, batches(model, rows, batch_size, desc="patching runs"), patch_direction)))


def dataset_sweep(model, rows: list[dict], batch_size: int, patch_direction: str,
                  fn: Callable[[exact.Pair], Any], cache: JobCache | None = None) -> Sweep:
    """fn's per-prompt patched logit differences over all batches, concatenated along prompts."""
    parts, clean, corrupted = [], [], []
    for pair in tqdm(prepared_pairs(model, rows, batch_size, patch_direction, cache), desc="patching", unit="batch", leave=False):
        parts.append(fn(pair))
        clean.append(pair.clean_ld)
        corrupted.append(pair.corrupted_ld)
    patched = _tree(lambda *ts: torch.cat(ts, -1), *parts)
    return Sweep(patched, torch.cat(clean), torch.cat(corrupted))


def _tree(fn, *trees):
    """Apply fn leafwise to tensors or dicts of tensors."""
    if isinstance(trees[0], dict):
        return {k: fn(*(t[k] for t in trees)) for k in trees[0]}
    return fn(*trees)


def table(patched: Tensor, sweep: Sweep, axes: dict[str, list], seed: int, clusters: list[str]) -> pd.DataFrame:
    """Long table of a (..., prompt) tensor: one column per leading axis (its labels), then value,
    ci_low, ci_high (cluster bootstrap over the prompts' clusters, batch order), p_value (of value 0,
    normal approximation from the bootstrap), n and normaliser_ok."""
    est, normaliser = ratio_ci(patched.detach().cpu(), sweep.clean.detach().cpu(), sweep.corrupted.detach().cpu(), seed,
                               clusters=clusters)
    index = pd.MultiIndex.from_product(list(axes.values()), names=list(axes))
    df = index.to_frame(index=False)
    for name in ("value", "ci_low", "ci_high", "p_value"):
        df[name] = getattr(est, name).flatten().cpu().numpy()
    return df.assign(n=est.n, normaliser_ok=bool(normaliser.excludes_zero()))


def resid_sweep(model, rows, batch_size, patch_direction: str, cache: JobCache | None = None) -> Sweep:
    """The residual stream patched before each layer at each role (patch_resid; patch_directions
    reuses it through the job's cache)."""
    roles = patch_roles(rows)
    return shared(cache, "resid_sweep", (prompts_key(rows), batch_size, patch_direction), lambda: dataset_sweep(
        model, rows, batch_size, patch_direction,
        lambda pair: exact.resid_pre_by_role(pair, exact.role_masks(pair, roles)), cache=cache))


def z_sweep(model, rows, batch_size, patch_direction: str, cache: JobCache | None = None) -> Sweep:
    """Every head's output patched over all positions (patch_heads; patch_directions reuses it)."""
    return shared(cache, "z_sweep", (prompts_key(rows), batch_size, patch_direction), lambda: dataset_sweep(
        model, rows, batch_size, patch_direction, lambda pair: exact.head_all_pos(pair, "z"), cache=cache))


def patch_resid(model, rows, batch_size, patch_direction: str, seed: int, cache: JobCache | None = None) -> pd.DataFrame:
    s = resid_sweep(model, rows, batch_size, patch_direction, cache)
    return table(s.patched, s, {"layer": list(range(model.cfg.n_layers)), "role": patch_roles(rows)}, seed,
                 prompt_clusters(rows))


def patch_layers(model, rows, batch_size, patch_direction: str, seed: int, cache: JobCache | None = None) -> pd.DataFrame:
    roles = patch_roles(rows)

    def both(pair):
        masks = exact.role_masks(pair, roles)
        return {"attn": exact.attn_out_by_role(pair, masks), "mlp": exact.mlp_out_by_role(pair, masks)}

    s = dataset_sweep(model, rows, batch_size, patch_direction, both, cache=cache)
    axes = {"layer": list(range(model.cfg.n_layers)), "role": roles}
    return pd.concat([table(t, s, axes, seed, prompt_clusters(rows)).assign(component=name) for name, t in s.patched.items()])[
        ["component", "layer", "role", "value", "ci_low", "ci_high", "p_value", "n", "normaliser_ok"]]


def _heads(model) -> dict[str, list]:
    return {"layer": list(range(model.cfg.n_layers)), "head": list(range(model.cfg.n_heads))}


def patch_heads(model, rows, batch_size, patch_direction: str, seed: int, cache: JobCache | None = None) -> pd.DataFrame:
    """Every head's output (z) patched over all positions; its query, key, value and attention
    pattern patched for the QKV_HEADS heads whose output matters most (largest |z| effect): what the
    paper reads of them (the top heads' routes; the attribution-vs-exact comparison). Attribution
    patching (patch_attribution) estimates all five for every head."""
    z = z_sweep(model, rows, batch_size, patch_direction, cache)
    clusters = prompt_clusters(rows)
    z_table = table(z.patched, z, _heads(model), seed, clusters).assign(activation="z")
    heads = top_patched_heads(z_table, QKV_HEADS)
    s = dataset_sweep(model, rows, batch_size, patch_direction,
                      lambda pair: {act: exact.heads_all_pos(pair, heads, act) for act in ACTIVATIONS if act != "z"}, cache=cache)
    layer_head = pd.DataFrame(heads, columns=["layer", "head"])
    parts = [table(t, s, {"i": list(range(len(heads)))}, seed, clusters).drop(columns="i").assign(activation=act)
             for act, t in s.patched.items()]
    parts = [z_table] + [pd.concat([layer_head, p], axis=1) for p in parts]
    return pd.concat(parts, ignore_index=True)[["layer", "head", "activation", "value", "ci_low", "ci_high", "p_value", "n",
                                                "normaliser_ok"]]


def patch_attribution(model, rows, batch_size, patch_direction: str, seed: int, cache: JobCache | None = None) -> pd.DataFrame:
    """Attribution-patching estimates of every head's z, q, k, v and pattern patching (patch_heads'
    metric; patch_heads measures q, k, v and pattern exactly for QKV_HEADS heads only)."""
    s = dataset_sweep(model, rows, batch_size, patch_direction, head_attribution, cache=cache)
    parts = [table(t, s, _heads(model), seed, prompt_clusters(rows)).assign(activation=act) for act, t in s.patched.items()]
    return pd.concat(parts)[["layer", "head", "activation", "value", "ci_low", "ci_high", "p_value", "n", "normaliser_ok"]]


def effect(df: pd.DataFrame, direction: str) -> pd.DataFrame:
    """A table's metric as the share of the clean-minus-corrupted difference that patching moves:
    denoising, the share restored (the metric itself); noising, the share destroyed (1 - metric,
    its interval flipped), so both read 0 = no effect, 1 = all of it."""
    if direction == "denoising":
        return df
    return df.assign(value=1 - df.value, ci_low=1 - df.ci_high, ci_high=1 - df.ci_low)


def patch_directions(model, rows, batch_size, patch_direction: str, seed: int, cache: JobCache | None = None) -> pd.DataFrame:
    """The headline patching maps, residual stream by (layer, role) and every head's output, in both
    directions (denoising: clean into the corrupted run; noising: corrupted into the clean run),
    each as the share of the difference it moves (`effect`); patch_direction only picks which
    prepared runs are reused first. Columns: kind (resid | z), layer, role, head, direction, value,
    ci_low, ci_high, p_value, n, normaliser_ok."""
    parts = []
    for direction in sorted(exact.RUNS, key=lambda d: d != patch_direction):
        resid = patch_resid(model, rows, batch_size, direction, seed, cache).assign(kind="resid", head=-1)
        z = z_sweep(model, rows, batch_size, direction, cache)
        heads = table(z.patched, z, _heads(model), seed, prompt_clusters(rows)).assign(kind="z", role="")
        parts += [effect(df, direction).assign(direction=direction) for df in (resid, heads)]
    return pd.concat(parts, ignore_index=True)[["kind", "layer", "role", "head", "direction", "value", "ci_low",
                                                "ci_high", "p_value", "n", "normaliser_ok"]]
