"""The mechanism, named and tested by ablation. From the results of the other analyses it names:
  * the movers: the heads that matter by head-output patching (at least 10% of the largest effect)
    and attend from END to a template role with mean weight >= 0.5, at most four (the top two by
    patching if none qualify), each with the role it attends to most (what it moves to END);
  * for the opposite tasks, where the opposite mapping happens: the components (heads or MLP
    layers) classed opposite-mapping by their direct answer/wrong contributions, strongest first.
Each named set is then mean-ablated (its output replaced by the mean of its clean output over the
prompts of the same template, at each position, which keeps what it writes on average and removes
what depends on the prompt) and, beside that, resample-ablated (replaced by a random other such
prompt's output), and accuracy and logit difference are compared with ablating as many other heads
from the same layers (per layer, as many as are named there: heads of one layer share their input,
so a head from another layer is not a like-for-like control) and as many other MLP layers, drawn
at random (seeded), so the claim "these components carry the task" is tested, not assumed; where a
named head's layer has too few other heads, or the model too few other MLP layers, there is no
matched control and the result says so."""

from __future__ import annotations

import math
import random

import torch

from opposites.core import JobCache, batch_order, batches, direction, prompt_clusters, shared
from opposites.derived import ANSWER_OVER_REPEAT, classify_components, head_label, top_patched_heads
from opposites.nodes import Node
from opposites.patching import engine
from opposites.patching.engine import Weights
from opposites.prompts import load_spec
from opposites.stats import mean_ci, proportion

MAX_MOVERS = 4  # movers: heads that matter by patching (|z| >= 10% of the largest) and attend from END
MOVER_ATTENTION = 0.5  # a mover: END attends to a template role at least this much (else the top two by patching)
K_MAPPERS = 2  # opposite-mapping components named (largest answer - repeated contribution)
N_CONTROL_DRAWS = 5  # random control sets: as many other heads and as many other MLP layers


def ablation_groups(rows) -> list[tuple]:
    """Each prompt's ablation group, in batch order: its template and token length (so positions
    align), or all prompts of its length where it is the only prompt of its template there."""
    keys = [(r["template"], r["positions"]["END"]) for r in batch_order(rows)]
    return [k if keys.count(k) > 1 else (None, k[1]) for k in keys]


def ablation_sources(rows, how: str, seed: int) -> list[tuple[int, ...]]:
    """Per prompt (batch order), the prompts whose clean activations replace its own: how="mean",
    every prompt of its group (mean ablation per template and position); how="resample", one other
    prompt of its group drawn at random (seeded; resample ablation)."""
    groups = ablation_groups(rows)
    members = {g: tuple(i for i, h in enumerate(groups) if h == g) for g in set(groups)}
    if how == "mean":
        return [members[g] for g in groups]
    rng = random.Random(f"resample-{rows[0]['task']}-{seed}")
    return [(rng.choice([j for j in members[g] if j != i] or [i]),) for i, g in enumerate(groups)]


def ablated_logit_diff(model, rows, batch_size, heads: list[tuple[int, int]], mlps: list[int] = (),
                       how: str = "mean", seed: int = 0, cache: JobCache | None = None) -> torch.Tensor:
    """(prompt,) logit difference with the given heads' z and MLP layers' outputs replaced by the
    mean of their clean activations over the prompts of the same template and length, at each
    position (how="mean"), or by a random other such prompt's (how="resample"; see
    ablation_sources). On the patching engine, from the clean runs, which the job computes once (cache)."""
    weights, runs = _clean_runs(model, rows, batch_size, cache)
    keys = [("z", l, h) for l, h in heads] + [("mlp", l) for l in mlps]
    sources = ablation_sources(rows, how, seed)
    clean = {key: [a for run, *_ in runs for a in _activation(run, key)] for key in keys}  # per prompt (pos, ...)
    out, start = [], 0
    for run, d, bias in runs:
        idx = range(start, start + len(d))
        start += len(d)
        values = {key: torch.stack([torch.stack([clean[key][j] for j in sources[i]]).mean(0) for i in idx])
                  for key in keys}  # (batch, pos, ...)
        out.append(engine.ablated(weights, run, values, d, bias).double().cpu())
    return torch.cat(out)


def _activation(run: dict, key: tuple) -> torch.Tensor:
    """A component's clean activation in one batch's run: (batch, pos, d_head) or (batch, pos, d_model)."""
    return run[f"z.{key[1]}"][:, :, key[2]] if key[0] == "z" else run[f"mlp_out.{key[1]}"]


