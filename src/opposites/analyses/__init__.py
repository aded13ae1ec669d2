"""Registry of analyses. Each is a function (model, rows, batch_size, **settings, **required) that
returns a dict (written as JSON) or a DataFrame (CSV), with its stage (the analyses of a stage run
in one job per task, sharing one model load), the config keys it reads (`settings`: passed in, and
rule params, so changing one reruns its stage) and the analyses whose results it reads (`requires`:
passed in by name, and rule inputs when they belong to another stage). One that takes a `cache`
argument gets the job's core.JobCache, which the stage's analyses share."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from opposites import paths


@dataclass(frozen=True)
class Analysis:
    target: str  # "module:function" under opposites.analyses, imported only when run (figure and
    #              table jobs read the registry without importing torch)
    ext: str  # json (dict result) or csv (DataFrame result); the file is <task>/<name>.<ext>
    stage: str  # analyses of one stage run in one job per task (one model load)
    settings: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    families: tuple[str, ...] | None = None  # task families it applies to (None: all)
    needs: str | None = None  # a task-file key it reads: it applies only to tasks that have it
    across: bool = False  # reads every task: its `requires` and the prompts are passed in as {task: result}
    seeds: bool = False  # model=trained: reads this task's circuit of every other training seed, as
    #                      `seeds` {seed: circuit} (empty for one model; workflow/rules/seeds.smk)

    def applies(self, task: str) -> bool:
        from opposites.prompts import load_spec

        spec = load_spec(task)
        return (self.families is None or spec["family"] in self.families) and (self.needs is None or self.needs in spec)

    @property
    def run(self) -> Callable[..., Any]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(f"opposites.analyses.{module}"), func)

    @property
    def module(self) -> str:
        """Source file: a stage job's code inputs are these and what they import (opposites.codedeps)."""
        return importlib.util.find_spec(f"opposites.analyses.{self.target.split(':')[0]}").origin


