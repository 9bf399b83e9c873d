"""Completion samplers: the exact cached LMConv sampler, and unconditional sample grids.

The naive sampler (:func:`~lmconv_bench.models.base.naive_complete`, re-exported here) runs the
whole network once per generated pixel: 392 full passes for an MNIST top half.
:func:`cached_complete` gives the same samples (same noise, same conditionals) for about the cost of
one forward pass plus a small per-pixel overhead, for any order and any mask.

Why it is exact
---------------
In an LMConv network every activation at position ``q`` depends only on the pixels strictly
earlier than ``q`` in the order:

* the first convolution (``u_init``) uses type-A masks: ``q`` reads only earlier neighbours;
* every later masked convolution uses type-B masks (earlier neighbours and ``q`` itself), and its
  input at those positions is, by induction, a function of pixels earlier than ``q``;
* everything else acts per position: 1×1 layers (``nin_skip``, ``nin_out``), ``concat_elu``,
  ``elu``, gating, PONO (a normalisation over channels at one position) and the skip connections
  (the down path reads the up path's activation at the same position).

So once the pixels before ``q`` are final, every activation at ``q`` is final, and it can be
computed from the cached inputs of each masked convolution at ``q``'s open taps. The sampler:

1. runs one full forward pass (``model.forward``, the missing pixels set to level 0 as in the
   naive sampler) and keeps the *input* map of every masked convolution (``u_init``, both
   convolutions of every gated resnet, the dilated convolutions between stages), channels-last;
2. for each step ``t`` of the order, at every image's position ``q = perm[t]``: computes only the
   activations at ``q``, layer by layer, reading the open taps of each masked convolution from its
   cache and writing the new input at ``q`` into it (type B reads ``q`` itself right after); then,
   where ``q`` is missing, samples the pixel from the head's parameters at ``q`` and writes it into
   the ``u_init`` cache.

Which steps are visited: with an ``observed_first`` order every observed pixel precedes every
missing one, so the prefill pass is exact at observed positions and only missing positions are
visited. For **any other order** the prefill values at observed positions that come after a
missing one were computed from a placeholder and are stale, so every step from the first missing
pixel on is visited, observed positions included (recomputed, not sampled). With per-image orders
each image is at its own position at step ``t``; steps run from the earliest first-missing step of
the batch to the latest last-missing step, and visiting an image outside its own range only
recomputes values that are already correct.

The arithmetic is the network's own (same weights, same operation order per layer); only the
summation order inside a convolution and PONO's reduction differ from ``forward``, so the
parameters agree to rounding (~1e-16 relative in float64, where a different sample would need a
value exactly on a bin edge). Noise is the naive sampler's: pixel ``p`` of image ``i`` is drawn by
``head.sample`` from ``pixel_generators`` of ``(seeds[i], p)``.

Cost and layout
---------------
Each cache is a flat ``[B·H·W + 1, C_in]`` tensor whose last row is zero. Per step and mask type
(A, B, B dilated) a precomputed index table ``[B · n_taps]`` maps every (image, tap) to its
neighbour's row, or to the zero row where the tap is closed (which also covers the image border),
so a layer's step is one ``index_copy_`` (the new input at ``q``), one ``index_select`` (all
images' patches) and one ``addmm`` (the whole batch). Only taps open at some visited position are
gathered (6 of 9 for type B under s-curve and raster orders). The per-step work is therefore
~25 tiny ops per gated resnet for the whole batch, and the total is about one forward pass of
arithmetic plus ``n_steps × (per-step overhead)``. Measured with ``lmconv-bench bench complete``
(:func:`lmconv_bench.bench.bench_complete`; MNIST top half, ``small`` preset, 2 busy CPU cores):
3.2 full forward passes at batch 64 (naive: ~392; 106× faster), 5.6 at batch 16, 27 at batch 1,
where the ~3 ms of per-step overhead dominates.

Memory: the caches hold every masked convolution's input map (``Σ C_in · H · W`` values per
image); batches larger than :data:`CACHE_BYTES` allows are completed in chunks of images (which
changes nothing in the results: each image's noise depends only on its own seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from ..orders import kernel_masks, ranks
from ..pixels import to_model_range
from .base import Orders, naive_complete, pixel_generators
from .layers import LocallyMaskedConv2d, concat_elu

__all__ = ["CACHE_BYTES", "cached_complete", "naive_complete", "cache_bytes_per_image"]

CACHE_BYTES = 1 << 30
"""Memory budget (bytes) for the activation caches of one chunk of images in
:func:`cached_complete`; larger batches are completed in chunks."""

SMALL_STEP_MACS = 1 << 22
"""With ``threads=None``, :func:`cached_complete` runs its per-step loop on one thread when the
largest per-step matrix product has fewer multiply-adds than this (about 1 ms of one core): such
ops gain nothing from more threads, and on a busy machine every parallel region can stall for
milliseconds waiting for a descheduled thread (measured: 75 ms instead of 6 ms per step at
batch 16 with 2 threads on 2 loaded cores)."""

PONO_EPS = 1e-5  # as layers.pono

_TYPE_A, _TYPE_B, _TYPE_B_DILATED = 0, 1, 2


# ------------------------------------------------------------------------------ helpers
def _has_active_dropout(model: torch.nn.Module) -> bool:
    return model.training and any(
        isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()
    )


def _masked_convs(model) -> list[LocallyMaskedConv2d]:
    return [m for m in model.modules() if isinstance(m, LocallyMaskedConv2d)]


def cache_bytes_per_image(model, dtype: torch.dtype | None = None) -> int:
    """Bytes of activation cache one image needs in :func:`cached_complete`:
    ``Σ_convs C_in · H · W · element size``."""
    dtype = dtype or model.dtype_
    hw = model.config.height * model.config.width
    size = torch.finfo(dtype).bits // 8
    return sum(m.in_channels for m in _masked_convs(model)) * hw * size


def _step_tables(
    perm: Tensor, steps: Tensor, h: int, w: int, k: int, dilation: int, include_center: bool
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Gather indices of one mask type for every visited step.

    Args:
        perm: long ``[H*W]`` (shared) or ``[B, H*W]`` (per image).
        steps: long ``[T, B]``, the flat position of image ``b`` at visited step ``t``.
    Returns:
        ``(taps, tables)``: ``taps`` long ``[n_taps]``, the flat kernel taps ``i * k + j`` open at some
        visited (step, image); ``tables[t]`` long ``[B * n_taps]``, row ``b * H*W + neighbour`` of
        each (image, tap) in a flat cache, or ``B * H*W`` (the zero row) where the tap is closed.
    """
    n_steps, b = steps.shape
    n, kk, half = h * w, k * k, k // 2
    masks = kernel_masks(perm, h, w, k, dilation, include_center)
    if perm.dim() == 1:
        open_ = masks.reshape(n, kk)[steps]  # [T, B, kk]
    else:
        open_ = masks.reshape(b, n, kk)[torch.arange(b, device=steps.device)[None, :], steps]
    taps = open_.reshape(-1, kk).any(0).nonzero().flatten()
    ti, tj = taps // k, taps % k
    off = (ti - half) * dilation * w + (tj - half) * dilation  # flat offset of each tap
    base = (torch.arange(b, device=steps.device) * n)[None, :, None]
    idx = torch.where(open_[..., taps], base + steps[..., None] + off, b * n)  # [T, B, n_taps]
    return taps, idx.reshape(n_steps, -1).unbind(0)


