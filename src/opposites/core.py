"""Shared tensor helpers: equal-length batches, the answer-minus-wrong direction, the final LayerNorm,
the decomposition of the final-position residual stream into components, and what one job's
analyses share (JobCache)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import Any, Callable, Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm

from opposites.prompts import cluster_of


@dataclass
class Batch:
    rows: list[dict]
    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answer: Int[Tensor, " batch"]
    wrong: Int[Tensor, " batch"]


def batch_order(rows: list[dict]) -> list[dict]:
    """The rows in the order batches() runs them (by token length, then id): the prompt axis of
    per-prompt results."""
    return sorted(rows, key=lambda r: (r["positions"]["END"], r["id"]))


def prompt_clusters(rows: list[dict]) -> list[str]:
    """Each prompt's resampling unit (prompts.cluster_of), in batch order."""
    return [cluster_of(r) for r in batch_order(rows)]


def batches(model, rows: list[dict], batch_size: int, desc: str = "prompts") -> Iterator[Batch]:
    """Batches of rows with equal token length (no padding; END is the last position)."""
    by_len = batch_order(rows)
    chunks = []
    for _, group in groupby(by_len, key=lambda r: r["positions"]["END"]):
        group = list(group)
        chunks += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    for chunk in tqdm(chunks, desc=desc, unit="batch", leave=False):
        clean, corrupted = model.to_tokens([r["clean"] for r in chunk]), model.to_tokens([r["corrupted"] for r in chunk])
        end = chunk[0]["positions"]["END"]
        assert clean.shape == corrupted.shape and clean.shape[1] == end + 1, "prompt length mismatch"
        answer = torch.tensor([model.to_single_token(r["answer"]) for r in chunk], device=clean.device)
        wrong = torch.tensor([model.to_single_token(r["wrong"]) for r in chunk], device=clean.device)
        yield Batch(chunk, clean, corrupted, answer, wrong)


def logit_diff(logits: Float[Tensor, "batch pos vocab"], batch: Batch) -> Float[Tensor, " batch"]:
    """Answer minus wrong logit at the final position, per prompt."""
    last = logits[:, -1]  # (batch, vocab)
    return last.gather(1, batch.answer[:, None])[:, 0] - last.gather(1, batch.wrong[:, None])[:, 0]


def direction(model, batch: Batch) -> tuple[Float[Tensor, "batch d_model"], Float[Tensor, " batch"]]:
    """Unembedding direction of answer minus wrong, and the unembedding bias difference."""
    W_U, b_U = model.W_U, model.b_U  # (d_model, vocab), (vocab,)
    return (W_U[:, batch.answer] - W_U[:, batch.wrong]).T, b_U[batch.answer] - b_U[batch.wrong]


