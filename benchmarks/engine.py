"""CPU time of the patching engine's sweeps, for A/B comparisons of engine changes: residual
patching by position, head-output patching and one sender's path patching on random:gpt2 (GPT-2
small's shape), one thread, process CPU seconds per repetition and a checksum of the results (equal
checksums: the same numbers). Run it under each version (PYTHONPATH=<checkout>/src) in one session.

    python benchmarks/engine.py [--n-prompts 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from opposites import models
from opposites.core import batches
from opposites.patching import exact
from opposites.patching.engine import Weights
from opposites.prompts import make_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model = models.load("random:gpt2", models.build_offline_model("random:gpt2", f"{tmp}/model", seed=0), "cpu")
        rows = make_prompts("ioi", model.tokenizer, 64, seed=0, min_prompts=8)[0]
        rows = [r for r in rows if r["positions"] == rows[0]["positions"]][:args.n_prompts]
        batch, weights = next(batches(model, rows, len(rows))), Weights.from_bridge(model)
        for _ in range(args.repeats):
            start = time.process_time()
            pair = exact.prepare(model, weights, batch, "denoising")
            out = [exact.resid_pre_by_role(pair, exact.position_masks(pair)), exact.head_all_pos(pair, "z"),
                   exact.path_to_receivers(pair, (0, 1))]
            seconds = time.process_time() - start
            print(f"{len(rows)} prompts: {seconds:.2f} CPU s; checksum {sum(float(t.nansum()) for t in out):.6f}")


if __name__ == "__main__":
    main()
