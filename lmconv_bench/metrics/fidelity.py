"""FID and KID through torch-fidelity, with provisioned weights and cached reference features.

- Features: torch-fidelity's ``FeatureExtractorInceptionV3('inception-v3-compat', [layer])`` with
  ``feature_extractor_weights_path`` = the verified offline file of :mod:`.weights` (or its own
  download when ``LMCONV_BENCH_WEIGHTS=official``). The extractor takes uint8 3-channel images of
  any size and itself resizes them to 299 x 299 (TF1-compatible bilinear) and maps them to
  ``(x - 128) / 128``. We only repeat grayscale to 3 channels and scale ``n_bits < 8`` data to
  0..255 (``round(v * 255 / (2**n_bits - 1))``).
- Metrics: torch-fidelity's own ``fid_features_to_statistics`` / ``fid_statistics_to_metric`` and
  ``kid_features_to_metric`` (polynomial kernel, degree 3, gamma 1/d, coef0 1; unbiased MMD^2).
  KID uses subsets of ``min(1000, n_gen, n_ref)`` images (torch-fidelity's default of 1000 asserts
  with fewer samples), ``kid_subsets`` of them, drawn with ``np.random.RandomState(seed)``.
- Reference features are cached as ``default_cache_dir()/fid_stats/<sha256>.npz``, keyed by a
  content hash of the caller's key (dataset, split, ids, preprocessing), the weights' content
  hash, the feature layer and the torch-fidelity version.

FID at small n is biased upwards; report KID beside it and compare quick-profile FID only at the
same n. Inception Score is not available with the offline weights (:func:`inception_score`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..io_utils import atomic_write_bytes
from . import weights as _weights

FEATURE_EXTRACTOR = "inception-v3-compat"
FEATURE_LAYER = "2048"
KID_MAX_SUBSET_SIZE = 1000
KID_SUBSETS = 100
KID_SEED = 2020            # torch-fidelity's default rng_seed
CACHE_FORMAT = 1

_EXTRACTORS: dict[tuple[str, str, str], torch.nn.Module] = {}


def _torch_fidelity_version() -> str:
    from torch_fidelity.version import __version__

    return __version__


def _extractor(layer: str, device: str | torch.device, progress: bool) -> torch.nn.Module:
    """torch-fidelity's Inception extractor for ``[layer]``, cached per process (global RNG untouched)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = _weights.inception_weights_path(progress=progress)
    key = (layer, str(device), str(path))
    if key not in _EXTRACTORS:
        with torch.random.fork_rng(devices=[]):  # building the net draws random inits; keep callers' RNG
            model = FeatureExtractorInceptionV3(
                FEATURE_EXTRACTOR, [layer],
                feature_extractor_weights_path=None if path is None else str(path),
                verbose=progress,
            )
        _EXTRACTORS[key] = model.to(device).eval()
    return _EXTRACTORS[key]


