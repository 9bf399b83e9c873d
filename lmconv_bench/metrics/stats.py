"""Summary statistics, bootstrap intervals and paired tests over per-image metric values (scipy-based).

- :func:`summarize`: mean, standard error ``std(ddof=1) / sqrt(n)``, and a bootstrap confidence
  interval of the mean from ``scipy.stats.bootstrap`` with the **BCa** method (bias-corrected and
  accelerated), ``n_resamples`` resamples drawn from ``np.random.default_rng(seed)``, so the
  interval is deterministic for a given seed. Where BCa is undefined (e.g. all values equal: its
  jackknife acceleration is 0/0) the **percentile** interval is used instead; for constant data
  that is ``[v, v]``. With ``n == 1`` the standard error and the interval are NaN (no spread can
  be estimated from one value); ``n == 0`` is an error.
- :func:`paired_test`: two-sided Wilcoxon signed-rank test on paired per-image values
  (``scipy.stats.wilcoxon`` defaults: zero differences dropped (``zero_method='wilcox'``), exact
  null distribution for small samples without ties, normal approximation otherwise). When every
  difference is zero there is no evidence of a difference: statistic 0, p-value 1.
- :func:`logmeanexp`: ``log(mean(exp(x)))`` in float64 via log-sum-exp, for order ensembles
  (the mean of likelihoods over orders, in the log domain; units are those of ``x``, e.g. nats).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy import special, stats
from torch import Tensor

CI_METHOD = "BCa"          # fallback: "percentile" where BCa is undefined
PAIRED_TEST = "wilcoxon"
_MAX_BATCH_ELEMENTS = 1 << 22  # bounds bootstrap memory to ~32 MiB of float64 per batch
# scipy >= 1.15 takes `rng`; older versions only `random_state` (same Generator semantics).
_RNG_KW = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def _as_1d(values: Sequence[float] | np.ndarray | Tensor, what: str = "values") -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 0:
        x = x.reshape(1)
    if x.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contain NaN or infinite entries")
    return x


def summarize(values: Sequence[float] | np.ndarray | Tensor, seed: int = 0, n_resamples: int = 2000,
              confidence: float = 0.95) -> dict[str, float | int]:
    """Mean, standard error and bootstrap CI of the mean of 1-D finite ``values``.

    Returns ``{"mean", "stderr", "ci_low", "ci_high", "n"}`` (floats in the unit of ``values``;
    ``n`` int). ``stderr = std(ddof=1) / sqrt(n)``; the CI is the BCa bootstrap interval at level
    ``confidence`` (percentile interval where BCa is undefined); NaN for ``n == 1``.
    """
    x = _as_1d(values)
    n = int(x.size)
    if n == 0:
        raise ValueError("summarize() needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    mean = float(np.mean(x))
    if n == 1:
        return {"mean": mean, "stderr": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 1}
    stderr = float(np.std(x, ddof=1) / math.sqrt(n))
    if np.all(x == x[0]):
        low = high = float(x[0])
    else:
        low, high = _bootstrap_ci(x, seed, n_resamples, confidence, CI_METHOD)
        if not (math.isfinite(low) and math.isfinite(high)):
            low, high = _bootstrap_ci(x, seed, n_resamples, confidence, "percentile")
    return {"mean": mean, "stderr": stderr, "ci_low": low, "ci_high": high, "n": n}


def _bootstrap_ci(x: np.ndarray, seed: int, n_resamples: int, confidence: float, method: str) -> tuple[float, float]:
    batch = max(1, _MAX_BATCH_ELEMENTS // x.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DegenerateDataWarning -> NaN, handled by the caller
        res = stats.bootstrap((x,), np.mean, n_resamples=n_resamples, batch=batch, vectorized=True,
                              confidence_level=confidence, method=method, **{_RNG_KW: np.random.default_rng(seed)})
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_test(a: Sequence[float] | np.ndarray | Tensor, b: Sequence[float] | np.ndarray | Tensor) -> dict:
    """Two-sided Wilcoxon signed-rank test of ``a[i] - b[i]`` (paired per-image values).

    Returns ``{"statistic": float, "p_value": float, "n": int, "test": "wilcoxon"}``; ``n`` is the
    number of pairs (zero differences included). All-zero differences give statistic 0, p 1.
    """
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired values differ in length: {x.size} vs {y.size}")
    n = int(x.size)
    if n == 0:
        raise ValueError("paired_test() needs at least one pair")
    if np.all(x == y):
        return {"statistic": 0.0, "p_value": 1.0, "n": n, "test": PAIRED_TEST}
    res = stats.wilcoxon(x, y)
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "n": n, "test": PAIRED_TEST}


def logmeanexp(x: Tensor | np.ndarray | Sequence[float], dim: int = 0) -> Tensor | np.ndarray:
    """``log(mean(exp(x), dim))`` computed stably in float64.

    Torch input gives a float64 tensor; anything else a float64 numpy array (or scalar array).
    ``-inf`` entries are allowed (zero likelihood); all ``-inf`` gives ``-inf``.
    """
    if isinstance(x, Tensor):
        t = x.to(torch.float64)
        return torch.logsumexp(t, dim=dim) - math.log(t.shape[dim])
    arr = np.asarray(x, dtype=np.float64)
    return special.logsumexp(arr, axis=dim) - math.log(arr.shape[dim])


__all__ = ["CI_METHOD", "PAIRED_TEST", "logmeanexp", "paired_test", "summarize"]
