"""Distributed alignment search (DAS) at the points the interchange sweep located.

At a location (site and position), learn a k-dimensional subspace with orthonormal basis B (d x k)
whose interchange alone, h <- h + B B^T (h_src - h_base), makes the base run give the source's
answer: cross-entropy over the candidate answers on training pairs, Adam on an orthogonal
parametrisation (torch.nn.utils.parametrizations.orthogonal). Scored by IIA on held-out pairs, split
by word: pairs whose source word or source answer is linked (a word and its answer, transitively:
an adjective pair, a category with its entities) fall on the same side, so no held-out
counterfactual answer was trained on. Controls on the same held-out pairs: random orthonormal
subspaces of the same k, the full interchange (paired: DAS minus full per pair), and DAS at the
source word's position after the same layer (where the full interchange no longer transfers the
answer). Intervals resample word clusters (prompts.cluster_of of the source prompt: the held-out
pairs of one adjective pair, category or IO name are not independent): an IIA's interval is
Wilson's at the pairs' effective number under that clustering (stats.proportion), its cluster
bootstrap kept beside it (iia_bootstrap95, degenerate at 0/n and n/n). The readout is the top one of the task's candidate answers; C answers read
out linearly from a subspace need up to C - 1 of its dimensions (the corners of a simplex), so the
k needed tracks the number of answers, which is reported beside it (n_candidates; the answers of
the training and held-out pairs). Interventions are opposites.interventions' (see its docstring for
why not pyvene), run on the engine (patching/swaps.py: it resumes the base run at the swapped layer
and position; tests/test_backends.py checks it against the hooks)."""

from __future__ import annotations

import random
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opposites.analyses.interchange import (PairBatch, candidate_ids, candidates, make_pairs, pair_batches, pair_order,
                                           source_role)
from opposites.interventions import Intervention
from opposites.patching import swaps
from opposites.patching.engine import Weights
from opposites.prompts import cluster_of
from opposites.stats import mean_ci, n_clusters, newcombe_paired, proportion_ci

MIN_K = 8  # subspace dimensions: powers of two up to at least this and at least C - 1 (subspace_sizes)
STEPS = 150  # at most this many Adam steps, full batch
LR = 0.02
# Early stop: every CHECK steps, stop when the training loss (summed over k) fell by less than
# MIN_DROP of itself since the last check (the trained model's loss flattens by ~80 steps, a random
# model's at once).
CHECK = 10
MIN_DROP = 0.001
# And a compute cap per location: at most FLOP_BUDGET matmul FLOPs of training (forward and backward,
# ~6 x block parameters x the positions a step recomputes), so the cost stops growing with the model.
# It binds only on GPT-2-size models at the source word's position (benchmarks/README.md).
FLOP_BUDGET = 1e12
RANDOM_DRAWS = 5  # random subspaces per k


def split_by_word(pairs: list[tuple[dict, dict]], role: str, seed: int) -> tuple[list, list]:
    """(train, held-out) pairs: groups of linked words (source word - source answer) are shuffled
    with a seeded RNG and go to the held-out side until it has half of the pairs."""
    groups: list[set[str]] = []
    for _, s in pairs:
        linked = {s["words"][role], s["answer"].strip()}
        touching = [g for g in groups if g & linked]
        groups = [g for g in groups if not g & linked] + [linked.union(*touching)]
    groups = sorted(groups, key=sorted)
    random.Random(f"das-{pairs[0][0]['task']}-{seed}").shuffle(groups)
    held, test_words = 0, set()
    for g in groups:
        n = sum(s["answer"].strip() in g for _, s in pairs)
        if held + n <= len(pairs) / 2 or not test_words:
            test_words |= g
            held += n
    test = [p for p in pairs if p[1]["answer"].strip() in test_words]
    return [p for p in pairs if p[1]["answer"].strip() not in test_words], test


