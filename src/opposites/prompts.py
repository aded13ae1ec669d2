"""Generate clean/corrupted prompt pairs from a task's templates and word lists (tasks/<task>.yaml).

A task file names a *family*; each family is one small sampling function returning the words for
the clean and corrupted prompt. Everything else (filling templates, token checks, role positions,
dropping bad rows) is shared.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

log = logging.getLogger(__name__)
PLACEHOLDER = re.compile(r"\{(\w+)\}")


class TaskError(ValueError):
    """A task that cannot be built: unknown name, bad word list, or too few valid prompts."""


@dataclass(frozen=True)
class Sample:
    clean: dict[str, str]
    corrupted: dict[str, str]
    answer: str  # with its leading space
    wrong: str


# ---- families: (spec, rng) -> Sample -------------------------------------------------------------

def sample_ioi(spec: dict, rng: random.Random) -> Sample:
    io, s, c = rng.sample(spec["names"], 3)
    clean = {"IO": io, "S1": s, "S2": s, "PLACE": rng.choice(spec["places"]),
             "OBJECT": rng.choice(spec["objects"])}
    return Sample(clean, {**clean, "S2": c}, " " + io, " " + s)


def sample_opposite(spec: dict, rng: random.Random) -> Sample:
    n1, n2 = rng.sample(spec["names"], 2)
    adj, opposite = rng.sample(rng.choice(spec["pairs"]), 2)  # random orientation of the pair
    clean = {"NAME1": n1, "ADJ1": adj, "NAME2": n2}
    return Sample(clean, {**clean, "ADJ1": opposite}, " " + opposite, " " + adj)


def sample_category(spec: dict, rng: random.Random) -> Sample:
    cat, other = rng.sample(sorted(spec["categories"]), 2)
    entity, swapped = rng.choice(spec["categories"][cat]), rng.choice(spec["categories"][other])
    return Sample({"ENTITY": entity}, {"ENTITY": swapped}, " " + cat, " " + other)


FAMILIES: dict[str, Callable[[dict, random.Random], Sample]] = {  # the keys each needs: tasks.schema.yaml
    "ioi": sample_ioi,
    "opposite": sample_opposite,
    "category": sample_category,
}
# Families whose corrupted prompt is itself a task prompt whose own answer is the clean prompt's
# `wrong` (the swapped adjective's opposite; the swapped entity's category). IOI's ABC corruption
# (a third name as S2) has no single right answer.
CORRUPTED_ANSWER_IS_WRONG = {"opposite": True, "category": True, "ioi": False}

# The resampling unit of each family (stats: a cluster bootstrap draws whole clusters): prompts that
# share it share their source word, so they are not independent. Opposite: the unordered adjective
# pair {ADJ1, its opposite}; category: the ENTITY's category (the answer); IOI: the IO name (the answer).
CLUSTER_UNIT = {"opposite": "adjective pairs", "category": "categories", "ioi": "IO names"}


def cluster_of(row: dict) -> str:
    """The prompt's resampling unit (CLUSTER_UNIT of its task's family), from its words and answer."""
    family = load_spec(row["task"])["family"]
    if family == "opposite":
        return "/".join(sorted((row["words"]["ADJ1"], row["answer"].strip())))
    return row["answer"].strip()  # category: the ENTITY's category; IOI: the IO name


# ---- task specs ---------------------------------------------------------------------------------

def task_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("opposites").joinpath("tasks").iterdir()
                  if p.name.endswith(".yaml"))


def task_file(task: str) -> Path:
    return Path(str(resources.files("opposites").joinpath("tasks", f"{task}.yaml")))


def related_tasks(task: str) -> list[str]:
    """The task and every task its file names as a value (size's `control_task: isa`): the task
    files whose words its analyses read."""
    known = task_names()
    return [task] + [v for v in load_spec(task).values() if isinstance(v, str) and v in known and v != task]


def load_spec(task: str) -> dict[str, Any]:
    """The task file, checked (schema and word lists); a copy, so callers may change it."""
    if task not in task_names():
        raise TaskError(f"unknown task {task!r}; known tasks are {', '.join(task_names())} "
                        "(add one as src/opposites/tasks/<task>.yaml).")
    file = task_file(task)
    stat = file.stat()
    return copy.deepcopy(_checked_spec(task, str(file), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=64)
def _checked_spec(task: str, file: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """load_spec's work, once per version of the file (the Snakefile asks ~500 times per parse)."""
    path = f"src/opposites/tasks/{task}.yaml"
    try:
        spec = yaml.load(Path(file).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TaskError(f"{path}{where} is not valid YAML ({getattr(e, 'problem', None) or e}); fix the "
                        "file (a missing colon, bracket or quote, or a tab for indentation, is the usual cause).") from None
    check_schema(path, spec)
    validate_spec(task, spec)
    return spec


def check_schema(path: str, spec: Any) -> None:
    """The task file against tasks.schema.yaml: one sentence naming the file, the key, what is wrong
    and who needs it."""
    import jsonschema

    schema = yaml.safe_load(resources.files("opposites").joinpath("tasks.schema.yaml").read_text())
    error = next(iter(sorted(jsonschema.Draft202012Validator(schema).iter_errors(spec), key=lambda e: list(e.path))), None)
    if error is None:
        return
    key = ".".join(map(str, error.absolute_path)) or "(top level)"
    need = error.schema.get("description") or schema["properties"].get(str(error.absolute_path[0]) if error.absolute_path
                                                                           else "", {}).get("description", "")
    if error.validator in ("minItems", "minProperties"):
        what = f"key '{key}' has {len(error.instance)} entries, fewer than the {error.validator_value} needed"
    elif error.validator == "required":
        what = f"{error.message.split()[0]} is missing"
    else:
        what = f"key '{key}' is invalid: {error.message}"
    raise TaskError(f"{path}: {what}{f' ({need})' if need else ''}. Fix the file (tasks.schema.yaml lists every key).")


def validate_spec(task: str, spec: dict[str, Any]) -> None:
    """Reject malformed word lists with a sentence that names the problem and the fix."""
    where = f"task {task!r} (src/opposites/tasks/{task}.yaml)"
    family = spec.get("family")
    if family not in FAMILIES:
        raise TaskError(f"{where}: family {family!r} is unknown; use one of {', '.join(FAMILIES)}.")
    for template in spec["templates"]:
        missing = set(spec["roles"]) - set(PLACEHOLDER.findall(template))
        if missing:
            raise TaskError(f"{where}: template {template!r} lacks role(s) {sorted(missing)}.")
    for pair in spec.get("pairs", []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(w, str) and w.strip() for w in pair)
                and pair[0] != pair[1]):
            raise TaskError(f"{where}: pair {pair!r} must be two different words, like [tall, short].")
    partner: dict[str, str] = {}
    for a, b in spec.get("pairs", []):
        for word, other in ((a, b), (b, a)):
            if word in partner:
                raise TaskError(f"{where}: {word!r} has two opposites ({partner[word]!r} and {other!r}), so the "
                                "labelled answer would be arbitrary; keep one pair per word.")
            partner[word] = other
    clash = sorted(set(spec.get("unrelated", [])) & set(partner))
    if clash:
        raise TaskError(f"{where}: unrelated adjective(s) {clash} also appear in pairs; 'unrelated' must "
                        "list adjectives with no opposite in the task.")
    seen: dict[str, str] = {}
    for cat, words in spec.get("categories", {}).items():
        for w in words:
            if w in seen:
                raise TaskError(f"{where}: {w!r} is listed under both {seen[w]!r} and {cat!r}; "
                                "an entity must belong to one category.")
            seen[w] = cat
    for key in ("names",):
        if key in spec and len(set(spec[key])) != len(spec[key]):
            raise TaskError(f"{where}: '{key}' has duplicates; list each word once.")


WORD_LISTS = ("pairs", "synonyms", "unrelated", "names", "categories")  # words used as single tokens
CONGRUENCE_WORDS = ("pairs", "big", "small")  # the size task's congruence: lists, single tokens too


def _words(value) -> list[str]:
    """Every string in a (nested) word list; a dict contributes its keys and values."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [w for k, v in value.items() for w in _words(k) + _words(v)]
    return [w for v in value for w in _words(v)]


def check_task(task: str, tokenizer) -> None:
    """Start-up check with the tokenizer: every listed word is one token after a space, and every
    template placeholder is filled by the family's sampler. Raises TaskError naming the file, the
    word and its tokens (or the placeholder), instead of a crash deep inside an analysis."""
    spec = load_spec(task)
    where = f"src/opposites/tasks/{task}.yaml"
    lists = [(key, spec.get(key, [])) for key in WORD_LISTS]
    lists += [(f"congruence: {key}", spec.get("congruence", {}).get(key, [])) for key in CONGRUENCE_WORDS]
    for key, value in lists:
        for word in dict.fromkeys(_words(value)):
            ids = token_ids(tokenizer, " " + word.strip())
            if len(ids) != 1:
                pieces = [tokenizer.decode([i]) for i in ids]
                raise TaskError(f"{where}: {key} word {word!r} is {len(ids)} GPT-2 tokens ({pieces}), but every "
                                "word must be one token after a space; replace it with a single-token word.")
    filled = set(FAMILIES[spec["family"]](spec, random.Random(0)).clean)
    # recency templates (IOI) also take the third name S3, which the recency analysis draws
    for template, extra in [(t, set()) for t in spec["templates"]] + [(t, {"S3"}) for t in spec.get("recency_templates", [])]:
        unknown = sorted(set(PLACEHOLDER.findall(template)) - filled - extra)
        if unknown:
            raise TaskError(f"{where}: template {template!r} has placeholder(s) {unknown} that the "
                            f"{spec['family']} family never fills (it fills {sorted(filled)}); fix the template.")


# ---- filling and checking -----------------------------------------------------------------------

def token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of text alone (no BOS, whatever the tokenizer's default)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fill(template: str, values: dict[str, str], tokenizer, roles: list[str]) -> tuple[str, dict[str, int]] | None:
    """Fill the template; return (text, role -> token position counting a prepended BOS), or None
    when a role word is not exactly one token at its place."""
    text = PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    ids = token_ids(tokenizer, text)
    positions = {}
    for m in PLACEHOLDER.finditer(template):
        role = m.group(1)
        if role not in roles:
            continue
        prefix = PLACEHOLDER.sub(lambda n: values[n.group(1)], template[: m.start()])
        spaced = prefix.endswith(" ")
        word_ids = token_ids(tokenizer, (" " if spaced else "") + values[role])
        pos = len(token_ids(tokenizer, prefix.rstrip(" "))) if prefix.strip() else 0
        if len(word_ids) != 1 or pos >= len(ids) or ids[pos] != word_ids[0]:
            return None
        positions[role] = pos + 1  # +1 for the prepended <|endoftext|>
    positions["END"] = len(ids)  # last token, counting BOS
    return text, positions


def n_tokens(tokenizer, word: str) -> int:
    return len(token_ids(tokenizer, word))


def make_prompts(task: str, tokenizer, n_prompts: int, seed: int, min_prompts: int) -> tuple[list[dict], Counter]:
    """Rows for `task`; returns (rows, counts of dropped candidates by reason)."""
    spec = load_spec(task)
    sampler = FAMILIES[spec["family"]]
    rng = random.Random(f"{task}-{seed}")
    rows, seen, dropped = [], set(), Counter()
    for _ in range(20 * n_prompts):
        if len(rows) == n_prompts:
            break
        template = rng.choice(spec["templates"])
        s = sampler(spec, rng)
        clean = fill(template, s.clean, tokenizer, spec["roles"])
        corrupted = fill(template, s.corrupted, tokenizer, spec["roles"])
        if clean is None or corrupted is None:
            dropped["role word not a single token"] += 1
        elif n_tokens(tokenizer, s.answer) != 1 or n_tokens(tokenizer, s.wrong) != 1:
            dropped["answer or wrong not a single token"] += 1
        elif clean[1] != corrupted[1]:
            dropped["clean and corrupted differ in token length"] += 1
        elif clean[0] in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(clean[0])
            rows.append({"id": len(rows), "task": task, "template": spec["templates"].index(template),
                         "clean": clean[0], "corrupted": corrupted[0], "answer": s.answer,
                         "wrong": s.wrong, "positions": clean[1], "words": s.clean,
                         "changed": [k for k in s.clean if s.clean[k] != s.corrupted[k]]})
    if len(rows) < min_prompts:
        reasons = "; ".join(f"{k}: {v}" for k, v in dropped.items()) or "word lists too small"
        raise TaskError(f"task {task!r} yields only {len(rows)} valid prompts (< min_prompts={min_prompts}); "
                        f"dropped candidates — {reasons}. Fix src/opposites/tasks/{task}.yaml "
                        "(single-token words) or lower n_prompts/min_prompts.")
    return rows, dropped


def second_corruption(rows: list[dict], task: str, tokenizer, seed: int) -> list[dict]:
    """The task file's `second_corruption` on its rows: each clean prompt with its `role`'s word
    replaced by a word of the list `words` that the prompt does not use (seeded), in the same template,
    as the corrupted prompt; answer and wrong stay the clean prompt's. A row whose replacement would
    change the token layout is left out."""
    spec = load_spec(task)
    role, words = spec["second_corruption"]["role"], spec[spec["second_corruption"]["words"]]
    rng = random.Random(f"second-{task}-{seed}")
    out = []
    for r in rows:
        word = rng.choice([w for w in words if w not in r["words"].values()])
        filled = fill(spec["templates"][r["template"]], {**r["words"], role: word}, tokenizer, spec["roles"])
        if filled is not None and filled[1] == r["positions"]:
            out.append({**r, "corrupted": filled[0], "changed": [role]})
    return out


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    from opposites.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSONL file; a line that is not JSON stops with its file and line number."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}, line {number}, is not valid JSON ({e.msg}): the file was cut or edited "
                                f"after it was written. Delete {path} and rerun the same snakemake command, "
                                "which rebuilds it.") from None
    return rows
