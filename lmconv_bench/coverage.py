"""Which orders a checkpoint was trained on, and how much of an evaluated order it has seen.

An LMConv layer at position ``p`` only ever sees its kernel mask there; so an order the network
was never trained on is harmless at ``p`` if, at ``p``, every layer kind's kernel mask (first
layer: type A, undilated; later layers: type B, undilated and dilated) also occurs at ``p`` under
some trained order. :func:`trained_coverage` is the fraction of such positions, in [0, 1].

:func:`in_training_distribution` decides the ``order_trained`` column: True only when the
*effective* order (the one actually run) is itself one the checkpoint trained on: a trained
plain order, or ``observed_first(o, mask)`` with ``o`` trained and the task's mask family (at its
default parameters) among the checkpoint's ``trained_task_masks``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .masks import FAMILY_PARAMS
from .orders import get_order, kernel_masks


def layer_signatures(perm: torch.Tensor, height: int, width: int, k: int = 3, max_dilation: int = 2) -> torch.Tensor:
    """One int64 code per position of the kernel masks of every layer kind under ``perm``.

    Args:
        perm: long ``[H*W]`` or ``[B, H*W]``.
    Returns:
        int64 ``[H, W]`` or ``[B, H, W]``: bit ``i`` of the code is tap ``i`` of the concatenated
        masks (type A at dilation 1, type B at dilation 1, type B at ``max_dilation`` if > 1).
        Equal codes at a position mean the network computes the same function of its inputs there.
    """
    kinds = [(1, False), (1, True)] + ([(max_dilation, True)] if max_dilation > 1 else [])
    bits = torch.cat([kernel_masks(perm, height, width, k, d, c).flatten(-2) for d, c in kinds], dim=-1)
    weights = 2 ** torch.arange(bits.shape[-1], dtype=torch.int64)
    return (bits.long() * weights).sum(-1)


def trained_coverage(
    effective: torch.Tensor, trained: Sequence[str], height: int, width: int, k: int = 3, max_dilation: int = 2
) -> float:
    """Fraction of positions whose every layer's kernel mask under ``effective`` also occurs at
    that position under some order in ``trained``, in [0, 1]; for one order per image
    (``effective`` ``[B, H*W]``) the mean over images. 1.0 for a trained permutation, by construction.
    """
    if not trained:
        return 0.0
    eff = layer_signatures(effective.reshape(-1, height * width), height, width, k, max_dilation)  # [B, H, W]
    ref = layer_signatures(torch.stack([get_order(n, height, width) for n in trained]), height, width, k, max_dilation)
    hit = (eff.unsqueeze(1) == ref.unsqueeze(0)).any(1)  # [B, H, W]
    return float(hit.double().mean())


def in_training_distribution(
    order: str, mask_family: str | None, mask_params: Mapping[str, Any] | None,
    trained_orders: Sequence[str], trained_task_masks: Sequence[str],
) -> bool:
    """Whether the effective order was trained on: ``order`` itself when ``mask_family`` is None
    (the order runs as it is), else ``observed_first(order, mask)`` for a mask of that family."""
    if order not in trained_orders:
        return False
    if mask_family is None:
        return True
    params = dict(mask_params or {})
    at_defaults = all(params.get(k, v) == v for k, v in FAMILY_PARAMS.get(mask_family, {}).items())
    return mask_family in trained_task_masks and at_defaults