class _Conv:
    """One masked convolution evaluated at one position per image, with its input cache."""

    def __init__(self, module: LocallyMaskedConv2d, kind: int, taps: Tensor, batch: int, n: int, dtype, device):
        self.kind = kind
        weight = module.effective_weight().detach().to(dtype=dtype, device=device)  # [out, in, k, k]
        c_out, c_in = weight.shape[:2]
        # [(tap, c_in), c_out]: rows in the order of the gathered patch [B, n_taps, C_in]
        self.weight = weight.reshape(c_out, c_in, -1)[:, :, taps.to(device)].permute(2, 1, 0).reshape(-1, c_out)
        self.weight = self.weight.contiguous()
        self.bias = None if module.bias is None else module.bias.detach().to(dtype=dtype, device=device)
        self.c_out, self.batch = c_out, batch
        self.n_taps = int(taps.numel())
        # rows b * n + p hold the input at position p of image b; the last row stays zero
        # (filled by the prefill pass; zeroing it first would only cost time)
        self.cache = torch.empty(batch * n + 1, c_in, dtype=dtype, device=device)
        self.cache[-1].zero_()
        self.filled = False

    def fill(self, x: Tensor) -> None:
        """Store a full input map ``[B, C_in, H, W]`` (the forward pre-hook)."""
        b, c = x.shape[:2]
        self.cache[:-1].view(b, -1, c).copy_(x.reshape(b, c, -1).transpose(1, 2))
        self.filled = True

    def __call__(self, inp: Tensor | None, write: Tensor, gather: Tensor) -> Tensor:
        """Write ``inp`` (``[B, C_in]``, the input at each image's position; None: nothing to write)
        at rows ``write`` (``[B]``), then the output at those positions: ``[B, C_out]``."""
        if inp is not None:
            self.cache.index_copy_(0, write, inp)
        if self.n_taps == 0:  # nothing open (the first pixel of the order under type A)
            out = self.cache.new_zeros(self.batch, self.c_out)
            return out if self.bias is None else out + self.bias
        patch = self.cache.index_select(0, gather).view(self.batch, -1)
        if self.bias is None:
            return patch @ self.weight
        return torch.addmm(self.bias, patch, self.weight)


