"""Uncertainty over prompts: seeded, vectorised bootstrap confidence intervals (percentile method).

One resampling of the prompts is a row of multinomial counts; all resamples of a mean are one matrix
product, (..., n) @ (n, resamples), so no Python loop runs per resample. The same weights serve a
ratio of means (normalised patching), so numerator and denominator are resampled together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

N_RESAMPLES = 1000
LEVEL = 0.95


def resample_weights(n: int, seed: int, n_resamples: int = N_RESAMPLES, device="cpu") -> Tensor:
    """(n, resamples) weights, each column the counts of one bootstrap resample divided by n."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randint(n, (n_resamples, n), generator=gen, device="cpu")  # (resample, draw)
    counts = torch.zeros(n_resamples, n, dtype=torch.float64, device="cpu").scatter_add_(
        1, idx, torch.ones(n_resamples, n, dtype=torch.float64, device="cpu"))
    return (counts / n).T.contiguous().to(device)


def _quantiles(resampled: Tensor) -> tuple[Tensor, Tensor]:
    q = torch.tensor([(1 - LEVEL) / 2, (1 + LEVEL) / 2], dtype=resampled.dtype, device=resampled.device)
    low, high = torch.nanquantile(resampled, q, dim=-1)
    return low, high


def interval(resampled: Tensor) -> list[float]:
    """[low, high] 95% percentile interval of resampled values (resample,)."""
    low, high = _quantiles(resampled.double())
    return [low.item(), high.item()]


@dataclass
class Estimate:
    """A mean over prompts (per component: any leading shape) with its 95% interval."""
    value: Tensor
    ci_low: Tensor
    ci_high: Tensor
    n: int

    def excludes_zero(self) -> Tensor:
        return (self.ci_low > 0) | (self.ci_high < 0)

    def record(self) -> dict:
        """A scalar estimate as results JSON holds it: {"value": v, "ci95": [low, high]}."""
        return {"value": self.value.item(), "ci95": [self.ci_low.item(), self.ci_high.item()]}


def mean_ci(x: Tensor, seed: int, n_resamples: int = N_RESAMPLES) -> Estimate:
    """Mean over the last axis (prompts) of x (..., n), with a bootstrap interval."""
    x = x.double()
    n = x.shape[-1]
    if n < 2:
        return Estimate(x.mean(-1), x.mean(-1), x.mean(-1), n)
    w = resample_weights(n, seed, n_resamples, x.device)  # (n, resample)
    low, high = _quantiles(x @ w)
    return Estimate(x.mean(-1), low, high, n)


def ratio_ci(patched: Tensor, clean: Tensor, corrupted: Tensor, seed: int,
             n_resamples: int = N_RESAMPLES) -> tuple[Estimate, Estimate]:
    """The normalised metric (mean patched - mean corrupted) / (mean clean - mean corrupted), patched
    (..., n) and clean/corrupted (n,) per prompt, resampled together; and the normaliser
    (mean clean - mean corrupted) itself, whose interval tells whether the ratio means anything."""
    patched, clean, corrupted = patched.double(), clean.double(), corrupted.double()
    n = clean.shape[-1]
    value = (patched.mean(-1) - corrupted.mean()) / (clean.mean() - corrupted.mean())
    normaliser = mean_ci(clean - corrupted, seed, n_resamples)
    if n < 2:
        return Estimate(value, value, value, n), normaliser
    w = resample_weights(n, seed, n_resamples, patched.device)  # (n, resample)
    den = (clean - corrupted) @ w  # (resample,)
    low, high = _quantiles((patched @ w - corrupted @ w) / den)
    return Estimate(value, low, high, n), normaliser
