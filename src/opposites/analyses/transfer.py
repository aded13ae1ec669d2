"""Cross-task transfer: does a component that two tasks' circuits share carry the source word the
same way in both?

Base prompts of one task B run with one location at END (a head's output, an MLP's output, or the
residual stream after a layer) taken from a prompt of task A. The location carries A's source word
in a form B's later computation reads as its own when B's prediction becomes what B's task makes of
A's source word: its answer under B's task where that word is one of B's source words, else, when A
and B are of the same family (the same relation, e.g. "the opposite of ADJ1"), A's own answer for it
(size's "tall" under antonym's "opposite of" is "short"). Across families (an IOI name, an is-a
entity, an adjective) A's source word has no answer under B's task: not measurable, and said so.
The diagonal (A = B) is the within-task interchange at the same locations, the reference the
cross-task entries are read against.

Only END is patched, so base and source prompts may differ in template and length (the source's
END activation goes to the base's END)."""

from __future__ import annotations

import random
from itertools import groupby

import torch

from opposites.interventions import Intervention, head_z, mlp_out, resid_post
from opposites.nodes import Node
from opposites.patching import swaps
from opposites.patching.engine import Weights
from opposites.prompts import cluster_of, load_spec, task_names
from opposites.stats import proportion_ci


def answer_map(rows: list[dict], role: str) -> dict[str, str]:
    """Source word -> the task's answer for it (with the leading space), from the task's prompts."""
    return {r["words"][role]: r["answer"] for r in rows}


def expected_answer(word: str, base_map: dict[str, str], source_map: dict[str, str], same_family: bool) -> str | None:
    """What the base task makes of a source task's word: the base task's answer for it, else (same
    relation) the source task's own answer, else None (not measurable)."""
    if word in base_map:
        return base_map[word]
    return source_map.get(word) if same_family else None


def make_pairs(base_rows: list[dict], source_rows: list[dict], base_role: str, source_role: str,
               same_family: bool, seed: int) -> list[tuple[dict, dict, str]]:
    """(base, source, expected answer) for each base prompt that has a source prompt whose expected
    answer differs from the base's answer and is none of the base prompt's words; source drawn with
    a seeded RNG. Empty when no source word has an answer under the base task."""
    base_map, source_map = answer_map(base_rows, base_role), answer_map(source_rows, source_role)
    rng = random.Random(f"transfer-{base_rows[0]['task']}-{source_rows[0]['task']}-{seed}")
    pairs = []
    for base in base_rows:
        fits = []
        for s in source_rows:
            e = expected_answer(s["words"][source_role], base_map, source_map, same_family)
            if e is not None and e != base["answer"] and e.strip() not in base["words"].values():
                fits.append((s, e))
        if fits:
            pairs.append((base, *rng.choice(fits)))
    return pairs


def locations(model, components: list[str]) -> list[Intervention]:
    """The components (circuit node labels: "0.1", "MLP 2") at END, and END's residual after every
    layer but the last (after the last it is the output itself, so transfer there is trivial)."""
    out = []
    for c in components:
        node = Node.parse(c)
        out.append(head_z(node.layer, node.head) if node.is_head else mlp_out(node.layer))
    return out + [resid_post(l) for l in range(model.cfg.n_layers - 1)]


def label(iv: Intervention) -> str:
    if iv.head is not None:
        return f"{iv.layer}.{iv.head}"
    return f"MLP {iv.layer}" if iv.site.endswith("hook_mlp_out") else f"resid after {iv.layer}"


def source_unit(row: dict) -> str:
    """A source prompt's resampling unit: prompts.cluster_of for a task with a task file; for a task
    made up elsewhere (a planted model's), its answer."""
    return f"{row['task']}:{cluster_of(row) if row['task'] in task_names() else row['answer'].strip()}"


