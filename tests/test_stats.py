"""Intervals: bootstrap width against the normal approximation, seeded, vectorised over components,
the ratio's normaliser check; Wilson intervals of proportions; the cluster bootstrap over words; the
bias-corrected Spearman interval; Benjamini-Hochberg dots on head maps."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from opposites.derived import FDR_Q, benjamini_hochberg, significant
from opposites.stats import (average_ranks, design_effect, interval, mean_ci, pearson, proportion, ratio_ci,
                             resample_weights, spearman_ci, t_two_sided, wilson, wilson_at)


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


def test_wilson_does_not_collapse_at_all_successes():
    low, high = wilson(64, 64)
    assert low == pytest.approx(0.943, abs=0.002) and high == 1.0
    assert wilson(0, 64)[0] == 0.0 and wilson(0, 64)[1] == pytest.approx(1 - 0.943, abs=0.002)
    hits = torch.ones(64, dtype=torch.float64)
    est = proportion(hits)
    assert est.value.item() == 1.0 and est.ci_low.item() == pytest.approx(low)
    boot = mean_ci(hits, seed=0)  # the percentile bootstrap's degenerate [1, 1]
    assert boot.ci_low.item() == 1.0 and est.ci_low.item() < 0.95
    # vectorised over components; the interval holds the share
    est = proportion(torch.tensor([[1, 0, 1, 1], [0, 0, 0, 1]]))
    assert ((est.ci_low <= est.value) & (est.value <= est.ci_high)).all()


WORDS = [i // 8 for i in range(64)]  # 8 words of 8 prompts each


def test_proportion_widens_when_hits_follow_the_word():
    """Planted word effect: every prompt of 5 words hits, every prompt of 3 misses. The prompts carry
    no more than the 8 words do, so the interval is about Wilson's at n = 8 words (7 with the
    C / (C - 1) correction), far wider than Wilson's over 64 prompts (what proportion() gave before
    clusters). The design effect agrees with an independent one, the cluster bootstrap's variance
    of the share over the binomial variance (the bootstrap lacks the C / (C - 1) factor)."""
    hits = torch.tensor([1.0 if w < 5 else 0.0 for w in WORDS], dtype=torch.float64)
    plain, clustered = proportion(hits), proportion(hits, WORDS)
    assert clustered.value.item() == plain.value.item() == 5 / 8 and clustered.n == 64
    assert clustered.ci_low.item() < plain.ci_low.item() - 0.1 and clustered.ci_high.item() > plain.ci_high.item() + 0.1
    assert design_effect(hits, WORDS).item() == pytest.approx(8 * 8 / 7)
    assert [clustered.ci_low.item(), clustered.ci_high.item()] == pytest.approx([t.item() for t in wilson_at(torch.tensor(5 / 8, dtype=torch.float64), torch.tensor(7.0))])
    sizes = [2, 3, 5, 6]  # unequal words, alternate words hit
    words = [w for w, m in enumerate(sizes) for _ in range(m)]
    for x, labels in ((hits, WORDS), (torch.tensor([float(w % 2) for w in words], dtype=torch.float64), words)):
        n, C, p = len(x), len(set(labels)), x.mean().item()
        boot = (x @ resample_weights(n, 0, 4000, clusters=labels)).var().item() / (p * (1 - p) / n)
        assert design_effect(x, labels).item() * (C - 1) / C == pytest.approx(boot, rel=0.1)


def test_proportion_is_wilson_when_hits_ignore_the_word():
    """Independent hits (no word effect): the estimated design effect is about 1 and the interval
    about Wilson's over prompts; averaged over draws the clustered interval is no wider than 10%."""
    gen = torch.Generator().manual_seed(0)
    hits = (torch.rand(200, 64, generator=gen) < 0.6).double()  # (draw, prompt)
    plain, clustered = proportion(hits), proportion(hits, WORDS)
    ratio = ((clustered.ci_high - clustered.ci_low) / (plain.ci_high - plain.ci_low)).mean().item()
    assert 1.0 <= ratio < 1.1
    assert (clustered.ci_low <= plain.ci_low + 1e-12).all()  # never narrower than Wilson


