"""Patching under the task file's second corruption (`second_corruption`: one role's word replaced
by another word of a list). IOI's main corruption (ABC) changes only S2, so only heads that read S2
can show up; replacing IO by a third name instead shows the heads that read IO. The same prompts
(clean side) as the main patching, each with its second corrupted prompt; the residual stream
patched role by role before each layer and every head's output over all positions, as
patch_resid and patch_heads do for the main corruption."""

from __future__ import annotations

from opposites.analyses.patching import _heads, dataset_sweep, patch_roles, table
from opposites.core import prompt_clusters
from opposites.patching import exact
from opposites.prompts import load_spec, second_corruption


def run(model, rows, batch_size, patch_direction: str, seed: int) -> dict:
    task = rows[0]["task"]
    second = load_spec(task)["second_corruption"]
    alt = second_corruption(rows, task, model.tokenizer, seed)
    roles, clusters = patch_roles(alt), prompt_clusters(alt)

    def sweeps(pair: exact.Pair) -> dict:
        return {"resid": exact.resid_pre_by_role(pair, exact.role_masks(pair, roles)), "heads": exact.head_all_pos(pair, "z")}

    s = dataset_sweep(model, alt, batch_size, patch_direction, sweeps)
    resid = table(s.patched["resid"], s, {"layer": list(range(model.cfg.n_layers)), "role": roles}, seed, clusters)
    heads = table(s.patched["heads"], s, _heads(model), seed, clusters)
    return {"corruption": second["description"], "role": second["role"], "n": len(alt), "n_left_out": len(rows) - len(alt),
            "example": {"clean": alt[0]["clean"], "corrupted": alt[0]["corrupted"]} if alt else None,
            "clean_ld": s.clean.double().mean().item(), "corrupted_ld": s.corrupted.double().mean().item(),
            "normaliser_ok": bool(resid.normaliser_ok.iloc[0]),
            "resid": resid.to_dict("records"), "heads": heads.to_dict("records")}
