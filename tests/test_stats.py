"""Bootstrap intervals: width against the normal approximation, seeded, vectorised over components,
and the ratio's normaliser check."""

import math

import pytest
import torch

from opposites.stats import mean_ci, ratio_ci, resample_weights


def test_weights_are_resamples():
    w = resample_weights(7, seed=0, n_resamples=50)  # (n, resample)
    assert w.shape == (7, 50) and torch.allclose(w.sum(0), torch.ones(50, dtype=w.dtype))
    assert ((w * 7).round() == w * 7).all()  # counts / n
    assert torch.equal(w, resample_weights(7, seed=0, n_resamples=50))
    assert not torch.equal(w, resample_weights(7, seed=1, n_resamples=50))


def test_mean_interval_matches_the_normal_approximation():
    x = torch.randn(3, 400, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 + torch.tensor([[0.0], [1.0], [-5.0]])
    est = mean_ci(x, seed=0)
    half = 1.96 * x.std(-1) / math.sqrt(400)
    assert torch.allclose(est.value, x.mean(-1))
    assert torch.allclose((est.ci_high - est.ci_low) / 2, half, rtol=0.15)
    assert ((est.ci_low < est.value) & (est.value < est.ci_high)).all()
    assert est.excludes_zero()[1:].all()  # means 1 and -5, sd 2, n 400


def test_ratio_flags_a_normaliser_that_is_noise():
    gen = torch.Generator().manual_seed(1)
    clean, corrupted = torch.randn(64, generator=gen) + 3, torch.randn(64, generator=gen)
    patched = torch.stack([corrupted, clean, (clean + corrupted) / 2])  # 0, 1, 0.5 by construction
    est, normaliser = ratio_ci(patched, clean, corrupted, seed=0)
    assert est.value.tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert bool(normaliser.excludes_zero())
    assert (est.ci_low <= est.value + 1e-12).all() and (est.value <= est.ci_high + 1e-12).all()
    noise = torch.randn(64, generator=gen) * 0.2
    _, bad = ratio_ci(patched, corrupted + noise, corrupted, seed=0)  # clean = corrupted + noise
    assert not bool(bad.excludes_zero())


def test_record_is_the_estimate_as_results_hold_it():
    est = mean_ci(torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64), seed=0)
    assert est.record() == {"value": est.value.item(), "ci95": [est.ci_low.item(), est.ci_high.item()]}
    assert est.record()["ci95"][0] < est.record()["value"] < est.record()["ci95"][1]
