"""Meaning: how opposite pairs sit in embedding space and in the residual stream, and which MLP
neurons carry the answer."""

from __future__ import annotations

import pandas as pd
import torch

from opposites.core import batches, direction
from opposites.prompts import fill, load_spec, make_prompts
from opposites.words import relation_pairs


def _cos_dot(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    return torch.cosine_similarity(a, b, dim=-1).item(), (a * b).sum(-1).item()


def similarity(model, rows, batch_size, seed: int) -> pd.DataFrame:
    """Cosine similarity and dot product of opposite, synonym and random word pairs: token embedding
    (W_E rows), unembedding (W_U columns), and the residual stream after every layer at the
    adjective position of the task's first template (same names, only the adjective differs)."""
    task = rows[0]["task"]
    spec = load_spec(task)
    pairs = relation_pairs(task, seed)
    out = []
    for relation, ps in pairs.items():
        for a, b in ps:
            ia, ib = model.to_single_token(a), model.to_single_token(b)
            for space, M in (("embed", model.W_E), ("unembed", model.W_U.T)):
                out.append((space, -1, relation, a.strip(), b.strip(), *_cos_dot(M[ia], M[ib])))
            names = dict(zip(("NAME1", "NAME2"), spec["names"][:2]))
            filled = [fill(spec["templates"][0], {**names, "ADJ1": w.strip()}, model.tokenizer, spec["roles"]) for w in (a, b)]
            if None in filled:
                continue
            (ta, pos), (tb, _) = filled
            L = model.cfg.n_layers
            names_ = {f"blocks.{l}.hook_resid_post" for l in range(L)}
            _, cache = model.run_with_cache(model.to_tokens([ta, tb]), names_filter=lambda n: n in names_)
            for layer in range(L):
                r = cache[f"blocks.{layer}.hook_resid_post"][:, pos["ADJ1"]]  # (2, d_model)
                out.append(("resid", layer, relation, a.strip(), b.strip(), *_cos_dot(r[0], r[1])))
    return pd.DataFrame(out, columns=["space", "layer", "relation", "a", "b", "cosine", "dot"])


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
    """The k neurons with the largest |mean direct effect|: that effect, their mean activation on
    this task's prompts and on the control task's prompts (tasks/<task>.yaml: control_task, drawn with
    the config's seed), and the
    tokens their output weights promote most (W_out . W_U)."""
    task = rows[0]["task"]
    effects, acts = neuron_effects(model, rows, batch_size)
    mean = effects.double().mean(-1)  # (layer, d_mlp)
    d_mlp = mean.shape[1]
    top = mean.abs().flatten().topk(k).indices
    control_rows, _ = make_prompts(load_spec(task)["control_task"], model.tokenizer, len(rows), seed=seed, min_prompts=1)
    _, control_acts = neuron_effects(model, control_rows, batch_size)
    out = []
    for rank, flat in enumerate(top.tolist()):
        layer, n = divmod(flat, d_mlp)
        promoted = (model.W_out[layer, n] @ model.W_U).topk(5).indices
        out.append({"rank": rank + 1, "layer": layer, "neuron": n, "value": mean[layer, n].item(),
                    "std": effects[layer, n].double().std().item() if effects.shape[-1] > 1 else 0.0,
                    "act_task": acts[layer, n].double().mean().item(),
                    "act_control": control_acts[layer, n].double().mean().item(),
                    "top_tokens": "|".join(model.to_str_tokens(promoted))})
    return pd.DataFrame(out)
