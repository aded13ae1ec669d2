"""Logit lens: the mean logit difference read from the residual stream at every layer.

kinds:
  accumulated              final LayerNorm recomputed on each layer's residual (the logit lens;
                           TransformerLens 4's `accumulated_resid(apply_ln=True)`)
  accumulated_final_scale  final LayerNorm with the run's final scale (linear; the same residuals
                           through `apply_ln_to_stack(layer=-1)`), without the constant bias terms
  decomposed               what each layer's attention (incl. b_O) and MLP write, plus the
                           embeddings and the constant bias terms; these sum to the logit difference
  attn_split               each layer's attention term split into its heads (the sum of their
                           per-head DLA) and the folded bias: b_O, into which TransformerLens folds
                           every head's constant write (b_V + LayerNorm-1 bias . W_V) . W_O. Per-head
                           attributions leave that constant out; here it is its own component, so
                           heads + folded bias = the attention term.
"""

from __future__ import annotations

import pandas as pd
import torch

from opposites.core import JobCache, end_states, prompt_clusters, read_out
from opposites.stats import mean_ci


def per_prompt(model, state) -> list[tuple[str, str, int, torch.Tensor]]:
    rows = []
    for (label, layer), resid in state.resid.items():
        rows.append(("accumulated", label, layer, read_out(model, state, resid, frozen=False)))
        rows.append(("accumulated_final_scale", label, layer, read_out(model, state, resid)))
    rows.append(("decomposed", "embed", -1, read_out(model, state, state.embed)))
    for layer in range(model.cfg.n_layers):
        attn = state.heads[layer].sum(0) + state.attn_bias[layer]  # (batch, d_model)
        rows.append(("decomposed", "attn", layer, read_out(model, state, attn)))
        rows.append(("attn_split", "heads", layer, read_out(model, state, state.heads[layer]).sum(0)))
        rows.append(("attn_split", "folded_bias", layer, read_out(model, state, state.attn_bias[layer].expand_as(attn))))
        rows.append(("decomposed", "mlp", layer, read_out(model, state, state.mlp[layer])))
    rows.append(("decomposed", "bias", -1, state.bias_diff))
    return rows


def run(model, rows: list[dict], batch_size: int, seed: int, cache: JobCache | None = None) -> pd.DataFrame:
    """Mean over prompts of every lens value, with its 95% bootstrap interval and n."""
    parts: dict[tuple[str, str, int], list[torch.Tensor]] = {}
    for _, state in end_states(model, rows, batch_size, cache):
        for kind, label, layer, values in per_prompt(model, state):
            parts.setdefault((kind, label, layer), []).append(values.detach().double().cpu())
    keys = list(parts)
    est = mean_ci(torch.stack([torch.cat(parts[k]) for k in keys]), seed, clusters=prompt_clusters(rows))  # (row, prompt) -> (row,)
    df = pd.DataFrame(keys, columns=["kind", "label", "layer"])
    return df.assign(value=est.value.cpu().numpy(), ci_low=est.ci_low.cpu().numpy(), ci_high=est.ci_high.cpu().numpy(), n=est.n)
