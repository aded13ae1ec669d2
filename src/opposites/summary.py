"""Facts the prose names, derived from result files (so the text stays true for any numbers)."""

from __future__ import annotations

from itertools import combinations

import pandas as pd


def head_label(layer: int, head: int) -> str:
    return f"{int(layer)}.{int(head)}"


def top_heads(dla: pd.DataFrame, k: int = 3, sign: int = 1) -> list[dict]:
    """The k heads with the largest (sign=1) or most negative (sign=-1) DLA."""
    rows = dla.assign(s=sign * dla.value).nlargest(k, "s")
    return [{"head": head_label(r.layer, r.head), "value": r.value} for r in rows.itertuples()]


def top_abs(dla: pd.DataFrame, k: int) -> set[str]:
    rows = dla.assign(a=dla.value.abs()).nlargest(k, "a")
    return {head_label(r.layer, r.head) for r in rows.itertuples()}


def lens_facts(lens: pd.DataFrame) -> dict:
    acc = lens[lens.kind == "accumulated"].copy()
    acc["order"] = 2 * acc.layer + acc.label.map({"resid_pre": 0, "resid_mid": 1, "resid_post": 2})
    acc = acc.sort_values("order")
    final = float(acc.value.iloc[-1])
    half = acc[acc.value >= final / 2] if final > 0 else acc.iloc[0:0]
    dec = lens[lens.kind == "decomposed"]
    attn, mlp = dec[dec.label == "attn"], dec[dec.label == "mlp"]
    first = half.iloc[0] if len(half) else None
    return {
        "final": final,
        "half_layer": None if first is None else int(first.layer),
        "half_label": None if first is None else str(first.label),
        "top_attn_layer": int(attn.loc[attn.value.idxmax(), "layer"]),
        "top_attn_value": float(attn.value.max()),
        "top_mlp_layer": int(mlp.loc[mlp.value.idxmax(), "layer"]),
        "top_mlp_value": float(mlp.value.max()),
        "attn_total": float(attn.value.sum()),
        "mlp_total": float(mlp.value.sum()),
    }


def summarize(data: dict, tasks: list[str], k: int = 5) -> dict:
    per_task = {}
    for t in tasks:
        dla = data["head_dla"][t]
        per_task[t] = {"baseline": data["baseline"][t], "lens": lens_facts(data["logit_lens"][t]),
                       "top_pos": top_heads(dla), "top_neg": top_heads(dla, sign=-1),
                       "top_abs": sorted(top_abs(dla, k))}
    sets = {t: set(per_task[t]["top_abs"]) for t in tasks}
    pairs = [{"a": a, "b": b, "shared": sorted(sets[a] & sets[b])} for a, b in combinations(tasks, 2)]
    shared_all = sorted(set.intersection(*sets.values())) if sets else []
    best = max(tasks, key=lambda t: per_task[t]["baseline"]["logit_diff_mean"])
    return {"tasks": per_task, "k": k, "pairs": pairs, "shared_all": shared_all, "best_task": best}
