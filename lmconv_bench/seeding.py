"""Stable seeds derived from names, never from Python's salted ``hash()``.

Every random choice in the benchmark (random occlusion masks, binarized MNIST pixels,
completion noise) is drawn from a generator seeded by :func:`stable_seed` of the things it
depends on, e.g. ``stable_seed(global_seed, image_id, order, sample)``. Results therefore do
not depend on batch size, process count or iteration order.
"""

from __future__ import annotations

import hashlib

import torch


def stable_seed(*parts: object) -> int:
    """Map any parts to a non-negative 63-bit integer via sha256 of ``"p0:p1:..."``."""
    text = ":".join(str(p) for p in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``stable_seed(*parts)``."""
    g = torch.Generator(device=device)
    g.manual_seed(stable_seed(*parts))
    return g