def _clean_runs(model, rows, batch_size, cache: JobCache | None) -> tuple[Weights, list[tuple]]:
    """The engine's weights and, per batch of equal-length prompts, the clean run's residual stream
    before each layer and at the end, heads' z and MLP outputs (what ablated_logit_diff reads), the
    answer-minus-wrong direction and bias; computed once per job."""
    def make():
        weights = Weights.from_bridge(model)
        runs = []
        for b in batches(model, rows, batch_size, desc="clean runs"):
            run = engine.full_forward(weights, b.clean)
            run = {k: v for k, v in run.items() if k.startswith(("resid_pre.", "resid_final", "z.", "mlp_out."))}
            runs.append((run, *direction(model, b)))
        return weights, runs

    return shared(cache, "clean_runs", (tuple(r["clean"] for r in rows), batch_size), make)


def _summary(ld: torch.Tensor, clean: torch.Tensor, seed: int, clusters: list[str]) -> dict:
    """Accuracy (Wilson interval), mean logit difference and its mean change from the clean run
    (paired by prompt; both cluster bootstrap) of per-prompt ld."""
    acc, mean, change = proportion(ld > 0, clusters), mean_ci(ld, seed, clusters=clusters), mean_ci(ld - clean, seed, clusters=clusters)
    return {"accuracy": acc.value.item(), "accuracy_ci95": [acc.ci_low.item(), acc.ci_high.item()],
            "logit_diff": mean.value.item(), "logit_diff_ci95": [mean.ci_low.item(), mean.ci_high.item()],
            "logit_diff_change": change.value.item(), "logit_diff_change_ci95": [change.ci_low.item(), change.ci_high.item()]}


def _draws_summary(lds: torch.Tensor, clean: torch.Tensor, seed: int, clusters: list[str]) -> dict:
    """Random draws (draw, prompt): each prompt's correctness and logit difference averaged over the
    draws (a mean of shares, not one proportion), then bootstrapped over clusters."""
    acc, mean, change = (mean_ci(x, seed, clusters=clusters) for x in ((lds > 0).double().mean(0), lds.mean(0),
                                                                        lds.mean(0) - clean))
    return {"accuracy_mean": acc.value.item(), "accuracy_mean_ci95": [acc.ci_low.item(), acc.ci_high.item()],
            "accuracy_min": (lds > 0).double().mean(-1).min().item(),
            "logit_diff_mean": mean.value.item(), "logit_diff_mean_ci95": [mean.ci_low.item(), mean.ci_high.item()],
            "logit_diff_change_mean": change.value.item(),
            "logit_diff_change_mean_ci95": [change.ci_low.item(), change.ci_high.item()]}


def per_layer(heads) -> dict[int, int]:
    """How many of the heads (layer, head) are in each layer."""
    return {l: sum(1 for hl, _ in heads if hl == l) for l in sorted({l for l, _ in heads})}


def matched_draws(L: int, H: int, heads, mlps, rng: random.Random, n: int) -> list[tuple[list, list]] | None:
    """n random control sets matched to (heads, mlps): in each layer of the named heads, as many
    other heads of that layer, and as many other MLP layers; None when some such layer has too few
    other heads, or the model too few other MLP layers (no matched control)."""
    counts = per_layer(heads)
    others = {l: [(l, h) for h in range(H) if (l, h) not in heads] for l in counts}
    other_mlps = [l for l in range(L) if l not in mlps]
    if any(len(others[l]) < c for l, c in counts.items()) or len(other_mlps) < len(mlps):
        return None
    return [([hh for l, c in counts.items() for hh in rng.sample(others[l], c)], sorted(rng.sample(other_mlps, len(mlps))))
            for _ in range(n)]


def distinct_sets(L: int, H: int, heads, mlps) -> int:
    """How many different control sets matched_draws can draw."""
    return math.prod(math.comb(H - c, c) for c in per_layer(heads).values()) * math.comb(L - len(mlps), len(mlps))


