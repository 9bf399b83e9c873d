"""Generation orders: permutations of the H·W pixel positions, and the kernel masks they imply.

An *order* is a ``torch.long`` tensor ``perm`` of shape ``[H*W]``: ``perm[t]`` is the flat
(row-major) index ``r * W + c`` of the pixel generated at step ``t``. A batch of per-image orders
has shape ``[B, H*W]``. ``rank = ranks(perm)`` is the inverse: ``rank[i]`` is the step at which
flat position ``i`` is generated.

Named orders are ``BASE/k`` with ``BASE`` in :data:`BASE_ORDERS` and ``k`` in ``0..7`` a dihedral
variant, composed exactly as in the LMConv paper's code. With ``T`` = transpose ``(r, c) → (c, r)``,
``Rr`` = reflect rows ``r → H-1-r`` and ``Rc`` = reflect cols ``c → W-1-c``, applied to the base
sequence of ``(r, c)`` positions::

    0 identity   1 Rr   2 Rc   3 Rr∘Rc   4 T   5 Rr∘T   6 Rc∘T   7 Rr∘Rc∘T

where ``Rr∘T`` means transpose first, then reflect. Transposed variants (4–7) need ``H == W``.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .errors import UserError, unknown

BASE_ORDERS = ("raster", "s_curve", "hilbert", "center_last")
N_VARIANTS = 8
DEFAULT_SPEC = "s_curve"

Coords = list[tuple[int, int]]


# --------------------------------------------------------------------------- base sequences
def _raster(h: int, w: int) -> Coords:
    return [(r, c) for r in range(h) for c in range(w)]


def _s_curve(h: int, w: int) -> Coords:
    """Even rows left→right, odd rows right→left."""
    return [(r, c) for r in range(h) for c in (range(w) if r % 2 == 0 else range(w - 1, -1, -1))]


def _center_box(h: int, w: int) -> tuple[range, range]:
    """Rows and cols of the central square ``H//4 .. H - H//4`` (also the default centre hole)."""
    return range(h // 4, h - h // 4), range(w // 4, w - w // 4)


def _center_last(h: int, w: int) -> Coords:
    """s_curve, with the central square moved to the end, keeping its s_curve sequence."""
    rows, cols = _center_box(h, w)
    seq = _s_curve(h, w)
    inside = [(r, c) for r, c in seq if r in rows and c in cols]
    outside = [(r, c) for r, c in seq if not (r in rows and c in cols)]
    return outside + inside


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _gilbert(h: int, w: int) -> Coords:
    """Generalized Hilbert ("gilbert") curve over any h×w rectangle, starting at (0, 0).

    Recursive splitting of the rectangle spanned by a major axis ``a`` and a minor axis ``b``
    (both 2-vectors in (x=col, y=row) coordinates). On even sizes every step is a 4-neighbour
    move; odd sizes may need one diagonal step.
    """
    out: Coords = []

    def walk(x: int, y: int, ax: int, ay: int, bx: int, by: int) -> None:
        length_a, length_b = abs(ax + ay), abs(bx + by)
        dax, day, dbx, dby = _sign(ax), _sign(ay), _sign(bx), _sign(by)
        if length_b == 1 or length_a == 1:
            # a single line along whichever axis is longer than one
            step_x, step_y, n = (dax, day, length_a) if length_b == 1 else (dbx, dby, length_b)
            for _ in range(n):
                out.append((y, x))
                x, y = x + step_x, y + step_y
            return
        hax, hay, hbx, hby = ax // 2, ay // 2, bx // 2, by // 2
        if 2 * length_a > 3 * length_b:
            # long rectangle: cut across the major axis into two halves, keep the halves even
            if abs(hax + hay) % 2 and length_a > 2:
                hax, hay = hax + dax, hay + day
            walk(x, y, hax, hay, bx, by)
            walk(x + hax, y + hay, ax - hax, ay - hay, bx, by)
        else:
            if abs(hbx + hby) % 2 and length_b > 2:
                hbx, hby = hbx + dbx, hby + dby
            # up the minor axis, along the major axis, and back down
            walk(x, y, hbx, hby, hax, hay)
            walk(x + hbx, y + hby, ax, ay, bx - hbx, by - hby)
            walk(
                x + (ax - dax) + (hbx - dbx),
                y + (ay - day) + (hby - dby),
                -hbx, -hby, -(ax - hax), -(ay - hay),
            )

    if w >= h:
        walk(0, 0, w, 0, 0, h)
    else:
        walk(0, 0, 0, h, w, 0)
    return out


_BASE_FNS = {"raster": _raster, "s_curve": _s_curve, "hilbert": _gilbert, "center_last": _center_last}


# --------------------------------------------------------------------------- variants and names
def _variant(seq: Coords, k: int, h: int, w: int) -> Coords:
    """Apply dihedral variant ``k`` (0..7) to a sequence of (r, c) positions of an h×w image."""
    if k >= 4:
        seq = [(c, r) for r, c in seq]  # transpose first (needs h == w)
    if k % 4 in (1, 3):
        seq = [(h - 1 - r, c) for r, c in seq]
    if k % 4 in (2, 3):
        seq = [(r, w - 1 - c) for r, c in seq]
    return seq


def parse_name(name: str) -> tuple[str, int]:
    """Split ``"s_curve/3"`` into ``("s_curve", 3)``; a bare base name means variant 0."""
    base, _, var = name.strip().partition("/")
    if base not in _BASE_FNS:
        raise unknown("order", base, BASE_ORDERS)
    if not var:
        return base, 0
    if not var.isdigit() or not 0 <= int(var) < N_VARIANTS:
        raise UserError(f"bad order variant in {name!r}: use {base}/0 .. {base}/{N_VARIANTS - 1}")
    return base, int(var)


def check_size(name: str, height: int, width: int) -> None:
    """Raise UserError if order ``name`` cannot be used on an ``height``×``width`` image."""
    _, k = parse_name(name)
    if k >= 4 and height != width:
        raise UserError(
            f"order {name!r} transposes the image and needs a square size, got {height}x{width}; "
            "use variants /0../3 on non-square images"
        )


def parse_spec(spec: str, height: int, width: int) -> list[str]:
    """Expand an order SPEC into canonical names ``BASE/k``.

    SPEC is ``all`` (every base, 8 variants each), a base name (its 8 variants), ``BASE/k``, or a
    comma list of these. Duplicates are dropped, first occurrence kept. On a non-square size, a base
    name or ``all`` expands to variants 0..3 only; an explicit transposed variant is an error.
    """
    if spec is None or not str(spec).strip():
        raise UserError("empty order spec; use e.g. --orders s_curve, --orders all or --orders raster/0,hilbert")
    n_var = N_VARIANTS if height == width else 4
    names: list[str] = []
    for part in str(spec).split(","):
        part = part.strip()
        if part == "all":
            expanded = [f"{b}/{k}" for b in BASE_ORDERS for k in range(n_var)]
        elif "/" in part:
            base, k = parse_name(part)
            check_size(part, height, width)
            expanded = [f"{base}/{k}"]
        else:
            if part not in _BASE_FNS:
                raise unknown("order", part, (*BASE_ORDERS, "all"))
            expanded = [f"{part}/{k}" for k in range(n_var)]
        names.extend(n for n in expanded if n not in names)
    return names


@lru_cache(maxsize=512)
def _order_tuple(name: str, height: int, width: int) -> tuple[int, ...]:
    base, k = parse_name(name)
    check_size(name, height, width)
    seq = _variant(_BASE_FNS[base](height, width), k, height, width)
    return tuple(r * width + c for r, c in seq)


def get_order(name: str, height: int, width: int) -> torch.Tensor:
    """The named order as a permutation: long ``[H*W]`` of flat indices in visiting order."""
    return torch.tensor(_order_tuple(name, height, width), dtype=torch.long)


def canonical_name(name: str) -> str:
    """``"s_curve"`` → ``"s_curve/0"``; validates the name."""
    base, k = parse_name(name)
    return f"{base}/{k}"


# --------------------------------------------------------------------------- ranks, masks
def ranks(perm: torch.Tensor) -> torch.Tensor:
    """Inverse permutation: ``rank[..., perm[..., t]] = t``. Shape as ``perm`` ([N] or [B, N])."""
    rank = torch.empty_like(perm)
    steps = torch.arange(perm.shape[-1], device=perm.device).expand_as(perm)
    return rank.scatter_(-1, perm, steps)


def kernel_masks(
    perm: torch.Tensor, height: int, width: int, k: int = 3, dilation: int = 1, include_center: bool = False
) -> torch.Tensor:
    """Per-location kernel masks of a locally masked convolution.

    Args:
        perm: long ``[H*W]`` (one order) or ``[B, H*W]`` (one order per image).
        k: odd kernel size; dilation: spacing of taps.
        include_center: False for mask type A (first layer: a pixel never sees itself),
            True for type B (later layers: a position may see its own earlier activations).

    Returns:
        bool ``[H, W, k, k]`` (or ``[B, H, W, k, k]``): tap ``(i, j)`` at position ``(r, c)`` is open
        iff neighbour ``(r + (i - k//2)·d, c + (j - k//2)·d)`` lies inside the image and comes strictly
        earlier in the order; the centre tap is open iff ``include_center``. Taps outside are closed.
    """
    if k % 2 != 1:
        raise UserError(f"kernel size must be odd, got {k}")
    rank = ranks(perm).reshape(*perm.shape[:-1], height, width)
    half, n = k // 2, height * width
    pad = half * dilation
    big = torch.nn.functional.pad(rank, (pad, pad, pad, pad), value=n)  # outside ⇒ never earlier
    out = torch.empty(*rank.shape, k, k, dtype=torch.bool, device=perm.device)
    for i in range(k):
        for j in range(k):
            nb = big[..., i * dilation : i * dilation + height, j * dilation : j * dilation + width]
            out[..., i, j] = nb < rank
    if include_center:
        out[..., half, half] = True
    return out


def observed_first(perm: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """Reorder so that every observed pixel comes before every missing one.

    Args:
        perm: long ``[H*W]`` or ``[B, H*W]``.
        missing: bool ``[H, W]`` or ``[B, H, W]`` (True = missing).

    Returns:
        long ``[H*W]`` or ``[B, H*W]`` (batched if either input is): the observed pixels in the
        order's sequence, then the missing pixels in the order's sequence.
    """
    flat = missing.reshape(*missing.shape[:-2], -1)
    if perm.dim() == 1 and flat.dim() == 2:
        perm = perm.expand(flat.shape[0], -1)
    if flat.dim() == 1 and perm.dim() == 2:
        flat = flat.expand(perm.shape[0], -1)
    key = torch.gather(flat.long(), -1, perm)
    idx = torch.sort(key, dim=-1, stable=True).indices
    return torch.gather(perm, -1, idx)


def is_observed_first(perm: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """True where every missing pixel comes after every observed pixel in the order.

    Shapes as in :func:`observed_first`; returns a bool scalar tensor, or bool ``[B]``.
    This decides the ``context`` column (``all_observed`` vs ``preceding_only``) of records.
    """
    flat = missing.reshape(*missing.shape[:-2], -1)
    rank = ranks(perm)
    if rank.dim() == 1 and flat.dim() == 2:
        rank = rank.expand(flat.shape[0], -1)
    if flat.dim() == 1 and rank.dim() == 2:
        flat = flat.expand(rank.shape[0], -1)
    n = rank.shape[-1]
    last_observed = torch.where(flat, torch.full_like(rank, -1), rank).amax(-1)
    first_missing = torch.where(flat, rank, torch.full_like(rank, n)).amin(-1)
    return last_observed < first_missing


def plot_orders(names: list[str], height: int, width: int, path: str) -> None:
    """Draw each named order as a curve (start ●, end ★) in a grid; write a PNG to ``path``."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        perm = get_order(name, height, width)
        r, c = (perm // width).numpy(), (perm % width).numpy()
        ax.plot(c, r, lw=0.8, color="tab:red")
        ax.scatter([c[0]], [r[0]], s=12, color="k", marker="o")
        ax.scatter([c[-1]], [r[-1]], s=40, color="k", marker="*")
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
