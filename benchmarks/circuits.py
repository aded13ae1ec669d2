"""Benchmark of the circuits stage for one task on random:gpt2 (GPT-2 small's compute): EAP and
EAP-IG scoring, then per method the exact-verified selection on the grid, greedy refinement,
completeness and MIB curve, then stability over bootstrap resamples. Prints the breakdown and the
peak memory. Issue 9's target: the whole stage under 300 s and 4 GB (64 IOI prompts, 2 cores).

    python benchmarks/circuits.py [--model random:gpt2] [--model-dir DIR] [--task ioi] [--n-prompts 64]
                                  [--batch-size 32] [--ig-steps 5] [--resamples 10] [--acdc-trials N]

--model trained --model-dir results/trained/model: the trained model as built (not rebuilt here).
--acdc-trials N: instead of the stage, time N ACDC trials (one edge cut from the whole graph,
resumed from its trace; edges spread over the graph) on the selection half and print seconds per evaluation x the
evaluations one ACDC pass needs (one per edge at most) x the thresholds: ACDC's feasibility.
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
    ap.add_argument("--model-dir", type=Path, help="a built model (the trained one) instead of building --model")
    ap.add_argument("--acdc-trials", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = args.model_dir or models.build_offline_model(args.model, Path(tmp) / "model", seed=0)
        model = models.load(args.model, d, "cpu")
        rows, _ = make_prompts(args.task, models.gpt2_tokenizer(), args.n_prompts, seed=0, min_prompts=8)
        print(f"{args.model}, task {args.task}: {len(rows)} prompts, batch {args.batch_size}, "
              f"torch threads {torch.get_num_threads()}")
        if args.acdc_trials:
            return acdc_feasibility(model, rows, args)
        start, cpu = time.perf_counter(), time.process_time()
        edges = circuits.edges(model, rows, args.batch_size, ig_steps=args.ig_steps)
        t_edges = time.perf_counter() - start
        print(f"  scoring: {t_edges:.1f} s wall, {time.process_time() - cpu:.1f} s CPU", flush=True)
        clock = circuits.Clock(echo=True)
        c = circuits.circuit(model, rows, args.batch_size, args.share, args.ig_steps, args.resamples, 0,
                             edges=edges, clock=clock)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    n_edges = c["total_edges"]
    print(f"scoring ({n_edges} edges; {', '.join(sorted(set(edges.method)))}; EAP-IG {args.ig_steps} steps): {t_edges:.1f} s")
    for phase, seconds in clock.laps.items():
        evals = (c["methods"][phase.split()[-1]]["exact_evaluations"] if phase.startswith("selection")
                 else c["stability"]["exact_evaluations"] if phase == "stability" else None)
        print(f"  {phase}: {seconds:.1f} s" + (f" ({evals} exact evaluations)" if evals else ""))
    for method, m in c["methods"].items():
        print(f"{method}: {m['n_edges']} edges (grid {m['grid_size']}), recovers {m['recovered']:.3f}, "
              f"completeness lost {m['completeness_lost']:.3f}, CPR {m['cpr']:.3f}, CMD {m['cmd']:.3f}")
    for r in c["at_size"]:
        h = r["held_out"]
        print(f"at {c['compared_size']} edges: {r['method']} ({r['how']}): {r['n_edges']} edges, recovers "
              f"{r['recovered']:.3f} (selection half), {h['recovered']:.3f} {h['recovered_ci95']} held out; "
              f"{r['seconds']:.1f} CPU s")
    print(f"paper's circuit: {c['method']} ({c['how']}), {c['n_edges']} edges")
    print(f"stability: mean Jaccard {c['stability']['mean_jaccard']} over {args.resamples} resamples")
    print(f"circuits stage for one task: {total:.1f} s wall, {cpu:.1f} s CPU (target < 300 s; trained with ACDC < 120 s); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (target < 4096 MB)")


def acdc_feasibility(model, rows, args) -> None:
    """Seconds per ACDC trial on this model x the trials a pass needs: each trial is the whole graph
    less one edge (edges spread evenly over the graph), resumed from the whole graph's trace, on the
    selection half of the prompts."""
    from opposites.circuit_metrics import ACDC_THRESHOLDS
    from opposites.analyses.acdc import whole_graph

    runs = circuits.prepare(model, rows, args.batch_size)
    selection = circuits.halves(runs.clusters, 0)
    d = circuits.Discovery(runs, [], circuits.part_weights(selection))
    graph = whole_graph(d)
    start = time.perf_counter()
    kept = circuits.Kept(graph, 1.0, d.record(graph))
    t_trace = time.perf_counter() - start
    trials = graph[::max(1, len(graph) // args.acdc_trials)][:args.acdc_trials]  # spread over the layers
    start = time.perf_counter()
    for edge in trials:
        d.try_removal(kept, edge, lambda got: False)  # measured, never kept: every trial resumes from the whole graph
    per = (time.perf_counter() - start) / len(trials)
    need = len(graph) * len(ACDC_THRESHOLDS)
    print(f"{args.model}: {len(graph)} edges, {int(selection.sum())} selection prompts; traced whole graph {t_trace:.1f} s; "
          f"{per:.2f} s per trial (mean of {len(trials)} spread over the graph); "
          f"ACDC needs up to {len(graph)} trials per threshold x {len(ACDC_THRESHOLDS)} thresholds = {need}: "
          f"about {per * need / 3600:.1f} h at this rate")


if __name__ == "__main__":
    main()