# In run order within each stage. Stages run in the order lens -> patching -> heads -> circuits only
# through their inputs: a stage job waits for the results it `requires` from other stages.
PATCH = ("patch_direction", "seed")  # seed: of the bootstrap intervals
ANALYSES: dict[str, Analysis] = {
    "baseline": Analysis(target="baseline:run", ext="json", stage="lens", settings=("seed",)),
    "logit_lens": Analysis(target="logit_lens:run", ext="csv", stage="lens", settings=("seed",)),
    "head_dla": Analysis(target="head_dla:run", ext="csv", stage="lens", settings=("seed",)),
    "head_logits": Analysis(target="opposite:head_logits", ext="csv", stage="lens", settings=("seed",),
                            families=("opposite",)),
    "control": Analysis(target="opposite:control", ext="json", stage="lens", settings=("seed",), families=("opposite",)),
    "patch_resid": Analysis(target="patching:patch_resid", ext="csv", stage="patching", settings=PATCH),
    "patch_layers": Analysis(target="patching:patch_layers", ext="csv", stage="patching", settings=PATCH),
    "patch_heads": Analysis(target="patching:patch_heads", ext="csv", stage="patching", settings=PATCH),
    "patch_directions": Analysis(target="patching:patch_directions", ext="csv", stage="patching", settings=PATCH),
    "patch_attribution": Analysis(target="patching:patch_attribution", ext="csv", stage="patching", settings=PATCH),
    "patch_followup": Analysis(target="patch_followup:run", ext="json", stage="patching", settings=PATCH,
                               requires=("logit_lens", "head_dla")),
    "congruence": Analysis(target="congruence:run", ext="json", stage="patching", settings=PATCH,
                           needs="congruence"),
    # patches prompts of its own too (the second corruption): after the analyses that share the prepared runs
    "patch_second": Analysis(target="second_corruption:run", ext="json", stage="patching", settings=PATCH,
                             needs="second_corruption"),
    "attention": Analysis(target="heads:attention", ext="csv", stage="heads", settings=("seed",)),
    "attention_example": Analysis(target="heads:attention_example", ext="json", stage="heads",
                                  requires=("head_dla", "patch_heads")),
    "head_logit": Analysis(target="heads:head_logit", ext="csv", stage="heads", requires=("head_dla",)),
    "movers": Analysis(target="mechanism:movers", ext="json", stage="heads", settings=("seed",),
                       requires=("patch_heads", "attention")),
    "mapping": Analysis(target="mechanism:mapping", ext="json", stage="heads", settings=("seed",),
                        requires=("head_logits", "movers"), families=("opposite",)),
    "copy_scores": Analysis(target="heads:copy_scores", ext="csv", stage="heads"),
    "shift": Analysis(target="shift:shift", ext="json", stage="heads", settings=("seed",)),
    "subjects": Analysis(target="subjects:run", ext="json", stage="heads", settings=("seed",), requires=("attention",),
                         needs="subject_roles"),
    "relation": Analysis(target="relation:run", ext="json", stage="heads", settings=("seed",), needs="relation_probe"),
    "recency": Analysis(target="recency:run", ext="json", stage="heads", settings=("seed",), needs="recency_templates"),
    "similarity": Analysis(target="meaning:similarity", ext="csv", stage="heads", settings=("seed",),
                           families=("opposite",)),
    "neurons": Analysis(target="meaning:neurons", ext="csv", stage="heads", settings=("seed",)),
    "edges": Analysis(target="circuits:edges", ext="csv", stage="circuits", settings=("ig_steps",)),
    "circuit": Analysis(target="circuits:circuit", ext="json", stage="circuits",
                        settings=("circuit_share", "ig_steps", "stability_resamples", "acdc_max_edges", "seed"),
                        requires=("edges",)),
    "faithfulness": Analysis(target="circuits:faithfulness", ext="csv", stage="circuits", requires=("circuit",)),
    "circuit_paths": Analysis(target="circuit_paths:circuit_paths", ext="json", stage="circuits", settings=PATCH,
                              requires=("circuit",)),
    "path_set": Analysis(target="path_set:path_set", ext="json", stage="circuits", settings=PATCH, requires=("circuit",)),
    "interchange": Analysis(target="interchange:interchange", ext="json", stage="interchange", settings=("seed",),
                            requires=("patch_heads", "patch_layers")),
    "das": Analysis(target="das:das", ext="json", stage="interchange", settings=("seed",), requires=("interchange",)),
    "transfer": Analysis(target="transfer:transfer", ext="json", stage="transfer", settings=("seed",),
                         requires=("circuit",), across=True),
    "replication": Analysis(target="replication:replication", ext="json", stage="replication", settings=("seed",),
                            requires=("circuit",), seeds=True),
}
STAGES: dict[str, list[str]] = {}
for _name, _a in ANALYSES.items():
    STAGES.setdefault(_a.stage, []).append(_name)


# Scheduling: of the jobs ready to run, those that unlock the most work after them go first. The
# prompts (everything waits on them), the lens (patching waits on it), patching (the heads job waits
# on it), then circuits (no analysis waits on them, and they are the longest), then heads and
# interchange (short; nothing waits on them); figures and tables (0) last. So long jobs start early
# and short ones fill the end: the GPT-2-size build on 2 cores keeps 1.96 jobs running on average
# (circuits first, as before: 1.77-1.82, with a patching job and then its heads job running alone at
# the end).
PRIORITY = {"prompts": 5, "lens": 4, "patching": 3, "circuits": 2, "heads": 1, "interchange": 1, "transfer": 1, "replication": 1}


def stage_analyses(stage: str, task: str) -> list[str]:
    return [a for a in STAGES[stage] if ANALYSES[a].applies(task)]


SOURCES = ("prompts", *ANALYSES)  # what an outline item may draw on


def result_path(results: str, task: str, name: str) -> str:
    """The file of analysis `name` (or the prompts) for one task."""
    if name == "prompts":
        return paths.fill(paths.PROMPTS, results, task=task)
    return paths.fill(paths.RESULT, results, task=task, analysis=name, ext=ANALYSES[name].ext)


class DamagedResult(RuntimeError):
    pass


def check_checksum(path: str) -> None:
    """A result whose provenance file (<name>.meta.json beside it) records a checksum must still
    match it: a truncated or edited result stops the job instead of silently changing the paper."""
    from pathlib import Path

    from opposites.io import read_json
    from opposites.provenance import sha256

    p = Path(path)
    meta = p.with_name(p.name.rsplit(".", 1)[0] + ".meta.json")
    expected = read_json(meta).get("sha256") if meta.exists() else None
    if expected and sha256(p) != expected:
        raise DamagedResult(f"{path} does not match the checksum in {meta.name} (it was changed or truncated "
                            f"after the analysis wrote it); delete {path} and rerun the same snakemake command, "
                            "which rebuilds it.")


