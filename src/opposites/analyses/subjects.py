"""Subjects (names, entities): how alike they are, and whether heads that pick them out read a
"space of subjects" (the research plan's hypothesis). The task file's `subject_roles` name the roles
that hold subjects; every other role, and END, is "another role".

Similarity: mean cosine between subject tokens of different prompts (within the role) and between a
subject and another role's token (across roles), in W_E and in the residual stream before each layer
(centred per layer over all positions compared), with 95% intervals over prompts.

Subject space, per layer: the top SUBSPACE_DIM principal directions of the subject positions'
residuals as a head's key sees them (centred and scaled like LayerNorm; TransformerLens folds its
weights into W_K). Per head: the share of W_K's squared norm inside the space, against the same share
for RANDOM_SUBSPACES random subspaces of that size (expected SUBSPACE_DIM / d_model), set beside the
head's END attention to the subject roles; and the MLP neurons of earlier layers whose output weights
put most into the space of the layer whose head is the most aligned."""

from __future__ import annotations

import torch

from opposites.core import batches, prompt_clusters
from opposites.derived import RANDOM_SUBSPACES, SUBSPACE_DIM, end_attention_to_roles
from opposites.prompts import cluster_of, load_spec
from opposites.stats import average_ranks, bias_corrected, mean_ci, pearson


def key_weights(model) -> torch.Tensor:
    """(layer, head, d_model, d_head): the key-side weights (a seam for tests that plant a head)."""
    return model.W_K.detach()


