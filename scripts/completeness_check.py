"""Independent check of a circuit's completeness in plain PyTorch on the Hugging Face GPT-2 modules
(no TransformerLens, no opposites.patching): every reader (a head's q, k or v input, an MLP, the
logits) sums its writers' outputs (embedding, each head, each MLP), taking a writer's output from
the corrupted run on the edges that are cut and from the patched run itself on the kept edges.

Usage: python scripts/completeness_check.py MODEL_DIR RESULTS_TASK_DIR
Prints, on all the task's prompts: the clean and corrupted mean logit differences, the recovery of
the circuit (its edges kept), of the complement (the circuit's edges cut from the clean run: 1 -
completeness_lost) and of the complement of the circuit's embedding -> layer-0 edges alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel, GPT2TokenizerFast


def writers(L: int, H: int) -> list[str]:
    return ["embed"] + [n for l in range(L) for n in [f"{l}.{h}" for h in range(H)] + [f"MLP {l}"]]


def forward(hf, ids: torch.Tensor, keep, corrupt_out: dict | None) -> tuple[torch.Tensor, dict]:
    """(batch, vocab) final logits and each writer's output (batch, pos, d_model). keep(src, dst):
    whether edge src -> dst takes the patched run's output (else the corrupted run's, corrupt_out)."""
    cfg, t = hf.config, hf.transformer
    H, d = cfg.n_head, cfg.n_embd // cfg.n_head
    out = {"embed": t.wte(ids) + t.wpe(torch.arange(ids.shape[1]))}
    const = torch.zeros_like(out["embed"])  # attention output biases: the same in every run

    def read(dst: str) -> torch.Tensor:
        x = const.clone()
        for src, o in out.items():
            x = x + (o if corrupt_out is None or keep(src, dst) else corrupt_out[src])
        return x

    causal = torch.tril(torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool))
    for l, blk in enumerate(t.h):
        W, b = blk.attn.c_attn.weight, blk.attn.c_attn.bias  # (d_model, 3 d_model), Conv1D: x @ W + b
        Wo = blk.attn.c_proj.weight  # (d_model, d_model)
        heads = {}
        for h in range(H):
            qkv = []
            for i, kind in enumerate("qkv"):
                x = blk.ln_1(read(f"{l}.{h}.{kind}"))
                cols = slice(i * cfg.n_embd + h * d, i * cfg.n_embd + (h + 1) * d)
                qkv.append(x @ W[:, cols] + b[cols])  # (batch, pos, d_head)
            q, k, v = qkv
            scores = (q @ k.transpose(-1, -2) / d ** 0.5).masked_fill(~causal, float("-inf"))
            heads[f"{l}.{h}"] = scores.softmax(-1) @ v @ Wo[h * d:(h + 1) * d]  # (batch, pos, d_model)
        out.update(heads)
        const = const + blk.attn.c_proj.bias
        out[f"MLP {l}"] = blk.mlp(blk.ln_2(read(f"MLP {l}")))
    logits = t.ln_f(read("logits")) @ hf.lm_head.weight.T
    return logits[:, -1], out


def main(model_dir: str, task_dir: str) -> None:
    torch.set_grad_enabled(False)
    hf, tok = GPT2LMHeadModel.from_pretrained(model_dir).eval(), GPT2TokenizerFast.from_pretrained(model_dir)
    circuit = json.loads((Path(task_dir) / "circuit.json").read_text())
    rows = [json.loads(x) for x in (Path(task_dir) / "prompts.jsonl").read_text().splitlines()]
    edges = {(e["src"], e["dst"]) for e in circuit["edges"]}
    embed0 = {(s, t) for s, t in edges if s == "embed" and t.startswith("0.")}
    lds = {k: [] for k in ("clean", "corrupted", "circuit", "complement", "complement_embed0")}
    bos = tok.eos_token_id
    for r in rows:
        clean, corrupted = ([[bos] + tok(r[k])["input_ids"]] for k in ("clean", "corrupted"))
        clean, corrupted = torch.tensor(clean), torch.tensor(corrupted)
        a, w = tok(r["answer"])["input_ids"][0], tok(r["wrong"])["input_ids"][0]
        ld = lambda logits: (logits[0, a] - logits[0, w]).item()  # noqa: E731
        c_logits, c_out = forward(hf, corrupted, None, None)
        lds["clean"].append(ld(forward(hf, clean, None, None)[0]))
        lds["corrupted"].append(ld(c_logits))
        lds["circuit"].append(ld(forward(hf, clean, lambda s, t: (s, t) in edges, c_out)[0]))
        lds["complement"].append(ld(forward(hf, clean, lambda s, t: (s, t) not in edges, c_out)[0]))
        lds["complement_embed0"].append(ld(forward(hf, clean, lambda s, t: (s, t) not in embed0, c_out)[0]))
    mean = {k: sum(v) / len(v) for k, v in lds.items()}
    span = mean["clean"] - mean["corrupted"]
    rec = {k: (mean[k] - mean["corrupted"]) / span for k in ("circuit", "complement", "complement_embed0")}
    print(json.dumps({"n": len(rows), "n_edges": len(edges), "embed_to_layer0": sorted(embed0),
                      "clean": mean["clean"], "corrupted": mean["corrupted"], "recovery": rec,
                      "completeness_lost": 1 - rec["complement"],
                      "lost_cutting_embed_to_layer0_only": 1 - rec["complement_embed0"]}, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
