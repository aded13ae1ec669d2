"""Follow-up patching, chosen automatically from the logit lens and DLA (the researcher's plan:
"patch the layers that show sharp curve changes in the logit lens, and the heads that have big
values in head analysis"):
  * the k_layers sharpest steps of the accumulated logit lens name an attention or MLP layer; an
    attention layer is patched head by head and position by position, an MLP layer by position;
  * the k_heads heads with the largest |DLA| are patched by position, and path-patched into every
    later head's query, key and value inputs (IOI-paper path patching).
The selection and its reasons are written with the results."""

from __future__ import annotations

import pandas as pd

from opposites.analyses.patching import dataset_sweep, layout_group, position_labels
from opposites.patching import exact
from opposites.derived import accumulated_lens, head_label, largest_abs
from opposites.nodes import Node


def lens_steps(lens: pd.DataFrame) -> pd.DataFrame:
    """Each step of the accumulated lens, attributed to the layer component that makes it."""
    acc = accumulated_lens(lens)
    steps = []
    for prev, cur in zip(acc.itertuples(), acc.iloc[1:].itertuples()):
        component = "attn" if prev.label == "resid_pre" else "mlp"
        steps.append({"layer": int(prev.layer), "component": component, "step": float(cur.value - prev.value)})
    return pd.DataFrame(steps)


def select(lens: pd.DataFrame, dla: pd.DataFrame, k_layers: int = 2, k_heads: int = 3) -> dict:
    steps = lens_steps(lens)
    layers = largest_abs(steps, k_layers, "step")
    heads = largest_abs(dla, k_heads)
    return {
        "layers": [{"layer": int(r.layer), "component": r.component, "step": r.step} for r in layers.itertuples()],
        "heads": [{"layer": int(r.layer), "head": int(r.head), "label": head_label(r.layer, r.head), "dla": r.value}
                  for r in heads.itertuples()],
        "rule": f"the {k_layers} largest |steps| of the accumulated logit lens; the {k_heads} largest |head DLA|",
    }


def run(model, rows, batch_size, patch_direction: str, logit_lens=None, head_dla=None) -> dict:
    chosen = select(logit_lens, head_dla)
    group = layout_group(rows)
    labels = position_labels(model, group)
    attn_layers = [s["layer"] for s in chosen["layers"] if s["component"] == "attn"]
    mlp_layers = [s["layer"] for s in chosen["layers"] if s["component"] == "mlp"]
    heads = [(h["layer"], h["head"]) for h in chosen["heads"]]

    def by_pos(pair: exact.Pair) -> dict:
        return {"layer_heads": exact.head_by_pos(pair, layers=attn_layers),
                "heads": exact.head_by_pos(pair, heads=heads),
                "mlp": exact.mlp_out_by_pos(pair)}

    fine = dataset_sweep(model, group, batch_size, patch_direction, by_pos)
    rows_out = []
    for what, pairs in (("attn_layer_heads", [(l, h) for l in attn_layers for h in range(model.cfg.n_heads)]),
                        ("top_heads", heads)):
        key = "layer_heads" if what == "attn_layer_heads" else "heads"
        for layer, head in pairs:
            for pos, value in enumerate(fine[key][layer, head].tolist()):
                rows_out.append({"kind": what, "component": head_label(layer, head), "pos": pos, "value": value})
    for layer in mlp_layers:
        for pos, value in enumerate(fine["mlp"][layer].tolist()):
            rows_out.append({"kind": "mlp_layer", "component": f"MLP {layer}", "pos": pos, "value": value})
    by_pos_df = pd.DataFrame(rows_out).merge(labels, on="pos") if rows_out else pd.DataFrame()

    paths = dataset_sweep(model, rows, batch_size, patch_direction,
                          lambda pair: {head_label(*s): exact.path_to_receivers(pair, s) for s in heads})
    path_rows = [{"sender": sender, "receiver": head_label(lr, hr), "input": "qkv"[i], "value": t[lr, hr, i].item()}
                 for sender, t in paths.items() for lr in range(t.shape[0]) for hr in range(t.shape[1])
                 for i in range(3) if lr > Node.parse(sender).layer]
    return {"selection": chosen, "layout_prompts": len(group), "by_position": by_pos_df.to_dict("records"),
            "path": path_rows}
