"""The most recent subject against the IOI rule. In an IOI prompt the repeated name S is also the
subject of the last clause, so "attend to the name that was not repeated" (IO) and "attend to the
most recent subject" cannot be told apart. Here the last clause gets a third name as subject (the
task file's `recency_templates`, e.g. "When Mary and John went to the store, John said that Tom gave
a drink to"): the IOI rule still points at IO (Mary), the most recent subject is S3 (Tom).

Per head: END's attention to IO, to S (both occurrences) and to S3, with 95% intervals, and the rule
the head follows (its interval for one name lies wholly above both other names', with at least
MIN_ATTENTION of END's weight). S3 is also the name nearest to END, so "most recent subject" and
"most recent name" coincide in these prompts. Per prompt: which of the three names the model puts highest,
and whether IO's logit beats S's (the task's own contrast, so the share compares with the task's
accuracy on its own templates: template dependence)."""

from __future__ import annotations

import random

import torch

from opposites.core import batch_order, batches
from opposites.derived import MIN_ATTENTION, prefers
from opposites.prompts import fill, load_spec
from opposites.stats import mean_ci, proportion

NAMES = ("IO", "S", "S3")


def prompts(rows: list[dict], task: str, tokenizer, seed: int) -> list[dict]:
    """One dissociating prompt per task row: its IO, S, place and object, and a third name (seeded)."""
    spec = load_spec(task)
    rng = random.Random(f"recency-{task}-{seed}")
    out = []
    for r in rows:
        words = r["words"]
        s3 = rng.choice([n for n in spec["names"] if n not in (words["IO"], words["S1"])])
        template = rng.choice(spec["recency_templates"])
        filled = fill(template, {**words, "S3": s3}, tokenizer, ["IO", "S1", "S2", "S3"])
        if filled is None:
            continue
        text, positions = filled
        out.append({"id": len(out), "clean": text, "corrupted": text, "answer": " " + words["IO"],
                    "wrong": " " + s3, "s": " " + words["S1"], "positions": positions})
    return out


def _end_attention(pattern: torch.Tensor, pos: dict[str, int]) -> torch.Tensor:
    """(name, layer, head) attention from END to IO, S (S1 + S2) and S3; pattern (layer, head, q, k)."""
    end = pattern[:, :, pos["END"]]  # (layer, head, k)
    return torch.stack([end[..., pos["IO"]], end[..., pos["S1"]] + end[..., pos["S2"]], end[..., pos["S3"]]])


def rule(att: dict[str, dict]) -> str:
    """'IOI' when END's attention interval on IO lies above those on S and S3 (and its mean reaches
    MIN_ATTENTION), 'most recent subject' when S3's lies above IO's and S's, else ''."""
    io, s, s3 = ((att[n]["value"], *att[n]["ci95"]) for n in NAMES)
    if prefers(io, s3) and prefers(io, s):
        return "IOI"
    return "most recent subject" if prefers(s3, io) and prefers(s3, s) else ""


def run(model, rows: list[dict], batch_size: int, seed: int) -> dict:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    dis = prompts(rows, rows[0]["task"], model.tokenizer, seed)
    names = {f"blocks.{l}.attn.hook_pattern" for l in range(L)}
    att, logits3 = [], []
    for batch in batches(model, dis, batch_size, desc="recency"):
        logits, cache = model.run_with_cache(batch.clean, names_filter=lambda n: n in names)
        pattern = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(L)], 1)  # (b, layer, head, q, k)
        att += [_end_attention(pattern[i], r["positions"]) for i, r in enumerate(batch.rows)]
        s = torch.tensor([model.to_single_token(r["s"]) for r in batch.rows], device=logits.device)
        last = logits[:, -1]  # (batch, vocab)
        logits3.append(torch.stack([last.gather(1, t[:, None])[:, 0] for t in (batch.answer, s, batch.wrong)], -1))
    att_t = torch.stack(att, -1).double().cpu()  # (name, layer, head, prompt)
    lg = torch.cat(logits3).double().cpu()  # (prompt, name): IO, S, S3
    clusters = [r["answer"].strip() for r in batch_order(dis)]  # IOI's resampling unit: the IO name
    est = mean_ci(att_t, seed, clusters=clusters)
    heads = []
    for l in range(L):
        for h in range(H):
            a = {n: {"value": est.value[i, l, h].item(), "ci95": [est.ci_low[i, l, h].item(), est.ci_high[i, l, h].item()]}
                 for i, n in enumerate(NAMES)}
            heads.append({"layer": l, "head": h, **a, "rule": rule(a)})
    top = lg.argmax(-1)
    shares = {n: proportion(top == i, clusters) for i, n in enumerate(NAMES)}  # Wilson at n_eff over IO names
    beats = proportion(lg[:, 0] > lg[:, 1], clusters)  # IO over S: the task's own contrast, on the new template
    return {"n": len(dis), "example": dis[0]["clean"] if dis else "", "min_attention": MIN_ATTENTION, "chance": 1 / len(NAMES),
            "io_minus_s3": mean_ci(lg[:, 0] - lg[:, 2], seed, clusters=clusters).record(),
            "io_minus_s": mean_ci(lg[:, 0] - lg[:, 1], seed, clusters=clusters).record(),
            "io_beats_s": beats.value.item(), "io_beats_s_ci95": [beats.ci_low.item(), beats.ci_high.item()],
            "preferred": {n: e.value.item() for n, e in shares.items()},
            "preferred_ci95": {n: [e.ci_low.item(), e.ci_high.item()] for n, e in shares.items()},
            "heads": heads}
