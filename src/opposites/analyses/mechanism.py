"""The mechanism, named and tested by ablation. From the results of the other analyses it names:
  * the movers: the heads that matter by head-output patching (at least 10% of the largest effect)
    and attend from END to a template role with mean weight >= 0.5, at most four (the top two by
    patching if none qualify), each with the role it attends to most (what it moves to END);
  * for the opposite tasks, where the opposite mapping happens: the components (heads or MLP
    layers) classed opposite-mapping by their direct answer/wrong contributions, strongest first.
Each named set is then mean-ablated (its output replaced by the mean over the batch's prompts at
each position, which keeps what it writes on average and removes what depends on the prompt), and
accuracy and logit difference are compared with ablating as many other heads, drawn at random
(seeded), so the claim "these components carry the task" is tested, not assumed."""

from __future__ import annotations

import random

import torch

from opposites.core import batches, direction, job_memo, prompt_clusters
from opposites.derived import classify_components, head_label, top_patched_heads
from opposites.nodes import Node
from opposites.patching import engine
from opposites.patching.engine import Weights
from opposites.prompts import load_spec
from opposites.stats import mean_ci, proportion

MAX_MOVERS = 4  # movers: heads that matter by patching (|z| >= 10% of the largest) and attend from END
MIN_ATTENTION = 0.5  # to a template role with at least this mean weight; the top two by patching if none
K_MAPPERS = 2  # opposite-mapping components named (largest answer - repeated contribution)
N_CONTROL_DRAWS = 5  # random head sets of the same size


def ablated_logit_diff(model, rows, batch_size, heads: list[tuple[int, int]], mlps: list[int] = ()) -> torch.Tensor:
    """(prompt,) logit difference with the given heads' z and MLP layers' outputs mean-ablated (over
    each batch's prompts; the patching engine, from the clean runs, which the job computes once)."""
    weights, runs = _clean_runs(model, rows, batch_size)
    return torch.cat([engine.mean_ablated(weights, run, heads, list(mlps), d, bias).double().cpu()
                      for run, d, bias in runs])


_SHARED = "_opposites_clean_runs"  # model attribute: the prompts' clean runs, shared by movers and mapping


def _clean_runs(model, rows, batch_size) -> tuple[Weights, list[tuple]]:
    """The engine's weights and, per batch of equal-length prompts, the clean run's residual stream
    before each layer and at the end (what mean_ablated reads of full_forward), the answer-minus-wrong
    direction and bias; computed once per job."""
    def make():
        weights = Weights.from_bridge(model)
        runs = []
        for b in batches(model, rows, batch_size, desc="clean runs"):
            run = engine.full_forward(weights, b.clean)
            run = {k: v for k, v in run.items() if k.startswith(("resid_pre.", "resid_final"))}
            runs.append((run, *direction(model, b)))
        return weights, runs

    return job_memo(model, _SHARED, (tuple(r["clean"] for r in rows), batch_size), make)


def _summary(ld: torch.Tensor, clean: torch.Tensor, seed: int, clusters: list[str]) -> dict:
    """Accuracy (Wilson interval), mean logit difference and its mean change from the clean run
    (paired by prompt; both cluster bootstrap) of per-prompt ld."""
    acc, mean, change = proportion(ld > 0), mean_ci(ld, seed, clusters=clusters), mean_ci(ld - clean, seed, clusters=clusters)
    return {"accuracy": acc.value.item(), "accuracy_ci95": [acc.ci_low.item(), acc.ci_high.item()],
            "logit_diff": mean.value.item(), "logit_diff_ci95": [mean.ci_low.item(), mean.ci_high.item()],
            "logit_diff_change": change.value.item(), "logit_diff_change_ci95": [change.ci_low.item(), change.ci_high.item()]}


