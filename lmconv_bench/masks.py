"""Occlusion masks: which pixels a completion task hides.

A mask is bool ``[H, W]`` with **True = missing** (to be completed). Families:

============  =====================================================================
center        a centred square; default rows and cols ``H//4 .. H - H//4`` (param ``size``)
top_half      rows ``0 .. H//2`` missing        bottom_half  rows ``H//2 .. H``
left_half     cols ``0 .. W//2`` missing        right_half   cols ``W//2 .. W``
random        each pixel missing independently with probability ``p`` (default 0.5),
              drawn from a generator seeded by ``(seed, image_id)``: every model sees the same mask
rectangle     rows ``top .. top+height``, cols ``left .. left+width`` (all four params required)
strokes       free-form brush strokes (as in LaMa's evaluation masks): random walks of line
              segments drawn with a round brush of ``width`` thin / medium / thick (radius 1 / 2 /
              3 px at 32 px, scaled with the image), strokes added until the occluded fraction
              reaches ``min_fraction`` (default 0.1), never past ``max_fraction`` (default 0.5);
              seeded by ``(seed, image_id)``
lines         every ``k``-th row (``axis: rows``) or column (``axis: cols``) missing: indices
              ``i`` with ``i % k == k - 1`` (``k`` default 2)
super_resolution  every pixel off the stride-``stride`` grid missing (observed iff row and col
              are multiples of ``stride``, default 2)
expand        outpainting: a border of ``width`` px missing (default ``H // 4``) on every side
              (``side: all``) or one side (``top``, ``bottom``, ``left``, ``right``)
============  =====================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import UserError, did_you_mean, unknown
from .seeding import generator

FAMILIES = ("center", "top_half", "bottom_half", "left_half", "right_half", "random", "rectangle",
            "strokes", "lines", "super_resolution", "expand")

#: allowed parameters per family, with defaults (None = required).
FAMILY_PARAMS: dict[str, dict[str, Any]] = {
    "center": {"size": "default"},
    "top_half": {},
    "bottom_half": {},
    "left_half": {},
    "right_half": {},
    "random": {"p": 0.5},
    "rectangle": {"top": None, "left": None, "height": None, "width": None},
    "strokes": {"width": "medium", "min_fraction": 0.1, "max_fraction": 0.5},
    "lines": {"k": 2, "axis": "rows"},
    "super_resolution": {"stride": 2},
    "expand": {"width": "default", "side": "all"},
}

BRUSH_RADIUS = {"thin": 1, "medium": 2, "thick": 3}
"""Brush radius in pixels at 32 px image size per stroke ``width`` (scaled with the image)."""

SIDES = ("all", "top", "bottom", "left", "right")


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
    if family == "strokes":
        _check_strokes(out, loc)
        return out
    if family == "lines":
        if out["axis"] not in ("rows", "cols"):
            raise unknown(f"mask parameter axis{loc}", out["axis"], ("rows", "cols"))
        if not (isinstance(out["k"], int) and not isinstance(out["k"], bool) and out["k"] >= 2):
            raise UserError(f"mask parameter k{loc} must be an integer >= 2 (every k-th line missing), got {out['k']!r}")
        return out
    if family == "super_resolution":
        if not (isinstance(out["stride"], int) and not isinstance(out["stride"], bool) and out["stride"] >= 2):
            raise UserError(f"mask parameter stride{loc} must be an integer >= 2, got {out['stride']!r}")
        return out
    if family == "expand" and out["side"] not in SIDES:
        raise unknown(f"mask parameter side{loc}", out["side"], SIDES)
    for key in ("size", "top", "left", "height", "width"):
        if key in out and out[key] != "default" and not (isinstance(out[key], int) and out[key] >= 0):
            raise UserError(f"mask parameter {key}{loc} must be a non-negative integer, got {out[key]!r}")
    return out


def _check_strokes(out: dict[str, Any], loc: str) -> None:
    if out["width"] not in BRUSH_RADIUS:
        raise unknown(f"mask parameter width{loc}", out["width"], BRUSH_RADIUS)
    lo, hi = out["min_fraction"], out["max_fraction"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or not 0 < lo <= hi < 1:
        raise UserError(f"mask parameters min_fraction{loc} and max_fraction must satisfy 0 < min <= max < 1, got {lo!r}, {hi!r}")


def _strokes(p: dict[str, Any], height: int, width: int, g: torch.Generator) -> torch.Tensor:
    """Free-form strokes: random walks of 1-4 segments (each 10-40% of the image side long, at a
    uniform angle, turning by up to 90 degrees) stamped with a round brush, added until the
    occluded fraction reaches a per-image target drawn uniformly from ``[min_fraction,
    max_fraction]``; a stroke that would pass ``max_fraction`` is dropped (after 200 tries the
    mask is the last one within range)."""
    radius = max(1.0, BRUSH_RADIUS[p["width"]] * min(height, width) / 32)
    rr, cc = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
    mask = torch.zeros(height, width, dtype=torch.bool)

    def u() -> float:
        return float(torch.rand(1, generator=g, dtype=torch.float64))

    target = p["min_fraction"] + u() * (p["max_fraction"] - p["min_fraction"])
    for _ in range(200):
        if mask.double().mean() >= target:
            break
        stroke = torch.zeros_like(mask)
        r, c, angle = u() * height, u() * width, u() * 2 * math.pi
        for _seg in range(1 + int(u() * 4)):
            length = (0.1 + 0.3 * u()) * min(height, width)
            angle += (u() - 0.5) * math.pi
            r2, c2 = r + length * math.sin(angle), c + length * math.cos(angle)
            for t in torch.linspace(0, 1, max(2, int(length * 2))).tolist():
                pr, pc = r + t * (r2 - r), c + t * (c2 - c)
                stroke |= (rr - pr) ** 2 + (cc - pc) ** 2 <= radius**2
            r, c = min(max(r2, 0.0), height - 1.0), min(max(c2, 0.0), width - 1.0)
        if (mask | stroke).double().mean() <= p["max_fraction"]:
            mask |= stroke
    return mask


def make_mask(
    family: str, params: Mapping[str, Any], height: int, width: int, image_id: str = "", seed: int = 0
) -> torch.Tensor:
    """The mask of one image: bool ``[height, width]``, True = missing.

    Only ``random`` and ``strokes`` use ``image_id`` and ``seed``; the others are the same for
    every image.
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
    elif family == "strokes":
        m = _strokes(p, height, width, generator(seed, image_id, "strokes_mask", p["width"]))
    elif family == "lines":
        k = p["k"]
        idx = torch.arange(height if p["axis"] == "rows" else width) % k == k - 1
        m = idx.view(-1, 1).expand(height, width).clone() if p["axis"] == "rows" else idx.view(1, -1).expand(height, width).clone()
    elif family == "super_resolution":
        s_ = p["stride"]
        r_on = torch.arange(height) % s_ == 0
        c_on = torch.arange(width) % s_ == 0
        m = ~(r_on.view(-1, 1) & c_on.view(1, -1))
    elif family == "expand":
        w_ = height // 4 if p["width"] == "default" else p["width"]
        if 2 * w_ >= min(height, width) and p["side"] == "all" or w_ >= max(height, width):
            raise UserError(f"expand width {w_} leaves nothing observed in {height}x{width}")
        m = torch.zeros(height, width, dtype=torch.bool)
        if p["side"] in ("all", "top"):
            m[:w_] = True
        if p["side"] in ("all", "bottom"):
            m[height - w_:] = True
        if p["side"] in ("all", "left"):
            m[:, :w_] = True
        if p["side"] in ("all", "right"):
            m[:, width - w_:] = True
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
"""Families with a parameter-free default distribution, usable by ``train --task-masks``."""


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
