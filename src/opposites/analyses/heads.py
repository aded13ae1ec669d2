"""Heads: where they attend (by template role), what their output does to the answer logit, and
what their OV circuit copies (IOI copy scores, and the opposite score: does OV map "tall" to "short"?)."""

from __future__ import annotations

import pandas as pd
import torch

from opposites.core import batches, ln_final, prompt_clusters
from opposites.derived import head_label, selected_heads
from opposites.prompts import load_spec
from opposites.stats import mean_ci
from opposites.words import copy_words, opposites


def _roles(row: dict) -> dict[str, int]:
    return {"BOS": 0, **row["positions"]}


def attention(model, rows: list[dict], batch_size: int, seed: int) -> pd.DataFrame:
    """Mean attention of every head from each role token (dest) to each role token (src, plus BOS),
    each prompt at its own role positions (0 where src comes after dest), with a 95% interval (cluster
    bootstrap over the task's source words); 'other' is the rest of the row, so each dest role's values sum to 1."""
    L = model.cfg.n_layers
    per_prompt: dict[tuple[str, str], list[torch.Tensor]] = {}  # each entry (layer, head)
    for batch in batches(model, rows, batch_size, desc="attention"):
        names = {f"blocks.{l}.attn.hook_pattern" for l in range(L)}
        _, cache = model.run_with_cache(batch.clean, names_filter=lambda n: n in names)
        pattern = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(L)], 1)  # (b, layer, head, q, k)
        for i, row in enumerate(batch.rows):
            for key, value in _role_attention(pattern[i], _roles(row)).items():
                per_prompt.setdefault(key, []).append(value)
    out, clusters = [], prompt_clusters(rows)  # batch order, as the values
    for (dest, src), values in per_prompt.items():
        est = mean_ci(torch.stack(values, -1), seed, clusters=clusters)  # (layer, head, prompt) -> (layer, head)
        out += [(l, h, dest, src, est.value[l, h].item(), est.ci_low[l, h].item(), est.ci_high[l, h].item(), est.n)
                for l in range(L) for h in range(model.cfg.n_heads)]
    return pd.DataFrame(out, columns=["layer", "head", "dest_role", "src_role", "value", "ci_low", "ci_high", "n"])


def _role_attention(pattern: torch.Tensor, roles: dict[str, int]) -> dict[tuple[str, str], torch.Tensor]:
    """One prompt's attention (layer, head) from each role to each role, pattern (layer, head, q, k).
    A later source (masked) or a position already counted under another role name gets 0."""
    out = {}
    for dest, q in roles.items():
        if dest == "BOS":
            continue
        seen: list[int] = []
        for src, k in roles.items():
            counted = k <= q and k not in seen
            out[(dest, src)] = pattern[:, :, q, k] if counted else torch.zeros_like(pattern[:, :, 0, 0])
            if counted:
                seen.append(k)
        out[(dest, "other")] = 1 - pattern[:, :, q, seen].sum(-1)
    return out


def attention_example(model, rows, batch_size, head_dla=None, patch_heads=None) -> dict:
    """The attention patterns of the top heads on the first prompt."""
    row = rows[0]
    tokens = model.to_tokens(row["clean"])
    _, cache = model.run_with_cache(tokens)
    heads = selected_heads(head_dla, patch_heads)
    for h in heads:
        h["label"] = head_label(h["layer"], h["head"])
        h["pattern"] = cache[f"blocks.{h['layer']}.attn.hook_pattern"][0, h["head"]].double().tolist()
    return {"prompt": row["clean"], "tokens": model.to_str_tokens(row["clean"]), "roles": _roles(row), "heads": heads}


def head_logit(model, rows, batch_size, head_dla=None) -> pd.DataFrame:
    """Per prompt, each top-|DLA| head's direct contribution to the answer logit (through the run's
    final LayerNorm scale) against the model's answer logit."""
    heads = selected_heads(head_dla)
    out = []
    for batch in batches(model, rows, batch_size, desc="head logit"):
        names = {f"blocks.{h['layer']}.attn.hook_z" for h in heads} | {"ln_final.hook_scale"}
        logits, cache = model.run_with_cache(batch.clean, names_filter=lambda n: n in names)
        answer_logit = logits[:, -1].gather(1, batch.answer[:, None])[:, 0]
        W_U = model.W_U[:, batch.answer].T  # (batch, d_model)
        for h in heads:
            z = cache[f"blocks.{h['layer']}.attn.hook_z"][:, -1, h["head"]]  # (batch, d_head)
            write = z @ model.W_O[h["layer"], h["head"]]  # (batch, d_model)
            contrib = (ln_final(model, write, cache["ln_final.hook_scale"][:, -1]) * W_U).sum(-1)
            out += [(r["id"], h["layer"], h["head"], c, a) for r, c, a in
                    zip(batch.rows, contrib.tolist(), answer_logit.tolist())]
    return pd.DataFrame(out, columns=["prompt", "layer", "head", "contribution", "answer_logit"])


