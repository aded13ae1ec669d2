"""Word sets of a task for the copy, opposite and similarity analyses."""

from __future__ import annotations

import random

from opposites.prompts import load_spec


def copy_words(task: str) -> list[str]:
    """The words a head might copy (names, adjectives or entities), each with its leading space."""
    spec = load_spec(task)
    if "pairs" in spec:
        words = [w for pair in spec["pairs"] for w in pair]
    elif "categories" in spec:
        words = [w for ws in spec["categories"].values() for w in ws]
    else:
        words = spec["names"]
    return sorted({" " + w for w in words})


def opposites(task: str) -> dict[str, set[str]]:
    """word -> its opposites (a word can have several: small <- big, large); empty without pairs."""
    out: dict[str, set[str]] = {}
    for a, b in load_spec(task).get("pairs", []):
        out.setdefault(" " + a, set()).add(" " + b)
        out.setdefault(" " + b, set()).add(" " + a)
    return out


def relation_pairs(task: str, seed: int, n_random: int | None = None) -> dict[str, list[tuple[str, str]]]:
    """Word pairs by relation: opposite (the task's pairs), synonym, and random (a task adjective with
    one of the task's unrelated adjectives, outside the opposite field; without that list, two task
    adjectives that are neither opposites nor synonyms), as words with a leading space."""
    spec = load_spec(task)
    opp = [tuple(p) for p in spec.get("pairs", [])]
    syn = [tuple(p) for p in spec.get("synonyms", [])]
    related = {frozenset(p) for p in opp + syn}
    words = sorted({w for p in opp for w in p})
    unrelated = sorted(spec.get("unrelated", []))
    candidates = ([(a, b) for a in words for b in unrelated] if unrelated else  # from outside the adjective field
                  [(a, b) for i, a in enumerate(words) for b in words[i + 1:] if frozenset((a, b)) not in related])
    rng = random.Random(f"{task}-pairs-{seed}")
    rand = rng.sample(candidates, min(len(candidates), n_random or len(opp)))
    space = lambda ps: [(" " + a, " " + b) for a, b in ps]  # noqa: E731
    return {"opposite": space(opp), "synonym": space(syn), "random": space(rand)}
