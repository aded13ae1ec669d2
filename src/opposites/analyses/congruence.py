"""Size congruence: do in-context opposites override world knowledge? Prompts name things of known
real-world size (the task file's `congruence:` lists). Congruent: the first thing has the size the
adjective names, so the rule (say the opposite) and world knowledge agree ("The mouse is small. The
elephant is" -> " big"). Incongruent: the two things swapped, so the rule still says " big" and world
knowledge says " small" ("The elephant is small. The mouse is"). Both are scored on the same tokens
(the opposite minus the adjective repeated), so their difference is the world-knowledge pull.

Patching (the config's direction; clean = congruent, corrupted = incongruent) locates that pull:
the residual stream before each layer and each MLP's output at each role's position, normalised to
the share of the congruent - incongruent difference it restores."""

from __future__ import annotations

import random

import pandas as pd

from opposites.analyses.patching import dataset_sweep, table
from opposites.patching import exact
from opposites.prompts import fill, load_spec
from opposites.core import batch_order
from opposites.stats import mean_ci, proportion

ROLES = ["E1", "ADJ1", "E2", "END", "other"]


def prompts(task: str, tokenizer, n_prompts: int, seed: int) -> list[dict]:
    """Congruent (clean) / incongruent (corrupted) pairs, seeded; duplicates and fillings whose words
    are not single tokens are dropped."""
    c = load_spec(task)["congruence"]
    rng = random.Random(f"congruence-{task}-{seed}")
    rows, seen = [], set()
    for _ in range(20 * n_prompts):
        if len(rows) == n_prompts:
            break
        big_adj, small_adj = rng.choice(c["pairs"])
        big, small = rng.choice(c["big"]), rng.choice(c["small"])
        adj_big = rng.random() < 0.5
        adj, answer = (big_adj, small_adj) if adj_big else (small_adj, big_adj)
        first, second = (big, small) if adj_big else (small, big)  # congruent: the first thing fits the adjective
        template = rng.choice(c["templates"])
        clean = fill(template, {"E1": first, "ADJ1": adj, "E2": second}, tokenizer, ROLES[:3])
        corrupted = fill(template, {"E1": second, "ADJ1": adj, "E2": first}, tokenizer, ROLES[:3])
        if clean is None or corrupted is None or clean[1] != corrupted[1] or clean[0] in seen:
            continue
        seen.add(clean[0])
        rows.append({"id": len(rows), "task": task, "clean": clean[0], "corrupted": corrupted[0],
                     "answer": " " + answer, "wrong": " " + adj, "positions": clean[1]})
    return rows


def run(model, rows: list[dict], batch_size: int, patch_direction: str, seed: int) -> dict:
    pairs = prompts(rows[0]["task"], model.tokenizer, len(rows), seed)

    def both(pair):
        masks = exact.role_masks(pair, ROLES)
        return {"resid": exact.resid_pre_by_role(pair, masks), "mlp": exact.mlp_out_by_role(pair, masks)}

    s = dataset_sweep(model, pairs, batch_size, patch_direction, both)
    clean, corrupted = s.clean.double().cpu(), s.corrupted.double().cpu()  # (prompt,) congruent, incongruent
    axes = {"layer": list(range(model.cfg.n_layers)), "role": ROLES}
    # resampling unit: the adjective pair {ADJ1, answer}, as for the opposite family (batch order)
    clusters = ["/".join(sorted((r["wrong"].strip(), r["answer"].strip()))) for r in batch_order(pairs)]
    patch = pd.concat([table(t, s, axes, seed, clusters).assign(component=name) for name, t in s.patched.items()])
    return {"n": len(pairs), "example_congruent": pairs[0]["clean"], "example_incongruent": pairs[0]["corrupted"],
            **{name: {"logit_diff": mean_ci(ld, seed, clusters=clusters).record(), "accuracy": proportion(ld > 0, clusters).record()}
               for name, ld in (("congruent", clean), ("incongruent", corrupted))},
            "pull": mean_ci(clean - corrupted, seed, clusters=clusters).record(),
            "patch": patch.to_dict("records")}
