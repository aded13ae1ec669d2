"""What the "opposite minus repeat" contrast cannot separate (opposite tasks only).

The main metric, answer - wrong with wrong = ADJ1 repeated, lights up alike for a head that copies
ADJ1, one that suppresses copying and one that maps ADJ1 to its opposite. Two analyses tell them apart:
  head_logits  each head's (and MLP layer's) direct contribution at END to the *answer* logit and to
               the *wrong* (repeated) logit separately, each relative to the mean logit of the task's
               unrelated adjectives (tasks/<task>.yaml: unrelated), through the run's final LayerNorm
               scale. A copy-like head raises the wrong logit, a copy-suppressing head lowers it, an
               opposite-mapping head raises the answer without raising the wrong token.
  control      a control corruption: ADJ1 replaced by an unrelated adjective (one with no opposite).
               If the model maps ADJ1 to its opposite, the answer's relative logit falls; if it only
               reacts to "an adjective was here", it stays.
"""

from __future__ import annotations

import random

import pandas as pd
import torch

from opposites.core import JobCache, batches, end_states, ln_final, shared, prompt_clusters
from opposites.derived import head_label
from opposites.distribution import check_words
from opposites.nodes import Node
from opposites.prompts import fill, load_spec
from opposites.stats import mean_ci, pearson_ci, proportion
from opposites.words import copy_words


def unrelated_ids(model, task: str) -> torch.Tensor:
    return torch.tensor([model.to_single_token(" " + w) for w in load_spec(task)["unrelated"]], device=model.cfg.device)


def _relative(model, token: torch.Tensor, unrelated: torch.Tensor) -> torch.Tensor:
    """(batch, d_model): unembedding of each prompt's token minus the mean unrelated unembedding."""
    return (model.W_U[:, token] - model.W_U[:, unrelated].mean(-1, keepdim=True)).T


def component_logits(model, rows: list[dict], batch_size: int, cache: JobCache | None = None) -> dict[str, torch.Tensor]:
    """Each head's and MLP layer's direct contribution at END to the answer and to the wrong
    (repeated) logit, relative to the unrelated adjectives: {"answer", "wrong"} -> (component,
    prompt), components heads (layer-major) then MLP layers; computed once per job."""
    def make():
        unrelated = unrelated_ids(model, rows[0]["task"])
        parts: dict[str, list[torch.Tensor]] = {"answer": [], "wrong": []}
        for batch, s in end_states(model, rows, batch_size, cache):
            comps = torch.cat([s.heads.flatten(0, 1), s.mlp])  # (head... then MLP layers, batch, d_model)
            normed = ln_final(model, comps, s.scale)
            for target, token in (("answer", batch.answer), ("wrong", batch.wrong)):
                parts[target].append((normed * _relative(model, token, unrelated)).sum(-1).double().cpu())  # (comp, batch)
        return {target: torch.cat(chunks, -1) for target, chunks in parts.items()}

    return shared(cache, "component_logits", tuple(r["clean"] for r in rows), make)


def head_logits(model, rows: list[dict], batch_size: int, seed: int, cache: JobCache | None = None) -> pd.DataFrame:
    """Per component and target (answer, wrong, and their paired difference answer - wrong, which
    the classes are decided on): mean over prompts, 95% cluster-bootstrap interval, n."""
    logits = component_logits(model, rows, batch_size, cache)
    logits["difference"] = logits["answer"] - logits["wrong"]  # paired by prompt
    L, H = model.cfg.n_layers, model.cfg.n_heads
    labels = [(l, h, head_label(l, h)) for l in range(L) for h in range(H)] + [(l, -1, str(Node("mlp", l))) for l in range(L)]
    out = []
    for target, x in logits.items():
        est = mean_ci(x, seed, clusters=prompt_clusters(rows))  # (comp,)
        out.append(pd.DataFrame({"component": [c for *_, c in labels], "layer": [l for l, *_ in labels],
                                 "head": [h for _, h, _ in labels], "target": target, "value": est.value.cpu().numpy(),
                                 "ci_low": est.ci_low.cpu().numpy(), "ci_high": est.ci_high.cpu().numpy(), "n": est.n}))
    return pd.concat(out)


