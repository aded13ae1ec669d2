"""Benchmark of the trained model (issue 13): train with TRAIN_DEFAULTS on all four tasks into a
temporary directory and print wall time, parameter count, and per-task top-1 and logit difference on
the pipeline's evaluation prompts (64 per task, seed 0). Targets: every task at top-1 >= 0.95 with mean
logit difference >= 3 (the gate); three seeds in at most 4 min on 2 cores (issue 33).

    python benchmarks/train.py [--seed 0] [--steps N] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

TASKS = ("ioi", "size", "antonym", "isa")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, help="override TRAIN_DEFAULTS['steps']")
    ap.add_argument("--threads", type=int, help="override TRAIN_DEFAULTS['threads']")
    args = ap.parse_args()

    from opposites import training
    from opposites.models import gpt2_tokenizer
    from opposites.prompts import make_prompts

    overrides = {k: v for k, v in (("steps", args.steps), ("threads", args.threads)) if v is not None}
    tok = gpt2_tokenizer()
    rows = {t: make_prompts(t, tok, 64, seed=0, min_prompts=8)[0] for t in TASKS}
    print(f"cpu cores: {os.cpu_count()}; hyperparameters: {training.hyperparameters(overrides)}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        try:
            record = training.train(TASKS, Path(tmp) / "model", args.seed, rows, **overrides)
        except training.TrainingFailed as e:
            print(f"gate failed after {time.perf_counter() - start:.1f} s: {e}")
            report(e.metrics)
            raise SystemExit(1)
    wall = time.perf_counter() - start
    print(f"train + evaluate + save: {wall:.1f} s wall (training alone "
          f"{record['train_seconds']} s); {record['n_parameters']:,} parameters; "
          f"final loss {record['final_loss']:.3f}")
    report(record["metrics"])


def report(metrics: dict) -> None:
    for task, m in metrics.items():
        print(f"  {task:8s} top-1 {m['top1']:.3f}  logit diff {m['logit_diff']:6.2f}  ({m['n_prompts']} prompts)")


if __name__ == "__main__":
    main()
