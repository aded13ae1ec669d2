"""Benchmark of exact activation patching: ours against TransformerLens's reference
(transformer_lens.patching), side by side on the same model and prompts, with equal results.

    python benchmarks/patching.py [--model random:gpt2] [--n-prompts 64] [--memory-prompts 128] [--batch-size 32]

Prints, for residual-stream patching (layer x position) and head-output patching (layer x head):
both wall times, the speed-up, the largest difference, and the ratio of FLOPs our engine performs
to the minimum the patched computation needs (and the reference's ratio). Then the peak memory of a
separate process that runs every patching sweep of issue 3 on --memory-prompts prompts.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from opposites import models
from opposites.core import batches, logit_diff
from opposites.patching import engine, exact
from opposites.patching.engine import Weights
from opposites.prompts import make_prompts


def equal_length_rows(n: int, task: str = "ioi") -> list[dict]:
    rows, _ = make_prompts(task, models.gpt2_tokenizer(), 4 * n, seed=0, min_prompts=n)
    length = Counter(r["positions"]["END"] for r in rows).most_common(1)[0][0]
    same = [r for r in rows if r["positions"]["END"] == length][:n]
    if len(same) < n:
        sys.exit(f"only {len(same)} prompts of one length; lower --n-prompts")
    return same


def load(model_spec: str, tmp: str):
    d = models.build_offline_model(model_spec, Path(tmp) / "model", seed=0) if ":" in model_spec or model_spec == "toy" else None
    return models.load(model_spec, d, "cpu")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def compare(model, n_prompts: int, only: str | None = None) -> None:
    import transformer_lens.patching as tlp

    rows = equal_length_rows(n_prompts)
    batch = next(batches(model, rows, n_prompts))
    w = Weights.from_bridge(model)
    P = batch.clean.shape[1]
    (clean_logits, clean_cache), t_cache = timed(lambda: model.run_with_cache(batch.clean))
    corr_logits = model(batch.corrupted)
    c, k = logit_diff(clean_logits, batch).mean().item(), logit_diff(corr_logits, batch).mean().item()
    metric = lambda logits: (logit_diff(logits, batch).mean() - k) / (c - k)  # noqa: E731
    print(f"model {model.cfg.model_name}: {w.n_layers} layers x {w.n_heads} heads; {n_prompts} prompts x {P} tokens; "
          f"clean and corrupted differ from position {engine.first_difference(batch.clean, batch.corrupted)}; "
          f"torch threads {torch.get_num_threads()}")
    cases = [
        ("residual stream (layer x pos)", tlp.get_act_patch_resid_pre,
         lambda p: exact.resid_pre_by_role(p, exact.position_masks(p)), "pre",
         lambda p: [(l, "pre", P - pos) for l in range(w.n_layers) for pos in range(p.prefix, P)], w.n_layers * P),
        ("head output, all positions (layer x head)", tlp.get_act_patch_attn_head_out_all_pos,
         lambda p: exact.head_all_pos(p, "z"), "mid",
         lambda p: [(l, "mid", P - p.prefix) for l in range(w.n_layers) for _ in range(w.n_heads)], w.n_layers * w.n_heads),
    ]
    for name, ref_fn, ours_fn, _, variants, ref_passes in cases:
        if only and not name.startswith(only):
            continue
        ref, t_ref = timed(lambda: ref_fn(model, batch.corrupted, clean_cache, metric))
        w.flops[0] = 0.0
        pair, t_prep = timed(lambda: exact.prepare(model, w, batch, "denoising"))
        per_prompt, t_sweep = timed(lambda: ours_fn(pair))
        ours = exact.normalise(per_prompt, c, k)
        t_ours = t_prep + t_sweep
        if ours.shape != ref.shape:
            ours = ours.T
        minimum = n_prompts * sum(engine.suffix_flops(w, l, s, suf, P) for l, s, suf in variants(pair))
        prep_flops = 2 * n_prompts * full_forward_flops(w, P, 0)  # the two cached runs
        ref_flops = ref_passes * n_prompts * full_forward_flops(w, P, model.cfg.d_vocab)
        print(f"\n{name}")
        print(f"  reference (transformer_lens.patching): {t_ref:8.2f} s")
        print(f"  ours (2 cached runs + batched suffix runs): {t_ours:8.2f} s  "
              f"(of which the cached runs {t_prep:.2f} s)")
        print(f"  speed-up: {t_ref / t_ours:.1f}x   max |ours - reference| = {(ours - ref).abs().max().item():.2e}")
        print(f"  FLOPs: ours {w.flops[0] / 1e9:.1f} G = {w.flops[0] / minimum:.2f}x the minimum "
              f"({minimum / 1e9:.1f} G; {(w.flops[0] - prep_flops) / minimum:.2f}x without the cached runs); "
              f"reference {ref_flops / 1e9:.0f} G = {ref_flops / minimum:.0f}x")


def full_forward_flops(weights: Weights, length: int, vocab: int) -> float:
    """A plain forward of one sequence with the full unembedding (what the reference runs)."""
    return weights.n_layers * engine.layer_flops(weights, length, length, length) + 2 * length * weights.W_O.shape[-1] * vocab


def memory_child(model_spec: str, n_prompts: int, batch_size: int) -> None:
    """Run every patching sweep on n_prompts prompts in batches of batch_size; print peak RSS as JSON."""
    from opposites.analyses import patching

    with tempfile.TemporaryDirectory() as tmp:
        model = load(model_spec, tmp)
        rows = equal_length_rows(n_prompts)
        start = time.perf_counter()
        for fn in (patching.patch_resid, patching.patch_layers, patching.patch_heads, patching.patch_attribution):
            fn(model, rows, batch_size=batch_size, patch_direction="denoising", seed=0)
        print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "seconds": time.perf_counter() - start}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:gpt2")
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--memory-prompts", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32, help="prompts per batch in the memory run (config batch_size)")
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--only", choices=["residual", "head"], help="compare one case only (each takes minutes)")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args.model, args.memory_prompts, args.batch_size)
    if not args.skip_compare:
        with tempfile.TemporaryDirectory() as tmp:
            compare(load(args.model, tmp), args.n_prompts, args.only)
    out = subprocess.run([sys.executable, __file__, "--memory-child", "--model", args.model, "--memory-prompts",
                          str(args.memory_prompts), "--batch-size", str(args.batch_size)],
                         capture_output=True, text=True, check=True)
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nall patching sweeps (resid and attn/MLP by role, heads z/q/k/v/pattern, "
          f"attribution) on {args.memory_prompts} prompts in batches of {args.batch_size}: {mem['seconds']:.1f} s, "
          f"peak RSS {mem['peak_rss_mb']:.0f} MB (target < 4096 MB)")


if __name__ == "__main__":
    main()
