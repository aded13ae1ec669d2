"""Movers: position or content? Each template role's word is shifted by one token, and every head's
attention from END is read where the word now is and where it was:
  * before: a copy of the token in front of the word is inserted in front of it, so the word moves
    one position later while its offset from END stays (END moves too): a head keyed on absolute
    position stays at the old position, which now holds the copy;
  * after: a copy of the token behind the word is inserted behind it, so the word keeps its absolute
    position while its offset from END grows by one: a head keyed on the offset from END now reads
    the copy.
In both shifts the old position holds the inserted copy and the new one the word itself, so a head
keyed on the word's content follows it in both. Where the task's templates put two roles in either
order (IOI: IO and S1), a third test swaps the two words within each prompt, which gives a prompt of
the other order with the same answer: a head keyed on content follows its word to the partner's
position, one keyed on position stays with the old position, now holding the partner's word.
Per head, role and shift: mean attention from END to the word's new position and to the old one
and their difference (paired per prompt), with 95% cluster-bootstrap intervals over the task's word
clusters (prompts.cluster_of, the unit of resampling); per role and shift, the task's logit
difference (answer minus wrong) on the shifted prompts and its change from the clean
prompts, and accuracy, since attention on prompts the model no longer reads says little."""

from __future__ import annotations

import torch
from torch import Tensor

from opposites.core import batches, logit_diff, prompt_clusters
from opposites.derived import head_label
from opposites.prompts import CLUSTER_UNIT, load_spec
from opposites.stats import mean_ci, proportion

SHIFTS = ("before", "after")


def shifted(tokens: Tensor, pos: int, shift: str) -> tuple[Tensor, int, int]:
    """One prompt's tokens (pos,) with a copy of the word's neighbour inserted (see the module
    docstring): the new tokens (pos + 1,), the word's new position and its old one (the copy's)."""
    if shift == "before":  # ... t[p-1], t[p-1], word ...: the word moves to p + 1
        return torch.cat([tokens[:pos], tokens[pos - 1:pos], tokens[pos:]]), pos + 1, pos
    # ... word, t[p+1], t[p+1] ...: the word stays at p, its offset from END grows
    return torch.cat([tokens[:pos + 1], tokens[pos + 1:pos + 2], tokens[pos + 1:]]), pos, pos + 1


def swapped(tokens: Tensor, pos: int, partner: int) -> tuple[Tensor, int, int]:
    """One prompt's tokens with the tokens at pos and partner exchanged: the new tokens, the word's
    new position (partner) and its old one (pos, now the partner's word)."""
    out = tokens.clone()
    out[pos], out[partner] = tokens[partner], tokens[pos]
    return out, partner, pos


def swap_partners(rows: list[dict], roles: list[str]) -> dict[str, str]:
    """Each role whose position some template gives to another role that, in that template, sits at
    the first role's position (the templates put the two in either order): role -> partner."""
    layouts = [dict(x) for x in {tuple(sorted(r["positions"].items())) for r in rows}]
    out = {}
    for a in roles:
        for b in roles:
            if a != b and any(x[a] == y[b] and x[b] == y[a] for x in layouts for y in layouts):
                out.setdefault(a, b)
    return out


def end_attention(model, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Every head's attention from the last position (batch, layer, head, key) and the last
    position's logits (batch, vocab)."""
    names = {f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)}
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    pattern = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][:, :, -1] for l in range(model.cfg.n_layers)], 1)
    return pattern.double().cpu(), logits[:, -1]


FOLLOW_SHARE = 0.5  # a head follows (or stays) only when new - old moves at least this share of its clean attention


def keys_on(before: dict, after: dict | None, clean: float | None = None) -> str:
    """What a head keys on, from its new-minus-old attention in each shift: content (it follows the
    word in both), absolute position (it stays at the old position when the word moves and follows
    it when only the offset from END changes), offset from END (the reverse), or not distinguished
    (any other combination, an interval reaching 0 included). It follows (stays) where the interval
    lies above (below) 0 and the mean moves at least FOLLOW_SHARE of `clean`, the head's attention
    to the word on the clean prompt (a head that moves 0.11 of its 0.98 follows only a little). With
    after None, before is the swap: content (it follows the word) or position (it stays)."""
    floor = 0.0 if clean is None else FOLLOW_SHARE * clean
    follows = lambda s: s["follows_ci95"][0] > 0 and s["follows"] >= floor  # noqa: E731
    stays = lambda s: s["follows_ci95"][1] < 0 and -s["follows"] >= floor  # noqa: E731
    if after is None:  # the swap: the word moves to its partner's position
        return "content" if follows(before) else "position" if stays(before) else "not distinguished"
    if follows(before) and follows(after):
        return "content"
    if stays(before) and follows(after):
        return "absolute position"
    if follows(before) and stays(after):
        return "offset from END"
    return "not distinguished"


def _ci(est, *index) -> tuple[float, list[float]]:
    return est.value[index].item(), [est.ci_low[index].item(), est.ci_high[index].item()]


