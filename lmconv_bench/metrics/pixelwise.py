"""Pixel-space completion metrics, per completion against its ground truth.

Inputs are integer images ``[N, C, H, W]`` with values ``0 .. 2**n_bits - 1`` and, for
``l1_hole``, the bool mask ``[N, H, W]`` (True = missing). Observed pixels of a completion equal the
ground truth exactly, so ``psnr`` and ``ssim`` over the whole image are driven by the hole only.

- ``psnr``: 10·log10(MAX² / MSE) over the whole image, in dB (MAX = 2**n_bits - 1); +inf for an
  exact completion.
- ``ssim``: structural similarity over the whole image (pytorch-msssim: Gaussian window 11,
  sigma 1.5, K = (0.01, 0.03), data range MAX, valid-region mean; channels averaged), in [-1, 1].
- ``l1_hole``: mean absolute error over the missing pixels only, in units of MAX (so in [0, 1]).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _max(n_bits: int) -> float:
    return float(2**n_bits - 1)


def psnr(a: Tensor, b: Tensor, n_bits: int = 8) -> Tensor:
    """float64 ``[N]`` in dB."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(_max(n_bits) ** 2 / mse)


def ssim(a: Tensor, b: Tensor, n_bits: int = 8) -> Tensor:
    """float64 ``[N]``; images need a side of at least 11 pixels (the Gaussian window)."""
    from pytorch_msssim import ssim as _ssim

    return _ssim(a.double(), b.double(), data_range=_max(n_bits), size_average=False).double()


def l1_hole(a: Tensor, b: Tensor, missing: Tensor, n_bits: int = 8) -> Tensor:
    """float64 ``[N]``: mean |a - b| / MAX over the missing pixels (all channels); NaN without any."""
    err = (a.double() - b.double()).abs().mean(1)  # [N, H, W], channels averaged
    m = missing.to(err.dtype)
    n = m.flatten(1).sum(1)
    return (err * m).flatten(1).sum(1) / n / _max(n_bits) if bool((n > 0).all()) else torch.full_like(n, math.nan)
