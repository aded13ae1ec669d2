"""Interchange interventions: where does the model hold the source word's value?

Pairs of prompts of one template whose source word differs (the task's copy_role: ADJ1, IO, ENTITY)
and whose answers differ: the base prompt is run with one location taken from the source prompt.
If that location carries the source word's value (its adjective, name or entity), the base run's
answer becomes the source prompt's answer. Locations, limited to what activation patching names (so
a GPT-2-size model stays affordable): the TOP_HEADS heads' outputs (hook_z) at END with the largest
|effect| in patch_heads, their layers' attention outputs (all heads at once: whether the heads
together carry what no one head does), the TOP_MLPS MLPs' outputs at END with the largest |effect|
at END in patch_layers, and the residual stream at the source word's position and at END before layer 0 and
after each layer those components sit in. Without patching results (a test's reference), every
layer, head and MLP. Patching, not the circuit: the interchange jobs then run beside the circuit
jobs (the longest of a build) instead of after them.
  IIA: the share of pairs whose top candidate answer (among every answer and wrong word of the
       task's prompts) becomes the source's answer, with a Wilson 95% interval;
  graded: the logit of the source's answer minus the base's, summed over pairs, as a share of the
       way from the base run (0) to the source run (1)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import groupby

import torch
from torch import Tensor

from opposites.derived import largest_abs, top_abs_heads
from opposites.interventions import Intervention, attn_out, head_z, mlp_out, resid_post, resid_pre, role_positions
from opposites.patching import swaps
from opposites.patching.engine import Weights
from opposites.prompts import cluster_of, load_spec
from opposites.stats import proportion_ci


def source_role(task: str) -> str:
    return load_spec(task)["copy_role"]


def make_pairs(rows: list[dict], role: str, seed: int) -> list[tuple[dict, dict]]:
    """One (base, source) pair per base prompt that has a partner: same template and token layout,
    a different source word, and an answer that is neither the base's answer nor one of its words
    (so it is not the repeated adjective, nor IOI's subject). Source drawn with a seeded RNG."""
    rng = random.Random(f"interchange-{rows[0]['task']}-{seed}")
    pairs = []
    for base in rows:
        fits = [s for s in rows if s["template"] == base["template"] and s["positions"] == base["positions"]
                and s["words"][role] != base["words"][role] and s["answer"] != base["answer"]
                and s["answer"].strip() not in base["words"].values()]
        if fits:
            pairs.append((base, rng.choice(fits)))
    return pairs


def candidates(rows: list[dict]) -> list[str]:
    """Every answer and wrong word of the task's prompts (with the leading space)."""
    return sorted({r["answer"] for r in rows} | {r["wrong"] for r in rows})


@dataclass
class PairBatch:
    base: Tensor  # (batch, pos) tokens
    source: Tensor  # (batch, pos)
    positions: dict[str, Tensor]  # role -> (batch,) index, shared by base and source
    base_answer: Tensor  # (batch,) index into the candidates
    source_answer: Tensor  # (batch,)


def pair_order(pairs: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    """Pairs in the order pair_batches runs them: by token length, then base prompt id."""
    return sorted(pairs, key=lambda p: (p[0]["positions"]["END"], p[0]["id"]))


def pair_batches(model, pairs: list[tuple[dict, dict]], cands: list[str], batch_size: int) -> list[PairBatch]:
    """Pairs batched by token length (no padding: END is the last position)."""
    index = {w: i for i, w in enumerate(cands)}
    out = []
    for _, group in groupby(pair_order(pairs), key=lambda p: p[0]["positions"]["END"]):
        group = list(group)
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            base = model.to_tokens([b["clean"] for b, _ in chunk])
            out.append(PairBatch(base, model.to_tokens([s["clean"] for _, s in chunk]),
                                 role_positions([b for b, _ in chunk], base.device),
                                 torch.tensor([index[b["answer"]] for b, _ in chunk], device=base.device),
                                 torch.tensor([index[s["answer"]] for _, s in chunk], device=base.device)))
    return out


def candidate_ids(model, cands: list[str]) -> Tensor:
    return torch.tensor([model.to_single_token(w) for w in cands], device=model.W_U.device)


TOP_HEADS = 8  # heads swept: the largest |z| patching effects
TOP_MLPS = 4  # MLPs swept: the largest |effect| of patching their output at END


def named_components(model, patch_heads=None, patch_layers=None) -> tuple[list[tuple[int, int]], list[int]]:
    """(layer, head) pairs and MLP layers to sweep, in layer order: the largest patching effects,
    or every one without patching results."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if patch_heads is None or patch_layers is None:
        return [(l, h) for l in range(L) for h in range(H)], list(range(L))
    heads = top_abs_heads(patch_heads[patch_heads.activation == "z"], TOP_HEADS)
    mlp = patch_layers[(patch_layers.component == "mlp") & (patch_layers.role == "END")]
    mlps = [int(r.layer) for r in largest_abs(mlp, TOP_MLPS).itertuples()]
    return sorted(heads), sorted(mlps)


def locations(model, role: str, patch_heads=None, patch_layers=None) -> list[Intervention]:
    """Residual at the source word and END before layer 0 and after each layer the named heads and
    MLPs sit in; those heads, their layers' attention outputs (all heads at once) and MLPs at END."""
    heads, mlps = named_components(model, patch_heads, patch_layers)
    layers = sorted({l for l, _ in heads} | set(mlps))
    resid = [resid_pre(0, p) for p in (role, "END")] + [resid_post(l, p) for l in layers for p in (role, "END")]
    joint = [attn_out(l) for l in sorted({l for l, _ in heads})]  # all of a layer's heads at once
    return resid + [head_z(l, h) for l, h in heads] + joint + [mlp_out(l) for l in mlps]


def kind(iv: Intervention) -> str:
    return iv.site.rsplit("hook_", 1)[1]  # resid_pre, resid_post, z, mlp_out


def label(iv: Intervention) -> str:
    """Where, in words: before/after a layer (the residual), a head, an MLP."""
    return {"resid_pre": f"before layer {iv.layer}", "resid_post": f"after layer {iv.layer}",
            "z": f"head {iv.layer}.{iv.head}", "attn_out": f"attention {iv.layer}", "mlp_out": f"MLP {iv.layer}"}[kind(iv)]


def score(logits: Tensor, b: PairBatch) -> tuple[Tensor, Tensor]:
    """(batch,) whether the source's answer is the top candidate, and its logit minus the base's."""
    rows = torch.arange(len(logits), device=logits.device)
    return (logits.argmax(-1) == b.source_answer).cpu(), (logits[rows, b.source_answer] - logits[rows, b.base_answer]).cpu()


def sweep(model, batches: list[PairBatch], ids: Tensor, where: list[Intervention], clusters=None) -> list[dict]:
    """IIA and graded IIA of each single-location interchange; IIA's 95% interval is Wilson's at the
    effective number of pairs given `clusters` (each pair's source word, batch order; None: pairs
    independent). Run on the engine (patching/swaps.py; tests/test_backends.py checks it against the
    hooks of interventions.run)."""
    weights = Weights.from_bridge(model)
    hits, diffs = [[] for _ in where], [[] for _ in where]
    base_d, source_d = [], []
    for b in batches:
        base, source = swaps.run(weights, b.base), swaps.run(weights, b.source)
        base_d.append(score(swaps.plain_logits(weights, base, ids), b)[1])
        source_d.append(score(swaps.plain_logits(weights, source, ids), b)[1])
        for i, iv in enumerate(where):
            index = b.positions[iv.position]
            hit, d = score(swaps.logits(weights, base, iv, swaps.value(weights, source, iv, index), index, ids), b)
            hits[i].append(hit)
            diffs[i].append(d)
    base_d, span = torch.cat(base_d), (torch.cat(source_d) - torch.cat(base_d)).double().sum().item()
    out = []
    for iv, hit, d in zip(where, hits, diffs):
        hit = torch.cat(hit)
        k, n = int(hit.sum()), len(hit)
        out.append({"site": iv.site, "kind": kind(iv), "label": label(iv), "layer": iv.layer, "head": iv.head, "position": iv.position,
                    "n": n, "iia": k / n, "iia_ci95": proportion_ci(hit, clusters),
                    "graded": (torch.cat(d) - base_d).double().sum().item() / span if span else None})
    return out


def first_best(rows: list[dict], last: bool = False) -> dict:
    """The first (or last) location in layer order whose IIA reaches the lower Wilson bound of the
    largest: the earliest (latest) point not distinguishable from the best."""
    top = max(rows, key=lambda r: r["iia"])
    near = [r for r in rows if r["iia"] >= top["iia_ci95"][0]]
    return near[-1] if last else near[0]


def interchange(model, rows: list[dict], batch_size: int, seed: int, patch_heads=None, patch_layers=None) -> dict:
    """The sweep over the locations patching names, and the located points: where END first
    carries the source's value, and where the source word's position last does."""
    role = source_role(rows[0]["task"])
    pairs, cands = make_pairs(rows, role, seed), candidates(rows)
    batches = pair_batches(model, pairs, cands, batch_size)
    clusters = [cluster_of(s) for _, s in pair_order(pairs)]  # the source word of each pair, batch order
    result = sweep(model, batches, candidate_ids(model, cands), locations(model, role, patch_heads, patch_layers), clusters)
    resid = [r for r in result if r["kind"] in ("resid_pre", "resid_post")]
    end = first_best([r for r in resid if r["position"] == "END"])
    at_role = first_best([r for r in resid if r["position"] == role], last=True)
    same_site = next(r for r in resid if r["site"] == end["site"] and r["position"] == role)
    return {"role": role, "n_pairs": len(pairs), "candidates": [c.strip() for c in cands], "locations": result,
            "best_end": end, "best_role": at_role, "role_at_best_end": same_site}
