"""Benchmark of the foundation: (1) the full `paper` build for model=toy, from nothing, in a scratch
copy of the workflow; (2) the analyses baseline, logit_lens and head_dla for all four tasks with
128 prompts each on random:gpt2 (GPT-2 small's exact compute). Prints wall times and peak memory.

    python benchmarks/foundation.py [--cores 2] [--n-prompts 128] [--skip-paper] [--skip-analyses]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from paper import build  # benchmarks/paper.py: copies the workflow and builds the paper

TASKS = ("ioi", "size", "antonym", "isa")


def peak_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def bench_paper(cores: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wall = build(Path(tmp), "toy", None, cores, quiet=True)
        pdf = Path(tmp, "results/toy/paper/paper.pdf").stat().st_size
    print(f"paper build, model=toy, --cores {cores}: {wall:.1f} s wall (target < 180 s); "
          f"largest job peak RSS {peak_mb(resource.RUSAGE_CHILDREN):.0f} MB; PDF {pdf / 1024:.0f} KiB")


def bench_analyses(n_prompts: int, batch_size: int) -> None:
    import torch

    from opposites import models
    from opposites.analyses import ANALYSES
    from opposites.prompts import make_prompts

    print(f"torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model_dir = models.build_offline_model("random:gpt2", Path(tmp) / "model", seed=0)
        model = models.load("random:gpt2", model_dir, "auto")
        print(f"build + load random:gpt2: {time.perf_counter() - t0:.1f} s (device {model.cfg.device})")
        tok = models.gpt2_tokenizer()
        total = 0.0
        for task in TASKS:
            rows, _ = make_prompts(task, tok, n_prompts, seed=0, min_prompts=8)
            for name in ("baseline", "logit_lens", "head_dla"):
                start = time.perf_counter()
                ANALYSES[name].run(model, rows, batch_size, seed=0)
                dt = time.perf_counter() - start
                total += dt
                print(f"  {task:8s} {name:11s} {len(rows):4d} prompts  {dt:6.2f} s")
    print(f"analyses, 4 tasks x 3 on random:gpt2: {total:.1f} s (target < 300 s); "
          f"peak RSS {peak_mb():.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--n-prompts", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--skip-analyses", action="store_true")
    args = ap.parse_args()
    if not args.skip_paper:
        bench_paper(args.cores)
    if not args.skip_analyses:
        bench_analyses(args.n_prompts, args.batch_size)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