def test_all_hits_with_clusters_count_each_word_once():
    """64/64 over 8 words: no spread, so the within-word correlation cannot be estimated; the
    conservative effective n is the number of words: Wilson's 8/8 (about [0.68, 1]), neither the
    degenerate [1, 1] of a cluster bootstrap nor Wilson's over 64 independent prompts (about 0.94,
    what proportion() gave before). 6 words (the size task's pairs): about [0.61, 1]."""
    hits = torch.ones(64, dtype=torch.float64)
    est = proportion(hits, WORDS)
    assert est.ci_low.item() == pytest.approx(wilson(8, 8)[0]) and est.ci_high.item() == 1.0
    assert est.ci_low.item() < 0.9 and est.n == 64
    six = [i % 6 for i in range(64)]
    assert proportion(hits, six).ci_low.item() == pytest.approx(0.61, abs=0.01)
    assert proportion(torch.zeros(64, dtype=torch.float64), six).ci_high.item() == pytest.approx(0.39, abs=0.01)
    assert proportion(hits).ci_low.item() == pytest.approx(0.943, abs=0.002)  # no clusters: prompts independent
    assert mean_ci(hits, seed=0, clusters=WORDS).ci_low.item() == 1.0
    # one miss: too few exceptions to estimate the within-word correlation, so still at most one
    # observation per word; the interval is not narrower than all hits' (before: about Wilson's 63/64)
    one_miss = hits.clone()
    one_miss[0] = 0.0
    alone = [0] + [1 + i // 8 for i in range(63)]
    got = proportion(one_miss, alone)
    assert got.ci_low.item() <= proportion(hits, alone).ci_low.item() < wilson(63, 64)[0] - 0.1
    assert got.ci_low.item() == pytest.approx(wilson_at(torch.tensor(63 / 64, dtype=torch.float64), torch.tensor(9.0))[0].item())


def test_cluster_weights_keep_each_drawn_word_whole():
    clusters = ["a", "a", "b", "b", "b", "c"]
    w = resample_weights(6, seed=0, n_resamples=200, clusters=clusters)  # (prompt, resample)
    assert torch.allclose(w.sum(0), torch.ones(200, dtype=w.dtype))
    assert torch.equal(w[0], w[1]) and torch.equal(w[2], w[3]) and torch.equal(w[3], w[4])
    assert torch.equal(resample_weights(6, 0, 50), resample_weights(6, 0, 50, clusters=range(6)))


def test_cluster_interval_is_wider_when_the_word_matters():
    """8 words x 8 prompts, a planted per-word effect: prompts of one word are not independent, and
    only the cluster bootstrap's interval is wide enough for the spread of the word effects."""
    gen = torch.Generator().manual_seed(0)
    words = torch.arange(8).repeat_interleave(8)  # (prompt,)
    x = 2 * torch.randn(8, generator=gen, dtype=torch.float64)[words] + 0.3 * torch.randn(64, generator=gen, dtype=torch.float64)
    by_prompt = mean_ci(x, seed=0)
    by_word = mean_ci(x, seed=0, clusters=words.tolist())
    assert torch.equal(by_word.value, by_prompt.value)
    width = lambda e: (e.ci_high - e.ci_low).item()  # noqa: E731
    assert width(by_word) > 2 * width(by_prompt)
    # the word means' own standard error sets the cluster interval's width
    word_means = x.view(8, 8).mean(1)
    assert width(by_word) / 2 == pytest.approx(1.96 * word_means.std().item() / math.sqrt(8), rel=0.35)


def test_spearman_interval_covers_a_known_rho_and_holds_its_estimate():
    """Edges with known mean scores (true rho of the means), noisy per prompt: the bias-corrected
    interval holds its estimate every time and covers the true rho far more often than the plain
    percentile interval of the resampled rho (which the noise of the means pulls towards 0)."""
    gen = torch.Generator().manual_seed(0)
    trials, covered, plain_covered = 30, 0, 0
    for t in range(trials):
        mu_a = torch.randn(200, generator=gen, dtype=torch.float64)
        mu_b = mu_a + 0.5 * torch.randn(200, generator=gen, dtype=torch.float64)
        true = pearson(average_ranks(mu_a), average_ranks(mu_b)).item()
        noise = 3 * torch.randn(200, 24, generator=gen, dtype=torch.float64)
        a, b = mu_a[:, None] + noise, mu_b[:, None] + noise / 2 + 1.5 * torch.randn(200, 24, generator=gen, dtype=torch.float64)
        est = spearman_ci(a, b, seed=t)
        assert est.ci_low <= est.value <= est.ci_high
        covered += bool(est.ci_low <= true <= est.ci_high)
        w = resample_weights(24, t)
        low, high = interval(pearson(average_ranks(a @ w), average_ranks(b @ w)))
        plain_covered += low <= true <= high
    assert covered / trials > 0.5 and covered >= plain_covered + trials // 3


def test_average_ranks_share_ties():
    x = torch.tensor([[3.0, 1.0], [1.0, 1.0], [3.0, 2.0], [2.0, 1.0]])
    assert average_ranks(x).T.tolist() == [[2.5, 0.0, 2.5, 1.0], [1.0, 1.0, 3.0, 1.0]]


def test_benjamini_hochberg_controls_false_discoveries_on_a_head_map():
    """12 x 12 heads, 24 prompts, 24 heads with a real effect and 120 null: the share of marked heads
    that are null stays under q on average with BH, and is larger with 'the interval excludes 0'."""
    gen = torch.Generator().manual_seed(0)
    real = torch.zeros(144, dtype=torch.bool)
    real[:24] = True
    fdp_bh, fdp_raw, found = [], [], 0
    for t in range(200):
        x = torch.randn(144, 24, generator=gen, dtype=torch.float64) + real[:, None] * 1.5
        est = mean_ci(x, seed=t)
        df = pd.DataFrame({"value": est.value.numpy(), "p_value": est.p_value.numpy()})
        for marked, out in ((significant(df, floor=0.0).to_numpy(), fdp_bh), (est.excludes_zero().numpy(), fdp_raw)):
            out.append((marked & ~real.numpy()).sum() / max(1, marked.sum()))
        found += significant(df, floor=0.0).to_numpy()[:24].sum()
    assert np.mean(fdp_bh) <= FDR_Q and np.mean(fdp_raw) > FDR_Q
    assert found / (200 * 24) > 0.9  # BH still finds the real effects
    # the effect floor drops a 'significant' but tiny effect
    df = pd.DataFrame({"value": [10.0, 0.1, -8.0], "p_value": [1e-9, 1e-9, 1e-9]})
    assert significant(df).tolist() == [True, False, True]


def test_benjamini_hochberg_step_up():
    # m = 4: thresholds 0.0125, 0.025, 0.0375, 0.05; rank 2 (0.03) fails, rank 3 (0.036) passes: step-up keeps 3
    assert benjamini_hochberg([0.03, 0.001, 0.036, 0.2]).tolist() == [True, True, True, False]
    assert benjamini_hochberg([0.02, 0.02, 0.02, 0.02]).tolist() == [True] * 4
    assert not benjamini_hochberg([0.5, 0.9]).any()


def test_p_value_is_the_t_test_from_the_bootstrap_spread():
    x = torch.randn(2, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + torch.tensor([[0.0], [1.0]])
    est = mean_ci(x, seed=0, n_resamples=4000)
    t = x.mean(-1) / (x.std(-1) / math.sqrt(24))
    # scipy.stats.t.sf(|t|, 23) * 2 at t = 2.0 and 3.5 (t tables): 0.0574, 0.00192
    assert t_two_sided(torch.tensor([2.0, 3.5]), 23).tolist() == pytest.approx([0.0574, 0.00192], rel=0.01)
    assert t_two_sided(torch.tensor([1.0]), 1).item() == pytest.approx(0.5)  # Cauchy: P(|T| > 1)
    assert est.p_value.tolist() == pytest.approx(t_two_sided(t, 23).tolist(), rel=0.15)


def test_pearson_ci_finds_a_planted_correlation():
    """pearson_ci across items of noisy per-prompt scores: b = 2a + noise has r near 1; for an
    independent b, r is the items' own correlation of means (the interval is over prompts, not
    items); each estimate lies in its interval."""
    from opposites.stats import pearson_ci

    g = torch.Generator().manual_seed(0)
    items, prompts = 30, 40
    a = torch.randn(items, 1, generator=g) + 0.3 * torch.randn(items, prompts, generator=g)
    tied = 2 * a + 0.3 * torch.randn(items, prompts, generator=g)
    free = torch.randn(items, 1, generator=g) + 0.3 * torch.randn(items, prompts, generator=g)
    hi, lo = pearson_ci(a, tied, seed=0), pearson_ci(a, free, seed=0)
    assert hi.ci_low <= hi.value <= hi.ci_high and lo.ci_low <= lo.value <= lo.ci_high
    assert hi.value > 0.9 and hi.ci_low > 0.5
    assert lo.value == pytest.approx(pearson(a.mean(1), free.mean(1)).item(), abs=0.05) and abs(lo.value) < 0.5


def test_newcombe_paired_interval_holds_where_the_bootstrap_collapses():
    """Both shares 30/30: every bootstrap difference is 0, while Newcombe's paired interval keeps
    each share's Wilson uncertainty (±(1 - Wilson's lower bound of 30/30) at phi = 0); swapping the
    arms negates it; it contains the difference; positive correlation narrows it."""
    from opposites.stats import newcombe_paired, wilson

    ones = torch.ones(30)
    low, high = newcombe_paired(ones, ones)
    assert abs(high - (1 - wilson(30, 30)[0])) < 1e-9 and abs(low + high) < 1e-9
    clustered = newcombe_paired(ones, ones, [str(i % 6) for i in range(30)])
    assert clustered[0] < low  # six words: a smaller effective n, a wider interval
    a = torch.tensor([1.0] * 24 + [0.0] * 6)
    b = torch.tensor([1.0] * 20 + [0.0] * 10)
    lo, hi = newcombe_paired(a, b)
    assert lo < (a.mean() - b.mean()).item() < hi
    assert [round(x, 12) for x in newcombe_paired(b, a)] == [round(-hi, 12), round(-lo, 12)]
    shuffled = torch.tensor([0.0] * 6 + [1.0] * 24)  # same share as a, uncorrelated with b's order
    lo2, hi2 = newcombe_paired(shuffled, b)
    assert hi - lo < hi2 - lo2