def _test(model, rows, batch_size, seed, heads, mlps=()) -> dict:
    """Ablate the named set, and N_CONTROL_DRAWS random sets of as many other heads."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    clusters = prompt_clusters(rows)
    clean = ablated_logit_diff(model, rows, batch_size, [])  # nothing ablated: the clean run's
    named = {"ablated": [head_label(*h) for h in heads] + [str(Node("mlp", l)) for l in mlps],
             **_summary(ablated_logit_diff(model, rows, batch_size, heads, mlps), clean, seed, clusters)}
    others = [(l, h) for l in range(L) for h in range(H) if (l, h) not in heads]
    rng = random.Random(f"ablation-{rows[0]['task']}-{seed}")
    size = min(len(heads) + len(mlps), len(others))
    lds = torch.stack([ablated_logit_diff(model, rows, batch_size, rng.sample(others, size))
                       for _ in range(N_CONTROL_DRAWS)])  # (draw, prompt)
    # per prompt averaged over the draws (a mean of shares, not one proportion), then bootstrapped over clusters
    acc, mean, change = (mean_ci(x, seed, clusters=clusters) for x in ((lds > 0).double().mean(0), lds.mean(0),
                                                                        lds.mean(0) - clean))
    control = {"accuracy_mean": acc.value.item(), "accuracy_mean_ci95": [acc.ci_low.item(), acc.ci_high.item()],
               "accuracy_min": (lds > 0).double().mean(-1).min().item(),
               "logit_diff_mean": mean.value.item(), "logit_diff_mean_ci95": [mean.ci_low.item(), mean.ci_high.item()],
               "logit_diff_change_mean": change.value.item(),
               "logit_diff_change_mean_ci95": [change.ci_low.item(), change.ci_high.item()],
               "size": size, "draws": N_CONTROL_DRAWS}
    return {"named": named, "random_others": control}


def movers(model, rows, batch_size, seed: int, patch_heads=None, attention=None) -> dict:
    """The heads that matter most by head-output patching, the role each attends to from END, and
    the test: mean-ablate them vs as many random other heads."""
    roles = load_spec(rows[0]["task"])["roles"]
    end = attention[(attention.dest_role == "END") & attention.src_role.isin(roles)]
    z = patch_heads[patch_heads.activation == "z"].set_index(["layer", "head"]).value
    candidates = []
    for l, h in top_patched_heads(patch_heads, 2 * MAX_MOVERS):
        top = end[(end.layer == l) & (end["head"] == h)].sort_values("value", ascending=False).iloc[0]
        candidates.append({"head": head_label(l, h), "layer": l, "index": h, "patching": float(z[(l, h)]),
                           "moves": str(top.src_role), "attention": float(top.value)})
    largest = max(abs(c["patching"]) for c in candidates)
    named = [c for c in candidates if abs(c["patching"]) >= 0.1 * largest and c["attention"] >= MIN_ATTENTION][:MAX_MOVERS]
    named = named or candidates[:2]
    return {"n": len(rows), "movers": named,
            "ablation": _test(model, rows, batch_size, seed, [(m["layer"], m["index"]) for m in named])}


def mapping(model, rows, batch_size, seed: int, head_logits=None, movers=None) -> dict:
    """Opposite tasks: the components classed opposite-mapping that push the answer most over the
    repeated word, and the test: mean-ablate them vs as many random other heads. Also the converse
    test of the movers: every other head and every MLP mean-ablated, so only the movers (their OV
    circuits) and the direct path can still map ADJ1 to its opposite."""
    cls = classify_components(head_logits)
    mappers = cls[cls.cls == "opposite-mapping"]
    # push from these rows only: a Series over all rows would give an empty frame its index (rows of NaN)
    top = mappers.assign(push=mappers.answer - mappers.wrong).nlargest(K_MAPPERS, "push")
    named = [{"component": r.component, "answer": float(r.answer), "wrong": float(r.wrong)} for r in top.itertuples()]
    heads = [(int(r.layer), int(r.head)) for r in top.itertuples() if r.head >= 0]
    mlps = [int(r.layer) for r in top.itertuples() if r.head < 0]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    keep = {(m["layer"], m["index"]) for m in movers["movers"]}
    rest = [(l, h) for l in range(L) for h in range(H) if (l, h) not in keep]
    clean = ablated_logit_diff(model, rows, batch_size, [])  # nothing ablated: the clean run's
    only = {"kept": [m["head"] for m in movers["movers"]],
            **_summary(ablated_logit_diff(model, rows, batch_size, rest, list(range(L))), clean, seed, prompt_clusters(rows))}
    return {"n": len(rows), "mappers": named, "ablation": _test(model, rows, batch_size, seed, heads, mlps) if named else None,
            "movers_only": only}
