"""Meaning: how opposite pairs sit in embedding space and in the residual stream, and which MLP
neurons carry the answer."""

from __future__ import annotations

import pandas as pd
import torch

from opposites.core import batches, direction, prompt_clusters
from opposites.distribution import check_words
from opposites.prompts import fill, load_spec, make_prompts
from opposites.stats import mean_ci
from opposites.words import copy_words, relation_pairs


def _cos_dot(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    return torch.cosine_similarity(a, b, dim=-1).item(), (a * b).sum(-1).item()


def _adj_residuals(model, spec: dict, words: list[str]) -> torch.Tensor | None:
    """(word, layer, d_model): the residual after every layer at ADJ1 in the task's first template,
    the same names around each word; None when a word does not fill the template as one token."""
    names = dict(zip(("NAME1", "NAME2"), spec["names"][:2]))
    filled = [fill(spec["templates"][0], {**names, "ADJ1": w.strip()}, model.tokenizer, spec["roles"]) for w in words]
    if None in filled or len({len(model.to_tokens(t)[0]) for t, _ in filled}) != 1:
        return None
    hooks = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(model.to_tokens([t for t, _ in filled]), names_filter=lambda n: n in hooks)
    pos = filled[0][1]["ADJ1"]
    return torch.stack([cache[h][:, pos] for h in hooks], 1)  # (word, layer, d_model)


def similarity(model, rows, batch_size, seed: int) -> pd.DataFrame:
    """Cosine similarity and dot product of opposite, synonym and random word pairs (random: a task
    adjective with an unrelated one): token embedding (W_E rows), unembedding (W_U columns; tied
    to W_E in GPT-2, so not an independent view), and the residual stream after every layer at the
    adjective position of the task's first template. Residuals are centred first: the mean over all
    the words compared, at that layer and position, is subtracted, since a component shared by every
    adjective otherwise puts every pair near cosine 1. in_distribution: both words of the pair are
    words the model knows (distribution.check_words against the task's own words)."""
    spec = load_spec(rows[0]["task"])
    pairs = relation_pairs(rows[0]["task"], seed)
    words = sorted({w for ps in pairs.values() for p in ps for w in p})
    known = {r["word"]: r["in_distribution"] for r in check_words(model, words, copy_words(rows[0]["task"]))["words"]}
    out = []
    for relation, ps in pairs.items():
        for a, b in ps:
            ia, ib = model.to_single_token(a), model.to_single_token(b)
            for space, M in (("embed", model.W_E), ("unembed", model.W_U.T)):
                out.append((space, -1, relation, a.strip(), b.strip(), *_cos_dot(M[ia], M[ib])))
    resid = _adj_residuals(model, spec, words)
    if resid is not None:
        centred = resid - resid.mean(0, keepdim=True)  # (word, layer, d_model)
        index = {w: i for i, w in enumerate(words)}
        for relation, ps in pairs.items():
            for a, b in ps:
                for layer in range(model.cfg.n_layers):
                    ra, rb = centred[index[a], layer], centred[index[b], layer]
                    out.append(("resid", layer, relation, a.strip(), b.strip(), *_cos_dot(ra, rb)))
    df = pd.DataFrame(out, columns=["space", "layer", "relation", "a", "b", "cosine", "dot"])
    return df.assign(in_distribution=[known[a] and known[b] for a, b in zip(df.a, df.b)])


def neuron_effects(model, rows, batch_size) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt: each MLP neuron's direct effect on the logit difference at the final position
    (activation x W_out row, through the run's final LayerNorm scale), (layer, neuron, prompt); and
    the activations, same shape."""
    L = model.cfg.n_layers
    effects, acts = [], []
    for batch in batches(model, rows, batch_size, desc="neurons"):
        names = {f"blocks.{l}.mlp.hook_post" for l in range(L)} | {"ln_final.hook_scale"}
        _, cache = model.run_with_cache(batch.clean, names_filter=lambda n: n in names)
        d, _ = direction(model, batch)  # (batch, d_model)
        scale = cache["ln_final.hook_scale"][:, -1]  # (batch, 1)
        post = torch.stack([cache[f"blocks.{l}.mlp.hook_post"][:, -1] for l in range(L)])  # (layer, batch, d_mlp)
        W_out = model.W_out - model.W_out.mean(-1, keepdim=True)  # (layer, d_mlp, d_model), centred for the LN
        per_unit = torch.einsum("lnm,bm->lnb", W_out, d * model.ln_final.w) / scale[:, 0]  # (layer, d_mlp, batch)
        effects.append(post.transpose(1, 2) * per_unit)
        acts.append(post.transpose(1, 2))
    return torch.cat(effects, -1), torch.cat(acts, -1)


def neurons(model, rows, batch_size, seed: int, k: int = 20) -> pd.DataFrame:
    """The k neurons with the largest |mean direct effect|: that effect with its 95% interval (cluster
    bootstrap over the task's source words), their mean activation (and interval) on this task's prompts and on the
    control task's prompts (tasks/<task>.yaml: control_task, drawn with the config's seed), and the
    tokens their output weights promote most (W_out . W_U). The neurons are chosen by the same
    prompts, so their effects are biased away from 0 (winner's curse); the intervals do not undo it."""
    task = rows[0]["task"]
    effects, acts = neuron_effects(model, rows, batch_size)  # (layer, d_mlp, prompt)
    d_mlp = effects.shape[1]
    top = effects.double().mean(-1).abs().flatten().topk(k).indices
    control_rows, _ = make_prompts(load_spec(task)["control_task"], model.tokenizer, len(rows), seed=seed, min_prompts=1)
    _, control_acts = neuron_effects(model, control_rows, batch_size)
    picked = [divmod(flat, d_mlp) for flat in top.tolist()]
    effect, act, act_control = (mean_ci(torch.stack([x[l, n] for l, n in picked]), seed, clusters=clusters)  # (k, prompt) -> (k,)
                                for x, clusters in ((effects, prompt_clusters(rows)), (acts, prompt_clusters(rows)),
                                                    (control_acts, prompt_clusters(control_rows))))
    out = []
    for rank, (layer, n) in enumerate(picked):
        promoted = (model.W_out[layer, n] @ model.W_U).topk(5).indices
        out.append({"rank": rank + 1, "layer": layer, "neuron": n, "value": effect.value[rank].item(),
                    "ci_low": effect.ci_low[rank].item(), "ci_high": effect.ci_high[rank].item(), "n": effect.n,
                    **_columns("act_task", act, rank), **_columns("act_control", act_control, rank),
                    "n_control": act_control.n, "top_tokens": "|".join(model.to_str_tokens(promoted))})
    return pd.DataFrame(out)


def _columns(name: str, est, i: int) -> dict[str, float]:
    return {name: est.value[i].item(), f"{name}_ci_low": est.ci_low[i].item(), f"{name}_ci_high": est.ci_high[i].item()}