def fit_subspaces(logits_of: Callable[[Tensor], Tensor], target: Tensor, d: int, ks: tuple[int, ...], seed: int,
                  dtype=torch.float32, device="cpu", steps: int = STEPS, lr: float = LR,
                  trace: list[float] | None = None) -> list[Tensor]:
    """One (d, k) orthonormal basis per k, each minimising the cross-entropy of its logits against
    target (pairs,). logits_of(bases) takes the bases stacked (n_k, d, max k; columns past k are 0)
    and returns (n_k, pairs, candidates), so all k share each forward pass; each k's loss depends on
    its own basis only, so their sum trains each as if alone. The model's weights get no gradient.
    At most `steps` steps, fewer when the loss stops falling (CHECK, MIN_DROP); `trace` gets the
    summed loss of each step taken."""
    torch.manual_seed(seed)
    rotations = [nn.utils.parametrizations.orthogonal(nn.Linear(d, k, bias=False, dtype=dtype, device=device))
                 for k in ks]  # weight (k, d), orthonormal rows

    def bases() -> Tensor:  # (n_k, d, max k)
        return torch.stack([F.pad(r.weight.T, (0, max(ks) - k)) for r, k in zip(rotations, ks)])

    params = [p for r in rotations for p in r.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    trace = [] if trace is None else trace
    with torch.enable_grad():
        for step in range(steps):
            loss = sum(F.cross_entropy(logits, target) for logits in logits_of(bases()))
            trace.append(loss.item())
            if step >= CHECK and step % CHECK == 0 and trace[step - CHECK] - trace[step] < MIN_DROP * trace[step - CHECK]:
                break  # the loss has stopped falling
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p.grad = g
            opt.step()
    return [r.weight.T.detach() for r in rotations]


def max_steps(cfg, layers: int, tokens: int) -> int:
    """Steps that FLOP_BUDGET allows when each step runs `tokens` token positions forward and
    backward through `layers` blocks of a model with config cfg (at least CHECK, at most STEPS)."""
    block = 4 * cfg.d_model ** 2 + 2 * cfg.d_model * cfg.d_mlp  # attention and MLP weights
    return max(CHECK, min(STEPS, int(FLOP_BUDGET // (6 * layers * block * tokens))))


def swapped_tokens(batches: list[PairBatch], position: str) -> int:
    """Token positions a swap at `position` recomputes per variant: each batch from its earliest
    swapped position to its end (patching/swaps.py resumes there)."""
    return sum(len(b.base) * (b.base.shape[1] - int(b.positions[position].min())) for b in batches)


def subspace_sizes(n_candidates: int, d: int) -> tuple[int, ...]:
    """k = 1, 2, 4, ... up to the first power of two >= max(MIN_K, C - 1), below d: a linear readout
    of C answers may need C - 1 dimensions, so the grid reaches that many."""
    ks, k = [], 1
    while k < d:
        ks.append(k)
        if k >= max(MIN_K, n_candidates - 1):
            break
        k *= 2
    return tuple(ks)


def random_basis(d: int, k: int, generator: torch.Generator, dtype=torch.float32) -> Tensor:
    """(d, k) orthonormal basis of a uniformly random k-dimensional subspace."""
    return torch.linalg.qr(torch.randn(d, k, generator=generator, dtype=torch.float64, device="cpu"))[0].to(dtype)


def iia(hits: Tensor, clusters: list[str], seed: int) -> dict:
    """IIA with its 95% interval (Wilson's at the effective number of pairs given their word
    clusters), and the cluster bootstrap's beside it."""
    k, n = int(hits.sum()), len(hits)
    boot = mean_ci(hits.double(), seed, clusters=clusters)
    return {"iia": k / n, "iia_ci95": proportion_ci(hits, clusters), "iia_bootstrap95": [boot.ci_low.item(), boot.ci_high.item()],
            "n": n, "n_clusters": n_clusters(clusters, n)}


def paired(a: Tensor, b: Tensor, clusters: list[str], seed: int) -> dict:
    """Mean of a - b over pairs (0/1 hits of two interventions on the same pairs), its 95% interval
    and p-value (of 0) resampling word clusters: a paired test. The interval (ci95) is the wider of
    that cluster bootstrap's and Newcombe's paired interval from the Wilson intervals: where both
    shares are n/n every resample's difference is 0 and the bootstrap interval collapses to [0, 0]."""
    e = mean_ci(a.double() - b.double(), seed, clusters=clusters)
    boot, newcombe = [e.ci_low.item(), e.ci_high.item()], newcombe_paired(a, b, clusters)
    return {"value": e.value.item(), "ci95": [min(boot[0], newcombe[0]), max(boot[1], newcombe[1])],
            "bootstrap95": boot, "newcombe95": newcombe, "p_value": e.p_value.item()}


def das_at(model, train: list[PairBatch], test: list[PairBatch], ids: Tensor, site: str, position: str,
           seed: int, clusters: list[str], largest_only: bool = False) -> dict:
    """DAS for every k of subspace_sizes at one location (only the largest with `largest_only`),
    with the random and full-interchange controls; clusters: the held-out pairs' word clusters in
    batch order."""
    weights = Weights.from_bridge(model)
    where = Intervention(site, position)
    runs = {id(b): (swaps.run(weights, b.base), swaps.run(weights, b.source)) for b in train + test}
    sources = {id(b): swaps.value(weights, runs[id(b)][1], where, b.positions[position]) for b in train + test}  # (batch, d)
    d, dtype = weights.W_U.shape[0], weights.W_U.dtype

    def swapped(basis: Tensor | None, b: PairBatch) -> Tensor:  # (..., batch, candidates)
        iv = Intervention(site, position, basis=basis)
        return swaps.logits(weights, runs[id(b)][0], iv, sources[id(b)], b.positions[position], ids)

    def logits_of(basis: Tensor | None, batches: list[PairBatch]) -> Tensor:  # (pairs, candidates)
        return torch.cat([swapped(basis, b) for b in batches])

    def stacked_logits(bases: Tensor) -> Tensor:  # bases (n_k, d, max k) -> (n_k, pairs, candidates)
        return torch.cat([swapped(bases[:, None], b) for b in train], 1)  # each k's basis shared by its batch

    def hits(basis: Tensor | None, batches: list[PairBatch]) -> Tensor:
        return (logits_of(basis, batches).argmax(-1) == torch.cat([b.source_answer for b in batches])).cpu()

    target = torch.cat([b.source_answer for b in train])
    generator = torch.Generator().manual_seed(seed)
    ks = subspace_sizes(len(ids), d)[-1:] if largest_only else subspace_sizes(len(ids), d)
    full = hits(None, test)
    per_k, trace = [], []
    steps = max_steps(model.cfg, model.cfg.n_layers - where.layer, len(ks) * swapped_tokens(train, position))
    for k, basis in zip(ks, fit_subspaces(stacked_logits, target, d, ks, seed, dtype, ids.device, steps, trace=trace)):
        draws = [hits(random_basis(d, k, generator, dtype).to(ids.device), test).double().mean().item()
                 for _ in range(RANDOM_DRAWS)]
        learned = hits(basis, test)
        per_k.append({"k": k, **iia(learned, clusters, seed), "train_iia": hits(basis, train).double().mean().item(),
                      "minus_full": paired(learned, full, clusters, seed),
                      "random_iia_mean": sum(draws) / len(draws), "random_iia_max": max(draws)})
    # the paired interval a perfect match (DAS's hits equal to the whole vector's) would get: the
    # equivalence test can pass only where its lower end is within the margin
    best_case = newcombe_paired(full, full, clusters)
    return {"site": site, "position": position, "layer": where.layer, "d": d,
            "full": {**iia(full, clusters, seed), "perfect_match95": best_case},
            "steps": len(trace), "max_steps": steps, "capped": steps < STEPS and len(trace) == steps, "k": per_k}


def batch_clusters(pairs: list[tuple[dict, dict]]) -> list[str]:
    """Each pair's word cluster (its source prompt's), in pair_batches' order."""
    return [cluster_of(s) for _, s in pair_order(pairs)]


def das(model, rows: list[dict], batch_size: int, seed: int, interchange=None) -> dict:
    """DAS at the END point the sweep located ("end") and, as a baseline, at the source word's
    position after the same layer ("source"), there at the largest k only: the best k-dimensional
    subspace can do no worse than the best smaller one, so where the largest fails every smaller k
    does."""
    role = source_role(rows[0]["task"])
    train, test = split_by_word(make_pairs(rows, role, seed), role, seed)
    cands = candidates(rows)
    ids = candidate_ids(model, cands)
    train_b, test_b = pair_batches(model, train, cands, batch_size), pair_batches(model, test, cands, batch_size)
    points = {"end": interchange["best_end"], "source": interchange["role_at_best_end"]}
    return {"role": role, "n_train": len(train), "n_test": len(test), "n_candidates": len(cands),
            "optimiser": {"lr": LR, "max_steps": STEPS, "check": CHECK, "min_drop": MIN_DROP, "flop_budget": FLOP_BUDGET},
            "train_answers": sorted({s["answer"].strip() for _, s in train}),
            "test_answers": sorted({s["answer"].strip() for _, s in test}),
            "locations": [{"point": name, **das_at(model, train_b, test_b, ids, p["site"], p["position"], seed,
                                                   batch_clusters(test), largest_only=name == "source")}
                          for name, p in points.items()]}
