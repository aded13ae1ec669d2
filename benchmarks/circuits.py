"""Benchmark of the circuits stage for one task on random:gpt2 (GPT-2 small's compute): EAP and
EAP-IG scoring, then per method the exact-verified selection on the grid, greedy refinement,
completeness and MIB curve, then stability over bootstrap resamples. Prints the breakdown and the
peak memory. Issue 9's target: the whole stage under 300 s and 4 GB (64 IOI prompts, 2 cores).

    python benchmarks/circuits.py [--model random:gpt2] [--task ioi] [--n-prompts 64] [--batch-size 32]
                                  [--ig-steps 5] [--resamples 10]
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
    ap.add_argument("--ig-steps", type=int, default=5)
    ap.add_argument("--resamples", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = models.build_offline_model(args.model, Path(tmp) / "model", seed=0)
        model = models.load(args.model, d, "cpu")
        rows, _ = make_prompts(args.task, models.gpt2_tokenizer(), args.n_prompts, seed=0, min_prompts=8)
        print(f"{args.model}, task {args.task}: {len(rows)} prompts, batch {args.batch_size}, "
              f"torch threads {torch.get_num_threads()}")
        start = time.perf_counter()
        edges = circuits.edges(model, rows, args.batch_size, ig_steps=args.ig_steps)
        t_edges = time.perf_counter() - start
        clock = circuits.Clock()
        c = circuits.circuit(model, rows, args.batch_size, args.share, args.ig_steps, args.resamples, 0,
                             edges=edges, clock=clock)
        total = time.perf_counter() - start
    n_edges = c["total_edges"]
    print(f"scoring ({n_edges} edges; {', '.join(sorted(set(edges.method)))}; EAP-IG {args.ig_steps} steps): {t_edges:.1f} s")
    for phase, seconds in clock.laps.items():
        evals = (c["methods"][phase.split()[-1]]["exact_evaluations"] if phase.startswith("selection")
                 else c["stability"]["exact_evaluations"] if phase == "stability" else None)
        print(f"  {phase}: {seconds:.1f} s" + (f" ({evals} exact evaluations)" if evals else ""))
    for method, m in c["methods"].items():
        print(f"{method}: {m['n_edges']} edges (grid {m['grid_size']}), recovers {m['recovered']:.3f}, "
              f"completeness lost {m['completeness_lost']:.3f}, CPR {m['cpr']:.3f}, CMD {m['cmd']:.3f}")
    print(f"stability: mean Jaccard {c['stability']['mean_jaccard']} over {args.resamples} resamples")
    print(f"circuits stage for one task: {total:.1f} s (target < 300 s); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (target < 4096 MB)")


if __name__ == "__main__":
    main()
