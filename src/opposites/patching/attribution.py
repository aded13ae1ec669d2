"""Attribution patching (Nanda 2023; Syed et al. 2023): the first-order estimate of every head
activation's patching effect, (source - base) . d(logit diff)/d(activation) on the base run, from
2 forward passes and 1 backward pass. Same convention as exact.py (denoising: base = corrupted)."""

from __future__ import annotations

import torch
from torch import Tensor

from opposites.patching import engine
from opposites.patching.exact import Pair

ACTIVATIONS = ("z", "q", "k", "v", "pattern")


def head_attribution(pair: Pair) -> dict[str, Tensor]:
    """activation -> (layer, head, batch): each prompt's estimated patched logit difference."""
    with torch.enable_grad():
        run = engine.full_forward(pair.weights, pair.base_tokens, keep_grad=True)
        ld = engine.read_logit_diff(pair.weights, run["resid_final"][:, -1], pair.direction, pair.bias)
        ld.sum().backward()
    out = {}
    for act in ACTIVATIONS:
        per_layer = []
        for layer in range(pair.weights.n_layers):
            key = f"{act}.{layer}"
            est = (pair.src[key] - pair.base[key]) * run[key].grad  # (batch, pos, head, d_head) or (batch, head, q, k)
            head_dim = 1 if act == "pattern" else 2
            per_layer.append(est.transpose(1, head_dim).flatten(2).sum(2).T)  # (head, batch)
        out[act] = torch.stack(per_layer) + pair.base_ld  # (layer, head, batch)
    return out
