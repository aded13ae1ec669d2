"""Baseline and head DLA against a plain transformers/PyTorch computation (no TransformerLens):
unfolded LayerNorm, hooks on the Hugging Face GPT-2 modules, on a toy model whose LayerNorms and
biases are random and non-zero (so the bias-folding convention is visible and tested)."""

import pytest
import torch

from opposites.analyses import baseline, head_dla


def hf_reference(hf, tokenizer, rows):
    """Per prompt: logit difference and (layer, head) direct attributions."""
    cfg = hf.config
    d_head = cfg.n_embd // cfg.n_head
    ids = torch.tensor([[tokenizer.eos_token_id] + tokenizer(r["clean"])["input_ids"] for r in rows])
    answer = torch.tensor([tokenizer(r["answer"])["input_ids"][0] for r in rows])
    wrong = torch.tensor([tokenizer(r["wrong"])["input_ids"][0] for r in rows])
    z = {}  # layer -> input of c_proj, the concatenated head outputs z: (batch, pos, n_head * d_head)
    hooks = [blk.attn.c_proj.register_forward_pre_hook(lambda m, a, i=i: z.__setitem__(i, a[0]))
             for i, blk in enumerate(hf.transformer.h)]
    with torch.no_grad():
        out = hf(ids)
    for h in hooks:
        h.remove()
    last = out.logits[:, -1]
    logit_diff = last[torch.arange(len(rows)), answer] - last[torch.arange(len(rows)), wrong]
    ln_f = hf.transformer.ln_f
    W_U = hf.lm_head.weight  # (vocab, d_model)
    direction = (W_U[answer] - W_U[wrong]) * ln_f.weight  # (batch, d_model)
    x_final = final_residual(hf, ids)[:, -1]  # (batch, d_model)
    xc = x_final - x_final.mean(-1, keepdim=True)
    scale = (xc.pow(2).mean(-1, keepdim=True) + ln_f.eps).sqrt()
    dla = torch.zeros(cfg.n_layer, cfg.n_head, len(rows))
    folded = torch.zeros(cfg.n_layer, cfg.n_head, len(rows))
    n = cfg.n_embd
    read = lambda x: (((x - x.mean(-1, keepdim=True)) / scale) * direction).sum(-1)  # noqa: E731
    for layer, blk in enumerate(hf.transformer.h):
        W = blk.attn.c_proj.weight  # Conv1D: (n_head * d_head, d_model)
        W_V, b_V = blk.attn.c_attn.weight[:, 2 * n:], blk.attn.c_attn.bias[2 * n:]  # (d_model, n_head * d_head)
        for head in range(cfg.n_head):
            cols = slice(head * d_head, (head + 1) * d_head)
            dla[layer, head] = read(z[layer][:, -1, cols] @ W[cols])
            # what the head writes whatever it attends to (pattern rows sum to 1): LN-1's bias and b_V
            # through W_V and W_O. TransformerLens folds it into b_O, so its head output excludes it.
            constant = (blk.ln_1.bias @ W_V[:, cols] + b_V[cols]) @ W[cols]  # (d_model,)
            folded[layer, head] = read(constant.expand(len(rows), -1))
    return logit_diff, dla, folded


def final_residual(hf, ids):
    """Residual stream before ln_f (HF's last hidden state already has ln_f applied)."""
    store = {}
    h = hf.transformer.ln_f.register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0]))
    with torch.no_grad():
        hf(ids)
    h.remove()
    return store["x"]


@pytest.mark.parametrize("task", ["ioi", "size"])
def test_against_plain_transformers(toy, hf_toy, tokenizer, rows, task):
    by_len = {}
    for r in rows[task]:
        by_len.setdefault(r["positions"]["END"], []).append(r)
    group = max(by_len.values(), key=len)  # one equal-length batch
    logit_diff, dla, folded = hf_reference(hf_toy, tokenizer, group)
    base = baseline.run(toy, group, batch_size=16, seed=0)
    assert base["logit_diff_mean"] == pytest.approx(logit_diff.mean().item(), abs=1e-4)
    assert base["accuracy"] == pytest.approx((logit_diff > 0).float().mean().item())
    ours = torch.tensor(head_dla.run(toy, group, batch_size=16, seed=0).value.to_numpy()).float()
    # Our convention (TransformerLens's, and published GPT-2 head attributions'): per-head DLA leaves
    # out the folded constant, so it equals the unfolded head output's DLA minus that constant.
    torch.testing.assert_close(ours, (dla - folded).mean(-1).flatten(), atol=1e-4, rtol=0)
    assert folded.abs().max() > 1e-3  # 10x the tolerance: the toy model's random biases make the convention visible