def ln_final(model, x: Float[Tensor, "... d_model"], scale: Tensor | None = None) -> Float[Tensor, "... d_model"]:
    """The final LayerNorm; with `scale` given, that scale is used instead of x's own (linear in x)."""
    x = x - x.mean(-1, keepdim=True)
    if scale is None:
        scale = (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    return x / scale * model.ln_final.w


def ln_bias(model) -> Float[Tensor, " d_model"]:
    return model.ln_final.b


@dataclass
class EndState:
    """Everything at the final position of one batch, for the lens and attributions."""
    resid: dict[tuple[str, int], Float[Tensor, "batch d_model"]]  # (resid_pre|resid_mid|resid_post, layer)
    embed: Float[Tensor, "batch d_model"]  # token + positional embedding
    heads: Float[Tensor, "layer head batch d_model"]  # each head's output (z @ W_O)
    attn_bias: Float[Tensor, "layer d_model"]  # b_O
    mlp: Float[Tensor, "layer batch d_model"]
    scale: Float[Tensor, "batch 1"]  # ln_final scale of the run
    direction: Float[Tensor, "batch d_model"]
    bias_diff: Float[Tensor, " batch"]  # ln_final bias . dir + b_U difference
    logit_diff: Float[Tensor, " batch"]  # the model's own


def end_state(model, batch: Batch, tokens: Tensor | None = None) -> EndState:
    L = model.cfg.n_layers
    names = {"hook_embed", "hook_pos_embed", "ln_final.hook_scale", f"blocks.{L - 1}.hook_resid_post"}
    for layer in range(L):
        names |= {f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_mid",
                  f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"}
    logits, cache = model.run_with_cache(batch.clean if tokens is None else tokens, names_filter=lambda n: n in names)
    at_end = {k: cache[k][:, -1] for k in names}  # (batch, ...)
    resid = {}
    for layer in range(L):
        resid[("resid_pre", layer)] = at_end[f"blocks.{layer}.hook_resid_pre"]
        resid[("resid_mid", layer)] = at_end[f"blocks.{layer}.hook_resid_mid"]
    resid[("resid_post", L - 1)] = at_end[f"blocks.{L - 1}.hook_resid_post"]
    heads = torch.stack([torch.einsum("bhd,hdm->hbm", at_end[f"blocks.{layer}.attn.hook_z"], model.W_O[layer])
                         for layer in range(L)])  # (layer, head, batch, d_model)
    d, b_u = direction(model, batch)
    return EndState(
        resid=resid,
        embed=at_end["hook_embed"] + at_end["hook_pos_embed"],
        heads=heads,
        attn_bias=model.b_O,
        mlp=torch.stack([at_end[f"blocks.{layer}.hook_mlp_out"] for layer in range(L)]),
        scale=at_end["ln_final.hook_scale"],
        direction=d,
        bias_diff=(ln_bias(model) * d).sum(-1) + b_u,
        logit_diff=logit_diff(logits, batch),
    )


def end_states(model, rows: list[dict], batch_size: int, cache: JobCache | None = None) -> list[tuple[Batch, EndState]]:
    """Every batch of the prompts with its EndState, one forward per batch per job (through the job's
    cache): the lens stage's analyses (logit lens, head DLA, answer/wrong logits) read the same run."""
    key = (tuple((r["id"], r["clean"], r["answer"], r["wrong"]) for r in rows), batch_size)
    return shared(cache, "end_states", key,
                  lambda: [(b, end_state(model, b)) for b in batches(model, rows, batch_size, desc="end states")])


def read_out(model, state: EndState, x: Float[Tensor, "... batch d_model"], frozen: bool = True) -> Float[Tensor, "... batch"]:
    """Logit difference that a residual (component) writes, through the final LayerNorm.

    frozen=True uses the run's final LayerNorm scale (linear: components add up); frozen=False
    recomputes the LayerNorm on x itself (the logit lens proper) and adds the bias terms."""
    if frozen:
        return (ln_final(model, x, state.scale) * state.direction).sum(-1)
    return (ln_final(model, x) * state.direction).sum(-1) + state.bias_diff


class JobCache:
    """What one job's analyses share (runs prepared once, end states, scores): run_stage makes one per
    job and hands it to each analysis with a `cache` argument. One value per name: asking for a name
    with another key frees the value held first and computes afresh; pop() hands the value over and
    frees it (the last analysis that needs it)."""

    def __init__(self):
        self.held: dict[str, tuple[Any, Any]] = {}

    def get(self, name: str, key: Any, make: Callable[[], Any]) -> Any:
        if name not in self.held or self.held[name][0] != key:
            self.held.pop(name, None)  # free the previous value before computing the next
            self.held[name] = (key, make())
        return self.held[name][1]

    def pop(self, name: str, key: Any, make: Callable[[], Any]) -> Any:
        value = self.get(name, key, make)
        del self.held[name]
        return value


def shared(cache: JobCache | None, name: str, key: Any, make: Callable[[], Any]) -> Any:
    """make()'s result, through the job's cache when there is one (an analysis called on its own
    computes it)."""
    return make() if cache is None else cache.get(name, key, make)
