"""Follow-up patching, chosen automatically from the logit lens and DLA (the researcher's plan:
"patch the layers that show sharp curve changes in the logit lens, and the heads that have big
values in head analysis"):
  * the k_layers attention or MLP layers with the largest direct contribution to the logit
    difference (the sharpest steps of the accumulated logit lens, which re-normalise at every
    layer, are recorded beside them, not used); an attention layer is patched head by head and
    role by role, an MLP layer role by role;
  * the k_heads heads with the largest |DLA| are patched role by role, and path-patched into every
    later head's query, key and value inputs (IOI-paper path patching), into every MLP's input from
    their own layer on, and into the logits (their direct path).
The selection and its reasons are written with the results."""

from __future__ import annotations

import pandas as pd

from opposites.analyses.patching import dataset_sweep, patch_roles, table
from opposites.core import JobCache, prompt_clusters
from opposites.patching import exact
from opposites.derived import head_label, largest_abs, layer_contributions
from opposites.nodes import Node


def select(lens: pd.DataFrame, dla: pd.DataFrame, k_layers: int = 2, k_heads: int = 3) -> dict:
    """The k_layers layer components of largest |direct contribution| (not the largest lens steps,
    which mix the LayerNorm scale into a layer's write; each chosen one carries both, and the
    components the steps would have chosen are listed beside them), and the k_heads heads of
    largest |DLA|."""
    layers = layer_contributions(lens)
    by_direct, by_step = largest_abs(layers, k_layers, "direct"), largest_abs(layers, k_layers, "step")
    entry = lambda r: {"layer": int(r.layer), "component": r.component, "direct": float(r.direct),  # noqa: E731
                       "direct_ci95": [float(r.ci_low), float(r.ci_high)], "step": float(r.step)}
    heads = largest_abs(dla, k_heads)
    return {
        "layers": [entry(r) for r in by_direct.itertuples()],
        "layers_by_step": [entry(r) for r in by_step.itertuples()],
        "heads": [{"layer": int(r.layer), "head": int(r.head), "label": head_label(r.layer, r.head), "dla": r.value}
                  for r in heads.itertuples()],
        "rule": f"the {k_layers} largest |direct contributions| of a layer's attention or MLP (not the "
                f"logit lens's steps); the {k_heads} largest |head DLA|",
    }


def run(model, rows, batch_size, patch_direction: str, seed: int, logit_lens=None, head_dla=None, cache: JobCache | None = None) -> dict:
    chosen = select(logit_lens, head_dla)
    roles = patch_roles(rows)
    attn_layers = [s["layer"] for s in chosen["layers"] if s["component"] == "attn"]
    mlp_layers = [s["layer"] for s in chosen["layers"] if s["component"] == "mlp"]
    heads = [(h["layer"], h["head"]) for h in chosen["heads"]]

    def by_role(pair: exact.Pair) -> dict:
        masks = exact.role_masks(pair, roles)
        return {"layer_heads": exact.head_by_role(pair, masks, layers=attn_layers),
                "heads": exact.head_by_role(pair, masks, heads=heads),
                "mlp": exact.mlp_out_by_role(pair, masks, layers=mlp_layers)}

    fine = dataset_sweep(model, rows, batch_size, patch_direction, by_role, cache=cache)
    clusters = prompt_clusters(rows)
    parts = []
    for kind, key, pairs in (("attn_layer_heads", "layer_heads", [(l, h) for l in attn_layers for h in range(model.cfg.n_heads)]),
                             ("top_heads", "heads", heads)):
        for layer, head in pairs:
            parts.append(table(fine.patched[key][layer, head], fine, {"role": roles}, seed, clusters)
                         .assign(kind=kind, component=head_label(layer, head)))
    for layer in mlp_layers:
        parts.append(table(fine.patched["mlp"][layer], fine, {"role": roles}, seed, clusters)
                     .assign(kind="mlp_layer", component=str(Node("mlp", layer))))
    by_role_df = pd.concat(parts) if parts else pd.DataFrame()

    path_rows = path_patch(model, rows, batch_size, patch_direction, seed, [(s, k) for s in heads for k in READERS],
                           cache)
    return {"selection": chosen, "n_prompts": len(rows), "normaliser_ok": bool(by_role_df.normaliser_ok.all()) if parts else True,
            "by_role": by_role_df.to_dict("records"), "path": path_rows}


def mlp_readers(n_layers: int) -> list[str]:
    """path_to_mlps's rows as reader nodes: MLP 0 .. MLP n_layers-1, then the logits."""
    return [str(Node("mlp", l)) for l in range(n_layers)] + ["logits"]


READERS = {"heads": exact.path_to_receivers, "mlps": exact.path_to_mlps}  # kind of reader -> its path sweep


def path_patch(model, rows, batch_size, patch_direction: str, seed: int,
               senders: list[tuple[tuple[int, int], str]], cache: JobCache | None = None,
               layer: int | None = None) -> list[dict]:
    """Each (sender head, kind of reader) path-patched into every reader of that kind it can reach
    directly: "heads", later heads' q, k and v inputs; "mlps", MLP inputs from its own layer on and
    the logits (layer n_layers); only the readers of `layer` where given. One row per (sender,
    reader): input is q, k or v for a head reader, "" otherwise; value and 95% interval on the
    patching metric."""
    only = None if layer is None else [layer]
    paths = dataset_sweep(model, rows, batch_size, patch_direction,  # flat keys: the sweep concatenates leaves
                          lambda pair: {(s, kind): READERS[kind](pair, s, only) for s, kind in senders}, cache=cache)
    clusters = prompt_clusters(rows)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = []
    for (ls, head), kind in paths.patched:
        t, sender = paths.patched[((ls, head), kind)], head_label(ls, head)
        keep = [l for l in range(L + 1) if l >= ls and (layer is None or l == layer)]  # rows computed
        if kind == "heads":
            keep = [l for l in keep if ls < l < L]
            if not keep:  # a last-layer sender reaches no later head
                continue
            df = table(t[keep], paths, {"layer": keep, "head": list(range(H)), "input": list("qkv")}, seed, clusters)
            out += [{"sender": sender, "receiver": head_label(r.layer, r.head), "input": r.input, "value": r.value,
                     "ci_low": r.ci_low, "ci_high": r.ci_high} for r in df.itertuples()]
        else:
            df = table(t[keep], paths, {"reader": [mlp_readers(L)[l] for l in keep]}, seed, clusters)
            out += [{"sender": sender, "receiver": r.reader, "input": "", "value": r.value, "ci_low": r.ci_low,
                     "ci_high": r.ci_high} for r in df.itertuples()]
    return out

