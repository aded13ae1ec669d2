"""Where an analysis job's start-up goes, before any analysis runs: interpreter and imports (torch,
transformers, TransformerLens, the package), building the offline model's weights once, and booting
it through TransformerLens on the chosen device. Each step runs in a fresh process, as a job does.

    python benchmarks/startup.py [--model random:gpt2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

STEPS = {
    "python alone": "pass",
    "import torch": "import torch",
    "import transformers": "import torch, transformers",
    "import transformer_lens": "import torch, transformer_lens.model_bridge",
    "import opposites (analyses, io)": "import opposites.analyses, opposites.io, opposites.models, opposites.core",
}


def run(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:gpt2")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    for name, code in STEPS.items():
        print(f"{name:<36} {run(code):6.2f} s (fresh process, cumulative)")
    with tempfile.TemporaryDirectory() as tmp:
        build = f"from opposites.models import build_offline_model; build_offline_model({args.model!r}, {tmp!r}, 0)"
        print(f"{'build ' + args.model + ' weights (once/model)':<36} {run(build):6.2f} s")
        boot = (f"import time, torch; from opposites import models; t = time.perf_counter(); "
                f"m = models.load({args.model!r}, {tmp!r}, {args.device!r}); "
                f"torch.cuda.synchronize() if {args.device!r} != 'cpu' else None; "
                f"print(time.perf_counter() - t)")
        out = subprocess.run([sys.executable, "-c", boot], check=True, capture_output=True, text=True).stdout
        print(f"{'imports + boot on ' + args.device:<36} {run(boot):6.2f} s (boot alone {float(out.split()[-1]):.2f} s)")


if __name__ == "__main__":
    main()
