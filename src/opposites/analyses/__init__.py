"""Registry of analyses: name -> (function, file type, source module). Each function takes (model, rows,
batch_size) and returns a dict (written as JSON) or a DataFrame (written as CSV)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from opposites import paths
from opposites.analyses import baseline, head_dla, logit_lens


@dataclass(frozen=True)
class Analysis:
    run: Callable[..., Any]
    ext: str  # json (dict result) or csv (DataFrame result); the file is <task>/<name>.<ext>
    module: str  # source file, so that editing it reruns just this analysis


def _entry(mod, ext: str) -> Analysis:
    return Analysis(mod.run, ext, mod.__file__)


ANALYSES: dict[str, Analysis] = {
    "baseline": _entry(baseline, "json"),
    "logit_lens": _entry(logit_lens, "csv"),
    "head_dla": _entry(head_dla, "csv"),
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
    return read_json(path) if path.endswith(".json") else pd.read_csv(path)


def load_all(results: str, names, tasks) -> dict:
    """data[name][task] for every source and task."""
    return {n: {t: load_result(result_path(results, t, n)) for t in tasks} for n in names}