class _Pono:
    """PONO over the channels of ``[B, C]`` (:func:`layers.pono`: unbiased variance) in one op.

    ``(x - m) / sqrt(var_unbiased + eps)`` equals ``layer_norm(x, eps=eps·(C-1)/C)`` (biased
    variance) times ``sqrt((C-1)/C)``; the factor is the layer norm's weight. Same function, only
    rounding differs.
    """

    def __init__(self, channels: int, dtype: torch.dtype, device: torch.device):
        self.shape = (channels,)
        self.weight = torch.full(self.shape, math.sqrt((channels - 1) / channels), dtype=dtype, device=device)
        self.eps = PONO_EPS * (channels - 1) / channels

    def __call__(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.shape, self.weight, None, self.eps)


class _Act:
    """An activation at the current positions, ``[B, F]``, with its ``concat_elu`` computed once."""

    __slots__ = ("value", "_ce")

    def __init__(self, value: Tensor):
        self.value, self._ce = value, None

    @property
    def ce(self) -> Tensor:
        if self._ce is None:
            self._ce = concat_elu(self.value)
        return self._ce


class _StepNet:
    """An :class:`~lmconv_bench.models.lmconv.LMConv` evaluated one position per image at a time.

    Built for a batch of ``B`` images, their order(s) ``perm`` and the visited ``steps``
    (``[T, B]`` flat positions). :meth:`prefill` runs the full forward pass and fills the caches;
    :meth:`step` computes the head's parameters at step ``t``; :meth:`set_pixels` writes sampled
    pixels into the input cache.
    """

    def __init__(self, model, perm: Tensor, steps: Tensor, dtype: torch.dtype, device: torch.device):
        cfg = model.config
        h, w, n = cfg.height, cfg.width, cfg.height * cfg.width
        b = steps.shape[1]
        k, d = model.kernel_size, model.max_dilation
        self.model, self.batch, self.n = model, b, n
        nf = model.u_init.out_channels
        self.pono = _Pono(nf, dtype, device) if model.normalization == "pono" else None
        if self.pono is not None and nf < 2:
            raise UserError(f"PONO needs at least 2 filters, got nr_filters={nf}")
        self.tables: list[tuple[Tensor, ...]] = []
        taps = []
        for dil, centre in ((1, False), (1, True), (d, True)):
            t, tab = _step_tables(perm, steps, h, w, k, dil, centre)
            taps.append(t)
            self.tables.append(tab)
        self.write = ((torch.arange(b, device=device) * n)[None, :] + steps).unbind(0)  # [B] per step

        convs: dict[LocallyMaskedConv2d, _Conv] = {}

        def add(module: LocallyMaskedConv2d, kind: int) -> _Conv:
            convs[module] = _Conv(module, kind, taps[kind], b, n, dtype, device)
            return convs[module]

        def resnet(block) -> tuple:
            skip = None
            if block.skip_connection:
                lin = block.nin_skip.lin_a
                skip = (lin.weight.detach().to(dtype).t().contiguous(), lin.bias.detach().to(dtype))
            return add(block.conv_input, _TYPE_B), skip, add(block.conv_out, _TYPE_B)

        self.u_init = add(model.u_init, _TYPE_A)
        self.up = [[resnet(blk) for blk in stage.u_stream] for stage in model.up_layers]
        self.downsize = [add(m, _TYPE_B_DILATED) for m in model.downsize_u_stream]
        self.down = [[resnet(blk) for blk in stage.u_stream] for stage in model.down_layers]
        self.upsize = [add(m, _TYPE_B_DILATED) for m in model.upsize_u_stream]
        lin = model.nin_out.lin_a
        self.out_weight = lin.weight.detach().to(dtype).t().contiguous()
        self.out_bias = lin.bias.detach().to(dtype)
        self.convs = convs
        # multiply-adds of the largest per-step matrix product, for the batch
        self.max_step_macs = b * max(cv.weight.numel() for cv in convs.values())
        self.channels = cfg.channels

    # -- full pass ---------------------------------------------------------------------------
    def prefill(self, xf: Tensor, orders: Orders) -> None:
        """One ``model.forward`` on ``xf`` (``[B, C, H, W]`` in [-1, 1]), keeping every masked
        convolution's input map in its cache."""
        hooks = [m.register_forward_pre_hook(lambda mod, args: self.convs[mod].fill(args[0])) for m in self.convs]
        try:
            self.model(xf, orders)
        finally:
            for hk in hooks:
                hk.remove()
        if not all(cv.filled for cv in self.convs.values()):
            raise RuntimeError("the forward pass did not call every masked convolution; is this an LMConv?")

    def set_pixels(self, rows: Tensor, values: Tensor) -> None:
        """Pixel values ``[k, C]`` (model range) at cache rows ``rows`` (``b * H*W + p``)."""
        self.u_init.cache[rows, : self.channels] = values

    # -- one step ----------------------------------------------------------------------------
    def _norm(self, x: Tensor) -> Tensor:
        return self.pono(x) if self.pono is not None else x

    def _conv(self, conv: _Conv, inp: Tensor | None, t: int) -> Tensor:
        return conv(inp, self.write[t], self.tables[conv.kind][t])

    def _resnet(self, slots: tuple, og: _Act, a: _Act | None, t: int) -> _Act:
        """gated_resnet.forward at one position per image (dropout is the identity)."""
        conv_input, skip, conv_out = slots
        x = self._norm(self._conv(conv_input, og.ce, t))
        if a is not None:
            x = x + torch.addmm(skip[1], a.ce, skip[0])
        x = self._conv(conv_out, concat_elu(x), t)
        u, g = torch.chunk(x, 2, dim=1)
        return _Act(torch.addcmul(og.value, self._norm(u), torch.sigmoid(g)))

    def step(self, t: int) -> Tensor:
        """The head's parameters ``[B, n_params]`` at each image's position of visited step ``t``
        (LMConv.forward at those positions); updates every cache at those positions."""
        up = [_Act(self._norm(self._conv(self.u_init, None, t)))]
        for i in range(2):
            for slots in self.up[i]:
                up.append(self._resnet(slots, up[-1], None, t))
            up.append(_Act(self._norm(self._conv(self.downsize[i], up[-1].value, t))))
        for slots in self.up[2]:
            up.append(self._resnet(slots, up[-1], None, t))
        u = up.pop()
        for i in range(2):
            for slots in self.down[i]:
                u = self._resnet(slots, u, up.pop(), t)
            u = _Act(self._norm(self._conv(self.upsize[i], u.value, t)))
        for slots in self.down[2]:
            u = self._resnet(slots, u, up.pop(), t)
        return torch.addmm(self.out_bias, F.elu(u.value), self.out_weight)


