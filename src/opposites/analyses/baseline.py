"""Baseline behaviour: logit difference, accuracy and top-1 on clean and corrupted prompts."""

from __future__ import annotations

import torch

from opposites.core import batches, logit_diff


def run(model, rows: list[dict], batch_size: int) -> dict:
    out: dict[str, list] = {"clean": [], "corrupted": [], "clean_top1": [], "corrupted_top1": []}
    for batch in batches(model, rows, batch_size, desc="baseline"):
        for kind, tokens in (("clean", batch.clean), ("corrupted", batch.corrupted)):
            logits = model(tokens)  # (batch, pos, vocab)
            out[kind].append(logit_diff(logits, batch))
            out[f"{kind}_top1"].append(logits[:, -1].argmax(-1) == batch.answer)
    result = {"n_prompts": len(rows)}
    for kind in ("clean", "corrupted"):
        ld, top1 = torch.cat(out[kind]).double(), torch.cat(out[f"{kind}_top1"]).double()
        prefix = "" if kind == "clean" else "corrupted_"
        result |= {f"{prefix}logit_diff_mean": ld.mean().item(),
                   f"{prefix}logit_diff_std": ld.std().item() if len(ld) > 1 else 0.0,
                   f"{prefix}accuracy": (ld > 0).double().mean().item(),
                   f"{prefix}top1": top1.mean().item(),
                   f"{prefix}per_prompt": [round(v, 6) for v in ld.tolist()]}
    return result
