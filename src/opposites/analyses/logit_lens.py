"""Logit lens: the mean logit difference read from the residual stream at every layer.

kinds:
  accumulated              final LayerNorm recomputed on each layer's residual (the logit lens;
                           TransformerLens 4's `accumulated_resid(apply_ln=True)`)
  accumulated_final_scale  final LayerNorm with the run's final scale (linear; the same residuals
                           through `apply_ln_to_stack(layer=-1)`), without the constant bias terms
  decomposed               what each layer's attention (incl. b_O) and MLP write, plus the
                           embeddings and the constant bias terms; these sum to the logit difference
"""

from __future__ import annotations

import pandas as pd
import torch

from opposites.core import batches, end_state, read_out


def per_prompt(model, state) -> list[tuple[str, str, int, torch.Tensor]]:
    rows = []
    for (label, layer), resid in state.resid.items():
        rows.append(("accumulated", label, layer, read_out(model, state, resid, frozen=False)))
        rows.append(("accumulated_final_scale", label, layer, read_out(model, state, resid)))
    rows.append(("decomposed", "embed", -1, read_out(model, state, state.embed)))
    for layer in range(model.cfg.n_layers):
        attn = state.heads[layer].sum(0) + state.attn_bias[layer]  # (batch, d_model)
        rows.append(("decomposed", "attn", layer, read_out(model, state, attn)))
        rows.append(("decomposed", "mlp", layer, read_out(model, state, state.mlp[layer])))
    rows.append(("decomposed", "bias", -1, state.bias_diff))
    return rows


def run(model, rows: list[dict], batch_size: int) -> pd.DataFrame:
    sums: dict[tuple[str, str, int], float] = {}
    for batch in batches(model, rows, batch_size, desc="logit lens"):
        for kind, label, layer, values in per_prompt(model, end_state(model, batch)):
            sums[(kind, label, layer)] = sums.get((kind, label, layer), 0.0) + values.double().sum().item()
    return pd.DataFrame([(k, lab, lay, s / len(rows)) for (k, lab, lay), s in sums.items()],
                        columns=["kind", "label", "layer", "value"])
