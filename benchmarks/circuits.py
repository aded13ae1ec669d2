"""Benchmark of circuit discovery for one task: edge attribution over the whole graph, then
ACDC-style pruning verified by exact edge patching, on random:gpt2 (GPT-2 small's compute).

    python benchmarks/circuits.py [--model random:gpt2] [--task ioi] [--n-prompts 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from opposites import models
from opposites.analyses import circuits
from opposites.prompts import make_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:gpt2")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--share", type=float, default=0.8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = models.build_offline_model(args.model, Path(tmp) / "model", seed=0)
        model = models.load(args.model, d, "cpu")
        rows, _ = make_prompts(args.task, models.gpt2_tokenizer(), args.n_prompts, seed=0, min_prompts=8)
        print(f"{args.model}, task {args.task}: {len(rows)} prompts, batch {args.batch_size}, "
              f"torch threads {torch.get_num_threads()}")
        start = time.perf_counter()
        edges = circuits.edges(model, rows, args.batch_size)
        t_edges = time.perf_counter() - start
        c = circuits.circuit(model, rows, args.batch_size, circuit_share=args.share, edges=edges)
        total = time.perf_counter() - start
    print(f"edge attribution ({len(edges)} edges, 2 forward + 1 backward per batch): {t_edges:.1f} s")
    print(f"pruning with exact edge patching ({len(c['faithfulness'])} evaluations): {total - t_edges:.1f} s")
    print(f"circuit: {c['n_edges']} of {c['total_edges']} edges, recovers {c['recovered']:.3f} (target {args.share})")
    print(f"discovery for one task: {total:.1f} s (target < 600 s); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