def pair_direction(model, rows: list[dict], batch_size: int, seed: int, cache: JobCache | None = None) -> dict:
    """How far the components share one 'pair' direction: Pearson's r across components between
    their answer and repeated-word contributions (bias-corrected, 95% cluster-bootstrap interval).
    Near 1, a component that raises the answer raises the repeated word about as much: the contrast
    answer - repeated, not either contribution alone, tells the classes apart."""
    logits = component_logits(model, rows, batch_size, cache)
    est = pearson_ci(logits["answer"], logits["wrong"], seed, clusters=prompt_clusters(rows))
    return {"r": est.value.item(), "r_ci95": [est.ci_low.item(), est.ci_high.item()],
            "n_components": logits["answer"].shape[0], "n": len(rows)}


def control_rows(rows: list[dict], tokenizer, seed: int) -> list[dict]:
    """Each prompt with ADJ1 replaced by an unrelated adjective (same names, template and length)."""
    spec = load_spec(rows[0]["task"])
    rng = random.Random(f"control-{rows[0]['task']}-{seed}")
    out = []
    for r in rows:
        template = spec["templates"][r["template"]]
        filled = fill(template, {**r["words"], "ADJ1": rng.choice(spec["unrelated"])}, tokenizer, spec["roles"])
        if filled is not None and filled[1] == r["positions"]:
            out.append({**r, "clean": filled[0], "corrupted": filled[0]})
    return out


def _answer_stats(model, rows, batch_size, unrelated) -> dict[str, torch.Tensor]:
    rel, top1 = [], []
    for batch in batches(model, rows, batch_size, desc="control"):
        last = model(batch.clean)[:, -1]  # (batch, vocab)
        answer = last.gather(1, batch.answer[:, None])[:, 0]
        rel.append((answer - last[:, unrelated].mean(-1)).double().cpu())
        top1.append((last.argmax(-1) == batch.answer).double().cpu())
    return {"rel": torch.cat(rel), "top1": torch.cat(top1)}


def control(model, rows: list[dict], batch_size: int, seed: int, cache: JobCache | None = None) -> dict:
    """The answer's logit relative to the unrelated adjectives, and its top-1 rate, on the clean
    prompts and on the control prompts (ADJ1 unrelated); the drop is paired by prompt."""
    unrelated = unrelated_ids(model, rows[0]["task"])
    ctrl = control_rows(rows, model.tokenizer, seed)
    kept = {r["id"] for r in ctrl}
    clean = _answer_stats(model, [r for r in rows if r["id"] in kept], batch_size, unrelated)
    controlled = _answer_stats(model, ctrl, batch_size, unrelated)
    result = {"n": len(ctrl)}
    clusters = prompt_clusters(ctrl)  # batch order of both runs (control rows keep ids and lengths)
    for key, x in (("answer_rel_clean", clean["rel"]), ("answer_rel_control", controlled["rel"]),
                   ("answer_rel_drop", clean["rel"] - controlled["rel"])):
        est = mean_ci(x, seed, clusters=clusters)
        result |= {key: est.value.item(), f"{key}_ci95": [est.ci_low.item(), est.ci_high.item()]}
    for key, hits in (("top1_clean", clean["top1"]), ("top1_control", controlled["top1"])):
        est = proportion(hits, clusters)
        result |= {key: est.value.item(), f"{key}_ci95": [est.ci_low.item(), est.ci_high.item()]}
    result["example"] = ctrl[0]["clean"] if ctrl else None
    result["pair_direction"] = pair_direction(model, rows, batch_size, seed, cache)
    # the unrelated adjectives are the reference of every relative logit and the control's words
    result["unrelated_check"] = check_words(model, [" " + w for w in load_spec(rows[0]["task"])["unrelated"]],
                                            copy_words(rows[0]["task"]))
    result["measurable"] = result["unrelated_check"]["all_in"]
    return result
