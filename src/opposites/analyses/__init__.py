"""Registry of analyses. Each is a function (model, rows, batch_size, **settings, **required) that
returns a dict (written as JSON) or a DataFrame (CSV), with its stage (the analyses of a stage run
in one job per task, sharing one model load), the config keys it reads (`settings`: passed in, and
rule params, so changing one reruns its stage) and the analyses whose results it reads (`requires`:
passed in by name, and rule inputs when they belong to another stage)."""

from __future__ import annotations

import importlib
import importlib.util
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

    def applies(self, task: str) -> bool:
        from opposites.prompts import load_spec

        return self.families is None or load_spec(task)["family"] in self.families

    @property
    def run(self) -> Callable[..., Any]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(f"opposites.analyses.{module}"), func)

    @property
    def module(self) -> str:
        """Source file, so that editing it reruns just the analyses defined there."""
        return importlib.util.find_spec(f"opposites.analyses.{self.target.split(':')[0]}").origin


PATCH = ("patch_direction",)
ANALYSES: dict[str, Analysis] = {  # in run order within each stage
    "baseline": Analysis("baseline:run", "json", "lens"),
    "logit_lens": Analysis("logit_lens:run", "csv", "lens"),
    "head_dla": Analysis("head_dla:run", "csv", "lens"),
    "patch_resid": Analysis("patching:patch_resid", "csv", "patching", PATCH),
    "patch_layers": Analysis("patching:patch_layers", "csv", "patching", PATCH),
    "patch_heads": Analysis("patching:patch_heads", "csv", "patching", PATCH),
    "patch_heads_by_pos": Analysis("patching:patch_heads_by_pos", "csv", "patching", PATCH),
    "patch_attribution": Analysis("patching:patch_attribution", "csv", "patching", PATCH),
    "patch_followup": Analysis("patch_followup:run", "json", "patching", PATCH, ("logit_lens", "head_dla")),
    "attention": Analysis("heads:attention", "csv", "heads"),
    "attention_example": Analysis("heads:attention_example", "json", "heads", (), ("head_dla", "patch_heads")),
    "head_logit": Analysis("heads:head_logit", "csv", "heads", (), ("head_dla",)),
    "copy_scores": Analysis("heads:copy_scores", "csv", "heads"),
    "similarity": Analysis("meaning:similarity", "csv", "heads", ("seed",), families=("opposite",)),
    "neurons": Analysis("meaning:neurons", "csv", "heads"),
    "edges": Analysis("circuits:edges", "csv", "circuits"),
    "circuit": Analysis("circuits:circuit", "json", "circuits", ("circuit_share",), ("edges",)),
    "faithfulness": Analysis("circuits:faithfulness", "csv", "circuits", (), ("circuit",)),
}
STAGES: dict[str, list[str]] = {}
for _name, _a in ANALYSES.items():
    STAGES.setdefault(_a.stage, []).append(_name)


def stage_analyses(stage: str, task: str) -> list[str]:
    return [a for a in STAGES[stage] if ANALYSES[a].applies(task)]


SOURCES = ("prompts", *ANALYSES)  # what an outline item may draw on


def result_path(results: str, task: str, name: str) -> str:
    """The file of analysis `name` (or the prompts) for one task."""
    if name == "prompts":
        return paths.fill(paths.PROMPTS, results, task=task)
    return paths.fill(paths.RESULT, results, task=task, analysis=name, ext=ANALYSES[name].ext)


def load_result(path: str):
    """A result file as written by the pipeline: list of rows (JSONL), dict (JSON), DataFrame (CSV)."""
    import pandas as pd

    from opposites.io import read_json
    from opposites.prompts import read_jsonl

    if path.endswith(".jsonl"):
        return read_jsonl(path)
    if path.endswith(".json"):
        return read_json(path)
    df = pd.read_csv(path)
    text = df.select_dtypes(include=["object", "string"]).columns
    return df.fillna({c: "" for c in text})  # empty strings (e.g. a position with no role) stay ""


def applies(name: str, task: str) -> bool:
    return name == "prompts" or ANALYSES[name].applies(task)


def load_all(results: str, names, tasks) -> dict:
    """data[name][task] for every source and every task it applies to."""
    return {n: {t: load_result(result_path(results, t, n)) for t in tasks if applies(n, t)} for n in names}


def run(name: str, model, rows: list[dict], batch_size: int, config: dict, required: dict[str, Any]) -> Any:
    """Run analysis `name` with its settings from config and its required results."""
    a = ANALYSES[name]
    return a.run(model, rows, batch_size, **{k: config[k] for k in a.settings}, **required)
