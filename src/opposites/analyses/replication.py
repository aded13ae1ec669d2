"""Replication across training seeds (model=trained): this task's circuit in the paper's model and
in the models trained from the other seeds of `trained_seeds` (workflow/rules/seeds.smk). Which
components recur in every seed's circuit, and the circuit's headline numbers as mean and range over
seeds. For one model (GPT-2, a local model, toy, random weights) the seed axis is absent: measured
is false and the text says so."""

from __future__ import annotations

import math

import numpy as np

from opposites.nodes import Node
from opposites.sharing import ALPHA

ENDS = ("embed", "logits")


def summary(circuit: dict) -> dict:
    """What is compared across seeds: the components, the size and the recovery."""
    nodes = [x for x in circuit["nodes"] if x not in ENDS]
    return {"components": nodes, "heads": [x for x in nodes if Node.parse(x).is_head],
            "n_edges": circuit["n_edges"], "recovered": circuit["recovered"]}


def spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def composition_chance(component: str, circuits: list[list[str]], n_heads: int) -> float:
    """The chance that a random component of this one's kind and layer is in every one of
    `circuits` (the other seeds' circuits: the paper's circuit chose the component, so it is not a
    draw), given how many components of that kind and layer each holds (a layer has n_heads heads
    and one MLP): a circuit that keeps every head of a layer, or an MLP, recurs by default."""
    node = Node.parse(component)
    same = lambda x: (Node.parse(x).kind, Node.parse(x).layer) == (node.kind, node.layer)  # noqa: E731
    return math.prod(sum(map(same, c)) / (n_heads if node.is_head else 1) for c in circuits)


def replication(model, rows: list[dict], batch_size: int, seed: int, circuit: dict, seeds: dict[int, dict]) -> dict:
    """`circuit`: the paper's model's (trained with `seed`); `seeds`: {seed: circuit} of the other
    seeds' models. `testable`: whether any component could count at all, i.e. whether a head that
    every other seed's circuit holds alone in its layer would recur by chance below ALPHA."""
    per_seed = {str(seed): summary(circuit), **{str(s): summary(c) for s, c in sorted(seeds.items())}}
    every = [set(s["components"]) for s in per_seed.values()]
    order = per_seed[str(seed)]["components"]
    replicated = [x for x in order if all(x in e for e in every)]
    others = [s["components"] for name, s in per_seed.items() if name != str(seed)]
    chance = {x: composition_chance(x, others, model.cfg.n_heads) for x in replicated}
    return {"task": rows[0]["task"], "measured": bool(seeds), "n_seeds": len(per_seed), "seeds": per_seed,
            "testable": bool(seeds) and model.cfg.n_heads ** -len(seeds) < ALPHA, "heads_per_layer": model.cfg.n_heads,
            "replicated": replicated, "chance": chance, "beyond_chance": [x for x in replicated if chance[x] < ALPHA],
            "n_edges": spread([s["n_edges"] for s in per_seed.values()]),
            "n_heads": spread([len(s["heads"]) for s in per_seed.values()]),
            "recovered": spread([s["recovered"] for s in per_seed.values()])}