def measure(model, pairs: list[tuple[dict, dict, str]], cands: list[str], where: list[Intervention],
            batch_size: int) -> list[dict]:
    """IIA of each location: the share of pairs whose top candidate becomes the expected answer
    (95% Wilson interval at the effective number of pairs, clustered by the source prompt's word),
    and the share that keep the base's own answer."""
    index = {w: i for i, w in enumerate(cands)}
    ids = torch.tensor([model.to_single_token(w) for w in cands], device=model.W_U.device)
    weights = Weights.from_bridge(model)
    hits, kept = [[] for _ in where], [[] for _ in where]
    # batched by (base length, source length): no padding, END is each prompt's last token
    key = lambda p: (len(model.to_tokens(p[0]["clean"])[0]), len(model.to_tokens(p[1]["clean"])[0]), p[0]["id"])  # noqa: E731
    ordered = sorted(pairs, key=key)
    for _, group in groupby(ordered, key=lambda p: key(p)[:2]):
        group = list(group)
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            base = swaps.run(weights, model.to_tokens([b["clean"] for b, _, _ in chunk]))
            source = swaps.run(weights, model.to_tokens([s["clean"] for _, s, _ in chunk]))
            base_end = torch.full((len(chunk),), base["resid_final"].shape[1] - 1, device=ids.device)
            source_end = torch.full((len(chunk),), source["resid_final"].shape[1] - 1, device=ids.device)
            want = torch.tensor([index[e] for _, _, e in chunk], device=ids.device)
            own = torch.tensor([index[b["answer"]] for b, _, _ in chunk], device=ids.device)
            with torch.no_grad():
                for j, iv in enumerate(where):  # the source's END activation into the base's END
                    top = swaps.logits(weights, base, iv, swaps.value(weights, source, iv, source_end), base_end,
                                       ids).argmax(-1).cpu()  # (batch,)
                    hits[j].append(top == want.cpu())
                    kept[j].append(top == own.cpu())
    clusters = [source_unit(s) for _, s, _ in ordered]  # the order hits are appended in
    out = []
    for iv, hit, keep in zip(where, hits, kept):
        hit, keep = torch.cat(hit), torch.cat(keep)
        k, n = int(hit.sum()), len(hit)
        out.append({"component": label(iv), "kind": "resid" if iv.site.endswith("resid_post") else
                    "head" if iv.head is not None else "mlp", "layer": iv.layer, "head": iv.head, "n": n,
                    "iia": k / n, "iia_ci95": proportion_ci(hit, clusters), "kept": float(keep.float().mean())})
    return out


def own_templates(rows: list[dict], templates: list[str], other: list[str]) -> list[dict]:
    """The prompts made from templates the other task does not have."""
    return [r for r in rows if templates[r["template"]] not in other]


def transfer_into(model, base_rows: list[dict], sources: dict[str, list[dict]], roles: dict[str, str],
                  families: dict[str, str], templates: dict[str, list[str]], components: list[str],
                  batch_size: int, seed: int) -> dict:
    """For one base task, every source task's transfer at the same locations (the diagonal, the base
    task itself, included). A source task whose words have no answer under the base task is listed
    with the reason and no numbers. Where the two tasks share templates, the same again on the
    prompts of the templates each has alone (`disjoint`: a shared template cannot explain it)."""
    task = base_rows[0]["task"]
    where = locations(model, components)

    def entry(base: list[dict], source: list[dict], src: str) -> dict:
        same = families[src] == families[task]
        pairs = make_pairs(base, source, roles[task], roles[src], same, seed) if base and source else []
        out = {"n_pairs": len(pairs)}
        if not pairs:
            out["not_measurable"] = (f"{src}'s {roles[src]} words have no answer under {task}'s task"
                                     + ("" if same else f" (task families differ: {families[src]}, {families[task]})"))
        else:
            cands = sorted({r["answer"] for r in base} | {r["wrong"] for r in base} | {e for _, _, e in pairs})
            out["locations"] = measure(model, pairs, cands, where, batch_size)
        return out

    out = []
    for src, rows in sources.items():
        item = {"source": src, "same_family": families[src] == families[task], **entry(base_rows, rows, src)}
        shared = set(templates[task]) & set(templates[src])
        if src != task and shared and "locations" in item:
            item["shared_templates"] = sorted(shared)
            item["disjoint"] = entry(own_templates(base_rows, templates[task], templates[src]),
                                     own_templates(rows, templates[src], templates[task]), src)
        out.append(item)
    return {"task": task, "role": roles[task], "components": components, "sources": out}


def shared_components(task: str, circuit: dict[str, dict]) -> list[str]:
    """The components (heads and MLPs) of the task's circuit that some other task's circuit holds
    too: a cross-task entry is read only at a component both tasks' circuits hold (sharing.py), so
    only these are measured, in layer order."""
    nodes = lambda t: {x for x in circuit[t]["nodes"] if x not in ("embed", "logits")}  # noqa: E731
    others = set().union(*(nodes(t) for t in circuit if t != task))
    return sorted(nodes(task) & others, key=lambda x: Node.parse(x).step + (Node.parse(x).head or 0,))


def transfer(model, rows: list[dict], batch_size: int, seed: int, prompts: dict[str, list[dict]],
             circuit: dict[str, dict]) -> dict:
    """The registry's entry: this task as the base, every task (its prompts) as a source, at every
    component this task's circuit shares with another task's (shared_components) and the residual
    after each layer."""
    specs = {t: load_spec(t) for t in prompts}
    task = rows[0]["task"]
    return transfer_into(model, rows, prompts, {t: s["copy_role"] for t, s in specs.items()},
                         {t: s["family"] for t, s in specs.items()}, {t: s["templates"] for t, s in specs.items()},
                         shared_components(task, circuit), batch_size, seed)
