"""Occlusion masks: which pixels a completion task hides.

A mask is bool ``[H, W]`` with **True = missing** (to be completed). Families:

============  =====================================================================
center        a centred square; default rows and cols ``H//4 .. H - H//4`` (param ``size``)
top_half      rows ``0 .. H//2`` missing        bottom_half  rows ``H//2 .. H``
left_half     cols ``0 .. W//2`` missing        right_half   cols ``W//2 .. W``
random        each pixel missing independently with probability ``p`` (default 0.5),
              drawn from a generator seeded by ``(seed, image_id)``: every model sees the same mask
rectangle     rows ``top .. top+height``, cols ``left .. left+width`` (all four params required)
============  =====================================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import UserError, did_you_mean, unknown
from .seeding import generator

FAMILIES = ("center", "top_half", "bottom_half", "left_half", "right_half", "random", "rectangle")

#: allowed parameters per family, with defaults (None = required).
FAMILY_PARAMS: dict[str, dict[str, Any]] = {
    "center": {"size": "default"},
    "top_half": {},
    "bottom_half": {},
    "left_half": {},
    "right_half": {},
    "random": {"p": 0.5},
    "rectangle": {"top": None, "left": None, "height": None, "width": None},
}


def check_params(family: str, params: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Validate ``params`` for ``family``; return them with defaults filled in."""
    if family not in FAMILY_PARAMS:
        raise unknown("mask family", family, FAMILIES, where)
    allowed = FAMILY_PARAMS[family]
    loc = f" in {where}" if where else ""
    for key in params:
        if key not in allowed:
            hint = did_you_mean(key, allowed)
            raise UserError(
                f"unknown parameter {key!r} for mask family {family!r}{loc}{hint}; "
                f"allowed: {', '.join(allowed) or '(none)'}"
            )
    out = {**allowed, **params}
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise UserError(f"mask family {family!r}{loc} needs parameters {missing}")
    if family == "random" and not (isinstance(out["p"], (int, float)) and 0.0 < out["p"] < 1.0):
        raise UserError(f"mask parameter p{loc} must be a number in (0, 1), got {out['p']!r}")
    for key in ("size", "top", "left", "height", "width"):
        if key in out and out[key] != "default" and not (isinstance(out[key], int) and out[key] >= 0):
            raise UserError(f"mask parameter {key}{loc} must be a non-negative integer, got {out[key]!r}")
    return out


def make_mask(
    family: str, params: Mapping[str, Any], height: int, width: int, image_id: str = "", seed: int = 0
) -> torch.Tensor:
    """The mask of one image: bool ``[height, width]``, True = missing.

    Only ``random`` uses ``image_id`` and ``seed``; the others are the same for every image.
    """
    p = check_params(family, params)
    m = torch.zeros(height, width, dtype=torch.bool)
    if family == "center":
        if p["size"] == "default":
            r0, r1, c0, c1 = height // 4, height - height // 4, width // 4, width - width // 4
        else:
            s = p["size"]
            if s > min(height, width):
                raise UserError(f"center size {s} exceeds the image size {height}x{width}")
            r0, c0 = (height - s) // 2, (width - s) // 2
            r1, c1 = r0 + s, c0 + s
        m[r0:r1, c0:c1] = True
    elif family == "top_half":
        m[: height // 2] = True
    elif family == "bottom_half":
        m[height // 2 :] = True
    elif family == "left_half":
        m[:, : width // 2] = True
    elif family == "right_half":
        m[:, width // 2 :] = True
    elif family == "random":
        g = generator(seed, image_id, "random_mask", p["p"])
        m = torch.rand(height, width, generator=g, dtype=torch.float64) < p["p"]
    elif family == "rectangle":
        t, l, h, w = p["top"], p["left"], p["height"], p["width"]
        if t + h > height or l + w > width or h == 0 or w == 0:
            raise UserError(
                f"rectangle top={t} left={l} height={h} width={w} does not fit a non-empty box "
                f"inside {height}x{width}"
            )
        m[t : t + h, l : l + w] = True
    return m


def make_masks(
    family: str, params: Mapping[str, Any], height: int, width: int, image_ids: Sequence[str], seed: int = 0
) -> torch.Tensor:
    """Masks for a list of images: bool ``[N, height, width]`` (True = missing)."""
    return torch.stack([make_mask(family, params, height, width, i, seed) for i in image_ids])


#: families whose default parameters define a training distribution (``train --task-masks``).
TRAINABLE_FAMILIES = tuple(f for f in FAMILIES if f != "rectangle")


def parse_task_masks(spec: str | None) -> tuple[str, ...]:
    """``"random,center"`` → ``("random", "center")``; validated, duplicates dropped; None/"" → ()."""
    if not spec:
        return ()
    names = tuple(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    for n in names:
        if n not in TRAINABLE_FAMILIES:
            raise unknown("--task-masks family", n, TRAINABLE_FAMILIES)
    return names


def training_masks(
    families: Sequence[str], height: int, width: int, step: int, first_index: int, count: int, seed: int = 0
) -> torch.Tensor:
    """Masks of one training batch for task-aware training: bool ``[count, height, width]``.

    Image ``i`` of the batch has global index ``g = first_index + i`` within the step's global
    batch; its family is drawn uniformly from ``families`` and its mask from that family with
    default parameters, both seeded by ``(seed, step, g)`` only, so the masks do not depend on the
    number of processes that share the batch. Training images never meet the test masks' seeds
    (those are keyed by test image ids).
    """
    out = []
    for g in range(first_index, first_index + count):
        k = int(torch.randint(len(families), (1,), generator=generator(seed, "task_family", step, g)))
        out.append(make_mask(families[k], {}, height, width, image_id=f"train/{step}/{g}", seed=seed))
    return torch.stack(out)
