"""Every interval in the results of a toy build contains its own estimate: each `<key>_ci95` beside
`<key>` and each {"value", "ci95"} in the JSON results, each value between ci_low and ci_high (and
`<name>_ci_low`/`<name>_ci_high` beside `<name>`) in the CSV results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

TOLERANCE = 1e-9


def _pairs_in_json(node, where: str):
    """(where, estimate, [low, high]) for every interval in a JSON tree."""
    if isinstance(node, list):
        for i, x in enumerate(node):
            yield from _pairs_in_json(x, f"{where}[{i}]")
    if not isinstance(node, dict):
        return
    if "value" in node and isinstance(node.get("ci95"), list):
        yield where, node["value"], node["ci95"]
    for key, ci in node.items():
        if key.endswith("_ci95") and ci is not None and key[:-5] in node:
            value = node[key[:-5]]
            if isinstance(ci, dict):  # per name: {"IO": [low, high], ...} beside {"IO": v, ...}
                yield from ((f"{where}.{key}.{k}", value[k], c) for k, c in ci.items())
            else:
                yield f"{where}.{key}", value, ci
    for key, x in node.items():
        yield from _pairs_in_json(x, f"{where}.{key}")


def _pairs_in_csv(df: pd.DataFrame, where: str):
    for low in [c for c in df.columns if c.endswith("ci_low")]:
        name = low[: -len("ci_low")].rstrip("_") or "value"
        high = low[: -len("low")] + "high"
        if name in df.columns and high in df.columns:
            for i, r in enumerate(df[[name, low, high]].itertuples(index=False)):
                yield f"{where}:{i}:{name}", r[0], [r[1], r[2]]


def intervals(results: Path):
    for path in sorted(results.rglob("*.json")):
        if not path.name.endswith(".meta.json"):
            yield from _pairs_in_json(json.loads(path.read_text()), str(path.relative_to(results)))
    for path in sorted(results.rglob("*.csv")):
        yield from _pairs_in_csv(pd.read_csv(path), str(path.relative_to(results)))


def outside(results: Path) -> list[str]:
    """The intervals that do not contain their estimate (NaN, from a normaliser of 0, aside)."""
    bad = []
    for where, value, (low, high) in intervals(results):
        if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in (value, low, high)):
            continue
        if not low - TOLERANCE <= value <= high + TOLERANCE:
            bad.append(f"{where}: {value} not in [{low}, {high}]")
    return bad


def test_every_interval_of_a_toy_build_contains_its_estimate(built):
    results = built / "results" / "toy"
    assert sum(1 for _ in intervals(results)) > 1000  # the walk finds the results' intervals
    bad = outside(results)
    assert not bad, f"{len(bad)} intervals miss their estimate, e.g.\n" + "\n".join(bad[:20])