def followed(r: dict[str, Tensor], shift: str) -> Tensor:
    """Per prompt, how far attention follows the word (layer, head, prompt): new minus old position;
    for the swap, whose two positions both hold a name, that difference signed by which of the two the
    head preferred on the clean prompt (word minus partner): positive when the word keeps winning
    (content), negative when the position does."""
    moved = r["new"] - r["old"]
    return moved if shift != "swap" else moved * torch.sign(r["clean"] - r["rival"])


def clean_runs(model, rows: list[dict], batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """Per batch (batches() order), the clean prompts' END attention and last logits (end_attention),
    computed once for every role and shift."""
    return [end_attention(model, b.clean) for b in batches(model, rows, batch_size, desc="clean")]


def role_shift(model, rows: list[dict], batch_size: int, role: str, shift: str, partner: str | None,
               clean_run: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Per prompt (batch order): every head's attention from END to the word's new and old positions
    on the shifted prompt and to the word on the clean one (layer, head, prompt), and the logit
    difference on the shifted and the clean prompt (prompt,); rival: the clean attention to the
    partner's position (shift "swap": the word exchanged with the partner role's); clean_run: clean_runs()."""
    new, old, clean, rival, ld, ld_clean = [], [], [], [], [], []
    for b, (pattern_clean, last_clean) in zip(batches(model, rows, batch_size, desc=f"shift {role} {shift}"), clean_run):
        moved = [swapped(t, r["positions"][role], r["positions"][partner]) if shift == "swap"
                 else shifted(t, r["positions"][role], shift) for t, r in zip(b.clean, b.rows)]
        pattern, last = end_attention(model, torch.stack([m[0] for m in moved]))  # (batch, layer, head, key)
        idx = torch.arange(len(moved), device=pattern.device)
        new.append(pattern[idx, :, :, [m[1] for m in moved]])  # (batch, layer, head)
        old.append(pattern[idx, :, :, [m[2] for m in moved]])
        clean.append(pattern_clean[idx, :, :, [r["positions"][role] for r in b.rows]])
        rival.append(pattern_clean[idx, :, :, [r["positions"][partner or role] for r in b.rows]])
        ld.append(logit_diff(last[:, None], b).double().cpu())
        ld_clean.append(logit_diff(last_clean[:, None], b).double().cpu())
    per_head = lambda xs: torch.cat(xs).permute(1, 2, 0)  # noqa: E731  (layer, head, prompt)
    return {"new": per_head(new), "old": per_head(old), "clean": per_head(clean), "rival": per_head(rival),
            "ld": torch.cat(ld), "ld_clean": torch.cat(ld_clean)}


def shift(model, rows: list[dict], batch_size: int, seed: int) -> dict:
    """The shift test for every role of the task's template and every head (module docstring)."""
    clusters = prompt_clusters(rows)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads, task = [], []
    spec = load_spec(rows[0]["task"])
    roles = spec["roles"]
    partners = swap_partners(rows, roles)
    clean = clean_runs(model, rows, batch_size)
    for role in roles:
        per_shift = {}
        for how in SHIFTS + (("swap",) if role in partners else ()):
            r = role_shift(model, rows, batch_size, role, how, partners.get(role), clean)
            new, old, follows = (mean_ci(x, seed, clusters=clusters) for x in (r["new"], r["old"], followed(r, how)))
            per_shift[how] = (new, old, follows)
            acc, ld, change = (proportion(r["ld"] > 0, clusters), mean_ci(r["ld"], seed, clusters=clusters),
                               mean_ci(r["ld"] - r["ld_clean"], seed, clusters=clusters))
            task.append({"role": role, "shift": how, "partner": partners.get(role) if how == "swap" else None,
                         "accuracy": _ci(acc)[0], "accuracy_ci95": _ci(acc)[1],
                         "logit_diff": _ci(ld)[0], "logit_diff_ci95": _ci(ld)[1],
                         "change": _ci(change)[0], "change_ci95": _ci(change)[1]})
        at_word = mean_ci(r["clean"], seed, clusters=clusters)
        for l in range(L):
            for h in range(H):
                entry = {"head": head_label(l, h), "layer": l, "index": h, "role": role,
                         "clean": _ci(at_word, l, h)[0], "clean_ci95": _ci(at_word, l, h)[1]}
                for how, (new, old, follows) in per_shift.items():
                    entry[how] = {"new": _ci(new, l, h)[0], "new_ci95": _ci(new, l, h)[1],
                                  "old": _ci(old, l, h)[0], "old_ci95": _ci(old, l, h)[1],
                                  "follows": _ci(follows, l, h)[0], "follows_ci95": _ci(follows, l, h)[1]}
                entry["keys_on"] = keys_on(entry["before"], entry["after"], entry["clean"])
                if "swap" in entry:
                    entry["swap_keys_on"], entry["partner"] = keys_on(entry["swap"], None, entry["clean"]), partners[role]
                heads.append(entry)
    ld_clean = mean_ci(r["ld_clean"], seed, clusters=clusters)
    return {"n_prompts": len(rows), "n_clusters": len(set(clusters)), "unit": CLUSTER_UNIT[spec["family"]],
            "clean_logit_diff": _ci(ld_clean)[0], "clean_logit_diff_ci95": _ci(ld_clean)[1],
            "heads": heads, "task": task}
