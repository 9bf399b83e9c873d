"""Pixel value ranges: integer images <-> the float range networks see. Depends only on torch,
so both ``data`` and ``models`` import it."""

from __future__ import annotations

import torch


def _check_bits(n_bits: int) -> int:
    if not 1 <= int(n_bits) <= 8:
        raise ValueError(f"n_bits must be in 1..8, got {n_bits}")
    return (1 << int(n_bits)) - 1


def to_model_range(x: torch.Tensor, n_bits: int) -> torch.Tensor:
    """uint8 (any integer dtype) values ``0 .. 2**n_bits - 1`` -> float32 in [-1, 1].

    ``y = x / (2**n_bits - 1) * 2 - 1``: 0 maps to -1, the top value to 1. Same shape as ``x``.
    """
    top = _check_bits(n_bits)
    return x.to(torch.float32) / top * 2.0 - 1.0


def from_model_range(x: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Inverse of :func:`to_model_range`: float in [-1, 1] -> uint8 ``0 .. 2**n_bits - 1``.

    Rounds to the nearest level and clamps values outside [-1, 1]. Same shape as ``x``.
    """
    top = _check_bits(n_bits)
    y = torch.round((x.to(torch.float32) + 1.0) / 2.0 * top)
    return y.clamp_(0, top).to(torch.uint8)
