"""Baseline behaviour, before any mechanism: the logit difference (answer - wrong) and how often the
answer, the wrong token (for the opposite tasks: the repeated ADJ1) or something else is the top-1
prediction, on clean prompts; and the corrupted prompts scored against their *own* answer where they
have one (opposite and is-a: the clean prompt's wrong token; IOI's ABC corruption has none). Every
mean carries a 95% interval (`<key>_ci95`): a proportion (accuracy, top-1 rates) its Wilson interval at the
effective sample size given those words (stats.proportion),
a mean logit difference a cluster bootstrap over the task's source words (prompts.CLUSTER_UNIT)."""

from __future__ import annotations

import torch

from opposites.core import batches, logit_diff, prompt_clusters
from opposites.prompts import CORRUPTED_ANSWER_IS_WRONG, load_spec
from opposites.stats import Estimate, mean_ci, proportion


def _per_prompt(model, rows, batch_size) -> dict[str, torch.Tensor]:
    out: dict[str, list] = {k: [] for k in ("clean", "corrupted", "top1_answer", "top1_wrong", "corrupted_top1_own")}
    for batch in batches(model, rows, batch_size, desc="baseline"):
        clean, corrupted = model(batch.clean)[:, -1], model(batch.corrupted)[:, -1]  # (batch, vocab)
        out["clean"].append(logit_diff(clean[:, None], batch))
        out["corrupted"].append(logit_diff(corrupted[:, None], batch))
        top, top_corrupted = clean.argmax(-1), corrupted.argmax(-1)
        out["top1_answer"].append(top == batch.answer)
        out["top1_wrong"].append(top == batch.wrong)
        out["corrupted_top1_own"].append(top_corrupted == batch.wrong)
    return {k: torch.cat(v).double().cpu() for k, v in out.items()}


def _with_ci(result: dict, key: str, est: Estimate) -> None:
    result[key] = est.value.item()
    result[f"{key}_ci95"] = [est.ci_low.item(), est.ci_high.item()]


def run(model, rows: list[dict], batch_size: int, seed: int) -> dict:
    per = _per_prompt(model, rows, batch_size)
    clean, corrupted = per["clean"], per["corrupted"]
    clusters = prompt_clusters(rows)  # batch order, as per-prompt values
    result = {"n_prompts": len(rows), "n_words": len(set(clusters))}
    _with_ci(result, "logit_diff_mean", mean_ci(clean, seed, clusters=clusters))
    result["logit_diff_std"] = clean.std().item() if len(clean) > 1 else 0.0
    _with_ci(result, "accuracy", proportion(clean > 0, clusters))
    _with_ci(result, "top1", proportion(per["top1_answer"], clusters))  # answer is the top-1 token
    _with_ci(result, "top1_wrong", proportion(per["top1_wrong"], clusters))  # the wrong (repeated) token is
    _with_ci(result, "top1_other", proportion(1 - per["top1_answer"] - per["top1_wrong"], clusters))
    _with_ci(result, "corrupted_logit_diff_mean", mean_ci(corrupted, seed, clusters=clusters))  # clean answer - clean wrong
    result["corrupted_logit_diff_std"] = corrupted.std().item() if len(corrupted) > 1 else 0.0
    own = CORRUPTED_ANSWER_IS_WRONG[load_spec(rows[0]["task"])["family"]]
    result["corrupted_has_own_answer"] = own
    if own:  # its own answer is the clean wrong token: it wins when the clean-direction difference is < 0
        _with_ci(result, "corrupted_accuracy", proportion(corrupted < 0, clusters))
        _with_ci(result, "corrupted_top1", proportion(per["corrupted_top1_own"], clusters))
    else:
        result |= {"corrupted_accuracy": None, "corrupted_accuracy_ci95": None,
                   "corrupted_top1": None, "corrupted_top1_ci95": None}
    # Does the model do the task? The answer must beat the wrong token on most prompts (interval above 1/2).
    result["does_task"] = result["accuracy_ci95"][0] > 0.5
    result["per_prompt"] = [round(v, 6) for v in clean.tolist()]
    result["corrupted_per_prompt"] = [round(v, 6) for v in corrupted.tolist()]
    return result