# ------------------------------------------------------------------------------ the sampler
def _check_inputs(model, x: Tensor, missing: Tensor, orders: Orders, seeds: Tensor) -> None:
    cfg = model.config
    if x.dim() != 4 or tuple(x.shape[1:]) != (cfg.channels, cfg.height, cfg.width):
        raise ValueError(f"x must be [B, {cfg.channels}, {cfg.height}, {cfg.width}], got {tuple(x.shape)}")
    b, n = x.shape[0], cfg.height * cfg.width
    if tuple(missing.shape) != (b, cfg.height, cfg.width):
        raise ValueError(f"missing must be [{b}, {cfg.height}, {cfg.width}], got {tuple(missing.shape)}")
    if orders.dim() not in (1, 2) or orders.shape[-1] != n or (orders.dim() == 2 and orders.shape[0] != b):
        raise ValueError(f"orders must be [{n}] or [{b}, {n}], got {tuple(orders.shape)}")
    if seeds.numel() != b:
        raise ValueError(f"need one seed per image: {seeds.numel()} for a batch of {b}")


@torch.no_grad()
def cached_complete(
    model,
    x: Tensor,
    missing: Tensor,
    orders: Orders,
    seeds: Tensor,
    temperature: float = 1.0,
    progress: Callable[[int], None] | None = None,
    max_cache_bytes: int = CACHE_BYTES,
    threads: int | None = None,
    cost=None,
) -> Tensor:
    """LMConv completion with cached activations; the same samples as the naive sampler.

    Args:
        model: an :class:`~lmconv_bench.models.lmconv.LMConv` (``conv_impl`` ``fast`` or
            ``reference``), in eval mode unless it has no dropout.
        x: uint8 ``[B, C, H, W]``; values at missing positions are ignored.
        missing: bool ``[B, H, W]`` (True = to be sampled); may differ per image.
        orders: long ``[H*W]`` (shared) or ``[B, H*W]`` (per image). Any permutation; with
            ``observed_first`` orders only the missing positions are visited (see the module
            docstring), otherwise every step from the first missing pixel on.
        seeds: int64 ``[B]``; pixel ``p`` of image ``i`` is sampled with the noise of
            ``pixel_generators`` of ``(seeds[i], p)``, as in the naive sampler.
        temperature: > 0, passed to the head.
        progress: called with 1 after every step at which some image (of the current chunk)
            sampled a pixel.
        max_cache_bytes: activation-cache budget; larger batches run in chunks of images.
        threads: torch threads for the per-step loop (the prefill pass keeps the current
            setting, which is restored afterwards); None: 1 when the per-step products are small
            (see :data:`SMALL_STEP_MACS`), else the current setting.
        cost: a :class:`~lmconv_bench.models.base.Cost` to add the work to (the prefill pass plus
            one position of every layer per step, per chunk of images).
    Returns:
        uint8 ``[B, C, H, W]``: observed pixels unchanged, missing ones sampled in order.
    """
    if _has_active_dropout(model):
        raise UserError("cached LMConv completion needs eval mode (dropout is active): call model.eval()")
    if getattr(model, "conv_impl", "fast") == "plain":
        raise UserError('cached completion needs locally masked convolutions; conv_impl="plain" is not autoregressive')
    _check_inputs(model, x, missing, orders, seeds)
    b = x.shape[0]
    chunk = max(1, int(max_cache_bytes) // max(cache_bytes_per_image(model), 1))
    if b <= chunk:
        return _complete_chunk(model, x, missing, orders, seeds, temperature, progress, threads, cost)
    parts = []
    for s in range(0, b, chunk):
        sl = slice(s, min(b, s + chunk))
        perm = orders[sl] if orders.dim() == 2 else orders
        parts.append(_complete_chunk(model, x[sl], missing[sl], perm, seeds[sl], temperature, progress, threads, cost))
    return torch.cat(parts)


@contextmanager
def _torch_threads(n: int | None):
    """Run the block with ``n`` torch threads (None: unchanged), then restore the setting."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _complete_chunk(model, x, missing, orders, seeds, temperature, progress, threads, cost=None) -> Tensor:
    b, c, h, w = x.shape
    n, device, dtype, n_bits = h * w, x.device, model.dtype_, model.config.n_bits
    miss = missing.to(device).bool().reshape(b, n)
    out = x.clone()
    out.view(b, c, n).masked_fill_(miss.unsqueeze(1), 0)  # placeholders, as in the naive sampler
    if b == 0 or not bool(miss.any()):
        return out
    perm = orders.to(device).long()
    if perm.dim() == 2 and bool((perm == perm[:1]).all()):
        perm = perm[0]
    perm_b = perm.expand(b, n)
    rank = ranks(perm_b)
    first = torch.where(miss, rank, n).amin(1)
    last = torch.where(miss, rank, -1).amax(1)
    t0, t1 = int(first[first < n].min()), int(last.max()) + 1
    steps = perm_b[:, t0:t1].t().contiguous()  # [T, B] flat position of each image per step
    # images that sample at each step (the rest only recompute activations)
    samples = miss.gather(1, steps.t()).t()  # [T, B]
    hits = samples.nonzero().cpu()
    counts = samples.sum(1).tolist()
    step_rows = hits[:, 1].split(counts)
    pos_cpu = steps.cpu()
    seeds_cpu = seeds.reshape(-1).cpu().long()

    net = _StepNet(model, perm, steps, dtype, device)
    net.prefill(to_model_range(out, n_bits).to(dtype), perm)
    if cost is not None:  # the prefill pass, then one position of every layer per step
        cost.add(1 + steps.shape[0] / n, b)
    if threads is None and device.type == "cpu" and net.max_step_macs < SMALL_STEP_MACS:
        threads = 1
    out_flat = out.view(b, c, n)
    with _torch_threads(threads):
        for t in range(steps.shape[0]):
            params = net.step(t)
            if not counts[t]:
                continue
            rows_cpu = step_rows[t]
            pos = pos_cpu[t, rows_cpu]
            rows = rows_cpu.to(device)
            gens = pixel_generators(seeds_cpu[rows_cpu], pos)
            val = model.head.sample(params.index_select(0, rows)[:, :, None, None], gens, temperature=temperature)
            val = val[:, :, 0, 0].to(out.dtype)  # [k, C]
            pos = pos.to(device)
            out_flat[rows, :, pos] = val
            net.set_pixels(rows * n + pos, to_model_range(val, n_bits).to(dtype))
            if progress is not None:
                progress(1)
    return out
