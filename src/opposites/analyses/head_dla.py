"""Direct logit attribution of every attention head at the final position onto the
answer-minus-wrong direction, through the final LayerNorm scale of the run."""

from __future__ import annotations

import pandas as pd
import torch

from opposites.core import JobCache, end_states, prompt_clusters, read_out
from opposites.stats import mean_ci


def per_prompt(model, rows: list[dict], batch_size: int, cache: JobCache | None = None) -> torch.Tensor:
    """(layer, head, prompt) attributions."""
    return torch.cat([read_out(model, state, state.heads) for _, state in end_states(model, rows, batch_size, cache)],
                     dim=-1)  # (layer, head, batch) per batch


def run(model, rows: list[dict], batch_size: int, seed: int, cache: JobCache | None = None) -> pd.DataFrame:
    """Mean DLA of every head over prompts, its std, 95% interval (cluster bootstrap over the task's
    source words), the p-value of mean 0 (normal approximation from the bootstrap) and n."""
    dla = per_prompt(model, rows, batch_size).double().cpu()  # (layer, head, prompt)
    L, H, n = dla.shape
    est = mean_ci(dla, seed, clusters=prompt_clusters(rows))  # (layer, head)
    std = dla.std(-1) if n > 1 else torch.zeros(L, H, device="cpu")
    return pd.DataFrame({"layer": [l for l in range(L) for _ in range(H)],
                         "head": [h for _ in range(L) for h in range(H)],
                         "value": est.value.flatten().tolist(), "std": std.flatten().tolist(),
                         "ci_low": est.ci_low.flatten().tolist(), "ci_high": est.ci_high.flatten().tolist(),
                         "p_value": est.p_value.flatten().tolist(), "n": n})
