"""Benchmark of the whole paper build from nothing (issue 14's target: model=random:gpt2, GPT-2
small's exact compute, 4 tasks x 64 prompts, on 2 cores in under 15 minutes, every job under 4 GB).

Copies the workflow into a scratch directory, runs `snakemake --cores N paper` there, and prints the
wall time, the job time per stage and per analysis job, and each job's peak memory, all read from
the rules' own `benchmark:` files (src/opposites/cluster.py reads them). The scratch results stay
when --keep is given, e.g. to regenerate the Slurm profile from them:
`python3 scripts/slurm_resources.py DIR/results/random-gpt2 --out profiles/slurm/config.yaml`.

    python benchmarks/paper.py [--model random:gpt2] [--n-prompts 64] [--cores 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from opposites import cluster
from opposites import config as cfg
from opposites.io import read_json

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ("Snakefile", "config.yaml", "environment.yml", "workflow", "scripts", "paper", "profiles")
LIMIT_MB = 4096


def build(work: Path, model: str, n_prompts: int | None, cores: int, quiet: bool = False) -> float:
    """Copy the workflow into `work`, build the paper there (n_prompts None: config.yaml's); wall seconds."""
    for name in WORKFLOW:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    settings = [f"model={model}"] + ([f"n_prompts={n_prompts}"] if n_prompts is not None else [])
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores), "paper", "--config", *settings],
                          cwd=work, capture_output=quiet, text=True)
    if proc.returncode:
        sys.exit(f"the build failed (exit {proc.returncode}); its logs are under {work}/results")
    return time.perf_counter() - start


def report(results: Path, wall: float, cores: int) -> None:
    jobs = cluster.jobs(results)
    stage = defaultdict(float)
    for j in jobs:
        stage[j.fields.get("stage", j.rule)] += j.s
    total = sum(j.s for j in jobs)
    print(f"wall {wall / 60:.1f} min on {cores} cores (target < 15 min); job time {total:.0f} s "
          f"({total / max(wall, 1e-9):.2f} jobs running on average)")
    print("\njob time by stage (analysis stages summed over tasks):")
    for name, s in sorted(stage.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<14} {s:8.1f} s")
    print("\nanalysis jobs (stage, task): time, peak memory, cores kept busy (CPU time / time; Snakemake samples CPU "
          "time every 0.5 s for 15 s, then every 30 s, so a job can end up to 30 s after its last sample: a lower bound):")
    for j in sorted((j for j in jobs if "stage" in j.fields), key=lambda j: -j.s):
        flag = "  OVER 4 GB" if j.max_rss_mb > LIMIT_MB else ""
        print(f"  {j.rule:<20} {j.s:8.1f} s {j.max_rss_mb:8.0f} MB {j.cpu_time / max(j.s, 1e-9):5.2f}{flag}")
    analysis = sum(read_json(m)["seconds"] for m in results.glob("*/*.meta.json"))  # the analyses' own time
    in_jobs = sum(j.s for j in jobs if "stage" in j.fields)
    print(f"\nthe analyses themselves (their provenance files): {analysis:.0f} s, {analysis / cores / 60:.1f} min on "
          f"{cores} cores if nothing else ran; the rest of the analysis jobs' time (start-up: imports, model boot, "
          f"writing): {in_jobs - analysis:.0f} s; every other job: {total - in_jobs:.0f} s")
    worst = max(jobs, key=lambda j: j.max_rss_mb)
    print(f"\nlargest peak: {worst.rule} {worst.max_rss_mb:.0f} MB (target < {LIMIT_MB} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:gpt2")
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="build here and keep it (default: a temporary directory)")
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
        work = args.keep
    else:
        tmp = tempfile.TemporaryDirectory()
        work = Path(tmp.name)
    wall = build(work, args.model, args.n_prompts, args.cores)
    report(work / "results" / cfg.model_slug(args.model), wall, args.cores)


if __name__ == "__main__":
    main()