def load_result(path: str):
    """A result file as written by the pipeline: list of rows (JSONL), dict (JSON), DataFrame (CSV);
    checked against the checksum in its provenance file first."""
    import pandas as pd

    from opposites.io import read_json
    from opposites.prompts import read_jsonl

    check_checksum(path)

    if path.endswith(".jsonl"):
        return read_jsonl(path)
    if path.endswith(".json"):
        return read_json(path)
    df = pd.read_csv(path)
    text = df.select_dtypes(include=["object", "string"]).columns
    return df.fillna({c: "" for c in text})  # empty strings (e.g. a position with no role) stay ""


def across_inputs(results: str, name: str, tasks) -> dict[str, str]:
    """The files an analysis `across` tasks reads: "<source>__<task>" -> path, for the prompts and
    each requirement of every task it applies to (a stage rule's named inputs)."""
    return {f"{dep}__{t}": result_path(results, t, dep) for dep in ("prompts", *ANALYSES[name].requires)
            for t in tasks if applies(dep, t)}


def seed_inputs(results: str, task: str, seeds) -> dict[str, str]:
    """The other training seeds' circuits of one task: "seeds__<seed>" -> path (a stage rule's
    named inputs)."""
    return {f"seeds__{s}": paths.fill(paths.SEED_RESULT, results, tseed=s, task=task, analysis="circuit", ext="json")
            for s in seeds}


def applies(name: str, task: str) -> bool:
    return name == "prompts" or ANALYSES[name].applies(task)


def load_all(results: str, names, tasks) -> dict:
    """data[name][task] for every source and every task it applies to."""
    return {n: {t: load_result(result_path(results, t, n)) for t in tasks if applies(n, t)} for n in names}


def settings_of(names, config: dict) -> dict[str, Any]:
    """The config values the analyses `names` read (a stage rule's params: changing one reruns it)."""
    return {k: config[k] for n in names for k in ANALYSES[n].settings}


def run(name: str, model, rows: list[dict], batch_size: int, settings: dict, required: dict[str, Any],
        cache=None) -> Any:
    """Run analysis `name` with its settings and its required results, and the job's cache
    (core.JobCache) if it takes one."""
    a = ANALYSES[name]
    extra = {"cache": cache} if "cache" in inspect.signature(a.run).parameters else {}
    return a.run(model, rows, batch_size, **{k: settings[k] for k in a.settings}, **required, **extra)


def run_stage(names: list[str], model, rows: list[dict], batch_size: int, settings: dict,
              load: Callable[[str], Any], write: Callable[[str, Any, float], None], seed: int) -> dict[str, Any]:
    """Run the analyses `names` of one stage in order on one loaded model. A result another analysis
    of the stage requires is handed over in memory; one from another stage is read with load(name).
    Each analysis starts from the same seed, and write(name, result, seconds) is called as each ends.
    What the analyses share (prepared runs, scores) lives in one core.JobCache made here.
    An analysis `across` tasks gets the prompts and its requirements of every task, as
    load(name, every_task=True) returns them ({task: result}; across_inputs names the files); one
    that reads the other seeds' circuits gets them as load("seeds", every_task=True) returns them
    ({seed: circuit}; seed_inputs names the files)."""
    from opposites.core import JobCache
    from opposites.provenance import timed
    from opposites.seeding import seed_everything

    done: dict[str, Any] = {}
    cache = JobCache()
    for name in names:
        seed_everything(seed)
        if ANALYSES[name].across:
            required = {dep: load(dep, every_task=True) for dep in ("prompts", *ANALYSES[name].requires)}
        else:
            required = {dep: done[dep] if dep in done else load(dep) for dep in ANALYSES[name].requires}
        if ANALYSES[name].seeds:
            required["seeds"] = {int(s): c for s, c in load("seeds", every_task=True).items()}
        with timed() as t:
            done[name] = run(name, model, rows, batch_size, settings, required, cache)
        write(name, done[name], t["seconds"])
    return done
