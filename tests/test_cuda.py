"""The toy `figures` build on CUDA gives the CPU build's numbers (to 1e-4). Runs only where CUDA
exists; everywhere else test_device.py guards the device paths statically."""

import json
import math

import pandas as pd
import pytest
import torch

from conftest import copy_workflow, snakemake

pytestmark = [pytest.mark.cuda, pytest.mark.workflow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]


def _numbers(value):
    """Every number in a JSON value, in order."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    items = value.values() if isinstance(value, dict) else value
    return [x for v in items for x in _numbers(v)]


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-4 * max(1.0, abs(a), abs(b))


def test_cuda_build_matches_cpu(tmp_path):
    runs = {}
    for device in ("cpu", "cuda"):
        (tmp_path / device).mkdir()
        work = copy_workflow(tmp_path / device)
        snakemake(work, "--cores", "2", "figures", "--config", "model=toy", "n_prompts=24", f"device={device}")
        runs[device] = work / "results" / "toy"
    files = sorted(p.relative_to(runs["cpu"]) for p in runs["cpu"].glob("*/*.*")
                   if p.suffix in (".csv", ".json") and not p.name.endswith(".meta.json"))
    assert files, "the CPU build wrote no results"
    for rel in files:
        a, b = runs["cpu"] / rel, runs["cuda"] / rel
        if rel.suffix == ".csv":
            x, y = pd.read_csv(a), pd.read_csv(b)
            assert list(x.columns) == list(y.columns) and len(x) == len(y), rel
            num = x.select_dtypes("number").columns
            bad = [(c, i) for c in num for i, (u, v) in enumerate(zip(x[c], y[c])) if not _close(u, v)]
        else:
            u, v = _numbers(json.loads(a.read_text())), _numbers(json.loads(b.read_text()))
            assert len(u) == len(v), rel
            bad = [i for i, (p, q) in enumerate(zip(u, v)) if not _close(p, q)]
        assert not bad, f"{rel}: CUDA differs from CPU at {bad[:5]}"
