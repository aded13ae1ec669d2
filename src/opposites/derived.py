"""Data derived from result tables, shared by analyses, figures, tables and the paper's facts (no
torch, and no imports from those modules: everything above imports this, never the reverse)."""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pandas as pd
import yaml

from opposites.prompts import load_spec

# The accumulated logit lens reads the residual before each layer (resid_pre), after its attention
# (resid_mid) and, for the last layer only, after it (resid_post): x = 2 * layer + LENS_ORDER[label].
LENS_ORDER = {"resid_pre": 0, "resid_mid": 1, "resid_post": 2}


COMPONENT_NAME = {"attn": "attention", "mlp": "MLP"}  # a layer component in words
MIN_CLUSTERS = 5  # a cluster bootstrap over fewer words has too few distinct resamples to test anything
FDR_Q = 0.05  # Benjamini-Hochberg false discovery rate of the dots on a heatmap panel
EFFECT_FLOOR = 0.05  # ... and a dot's |effect| must reach this fraction of the panel's largest |effect|


def benjamini_hochberg(p_values, q: float = FDR_Q) -> np.ndarray:
    """Which of the p-values are discoveries at false discovery rate q (Benjamini-Hochberg step-up:
    the k smallest, k the largest rank with p_(k) <= q k / m)."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    passed = p[order] <= q * np.arange(1, m + 1) / max(m, 1)
    k = passed.nonzero()[0].max() + 1 if passed.any() else 0
    found = np.zeros(m, dtype=bool)
    found[order[:k]] = True
    return found


def holm(p_values, alpha: float) -> np.ndarray:
    """Which of the p-values are rejected by Holm's step-down procedure at family-wise error rate
    alpha: the k-th smallest p-value is compared with alpha / (m - k + 1), stopping at the first
    that exceeds it (NaN p-values: not tested, not counted in m)."""
    p = np.asarray(p_values, dtype=float)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    rejected = np.zeros(len(p), dtype=bool)
    for k, i in enumerate(order):
        if p[i] > alpha / (m - k):
            break
        rejected[i] = True
    return rejected


def wilson_p_above(value: float, ci95: list[float], null: float) -> float:
    """One-sided p-value of a proportion > null from its 95% Wilson interval: the score test the
    interval inverts, z = (value - null) / sqrt(null (1 - null) / n_eff), with the effective n read
    back from a bound b (value - b)^2 = z95^2 b (1 - b) / n_eff. NaN where neither bound tells n."""
    z95 = 1.959963984540054
    bound = next((b for b in (ci95[0], ci95[1]) if abs(b - value) > 1e-12 and 0 < b < 1), None)
    if bound is None:
        return math.nan
    n_eff = z95 ** 2 * bound * (1 - bound) / (value - bound) ** 2
    z = (value - null) / math.sqrt(null * (1 - null) / n_eff)
    return 0.5 * math.erfc(z / math.sqrt(2))


def significant(df: pd.DataFrame, value: str = "value", q: float = FDR_Q, floor: float = EFFECT_FLOOR) -> pd.Series:
    """Cells of one panel (rows of df, with `value` and `p_value`) that are discoveries: BH at
    false discovery rate q over the panel's p-values, and |value| at least `floor` times the panel's
    largest |value|."""
    size = df[value].abs()
    return pd.Series(benjamini_hochberg(df.p_value.to_numpy(), q), index=df.index) & (size >= floor * size.max())


MIN_CONTROL_SETS = 2  # a matched random control needs at least this many different sets to draw from


def matched_control(ablation: dict | None) -> dict | None:
    """The matched random control of an ablation test (mechanism._test's random_others), or None
    where none exists: no matched set at all, or only one possible set (distinct_sets 1: every
    "random" draw is the same set, a single comparison whose interval resamples prompts, not
    controls)."""
    others = (ablation or {}).get("random_others")
    return others if others and others.get("distinct_sets", MIN_CONTROL_SETS) >= MIN_CONTROL_SETS else None


MIN_ATTENTION = 0.2  # a head "follows" a role only with at least this share of END's attention on it
SUBSPACE_DIM = 8  # the subject space: this many top principal directions of the subject residuals
RANDOM_SUBSPACES = 200  # random subspaces of the same size, the floor a head's share is set against


def prefers(a: tuple[float, float, float], b: tuple[float, float, float], minimum: float = MIN_ATTENTION) -> bool:
    """Attention a = (mean, low, high) beats b: its 95% interval lies wholly above b's and its mean
    is at least `minimum`."""
    return a[0] >= minimum and a[1] > b[2]


def role_preferences(attention: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Heads whose END attention to role a beats that to role b (see `prefers`): layer, head, value,
    ci_low, ci_high (of the attention to a), largest first."""
    end = attention[attention.dest_role == "END"].set_index(["layer", "head", "src_role"])
    rows = []
    for (layer, head), part in end.groupby(level=["layer", "head"]):
        x, y = (tuple(part.loc[(layer, head, r), ["value", "ci_low", "ci_high"]]) for r in (a, b))
        if prefers(x, y):
            rows.append({"layer": layer, "head": head, "value": x[0], "ci_low": x[1], "ci_high": x[2]})
    return pd.DataFrame(rows, columns=["layer", "head", "value", "ci_low", "ci_high"]).sort_values("value", ascending=False)


def head_label(layer: int, head: int) -> str:
    return f"{int(layer)}.{int(head)}"


def largest_abs(df: pd.DataFrame, k: int, column: str = "value") -> pd.DataFrame:
    """The k rows with the largest |column|, largest first (ties keep their order)."""
    return df.loc[df[column].abs().sort_values(ascending=False, kind="stable").index[:k]]


def lens_x(df: pd.DataFrame) -> np.ndarray:
    """Position of each accumulated-lens row along the residual stream (see LENS_ORDER)."""
    return 2 * df["layer"].to_numpy() + df["label"].map(LENS_ORDER).to_numpy()


def accumulated_lens(lens: pd.DataFrame) -> pd.DataFrame:
    """The accumulated-lens rows in residual-stream order, with their position as column `x`."""
    acc = lens[lens.kind == "accumulated"]
    return acc.assign(x=lens_x(acc)).sort_values("x", kind="stable").reset_index(drop=True)


def lens_steps(lens: pd.DataFrame) -> pd.DataFrame:
    """Each step of the accumulated lens (the change between consecutive readings), attributed to
    the layer component that makes it. A step re-normalises at every reading, so it mixes the
    change of the LayerNorm scale with what the layer writes."""
    acc = accumulated_lens(lens)
    steps = []
    for prev, cur in zip(acc.itertuples(), acc.iloc[1:].itertuples()):
        component = "attn" if prev.label == "resid_pre" else "mlp"
        steps.append({"layer": int(prev.layer), "component": component, "step": float(cur.value - prev.value)})
    return pd.DataFrame(steps)


def layer_contributions(lens: pd.DataFrame) -> pd.DataFrame:
    """Each layer component's direct contribution to the logit difference (the decomposed lens,
    through the run's final LayerNorm scale) with its interval and its lens step beside it:
    layer, component (attn | mlp), direct, ci_low, ci_high, step."""
    dec = lens[(lens.kind == "decomposed") & lens.label.isin(["attn", "mlp"])]
    direct = pd.DataFrame({"layer": dec.layer.astype(int), "component": dec.label, "direct": dec.value,
                           "ci_low": dec.ci_low, "ci_high": dec.ci_high})
    return direct.merge(lens_steps(lens), on=["layer", "component"], how="left").sort_values(
        ["layer", "component"], kind="stable").reset_index(drop=True)


# ---- heads ---------------------------------------------------------------------------------------

def top_abs_heads(df: pd.DataFrame, k: int) -> list[tuple[int, int]]:
    """(layer, head) of the k rows of a layer/head/value table with the largest |value|."""
    return [(int(r.layer), int(r.head)) for r in largest_abs(df, k).itertuples()]


QKV_HEADS = 12  # heads whose query, key, value and pattern patch_heads patches exactly: the largest |z| effects


def top_patched_heads(patch_heads: pd.DataFrame, k: int = 3) -> list[tuple[int, int]]:
    """The k heads whose output (z) patching moves the metric most."""
    return top_abs_heads(patch_heads[patch_heads.activation == "z"], k)


def signed_top_heads(dla: pd.DataFrame, k: int = 3, sign: int = 1) -> list[dict]:
    """The k heads with the largest (sign=1) or most negative (sign=-1) DLA, as {head, value}."""
    rows = dla.assign(s=sign * dla.value).nlargest(k, "s")
    return [{"head": head_label(r.layer, r.head), "value": r.value, "ci": [r.ci_low, r.ci_high],
             "significant": bool(r.ci_low > 0 or r.ci_high < 0)} for r in rows.itertuples()]


def selected_heads(dla: pd.DataFrame, patch_heads: pd.DataFrame | None = None, k: int = 3) -> list[dict]:
    """The heads the attention analyses look at: the k largest |DLA|, then the k largest |head-output
    patching| not already chosen, each with the reason it was chosen."""
    chosen = [{"layer": l, "head": h, "reason": f"|DLA| rank {i + 1}"} for i, (l, h) in enumerate(top_abs_heads(dla, k))]
    if patch_heads is not None:
        for i, (l, h) in enumerate(top_patched_heads(patch_heads, k)):
            if not any(c["layer"] == l and c["head"] == h for c in chosen):
                chosen.append({"layer": l, "head": h, "reason": f"|patching| rank {i + 1}"})
    return chosen


def attribution_vs_exact(exact: pd.DataFrame, attribution: pd.DataFrame) -> pd.DataFrame:
    """Exact head patching beside its attribution estimate, one row per head and activation."""
    return exact.merge(attribution, on=["layer", "head", "activation"], suffixes=("_e", "_a")).rename(
        columns={"value_e": "exact", "value_a": "attribution"})


def end_attention_to_roles(attention: pd.DataFrame, layer: int, head: int, roles: list[str]) -> float:
    """Mean attention of one head from END to the given template roles (summed over them)."""
    part = attention[(attention.dest_role == "END") & (attention.layer == layer) & (attention["head"] == head)]
    return float(part[part.src_role.isin(roles)].value.sum())


def ioi_head_classes() -> dict[str, list[str]]:
    """Published GPT-2 small IOI head classes (data/gpt2_head_classes.yaml)."""
    return yaml.safe_load(resources.files("opposites").joinpath("data", "gpt2_head_classes.yaml").read_text())


ANSWER_OVER_REPEAT = "answer-over-repeat"  # the class whose paired difference answer - repeated is above 0
CLASSES = (ANSWER_OVER_REPEAT, "copy-like", "copy-suppressing", "pair")  # the component classes, in the order tables list them


def classify_components(head_logits: pd.DataFrame) -> pd.DataFrame:
    """One row per component with its answer, wrong and paired difference (answer - wrong)
    contributions and a class, decided by which 95% intervals exclude 0, the paired difference's
    first (answer and repeated-word contributions share one direction, so the point estimates
    alone cannot tell them apart): answer-over-repeat (ANSWER_OVER_REPEAT: raises the answer, and more
    than the repeated word; the difference is the component's direct attribution to the logit
    difference itself, so a model that does the task has such components by construction: the name
    says what is measured, not that the component maps a word to its opposite), copy-like (raises the repeated word, and more than the answer), copy-suppressing (lowers
    the repeated word, more than the answer), pair (raises or lowers both alike: the difference's
    interval holds 0), or none."""
    wide = head_logits.pivot_table(index=["component", "layer", "head"], columns="target",
                                   values=["value", "ci_low", "ci_high"]).reset_index()
    wide.columns = ["_".join(c).strip("_") for c in wide.columns]
    up = lambda t: wide[f"ci_low_{t}"] > 0  # noqa: E731
    down = lambda t: wide[f"ci_high_{t}"] < 0  # noqa: E731
    alike = ~up("difference") & ~down("difference") & ((up("answer") & up("wrong")) | (down("answer") & down("wrong")))
    cls = np.select([up("difference") & up("answer"), down("difference") & up("wrong"),
                     up("difference") & down("wrong"), alike],
                    [ANSWER_OVER_REPEAT, "copy-like", "copy-suppressing", "pair"], "none")
    return wide.assign(cls=cls).rename(columns={"value_answer": "answer", "value_wrong": "wrong",
                                                "value_difference": "difference"})


PAIR_RESAMPLES = 2000  # bootstrap resamples over word pairs (similarity intervals)


def pair_bootstrap(a: np.ndarray, b: np.ndarray | None = None, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a (or mean of a - mean of b, the two resampled independently) over word pairs with
    its 95% percentile interval over PAIR_RESAMPLES seeded bootstrap resamples of the pairs."""
    rng = np.random.default_rng(seed)
    draw = lambda x: x[rng.integers(len(x), size=(PAIR_RESAMPLES, len(x)))].mean(1)  # noqa: E731
    value, resampled = a.mean(), draw(a)
    if b is not None:
        value, resampled = value - b.mean(), resampled - draw(b)
    low, high = np.quantile(resampled, [0.025, 0.975])
    return float(value), float(min(low, value)), float(max(high, value))


def relation_similarity(sim: pd.DataFrame, space: str, layer: int) -> dict:
    """Per relation (opposite, synonym, random), the mean cosine over the word pairs whose words
    the model knows (in_distribution) in one space, with its 95% bootstrap interval over pairs, n
    and how many pairs were left out; and opposite - random with its interval. A relation with no
    pair left is None (not measurable on this model)."""
    part = sim[(sim.space == space) & (sim.layer == layer)]
    known = part[part.in_distribution] if "in_distribution" in part else part
    out = {}
    for relation in ("opposite", "synonym", "random"):
        x = known[known.relation == relation].cosine.to_numpy()
        total = int((part.relation == relation).sum())
        out[relation] = None if not len(x) else dict(zip(("value", "low", "high"), pair_bootstrap(x)))
        out[f"{relation}_n"], out[f"{relation}_left_out"] = len(x), total - len(x)
    if out["opposite"] and out["random"]:
        opp, rand = (known[known.relation == r].cosine.to_numpy() for r in ("opposite", "random"))
        out["opposite_minus_random"] = dict(zip(("value", "low", "high"), pair_bootstrap(opp, rand)))
    else:
        out["opposite_minus_random"] = None
    return out


# ---- tasks ---------------------------------------------------------------------------------------

def opposite_tasks(tasks: list[str]) -> list[str]:
    return [t for t in tasks if load_spec(t)["family"] == "opposite"]


ROUTE_RATIO = 2.0  # one route "dominates" when its effect is at least this many times the other's


def head_routes(patch_heads: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """Where a head's effect comes from, for the top-k heads by output (z) patching: its value
    patching (what it moves) against its pattern patching (where it looks), each with its interval.
    route: 'values' or 'attention' when that effect's interval excludes 0 and it is ROUTE_RATIO times
    the other's size; 'both' when an interval excludes 0 otherwise; 'unclear' when neither does;
    'not meaningful' when the normaliser's interval includes 0 (normaliser_ok false)."""
    assert k <= QKV_HEADS, f"patch_heads has value and pattern patching for its top {QKV_HEADS} heads only"
    grid = patch_heads.set_index(["activation", "layer", "head"])
    meaningful = bool(patch_heads.normaliser_ok.all()) if "normaliser_ok" in patch_heads else True
    rows = []
    for layer, head in top_patched_heads(patch_heads, k):
        z, v, p = (grid.loc[(a, layer, head)] for a in ("z", "v", "pattern"))
        sig = {name: (r.ci_low > 0) or (r.ci_high < 0) for name, r in (("v", v), ("pattern", p))}
        if not meaningful:  # (patched - corrupted) / (clean - corrupted) with a denominator near 0
            route = "not meaningful"
        elif sig["v"] and abs(v.value) >= ROUTE_RATIO * abs(p.value):
            route = "values"
        elif sig["pattern"] and abs(p.value) >= ROUTE_RATIO * abs(v.value):
            route = "attention"
        elif sig["v"] or sig["pattern"]:
            route = "both"
        else:
            route = "unclear"
        rows.append({"head": head_label(layer, head), "layer": layer, "index": head, "z": z.value,
                     "v": v.value, "v_ci": [v.ci_low, v.ci_high], "pattern": p.value,
                     "pattern_ci": [p.ci_low, p.ci_high], "route": route})
    return pd.DataFrame(rows)