def head_inputs(model, words: list[str], position: int) -> torch.Tensor:
    """What each layer's heads read at a word, (layer, word, d_model): layer 0 reads the embedding,
    token plus position embedding at `position` (blocks.0.hook_resid_pre of the word at that
    position); later layers, by the IOI paper's convention, the word's residual after the first MLP
    layer (blocks.0.hook_resid_post of "<|endoftext|> word")."""
    bos = model.tokenizer.bos_token_id
    word_ids = [model.to_single_token(w) for w in words]
    at = torch.tensor([[bos] * position + [w] for w in word_ids], device=model.cfg.device)
    pair = torch.tensor([[bos, w] for w in word_ids], device=model.cfg.device)
    embed = model.run_with_cache(at, names_filter="blocks.0.hook_resid_pre")[1]["blocks.0.hook_resid_pre"][:, position]
    after = model.run_with_cache(pair, names_filter="blocks.0.hook_resid_post")[1]["blocks.0.hook_resid_post"][:, 1]
    return torch.stack([embed] + [after] * (model.cfg.n_layers - 1))


def ov_writes(model, words: list[str], position: int) -> torch.Tensor:
    """What each head's OV circuit writes, (layer, head, word, d_model), for each word as its
    layer's heads read it (head_inputs), normalised by the head's own layer's LayerNorm before OV,
    then the final LayerNorm and the unembedding."""
    inputs = head_inputs(model, words, position)
    out = []
    for layer in range(model.cfg.n_layers):
        blk, x = model.blocks[layer], inputs[layer]
        xc = x - x.mean(-1, keepdim=True)
        h = xc / (xc.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt() * blk.ln1.w + blk.ln1.b
        v = torch.einsum("wm,hmd->hwd", h, model.W_V[layer]) + model.b_V[layer][:, None]  # (head, word, d_head)
        write = torch.einsum("hwd,hdm->hwm", v, model.W_O[layer])  # (head, word, d_model)
        out.append(write)
    return torch.stack(out)  # (layer, head, word, d_model); callers unembed one layer at a time


def copy_scores(model, rows, batch_size, k: int = 5) -> pd.DataFrame:
    """Share of the task's words whose own token (copy), or opposite (opposite), is in the top k of
    the head's OV output; negative_copy uses -OV. Layer 0's heads read the word's embedding at the
    most common position of the task's copy_role in its prompts; later layers, the word after MLP 0."""
    task = rows[0]["task"]
    words, opp = copy_words(task), opposites(task)
    ids = torch.tensor([model.to_single_token(w) for w in words], device=model.cfg.device)
    opp_ids = [{model.to_single_token(o) for o in opp.get(w, ())} for w in words]
    role = load_spec(task)["copy_role"]
    at = [r["positions"][role] for r in rows]
    position = max(sorted(set(at)), key=at.count)  # the most common (the first of ties)
    writes = ov_writes(model, words, position)
    L, H = writes.shape[:2]
    table = {1: [], -1: []}  # the table's order: copy and opposite layer by layer, then negative_copy
    for layer in range(L):
        # the final LayerNorm (no bias here: ln_final) and W_U are linear in sign, bit for bit, so -OV's
        # logits are the negated logits of OV: one unembedding per layer serves both
        logits = ln_final(model, writes[layer]) @ model.W_U  # (head, word, vocab)
        for sign, name in ((1, "copy"), (-1, "negative_copy")):
            top = (sign * logits).topk(k, dim=-1).indices  # (head, word, k)
            hit = (top == ids[None, :, None]).any(-1).double().mean(-1)  # (head,)
            table[sign] += [(layer, h, name, hit[h].item()) for h in range(H)]
            if sign == 1 and opp:
                has = [i for i, o in enumerate(opp_ids) if o]
                hits = torch.tensor([[bool(set(top[h, i].tolist()) & opp_ids[i]) for i in has] for h in range(H)],
                                    device="cpu")
                table[1] += [(layer, h, "opposite", hits[h].double().mean().item()) for h in range(H)]
    reads = lambda layer: f"embedding at position {position}" if layer == 0 else "after MLP 0"  # noqa: E731
    df = pd.DataFrame(table[1] + table[-1], columns=["layer", "head", "score_type", "value"])
    return df.assign(reads=df.layer.map(reads))
