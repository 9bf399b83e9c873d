"""Summary statistics, bootstrap CIs, Wilcoxon paired tests and logmeanexp (lmconv_bench.metrics.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from lmconv_bench.metrics.stats import logmeanexp, paired_test, summarize


def test_mean_and_stderr_match_hand_computation():
    values = [1.0, 2.0, 4.0, 7.0]
    out = summarize(values, seed=0, n_resamples=500)
    mean = 14.0 / 4  # 3.5
    var = ((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2 + (7 - mean) ** 2) / 3  # ddof=1 -> 7.0
    torch.testing.assert_close(out["mean"], mean)
    torch.testing.assert_close(out["stderr"], math.sqrt(var / 4))
    assert out["n"] == 4


def test_ci_covers_the_mean_and_matches_scipy_bca():
    rng = np.random.default_rng(1)
    values = rng.exponential(scale=2.0, size=200)  # skewed, like per-image LPIPS
    out = summarize(values, seed=7, n_resamples=1000, confidence=0.9)
    assert out["ci_low"] < out["mean"] < out["ci_high"]
    ref = sps.bootstrap((values,), np.mean, n_resamples=1000, confidence_level=0.9, method="BCa",
                        rng=np.random.default_rng(7)).confidence_interval
    torch.testing.assert_close((out["ci_low"], out["ci_high"]), (ref.low, ref.high), rtol=1e-12, atol=0.0)
    # The interval's half-width is of the order of 1.645 standard errors.
    assert 0.5 < (out["ci_high"] - out["ci_low"]) / (2 * 1.645 * out["stderr"]) < 2.0


def test_summary_is_deterministic_given_the_seed():
    values = np.random.default_rng(2).normal(size=50)
    a, b = summarize(values, seed=3), summarize(values, seed=3)
    c = summarize(values, seed=4)
    assert a == b
    assert (a["ci_low"], a["ci_high"]) != (c["ci_low"], c["ci_high"])


def test_single_value_has_nan_spread_and_constant_values_a_point_interval():
    one = summarize(torch.tensor([0.25]))
    assert one["mean"] == 0.25 and one["n"] == 1
    assert math.isnan(one["stderr"]) and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    const = summarize([2.0] * 10)
    assert (const["stderr"], const["ci_low"], const["ci_high"]) == (0.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


def test_wilcoxon_matches_scipy_on_a_known_example():
    # Paired example from scipy's wilcoxon docs (Cushny & Peebles via Fisher): differences in height.
    d = np.array([6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75], dtype=float)
    a, b = d + 100.0, np.full_like(d, 100.0)
    out = paired_test(a, b)
    ref = sps.wilcoxon(d)
    assert out["test"] == "wilcoxon" and out["n"] == 15
    assert out["statistic"] == pytest.approx(float(ref.statistic)) == 24.0
    torch.testing.assert_close(out["p_value"], float(ref.pvalue))
    assert out["p_value"] == pytest.approx(0.041259765625)  # exact two-sided p from scipy's docs


def test_wilcoxon_all_zero_differences_is_p_one():
    x = torch.linspace(0, 1, 12, dtype=torch.float64)
    assert paired_test(x, x.clone()) == {"statistic": 0.0, "p_value": 1.0, "n": 12, "test": "wilcoxon"}
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0], [1.0])


def test_logmeanexp_matches_naive_and_is_stable():
    x = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.1, -2.5]], dtype=torch.float32)
    naive = torch.log(torch.exp(x.double()).mean(dim=0))
    got = logmeanexp(x, dim=0)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, naive)
    torch.testing.assert_close(torch.as_tensor(logmeanexp(x.numpy(), dim=1)), torch.log(torch.exp(x.double()).mean(1)))
    # Log-likelihoods of whole images (thousands of nats) underflow naively but not here.
    big = torch.tensor([-5000.0, -5001.0], dtype=torch.float64)
    torch.testing.assert_close(logmeanexp(big), torch.tensor(-5000.0 + math.log((1 + math.exp(-1.0)) / 2),
                                                             dtype=torch.float64))
    assert logmeanexp(torch.tensor([-math.inf, -math.inf])) == -math.inf