def _normalised(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(-1, keepdim=True)
    return x / x.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()


def space(x: torch.Tensor, k: int) -> torch.Tensor:
    """(d_model, k) orthonormal top principal directions of x (n, d_model)."""
    centred = x - x.mean(0)
    return torch.linalg.svd(centred, full_matrices=False).Vh[:k].T


def share_inside(basis: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Share of each W's (..., d_model, d_head) squared norm inside the span of basis (d_model, k)."""
    return (basis.T @ W).pow(2).sum((-2, -1)) / W.pow(2).sum((-2, -1))


def other_roles(task: str, roles: list[str]) -> list[str]:
    """The task's roles that hold no subject, and END."""
    return [r for r in load_spec(task)["roles"] if r not in roles] + ["END"]


def _residuals(model, rows, batch_size, roles: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer, prompt, subject role, d_model) at the subject positions and (layer, prompt, other
    role, d_model) at the other roles and END, before each layer."""
    L = model.cfg.n_layers
    names = {f"blocks.{l}.hook_resid_pre" for l in range(L)}
    others = other_roles(rows[0]["task"], roles)
    subj, other = [], []
    for batch in batches(model, rows, batch_size, desc="subjects"):
        _, cache = model.run_with_cache(batch.clean, names_filter=lambda n: n in names)
        resid = torch.stack([cache[f"blocks.{l}.hook_resid_pre"] for l in range(L)])  # (layer, b, pos, d)
        for i, r in enumerate(batch.rows):
            subj.append(resid[:, i, [r["positions"][x] for x in roles]])
            other.append(resid[:, i, [r["positions"][x] for x in others]])
    return torch.stack(subj, 1).double().cpu(), torch.stack(other, 1).double().cpu()


def _similarity(subj: torch.Tensor, other: torch.Tensor, seed: int, clusters: list[str]) -> dict:
    """Within: each prompt's first subject against the next prompt's; across: against the next
    prompt's other roles. subj (prompt, role, d), other (prompt, role, d); centred over all of them.
    Intervals resample the prompts' clusters (one per prompt, same order)."""
    mean = torch.cat([subj.flatten(0, 1), other.flatten(0, 1)]).mean(0)
    s, o = subj - mean, other - mean
    nxt = torch.roll(torch.arange(len(s), device=s.device), -1)  # a different prompt for each prompt
    cos = lambda a, b: torch.cosine_similarity(a, b, dim=-1)  # noqa: E731
    within = cos(s[:, 0], s[nxt, 0])  # (prompt,)
    across = cos(s[:, :1], o[nxt]).mean(-1)
    out = {}
    for key, x in (("within", within), ("across", across)):
        est = mean_ci(x, seed, clusters=clusters)
        out[key], out[f"{key}_ci95"] = est.value.item(), [est.ci_low.item(), est.ci_high.item()]
    return out


def run(model, rows: list[dict], batch_size: int, seed: int, attention=None) -> dict:
    roles = load_spec(rows[0]["task"])["subject_roles"]
    subj, other = _residuals(model, rows, batch_size, roles)  # (layer, prompt, role, d)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    similarity = [{"space": "resid", "layer": l, **_similarity(subj[l], other[l], seed, prompt_clusters(rows))}
                  for l in range(L)]  # residuals in batch order
    tokens = lambda rs: torch.tensor([[model.to_single_token(" " + r["words"][x]) if x in r["words"] else  # noqa: E731
                                       model.to_tokens(r["clean"])[0, r["positions"][x]].item() for x in rs]
                                      for r in rows], device=model.W_E.device)
    others = other_roles(rows[0]["task"], roles)
    W_E = model.W_E.detach().double().cpu()
    similarity.insert(0, {"space": "embed", "layer": -1,
                          **_similarity(W_E[tokens(roles).cpu()], W_E[tokens(others).cpu()], seed,
                                        [cluster_of(r) for r in rows])})  # embeddings in row order
    W_K = key_weights(model).double().cpu()  # (layer, head, d_model, d_head)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d = W_K.shape[2]
    k = min(SUBSPACE_DIM, subj.shape[1] * subj.shape[2] - 1)
    heads, bases = [], [space(_normalised(subj[l].flatten(0, 1)), k) for l in range(L)]  # (d_model, k) each
    for l, basis in enumerate(bases):
        rand = [torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64, device="cpu"))[0]
                for _ in range(RANDOM_SUBSPACES)]
        rand_share = torch.stack([share_inside(q, W_K[l]) for q in rand])  # (random, head)
        share = share_inside(basis, W_K[l])  # (head,)
        for h in range(H):
            heads.append({"layer": l, "head": h, "share": share[h].item(), "random_mean": rand_share[:, h].mean().item(),
                          "percentile": (rand_share[:, h] < share[h]).double().mean().item(),
                          "end_attention": end_attention_to_roles(attention, l, h, roles) if attention is not None else None})
    best = max(heads, key=lambda x: x["share"] - x["random_mean"])
    basis = bases[best["layer"]]
    W_out = model.W_out.detach().double().cpu()[: best["layer"]]  # (earlier layer, d_mlp, d_model)
    proj = (W_out @ basis).norm(dim=-1)  # (layer, d_mlp)
    top = proj.flatten().topk(min(10, proj.numel())).indices.tolist() if proj.numel() else []
    neurons = [{"layer": i // proj.shape[1], "neuron": i % proj.shape[1], "projection": proj.flatten()[i].item(),
                "norm": W_out.flatten(0, 1)[i].norm().item()} for i in top]
    with_att = [h for h in heads if h["end_attention"] is not None]
    rho, rho_ci = _spearman_ci([h["share"] - h["random_mean"] for h in with_att], [h["end_attention"] for h in with_att], seed)
    return {"subject_roles": roles, "other_roles": others, "k": k, "random_subspaces": RANDOM_SUBSPACES,
            "n": subj.shape[1], "similarity": similarity, "heads": heads, "most_aligned": best,
            "spearman_share_attention": rho, "spearman_share_attention_ci95": rho_ci, "neurons": neurons}


def _spearman_ci(a: list[float], b: list[float], seed: int, n_resamples: int = 1000) -> tuple:
    """Spearman's rho of a and b (over heads; ties share average ranks), bias-corrected, and its 95%
    interval over resampled heads (stats.bias_corrected); (None, None) with fewer than three heads."""
    if len(a) < 3:
        return None, None
    x, y = torch.tensor(a, device="cpu", dtype=torch.float64), torch.tensor(b, device="cpu", dtype=torch.float64)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randint(len(x), (len(x), n_resamples), generator=gen, device="cpu")  # (draw, resample)
    draws = pearson(average_ranks(x[idx]), average_ranks(y[idx]))  # (resample,)
    est = bias_corrected(pearson(average_ranks(x), average_ranks(y)), draws)
    return est.value.item(), [est.ci_low.item(), est.ci_high.item()]
