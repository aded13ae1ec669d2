"""Replication across training seeds (model=trained): this task's circuit in the paper's model and
in the models trained from the other seeds of `trained_seeds` (workflow/rules/seeds.smk). Which
components recur in every seed's circuit, and the circuit's headline numbers as mean and range over
seeds. For one model (GPT-2, a local model, toy, random weights) the seed axis is absent: measured
is false and the text says so."""

from __future__ import annotations

import numpy as np

from opposites.nodes import Node

ENDS = ("embed", "logits")


def summary(circuit: dict) -> dict:
    """What is compared across seeds: the components, the size and the recovery."""
    nodes = [x for x in circuit["nodes"] if x not in ENDS]
    return {"components": nodes, "heads": [x for x in nodes if Node.parse(x).is_head],
            "n_edges": circuit["n_edges"], "recovered": circuit["recovered"]}


def spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def replication(model, rows: list[dict], batch_size: int, seed: int, circuit: dict, seeds: dict[int, dict]) -> dict:
    """`circuit`: the paper's model's (trained with `seed`); `seeds`: {seed: circuit} of the other
    seeds' models."""
    per_seed = {str(seed): summary(circuit), **{str(s): summary(c) for s, c in sorted(seeds.items())}}
    every = [set(s["components"]) for s in per_seed.values()]
    order = per_seed[str(seed)]["components"]
    return {"task": rows[0]["task"], "measured": bool(seeds), "n_seeds": len(per_seed), "seeds": per_seed,
            "replicated": [x for x in order if all(x in e for e in every)],
            "n_edges": spread([s["n_edges"] for s in per_seed.values()]),
            "n_heads": spread([len(s["heads"]) for s in per_seed.values()]),
            "recovered": spread([s["recovered"] for s in per_seed.values()])}
