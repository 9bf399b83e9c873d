"""Exact cached raster completion for the PixelCNN++ baseline (``complete(..., sampler="cached")``).

The naive sampler runs the whole network once per generated pixel (392 passes for an MNIST top
half). This one walks the image row by row and, per generated pixel, computes only the few
activations that the new pixel changes and the next pixel needs, reading everything else from
small caches. It is the idea of Fast PixelCNN++ (Ramachandran et al. 2017: cache each layer's
recent activations, compute only what is new), organised by rows and column ranges.

Why it is exact
---------------
Let ``s = 0, 1, 2`` be the resolutions (``H``, ``H/2``, ``H/4``) and ``r`` the image row being
generated (raster order fills one row at a time).

* **Rows.** Every layer is causal in rows: at resolution ``s``, an activation in row ``i``
  depends only on image rows ``<= i * 2**s`` (shifted convolutions look up; stride-2
  convolutions read rows ``2i - 1, 2i``; stride-2 deconvolutions send row ``i`` to rows
  ``2i, 2i + 1``). While row ``r`` is generated, the output needs row ``r >> s`` of resolution
  ``s``, and that row changes only when ``2**s`` divides ``r`` (otherwise it is finished).
* **Streams.** The ``u`` stream never reads ``ul``, and its row-``r`` values (row ``r >> s`` at
  resolution ``s``) depend on image rows ``< r`` only: they are computed once per image row, over
  the full width (a *u pass*). Only the ``ul`` stream sees pixels of row ``r``.
* **Columns.** Within row ``r`` the ``ul`` stream is causal in columns: at resolution 0 its value
  at column ``c`` depends on pixels ``(r, < c)``; at resolution ``s``, column ``j`` reads
  resolution-``s - 1`` columns ``2j - 1, 2j`` and is read back by columns ``2j, 2j + 1``. If the
  caches are exact for columns ``< a`` and pixels ``(r, < b - 1)`` are final, then recomputing
  columns ``[a, b)`` at resolution 0 and ``[ceil(a / 2**s), ceil(b / 2**s))`` at resolution
  ``s``, layer after layer, makes them exact for columns ``< b`` and gives the output at
  ``(r, b - 1)`` (a *ul pass*). Columns where no image samples are not visited one by one: the
  next ul pass starts at the first stale column.

Caches (all pixel-major, ``[..., W, B, C]``, so that a window is a few contiguous blocks)
-----------------------------------------------------------------------------------------
* every shifted convolution keeps the last 3 rows of its input, zero-padded left/right as the
  layer pads (:class:`_ConvSlot`); a window's output is one matrix product of the stacked taps
  with the flattened kernel (an im2col convolution);
* every deconvolution keeps the latest row of its input (:class:`_DeconvSlot`);
* the ``u`` values that ``ul`` blocks consume as skip inputs are kept for the current row.
So memory is O(layers × W × B × F), independent of H. The arithmetic is the network's own
(same weights, same operation order inside each layer); only the summation order inside a
convolution differs from :meth:`PixelCNNPP.forward`, so parameters agree to rounding (~1e-16 in
float64, where a different sample would need a value exactly on a bin edge).

Schedule (all images advance together; each samples only its own missing pixels)
--------------------------------------------------------------------------------
For each row ``r`` up to the last row with a missing pixel: load row ``r`` of the image (missing
pixels zeroed, as in the naive sampler); a u pass; for each column ``c`` where some image misses a
pixel, a ul pass over the stale columns ``[a, c + 1)``, then each image missing ``(r, c)`` samples
it from the output at ``(r, c)`` with the naive sampler's noise (``pixel_generators``: seed, flat
index ``r * W + c``); before the next row, a ul pass over the remaining stale columns. Rows above
the first missing pixel cost one u pass and one full-width ul pass each (together, about one
full forward pass of compute).

Cost per generated pixel: one ``ul`` pass, i.e. about half the network's operations, each on a
single column (rarely a few) instead of ``H × W`` positions; plus one ``u`` row per image row.
Requires eval mode (or no dropout): dropout would make naive and cached passes differ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lmconv_bench.errors import UserError
from lmconv_bench.models.base import pixel_generators
from lmconv_bench.pixels import to_model_range

from .pixelcnnpp_layers import N_RESOLUTIONS, DownShiftedDeconv2d

Window = tuple[int, int, int] | None
"""``(row, c0, c1)``: columns ``[c0, c1)`` of one row at one resolution; ``None`` = nothing."""

RING = 3
"""Rows of input each convolution keeps: it reads at most the two rows up to the latest one."""


def _concat_elu(x: Tensor) -> Tensor:
    """``elu(concat([x, -x]))`` over the last (channel) dimension."""
    return F.elu(torch.cat([x, -x], dim=-1))


def _nin_weights(nin) -> tuple[Tensor, Tensor]:
    """A 1x1 convolution as ``F.linear`` weights: ``([c_out, c_in], [c_out])``."""
    return nin.conv.weight[:, :, 0, 0], nin.conv.bias


class _ConvSlot:
    """A (down- or down-right-) shifted convolution with a cache of its input's latest rows.

    ``layer``: :class:`DownShiftedConv2d` or :class:`DownRightShiftedConv2d` (stride 1 or 2).
    ``shift = (dr, dc)`` adds a following ``down_shift`` (``dr = 1``) or ``right_shift``
    (``dc = 1``). Output ``(i, c)`` reads input rows ``S*i - top + ki`` and columns
    ``S*c - left + kj`` (``S`` = stride, ``ki < kh``, ``kj < kw``); rows above the image and
    columns outside it are zero. The cache is ``[RING, left + w_in + right, B, c_in]``, row ``i``
    at ``i % RING``, column ``j`` at ``j + left``.
    """

    def __init__(self, layer, w_in: int, like: Tensor, shift: tuple[int, int] = (0, 0)):
        kh, kw = layer.kernel
        left, right, top, _ = layer.padding
        weight = layer.conv.weight  # [c_out, c_in, kh, kw]; weight norm evaluated once, here
        self.weight = weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0])  # [(ki, kj, c_in), c_out]
        self.bias = layer.conv.bias
        self.kh, self.kw, self.stride, self.shift = kh, kw, layer.stride, shift
        self.top, self.left = top + shift[0], left + shift[1]
        shape = (w_in + self.left + right, like.shape[0], weight.shape[1])
        self.rows = like.new_zeros((RING, *shape))
        self.zero_row = like.new_zeros(shape)

    def write(self, i: int, c0: int, c1: int, value: Tensor) -> None:
        """Store the input at row ``i``, columns ``[c0, c1)``; ``value`` ``[c1 - c0, B, c_in]``."""
        self.rows[i % RING, c0 + self.left : c1 + self.left] = value

    def _row(self, i: int) -> Tensor:
        return self.zero_row if i < 0 else self.rows[i % RING]

    def __call__(self, i: int, c0: int, c1: int) -> Tensor:
        """The output at row ``i``, columns ``[c0, c1)``: ``[c1 - c0, B, c_out]``."""
        s = self.stride
        taps = []
        for ki in range(self.kh):
            src = self._row(s * i - self.top + ki)
            taps.extend(src[s * c0 + kj : s * (c1 - 1) + kj + 1 : s] for kj in range(self.kw))
        cols = torch.cat(taps, dim=-1)  # [n, B, kh * kw * c_in]
        n, b, k = cols.shape
        out = torch.addmm(self.bias, cols.reshape(n * b, k), self.weight).view(n, b, -1)
        dr, dc = self.shift  # a shift fills its first row / column with zeros (not the bias)
        if i < dr:
            return out.zero_()
        if c0 < dc:
            out[: dc - c0] = 0
        return out


class _DeconvSlot:
    """A stride-2 shifted deconvolution (kernel height 2) with a cache of its input's latest row.

    Output row ``r`` comes from input row ``r // 2`` through kernel row ``r % 2``. Input column
    ``j`` writes output columns ``2j + kj - crop`` (``kj < kw``; ``crop = kw // 2`` for
    :class:`DownShiftedDeconv2d`, 0 for :class:`DownRightShiftedDeconv2d`).
    """

    def __init__(self, layer, w_in: int, like: Tensor):
        kh, kw = layer.kernel
        if kh != 2 or layer.stride != 2:
            raise ValueError(f"expected a 2-row, stride-2 deconvolution, got kernel {layer.kernel}")
        weight = layer.deconv.weight  # [c_in, c_out, kh, kw]
        c_in, c_out = weight.shape[:2]
        # Per kernel row: [c_in, (kj, c_out)].
        self.weights = [weight[:, :, ki].permute(0, 2, 1).reshape(c_in, kw * c_out) for ki in range(kh)]
        self.bias = layer.deconv.bias
        self.kw, self.c_out = kw, c_out
        self.crop = kw // 2 if isinstance(layer, DownShiftedDeconv2d) else 0
        self.row = like.new_zeros(w_in, like.shape[0], c_in)

    def write(self, c0: int, c1: int, value: Tensor) -> None:
        """Store columns ``[c0, c1)`` of the latest input row; ``value`` ``[c1 - c0, B, c_in]``."""
        self.row[c0:c1] = value

    def __call__(self, r: int, c0: int, c1: int) -> Tensor:
        """The output at row ``r`` (its input row ``r // 2`` must be the stored one), columns
        ``[c0, c1)``: ``[c1 - c0, B, c_out]``."""
        kw, crop = self.kw, self.crop
        j0 = max(0, -((kw - 1 - crop - c0) // 2))  # ceil((c0 - kw + 1 + crop) / 2): first contributor
        j1 = min(self.row.shape[0], (c1 - 1 + crop) // 2 + 1)  # past the last contributor
        x = self.row[j0:j1]
        n, b, c_in = x.shape
        y = (x.reshape(n * b, c_in) @ self.weights[r % 2]).view(n, b, kw, self.c_out)
        raw = y.new_zeros(2 * n + kw, b, self.c_out)  # raw column 2 * (j - j0) + kj
        for kj in range(kw):
            raw[kj : kj + 2 * n : 2] += y[:, :, kj]
        lo = c0 - 2 * j0 + crop
        return raw[lo : lo + c1 - c0] + self.bias


class _ResnetSlots:
    """A :class:`GatedResnet` on windows, caching the inputs of its two convolutions."""

    def __init__(self, block, w: int, like: Tensor):
        self.conv_in = _ConvSlot(block.conv_in, w, like)
        self.conv_out = _ConvSlot(block.conv_out, w, like)
        self.nin = _nin_weights(block.nin_skip) if block.nin_skip is not None else None

    def __call__(self, x: Tensor, skip: Tensor | None, win: tuple[int, int, int]) -> Tensor:
        """``x``, ``skip``: the block's inputs on ``win`` (``[n, B, .]``); its output on ``win``."""
        i, c0, c1 = win
        self.conv_in.write(i, c0, c1, _concat_elu(x))
        c = self.conv_in(i, c0, c1)
        if self.nin is not None:
            c = c + F.linear(_concat_elu(skip), *self.nin)
        self.conv_out.write(i, c0, c1, _concat_elu(c))  # dropout is the identity in eval mode
        a, b = torch.chunk(self.conv_out(i, c0, c1), 2, dim=-1)
        return x + a * torch.sigmoid(b)


def _downsize(slot: _ConvSlot, x: Tensor | None, win_in: Window, win_out: Window) -> Tensor | None:
    """Feed ``x`` (on ``win_in``) to a stride-2 convolution; its output on ``win_out``."""
    if win_in is not None:
        slot.write(*win_in, x)
    return slot(*win_out) if win_out is not None else None


def _upsize(slot: _DeconvSlot, x: Tensor | None, win_in: Window, win_out: Window) -> Tensor | None:
    """Feed ``x`` (on ``win_in``) to a stride-2 deconvolution; its output on ``win_out``."""
    if win_in is not None:
        slot.write(win_in[1], win_in[2], x)
    return slot(*win_out) if win_out is not None else None


class _RasterCache:
    """The caches and windowed passes of one :class:`PixelCNNPP` for a batch of ``B`` images of
    width ``W``; ``like``: any tensor of the model's dtype and device with ``B`` rows."""

    def __init__(self, model, width: int, like: Tensor):
        self.n_res = N_RESOLUTIONS
        self.widths = [width >> s for s in range(N_RESOLUTIONS)]
        w = self.widths
        # The input convolutions: u = down_shift(2x3), ul = down_shift(1x3) + right_shift(2x1).
        self.init_u = _ConvSlot(model.init_u, width, like, shift=(1, 0))
        self.init_ul_up = _ConvSlot(model.init_ul_up, width, like, shift=(1, 0))
        self.init_ul_left = _ConvSlot(model.init_ul_left, width, like, shift=(0, 1))

        def per_res(blocks) -> list[list[_ResnetSlots]]:
            return [[_ResnetSlots(blk, w[s], like) for blk in blocks[s]] for s in range(N_RESOLUTIONS)]

        self.up_u, self.up_ul = per_res(model.up_u), per_res(model.up_ul)
        self.down_u, self.down_ul = per_res(model.down_u), per_res(model.down_ul)
        self.downsize_u = [_ConvSlot(m, w[s], like) for s, m in enumerate(model.downsize_u)]
        self.downsize_ul = [_ConvSlot(m, w[s], like) for s, m in enumerate(model.downsize_ul)]
        self.upsize_u = [_DeconvSlot(m, w[s + 1], like) for s, m in enumerate(model.upsize_u)]
        self.upsize_ul = [_DeconvSlot(m, w[s + 1], like) for s, m in enumerate(model.upsize_ul)]
        self.out = _nin_weights(model.out_nin)
        # The current row of u that ul blocks read as skip input: [s][k] -> [w_s, B, F].
        self.u_up_out: list[list[Tensor | None]] = [[None] * len(b) for b in model.up_u]
        self.u_down_out: list[list[Tensor | None]] = [[None] * len(b) for b in model.down_u]

    @property
    def input_slots(self) -> tuple[_ConvSlot, ...]:
        return self.init_u, self.init_ul_up, self.init_ul_left

    def load_row(self, r: int, xp_row: Tensor) -> None:
        """Image row ``r`` with the ones channel, ``[W, B, C + 1]`` in ``[-1, 1]``."""
        for slot in self.input_slots:
            slot.write(r, 0, xp_row.shape[0], xp_row)

    def set_pixel(self, images: Tensor, r: int, c: int, values: Tensor) -> None:
        """Set pixel ``(r, c)`` of ``images`` (long ``[k]``) to ``values`` (``[k, C]``, [-1, 1])."""
        for slot in self.input_slots:
            slot.rows[r % RING, c + slot.left, images, : values.shape[1]] = values

    # -- windows ---------------------------------------------------------------------------
    def u_windows(self, r: int) -> list[Window]:
        """Row ``r >> s`` at resolution ``s`` over the full width, when ``2**s`` divides ``r``."""
        return [(r >> s, 0, w) if r % (1 << s) == 0 else None for s, w in enumerate(self.widths)]

    def ul_windows(self, r: int, a: int, b: int) -> list[Window]:
        """Columns ``[a, b)`` of row ``r``, and ``[ceil(a / 2**s), ceil(b / 2**s))`` of row
        ``r >> s`` at resolution ``s`` when ``2**s`` divides ``r`` (None where empty)."""
        out: list[Window] = []
        for s in range(self.n_res):
            lo, hi = -(-a >> s), -(-b >> s)
            out.append((r >> s, lo, hi) if r % (1 << s) == 0 and hi > lo else None)
        return out

    # -- the network on windows ------------------------------------------------------------
    def run(self, wu: list[Window], wul: list[Window]) -> Tensor | None:
        """Compute the ``u`` stream on windows ``wu`` and the ``ul`` stream on ``wul`` (one
        window or None per resolution; all None skips a stream), updating every cache.

        The ``ul`` blocks read ``u`` from the current-row cache, so the u pass of a row comes
        before its ul passes. Returns the head's parameters on ``wul[0]``, ``[n, B, n_params]``,
        or None.
        """
        u = self.init_u(*wu[0]) if wu[0] is not None else None
        ul = None
        if wul[0] is not None:
            ul = self.init_ul_up(*wul[0]) + self.init_ul_left(*wul[0])
        us: list[Tensor | None] = [u]
        uls: list[Tensor | None] = [ul]
        for s in range(self.n_res):
            if s > 0:
                us.append(_downsize(self.downsize_u[s - 1], us[-1], wu[s - 1], wu[s]))
                uls.append(_downsize(self.downsize_ul[s - 1], uls[-1], wul[s - 1], wul[s]))
            for k, (block_u, block_ul) in enumerate(zip(self.up_u[s], self.up_ul[s])):
                u = ul = None
                if wu[s] is not None:
                    u = self.u_up_out[s][k] = block_u(us[-1], None, wu[s])
                if wul[s] is not None:
                    _, c0, c1 = wul[s]
                    ul = block_ul(uls[-1], self.u_up_out[s][k][c0:c1], wul[s])
                us.append(u)
                uls.append(ul)

        u, ul = us.pop(), uls.pop()
        for s in reversed(range(self.n_res)):
            if s < self.n_res - 1:
                u = _upsize(self.upsize_u[s], u, wu[s + 1], wu[s])
                ul = _upsize(self.upsize_ul[s], ul, wul[s + 1], wul[s])
            for k, (block_u, block_ul) in enumerate(zip(self.down_u[s], self.down_ul[s])):
                skip_u, skip_ul = us.pop(), uls.pop()
                if wu[s] is not None:
                    u = self.u_down_out[s][k] = block_u(u, skip_u, wu[s])
                if wul[s] is not None:
                    _, c0, c1 = wul[s]
                    ul = block_ul(ul, torch.cat([self.u_down_out[s][k][c0:c1], skip_ul], dim=-1), wul[s])
        return F.linear(F.elu(ul), *self.out) if ul is not None else None


@torch.no_grad()
def cached_complete(
    model,
    x: Tensor,
    missing: Tensor,
    seeds: Tensor,
    temperature: float = 1.0,
    progress: Callable[[int], None] | None = None,
    cost=None,
) -> Tensor:
    """Raster completion with cached activations; the same samples as the naive sampler.

    Args:
        model: a :class:`PixelCNNPP`, in eval mode unless it has no dropout.
        x: uint8 ``[B, C, H, W]``; values at missing positions are ignored.
        missing: bool ``[B, H, W]`` (True = to be sampled); may differ per image.
        seeds: int64 ``[B]``; pixel ``p = r * W + c`` of image ``i`` uses the generator that
            ``pixel_generators`` derives from ``(seeds[i], p)``, as the naive sampler does.
        temperature: > 0, passed to the head.
        progress: called with 1 after every raster position at which some image sampled.
        cost: a :class:`~lmconv_bench.models.base.Cost` to add the work to: every layer runs once
            at each position of rows ``0 .. r_last`` (the last row with a missing pixel), so
            ``(r_last + 1) / H`` full passes.
    Returns:
        uint8 ``[B, C, H, W]``: observed pixels unchanged, missing ones sampled in raster order.
    """
    if model.training and any(m.p > 0 for m in model.modules() if isinstance(m, torch.nn.Dropout)):
        raise UserError("cached PixelCNN++ completion needs eval mode (dropout is active): call model.eval()")
    b, _, _, w = x.shape
    n_bits, dtype = model.config.n_bits, model.dtype_
    miss = missing.to(x.device).bool()
    out = x.clone()
    out.masked_fill_(miss.unsqueeze(1).expand_as(out), 0)
    cols_todo = miss.any(dim=0)  # [H, W]: positions where some image samples
    rows_todo = cols_todo.any(dim=1).nonzero().squeeze(1).tolist()
    if b == 0 or not rows_todo:
        return out
    r_last = rows_todo[-1]
    if cost is not None:
        cost.add((r_last + 1) / x.shape[2], b)
    seeds_cpu = seeds.cpu()
    ones = torch.ones(w, b, 1, dtype=dtype, device=x.device)
    cache = _RasterCache(model, w, ones[0])
    no_windows: list[Window] = [None] * cache.n_res

    for r in range(r_last + 1):
        row = to_model_range(out[:, :, r, :], n_bits).to(dtype).permute(2, 0, 1)  # [W, B, C]
        cache.load_row(r, torch.cat([row, ones], dim=-1))
        cache.run(cache.u_windows(r), no_windows)
        stale = 0  # columns of row r from here on are not yet up to date in the ul caches
        for c in cols_todo[r].nonzero().squeeze(1).tolist():
            params = cache.run(no_windows, cache.ul_windows(r, stale, c + 1))[-1]  # [B, n_params]
            stale = c + 1
            idx = miss[:, r, c].nonzero().squeeze(1)
            gens = pixel_generators(seeds_cpu[idx.cpu()], torch.full((len(idx),), r * w + c))
            val = model.head.sample(params[idx, :, None, None], gens, temperature=temperature)[:, :, 0, 0]
            out[idx, :, r, c] = val.to(out.dtype)
            cache.set_pixel(idx, r, c, to_model_range(val, n_bits).to(dtype))
            if progress is not None:
                progress(1)
        if r < r_last and stale < w:
            cache.run(no_windows, cache.ul_windows(r, stale, w))
    return out