def to_inception_input(images: Tensor, n_bits: int = 8) -> Tensor:
    """uint8 ``[N, 3, H, W]`` in 0..255 from integer images ``[N, C, H, W]``, C in {1, 3}, values 0..2**n_bits-1.

    ``n_bits < 8`` values are scaled by ``255 / (2**n_bits - 1)`` and rounded; grayscale is repeated.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, C, H, W] with C in (1, 3), got {getattr(images, 'shape', type(images))}")
    if images.is_floating_point() or images.dtype == torch.bool:
        raise ValueError(f"expected integer images (uint8), got {images.dtype}")
    if not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits must be in 1..8, got {n_bits}")
    top = 2**n_bits - 1
    if images.numel() and (int(images.min()) < 0 or int(images.max()) > top):
        raise ValueError(f"image values must lie in 0..{top} for n_bits={n_bits}")
    if n_bits < 8:
        images = torch.round(images.to(torch.float64) * (255.0 / top))
    images = images.to(torch.uint8)
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return images


def inception_features(images: Tensor, n_bits: int = 8, batch_size: int = 32, progress: bool = True,
                       device: str | torch.device = "cpu", layer: str = FEATURE_LAYER) -> Tensor:
    """Inception pool features of ``images`` (integer ``[N, C, H, W]``, values 0..2**n_bits-1).

    Returns float64 ``[N, D]`` on the CPU, D = int(layer) (2048 by default; '64', '192', '768' are
    the earlier pooled blocks). Costs about 0.1-0.2 s per image on 2 CPU cores.
    """
    from tqdm.auto import tqdm

    x = to_inception_input(images, n_bits)
    model = _extractor(layer, device, progress)
    out = []
    with torch.inference_mode():
        starts = range(0, x.shape[0], batch_size)
        for s in tqdm(starts, disable=not progress or len(starts) < 2, desc="Inception features",
                      unit="batch", leave=False):
            (feats,) = model(x[s:s + batch_size].to(device))
            out.append(feats.to("cpu", torch.float64))
    if not out:
        return torch.zeros(0, int(layer) if layer.isdigit() else 1008, dtype=torch.float64)
    return torch.cat(out)


def _jsonable(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (torch.Size, set, frozenset)):
        return sorted(o) if isinstance(o, (set, frozenset)) else list(o)
    raise TypeError(f"cache key part of type {type(o).__name__} is not JSON-serialisable")


def reference_key(key_parts: Mapping[str, Any], n_bits: int = 8, layer: str = FEATURE_LAYER) -> str:
    """sha256 of the canonical JSON of the caller's key, the extractor, layer, weights and torch-fidelity version."""
    full = {
        "key_parts": dict(key_parts), "n_bits": n_bits, "feature_extractor": FEATURE_EXTRACTOR,
        "layer": layer, "weights": _weights.weights_identity(_weights.INCEPTION),
        "torch_fidelity": _torch_fidelity_version(), "format": CACHE_FORMAT,
    }
    text = json.dumps(full, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()


def reference_cache_path(key: str) -> Path:
    from ..data import default_cache_dir

    return default_cache_dir() / "fid_stats" / f"{key}.npz"


def reference_features(key_parts: Mapping[str, Any], images_fn: Callable[[], Tensor], *, n_bits: int = 8,
                       layer: str = FEATURE_LAYER, batch_size: int = 32, progress: bool = True,
                       device: str | torch.device = "cpu") -> Tensor:
    """Inception features of a reference set, computed once per key and cached on disk.

    ``key_parts`` must identify the images completely (dataset, split, ids, preprocessing, ...) and
    be JSON-serialisable; ``images_fn()`` is called only on a cache miss and returns the integer
    images. Returns float64 ``[N, D]``. The cache file ``default_cache_dir()/fid_stats/<sha256>.npz``
    is written atomically; an unreadable file is recomputed.
    """
    key = reference_key(key_parts, n_bits, layer)
    path = reference_cache_path(key)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key and z["features"].ndim == 2:
                    return torch.from_numpy(z["features"].astype(np.float64))
        except (OSError, ValueError, KeyError):
            pass  # corrupt or foreign file: recompute below
    feats = inception_features(images_fn(), n_bits=n_bits, batch_size=batch_size, progress=progress,
                               device=device, layer=layer)
    buf = io.BytesIO()
    np.savez(buf, features=feats.numpy(), key=np.array(key))
    atomic_write_bytes(path, buf.getvalue())
    return feats


def kid_subset_size_for(n_gen: int, n_ref: int) -> int:
    """The KID subset size used by :func:`fid_kid` by default: ``min(1000, n_gen, n_ref)``."""
    return min(KID_MAX_SUBSET_SIZE, n_gen, n_ref)


def _as_features(x: Tensor | np.ndarray, what: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().to("cpu", torch.float64)
    if t.dim() != 2:
        raise ValueError(f"{what} features must be [N, D], got {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise UserError(f"FID/KID need at least 2 {what} images, got {t.shape[0]}; use a larger --limit")
    return t


def fid_kid(gen_features: Tensor | np.ndarray, ref_features: Tensor | np.ndarray,
            kid_subset_size: int | None = None, kid_subsets: int = KID_SUBSETS,
            seed: int = KID_SEED) -> dict[str, float]:
    """FID and KID between two feature sets ``[N_gen, D]`` and ``[N_ref, D]`` (float64 internally).

    Returns ``{"fid": float, "kid_mean": float, "kid_std": float, "kid_stderr": float}``.
    ``kid_std`` is the standard deviation over the ``kid_subsets`` subset estimates (a spread of
    the estimator, NOT a standard error; not written to records); ``kid_stderr`` is the
    delete-one-image jackknife standard error over the generated images
    (:func:`kid_jackknife_stderr`). ``kid_subset_size`` defaults to :func:`kid_subset_size_for`.
    Deterministic for a given ``seed``.
    """
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric, KEY_METRIC_FID
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    gen, ref = _as_features(gen_features, "generated"), _as_features(ref_features, "reference")
    if gen.shape[1] != ref.shape[1]:
        raise ValueError(f"feature sizes differ: {gen.shape[1]} vs {ref.shape[1]}")
    limit = min(gen.shape[0], ref.shape[0])
    size = kid_subset_size_for(gen.shape[0], ref.shape[0]) if kid_subset_size is None else int(kid_subset_size)
    if not 2 <= size <= limit:
        raise UserError(f"KID subset size {size} must lie in 2..{limit} (the smaller set's size); "
                        "leave it unset to use min(1000, n)")
    if min(gen.shape[0], ref.shape[0]) <= gen.shape[1]:
        fid = {KEY_METRIC_FID: frechet_distance_low_rank(gen, ref)}
    else:
        fid = fid_statistics_to_metric(fid_features_to_statistics(gen), fid_features_to_statistics(ref), False)
    kid = kid_features_to_metric(gen, ref, kid_subset_size=size, kid_subsets=kid_subsets, rng_seed=seed,
                                 verbose=False)
    return {"fid": float(fid[KEY_METRIC_FID]), "kid_mean": float(kid[KEY_METRIC_KID_MEAN]),
            "kid_std": float(kid[KEY_METRIC_KID_STD]), "kid_stderr": kid_jackknife_stderr(gen, ref)}


def kid_jackknife_stderr(gen: Tensor | np.ndarray, ref: Tensor | np.ndarray, chunk: int = 4096) -> float:
    """Delete-one-generated-image jackknife standard error of the unbiased KID (MMD² with the cubic
    polynomial kernel ``k(x, y) = (x·y / D + 1)^3``, all generated against all reference features).

    ``sqrt((m - 1) / m · Σ_i (θ_(i) - mean θ_(·))²)`` over the ``m`` generated images, where
    ``θ_(i)`` is the estimate without image ``i``. The reference-reference term is the same for every
    ``θ_(i)`` and cancels, so only the ``m × m`` and ``m × n`` kernel row sums are needed (the latter
    in chunks of the reference set). Inputs ``[m, D]``, ``[n, D]``; NaN for ``m < 3``.
    """
    g = np.asarray(gen, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    m, d = g.shape
    if m < 3:
        return math.nan
    kxx = (g @ g.T / d + 1.0) ** 3
    np.fill_diagonal(kxx, 0.0)
    row_xx = kxx.sum(1)
    row_xy = np.zeros(m)
    for start in range(0, r.shape[0], chunk):
        row_xy += ((g @ r[start : start + chunk].T / d + 1.0) ** 3).sum(1)
    n = r.shape[0]
    s_xx, s_xy = row_xx.sum(), row_xy.sum()
    theta = (s_xx - 2.0 * row_xx) / ((m - 1) * (m - 2)) - 2.0 * (s_xy - row_xy) / ((m - 1) * n)
    return float(math.sqrt((m - 1) / m * np.sum((theta - theta.mean()) ** 2)))


def frechet_distance_low_rank(gen: Tensor | np.ndarray, ref: Tensor | np.ndarray) -> float:
    """Exact Fréchet distance between Gaussians fitted to two feature sets when one set has no
    more samples than dimensions (the usual case on a CPU: tens of completions, 2048 features).

    FID = |mu_g - mu_r|^2 + tr S_g + tr S_r - 2 tr sqrt(S_g S_r). With S_g = A A^T
    (A = centred features / sqrt(n - 1), [D, n]), the nonzero eigenvalues of S_g S_r are those of
    the small symmetric matrix A^T S_r A ([n, n]), so tr sqrt(S_g S_r) is the sum of their square
    roots. This equals torch-fidelity's ``scipy.linalg.sqrtm`` result (to about 1e-7 relative,
    the accuracy of sqrtm on a singular product) at a fraction of its cost; the roles of the two
    sets swap when the reference set is the smaller one. Inputs ``[N, D]``; float64 internally.
    """
    g = np.asarray(gen, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if g.shape[0] > r.shape[0]:
        g, r = r, g
    if g.shape[0] < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples per set")
    a = (g - g.mean(0)).T / math.sqrt(g.shape[0] - 1)  # [D, n], S_g = a a^T
    s_r = np.cov(r, rowvar=False)
    small = a.T @ s_r @ a
    eig = np.linalg.eigvalsh((small + small.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = g.mean(0) - r.mean(0)
    return float(diff @ diff + (a * a).sum() + np.trace(s_r) - 2.0 * tr_sqrt)


def inception_score(images: Tensor, n_bits: int = 8, splits: int = 10, batch_size: int = 32,
                    progress: bool = True, device: str | torch.device = "cpu", seed: int = KID_SEED) -> dict[str, float]:
    """Inception Score ``{"is_mean", "is_std"}`` -- only with ``LMCONV_BENCH_WEIGHTS=official``.

    The offline weights have no logits layer (it is NaN), so this raises :class:`UserError`
    instead of returning NaN.
    """
    _weights.require_inception_score_support()
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = inception_features(images, n_bits, batch_size, progress, device, layer="logits_unbiased")
    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=seed)
    return {"is_mean": out["inception_score_mean"], "is_std": out["inception_score_std"]}


def describe() -> dict[str, Any]:
    """Facts for the run manifest (no download, no computation)."""
    return {
        "feature_extractor": f"torch-fidelity {FEATURE_EXTRACTOR}",
        "feature_layer": FEATURE_LAYER,
        "torch_fidelity": _torch_fidelity_version(),
        **_weights.weights_identity(_weights.INCEPTION),
        "input": "uint8 RGB (grayscale repeated; n_bits<8 scaled by 255/(2^n-1), rounded); "
                 "resized to 299x299 inside torch-fidelity (TF1-compatible bilinear)",
        "kid_subset_size_rule": f"min({KID_MAX_SUBSET_SIZE}, n_gen, n_ref)",
        "kid_subsets": KID_SUBSETS,
        "kid_kernel": "polynomial, degree 3, gamma 1/d, coef0 1 (unbiased MMD^2)",
        "kid_seed": KID_SEED,
    }


__all__ = [
    "FEATURE_EXTRACTOR", "FEATURE_LAYER", "describe", "fid_kid", "inception_features", "inception_score",
    "kid_subset_size_for", "reference_cache_path", "reference_features", "reference_key", "to_inception_input",
]
