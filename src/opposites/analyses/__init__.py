"""Registry of analyses. Each is a function (model, rows, batch_size, **settings, **required) that
returns a dict (written as JSON) or a DataFrame (CSV), with the config keys it reads (`settings`:
passed in, and rule params, so changing one reruns it) and the analyses whose results it reads
(`requires`: passed in by name, and rule inputs)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from opposites import paths
from opposites.analyses import baseline, head_dla, heads, logit_lens, meaning, patch_followup, patching


@dataclass(frozen=True)
class Analysis:
    run: Callable[..., Any]
    ext: str  # json (dict result) or csv (DataFrame result); the file is <task>/<name>.<ext>
    settings: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    families: tuple[str, ...] | None = None  # task families it applies to (None: all)

    def applies(self, task: str) -> bool:
        from opposites.prompts import load_spec

        return self.families is None or load_spec(task)["family"] in self.families

    @property
    def module(self) -> str:
        """Source file, so that editing it reruns just the analyses defined there."""
        return inspect.getsourcefile(self.run)


PATCH = ("patch_direction",)
ANALYSES: dict[str, Analysis] = {
    "baseline": Analysis(baseline.run, "json"),
    "logit_lens": Analysis(logit_lens.run, "csv"),
    "head_dla": Analysis(head_dla.run, "csv"),
    "patch_resid": Analysis(patching.patch_resid, "csv", PATCH),
    "patch_layers": Analysis(patching.patch_layers, "csv", PATCH),
    "patch_heads": Analysis(patching.patch_heads, "csv", PATCH),
    "patch_heads_by_pos": Analysis(patching.patch_heads_by_pos, "csv", PATCH),
    "patch_attribution": Analysis(patching.patch_attribution, "csv", PATCH),
    "patch_followup": Analysis(patch_followup.run, "json", PATCH, ("logit_lens", "head_dla")),
    "attention": Analysis(heads.attention, "csv"),
    "attention_example": Analysis(heads.attention_example, "json", (), ("head_dla", "patch_heads")),
    "head_logit": Analysis(heads.head_logit, "csv", (), ("head_dla",)),
    "copy_scores": Analysis(heads.copy_scores, "csv"),
    "similarity": Analysis(meaning.similarity, "csv", ("seed",), families=("opposite",)),
    "neurons": Analysis(meaning.neurons, "csv"),
}
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