def _test(model, rows, batch_size, seed, heads, mlps=(), cache: JobCache | None = None) -> dict:
    """Ablate the named set (mean ablation and, beside it, resample ablation), and N_CONTROL_DRAWS
    random sets of as many other heads from the same layers and as many other MLP layers
    (matched_draws), both ways."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    clusters = prompt_clusters(rows)
    clean = ablated_logit_diff(model, rows, batch_size, [], cache=cache)  # nothing ablated: the clean run's
    ablate = lambda hs, ms, how: ablated_logit_diff(model, rows, batch_size, hs, ms, how, seed, cache)  # noqa: E731
    named = {"ablated": [head_label(*h) for h in heads] + [str(Node("mlp", l)) for l in mlps],
             **_summary(ablate(heads, list(mlps), "mean"), clean, seed, clusters),
             "resample": _summary(ablate(heads, list(mlps), "resample"), clean, seed, clusters)}
    rng = random.Random(f"ablation-{rows[0]['task']}-{seed}")
    draws = matched_draws(L, H, heads, list(mlps), rng, N_CONTROL_DRAWS)
    if draws is None:
        return {"named": named, "random_others": None, "matched_control": False}
    control = {**_draws_summary(torch.stack([ablate(hs, ms, "mean") for hs, ms in draws]), clean, seed, clusters),
               "resample": _draws_summary(torch.stack([ablate(hs, ms, "resample") for hs, ms in draws]), clean, seed, clusters),
               "heads": len(heads), "mlps": len(mlps), "size": len(heads) + len(mlps), "draws": N_CONTROL_DRAWS,
               "distinct_sets": distinct_sets(L, H, heads, list(mlps)), "layer_matched": True}
    return {"named": named, "random_others": control, "matched_control": True}


def movers(model, rows, batch_size, seed: int, patch_heads=None, attention=None, cache: JobCache | None = None) -> dict:
    """The heads that matter most by head-output patching, the role each attends to from END, and
    the test: mean-ablate them vs as many random other heads (_test)."""
    roles = load_spec(rows[0]["task"])["roles"]
    end = attention[(attention.dest_role == "END") & attention.src_role.isin(roles)]
    z = patch_heads[patch_heads.activation == "z"].set_index(["layer", "head"]).value
    candidates = []
    for l, h in top_patched_heads(patch_heads, 2 * MAX_MOVERS):
        top = end[(end.layer == l) & (end["head"] == h)].sort_values("value", ascending=False).iloc[0]
        candidates.append({"head": head_label(l, h), "layer": l, "index": h, "patching": float(z[(l, h)]),
                           "moves": str(top.src_role), "attention": float(top.value)})
    largest = max(abs(c["patching"]) for c in candidates)
    named = [c for c in candidates if abs(c["patching"]) >= 0.1 * largest and c["attention"] >= MOVER_ATTENTION][:MAX_MOVERS]
    named = named or candidates[:2]
    return {"n": len(rows), "movers": named,
            "ablation": _test(model, rows, batch_size, seed, [(m["layer"], m["index"]) for m in named], cache=cache)}


def mapping(model, rows, batch_size, seed: int, head_logits=None, movers=None, cache: JobCache | None = None) -> dict:
    """Opposite tasks: the components classed opposite-mapping that push the answer most over the
    repeated word, and the test: mean-ablate them vs a matched random set (_test). Also the converse
    test of the movers: every other head and every MLP mean-ablated, so only the movers (their OV
    circuits) and the direct path can still map ADJ1 to its opposite."""
    cls = classify_components(head_logits)
    mappers = cls[cls.cls == ANSWER_OVER_REPEAT]
    # push from these rows only: a Series over all rows would give an empty frame its index (rows of NaN)
    top = mappers.assign(push=mappers.answer - mappers.wrong).nlargest(K_MAPPERS, "push")
    named = [{"component": r.component, "answer": float(r.answer), "wrong": float(r.wrong)} for r in top.itertuples()]
    heads = [(int(r.layer), int(r.head)) for r in top.itertuples() if r.head >= 0]
    mlps = [int(r.layer) for r in top.itertuples() if r.head < 0]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    keep = {(m["layer"], m["index"]) for m in movers["movers"]}
    rest = [(l, h) for l in range(L) for h in range(H) if (l, h) not in keep]
    clean = ablated_logit_diff(model, rows, batch_size, [], cache=cache)  # nothing ablated: the clean run's
    only = {"kept": [m["head"] for m in movers["movers"]],
            **_summary(ablated_logit_diff(model, rows, batch_size, rest, list(range(L)), cache=cache), clean, seed,
                       prompt_clusters(rows))}
    return {"n": len(rows), "mappers": named, "ablation": _test(model, rows, batch_size, seed, heads, mlps, cache) if named else None,
            "movers_only": only}
