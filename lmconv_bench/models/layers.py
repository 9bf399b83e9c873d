"""Building blocks of LMConv: the locally masked convolution, gated resnet, nin, concat_elu, PONO.

Locally masked convolution
--------------------------
A convolution whose kernel mask changes with the output position: output position ``p`` sums
tap ``(i, j)`` (neighbour ``p + ((i - k//2)·d, (j - k//2)·d)``) only where
``orders.kernel_masks`` opens it. Weights ``[out, in, k, k]`` and bias ``[out]`` are laid out as in
``nn.Conv2d``; padding is 'same' zero padding, so taps outside the image contribute nothing
whether they are open or not (they are "don't care").

Three implementations compute the same function:

* :func:`lmconv2d_reference` - the paper's im2col method: unfold, multiply by the mask, matmul.
  Simple and obviously right; kept for tests and as the ``"reference"`` network.
* :func:`lmconv2d` - the fast path (a custom autograd function). It splits the convolution by
  tap. One GEMM computes ``Z_t = W[:, :, t] · x`` for the taps ``t`` in the smallest block of
  kernel rows × cols that holds every tap open somewhere (2×3 of 3×3 for s-curve and raster
  orders, so 2/3 of a dense convolution's multiply-adds; all 9 for Hilbert). Then, on flat
  ``H·W`` maps, each ``Z_t`` is multiplied in place by its mask in the coordinates it is read at,
  and ``y[p] = bias + Σ_t Z_t[p + off_t]`` is summed through a strided view that reads every
  tap's map shifted by its offset ``off_t`` (no copies, no im2col). A closed mask also covers
  every read that wraps around a row edge or falls off the image, which is why flat shifts are
  exact. Backward is the mirror image: ``dZ_t[q] = m_t[q - off_t] · dy[q - off_t]`` in one op
  through the same kind of view, then the two GEMMs of a convolution's backward
  (``dx = Wᵀ · dZ``, ``dW = Σ dZ · xᵀ``); only ``x`` is saved. So the cost is a dense
  convolution's GEMMs (or 2/3 of them) plus ~4 streaming passes, in ~6 large ops per call
  whatever the number of taps, which also keeps it fast when other processes compete for the
  CPU. The tap maps live in a per-thread workspace kept between calls on CPU (chunked over the
  batch within :data:`WORKSPACE_BYTES`), so they are not page-faulted in afresh at every call.
  One order per batch (masks ``[H, W, k, k]``) or one per image (``[B, H, W, k, k]``: the mask
  multiply broadcasts per image) run the same code; any float dtype; CPU and CUDA. First-order
  gradients only (no double backward). NaN/inf inputs may spread further than in a dense
  convolution (a masked read multiplies them by zero).
* ``"plain"`` (in the network): an unmasked ``F.conv2d`` with the same weights, the benchmark's
  baseline.

The per-order preparation (kernel masks, the block of used taps, the shifted float masks per
dtype/device) is a :class:`ConvMask`, built by :func:`conv_mask` and cached by the order's bytes
+ ``(H, W, k, dilation, type, device)``, so a network builds it once per order, not per layer
call.

Measured with ``lmconv-bench bench conv`` on the idle 2-core CPU machine (``bench-default``: 64
filters, batch 16), LMConv network time ÷ the same network with plain ``conv2d`` over all 9 taps
(NCHW), medians of 5 interleaved rounds, s_curve / hilbert / raster. MNIST 28×28×1: train step
1.01 / 1.40 / 1.00, forward 1.19 / 1.54 / 1.17; ÷ an unmasked conv over the same tap footprint
(the masking overhead): train step 1.19 / 1.31 / 1.19. CIFAR-shaped 32×32×3 (``--shape cifar10``):
train step 1.00 / 1.23 / 0.96, forward 1.10 / 1.34 / 1.05; same footprint 1.16 / 1.18 / 1.17. Peak
training memory ≤ 1.10×. The unfold reference: 5.2× (MNIST) and 4.1× (CIFAR) a plain train step.

Other blocks follow the official LMConv code (github ajayjain/lmconv, ``layers.py``) in structure
and parameter names (``nin.lin_a.weight_g/weight_v/bias``, ``gated_resnet.conv_input``,
``nin_skip``, ``conv_out``), so its checkpoints map one to one.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..orders import kernel_masks

WORKSPACE_BYTES = {"cpu": 64 * 2**20, "cuda": 512 * 2**20}
"""Budget for the tap maps of one fast-path call, per device type: the batch is processed in
chunks of as many images as fit (at least one). Fewer, larger chunks mean fewer, larger ops."""

_CACHE_SIZE = 64


def _align(n: int, to: int = 16) -> int:
    return -(-n // to) * to


# ----------------------------------------------------------------------------- mask preparation
class ConvMask:
    """Prepared masks of one locally masked convolution type for one order (or one per image).

    Attributes:
        masks: bool ``[H, W, k, k]`` (shared order) or ``[B, H, W, k, k]`` (per image), exactly
            ``orders.kernel_masks(perm, H, W, k, dilation, include_center)``.
        per_image: whether ``masks`` has a batch dimension.
        box: ``(i0, i1, j0, j1)``, the smallest block of kernel rows ``i0:i1`` and cols ``j0:j1``
            holding every tap that is open somewhere; the fast path computes only these taps.

    The fast path works on flat maps (``H*W``, row-major). Tap ``(i, j)`` reads neighbour
    ``p + off`` of position ``p``, ``off = (i - k//2)·d·W + (j - k//2)·d``. Where that neighbour is
    outside the image (including a wrap around a row edge) the tap is closed, so its value there
    never matters; see :class:`_LMConvFunction`.
    """

    def __init__(self, perm: Tensor, height: int, width: int, k: int, dilation: int, include_center: bool):
        if perm.dim() not in (1, 2) or perm.shape[-1] != height * width:
            raise ValueError(f"order must be [H*W] or [B, H*W] with H*W={height * width}, got {tuple(perm.shape)}")
        self.height, self.width, self.k, self.dilation = height, width, k, dilation
        self.include_center = include_center
        self.per_image = perm.dim() == 2
        self.masks = kernel_masks(perm, height, width, k, dilation, include_center)
        used = self.masks.reshape(-1, k, k).any(0)
        if bool(used.any()):
            rows, cols = used.any(1).nonzero().flatten(), used.any(0).nonzero().flatten()
            self.box = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
        else:
            self.box = (0, 0, 0, 0)
        i0, i1, j0, j1 = self.box
        half = k // 2
        self.n_taps = (i1 - i0) * (j1 - j0)
        # flat offset of the box's first tap; the others step by d*W (rows) and d (cols)
        self.base = (i0 - half) * dilation * width + (j0 - half) * dilation
        offs = [(i - half) * dilation * width + (j - half) * dilation for i in range(i0, i1) for j in range(j0, j1)]
        # zero margin at both ends of the fast path's buffers; a multiple of 16 elements keeps
        # the GEMM outputs 64-byte aligned
        self.margin = _align(max((abs(o) for o in offs), default=0))
        # forward order of the box taps (row-major) and the reversed order used by backward
        self.tap_index = torch.tensor([i * k + j for i in range(i0, i1) for j in range(j0, j1)], dtype=torch.long)
        self._cache: dict[tuple, Tensor] = {}

    @property
    def batch(self) -> int | None:
        return self.masks.shape[0] if self.per_image else None

    def _get(self, what: str, dtype: torch.dtype, device: torch.device) -> Tensor:
        key = (what, dtype, torch.device(device))
        if key not in self._cache:
            self._cache[key] = self._build(what).to(device=device, dtype=dtype)
        return self._cache[key]

    def _build(self, what: str) -> Tensor:
        k, hw = self.k, self.height * self.width
        lead = self.masks.shape[:-4]
        if what == "unfolded":  # [k*k, HW] or [B, 1, k*k, HW]
            m = self.masks.reshape(*lead, hw, k * k).transpose(-1, -2)
            return m.unsqueeze(1).contiguous() if self.per_image else m.contiguous()
        i0, i1, j0, j1 = self.box
        box = self.masks[..., i0:i1, j0:j1].reshape(*lead, hw, i1 - i0, j1 - j0).movedim(-3, -1)  # [.., ki, kj, HW]
        # m_t[q - off_t] (0 where q - off_t is outside 0..HW-1): tap t's mask in the coordinates
        # of the map it reads
        out = torch.zeros_like(box)
        for a, i in enumerate(range(i0, i1)):
            for b, j in enumerate(range(j0, j1)):
                off = (i - k // 2) * self.dilation * self.width + (j - k // 2) * self.dilation
                lo, hi = max(0, off), min(hw, hw + off)
                out[..., a, b, lo:hi] = box[..., a, b, lo - off : hi - off]
        if what == "backward":  # taps in reversed order
            out = out.flip(-2, -3)
        return out.unsqueeze(-2).contiguous()

    def forward_masks(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``m_t[q - off_t]`` for the box taps in forward (row-major) order: ``[ki, kj, 1, H*W]``
        (or ``[B, ki, kj, 1, H*W]``); zero where ``q - off_t`` is outside the map."""
        return self._get("forward", dtype, device)

    def backward_masks(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """As :meth:`forward_masks`, with the taps in reversed order."""
        return self._get("backward", dtype, device)

    def unfolded(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The masks in im2col layout: ``[k*k, H*W]`` or ``[B, 1, k*k, H*W]``, as ``dtype``."""
        return self._get("unfolded", dtype, device)


_MASK_CACHE: "OrderedDict[tuple, ConvMask]" = OrderedDict()


def conv_mask(
    perm: Tensor, height: int, width: int, k: int = 3, dilation: int = 1, include_center: bool = True
) -> ConvMask:
    """The cached :class:`ConvMask` of an order (long ``[H*W]``) or per-image orders (``[B, H*W]``).

    ``include_center=False`` is mask type A (first layer), True is type B. The cache key is the
    order's bytes plus ``(shape, H, W, k, dilation, type, device)``; the last 64 are kept.
    """
    if k % 2 != 1:
        raise UserError(f"kernel size must be odd, got {k}")
    perm_cpu = perm.detach().to("cpu", torch.long).contiguous()
    key = (
        perm_cpu.numpy().tobytes(),
        tuple(perm_cpu.shape),
        height,
        width,
        k,
        dilation,
        bool(include_center),
        str(perm.device),
    )
    hit = _MASK_CACHE.get(key)
    if hit is not None:
        _MASK_CACHE.move_to_end(key)
        return hit
    cm = ConvMask(perm.detach().long(), height, width, k, dilation, include_center)
    _MASK_CACHE[key] = cm
    while len(_MASK_CACHE) > _CACHE_SIZE:
        _MASK_CACHE.popitem(last=False)
    return cm


def clear_mask_cache() -> None:
    """Drop all cached :class:`ConvMask` objects."""
    _MASK_CACHE.clear()


def _check_input(x: Tensor, weight: Tensor, cm: ConvMask) -> None:
    if x.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"expected x [B, {weight.shape[1]}, H, W], got {tuple(x.shape)}")
    if weight.shape[2:] != (cm.k, cm.k):
        raise ValueError(f"weight kernel {tuple(weight.shape[2:])} does not match mask kernel {cm.k}")
    if x.shape[2:] != (cm.height, cm.width):
        raise ValueError(f"input size {tuple(x.shape[2:])} does not match mask size {(cm.height, cm.width)}")
    if cm.per_image and cm.batch != x.shape[0]:
        raise ValueError(f"per-image masks for {cm.batch} images, but the batch has {x.shape[0]}")


# ----------------------------------------------------------------------------- reference path
def lmconv2d_reference(x: Tensor, weight: Tensor, bias: Tensor | None, cm: ConvMask) -> Tensor:
    """Locally masked convolution by im2col, as in the paper: unfold, mask, matmul.

    Args:
        x: float ``[B, C_in, H, W]``.
        weight: ``[C_out, C_in, k, k]``; bias: ``[C_out]`` or None.
        cm: the :class:`ConvMask` (shared or per-image masks, dilation, type).
    Returns:
        float ``[B, C_out, H, W]``.
    """
    _check_input(x, weight, cm)
    b, c_in, h, w = x.shape
    k, d = cm.k, cm.dilation
    cols = F.unfold(x, k, dilation=d, padding=d * (k // 2))  # [B, C_in*k*k, H*W]
    cols = (cols.view(b, c_in, k * k, h * w) * cm.unfolded(x.dtype, x.device)).view(b, c_in * k * k, h * w)
    out = torch.matmul(weight.reshape(weight.shape[0], -1), cols)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(b, -1, h, w)


# ----------------------------------------------------------------------------- fast path
def _chunk_size(n_images: int, rows: int, hw: int, x: Tensor) -> int:
    budget = WORKSPACE_BYTES.get(x.device.type, WORKSPACE_BYTES["cpu"])
    per_image = rows * hw * x.element_size()
    return max(1, min(n_images, budget // max(per_image, 1)))


_WORKSPACE = threading.local()
PERSISTENT_WORKSPACE = {"cpu": True}


def _workspace(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised tensor of ``shape`` for scratch use within one call.

    On CPU it is a view of a per-thread buffer that is kept between calls (and grown as needed),
    so the tap maps do not page-fault fresh memory at every layer call. Elsewhere (CUDA has a
    caching allocator) it is a plain ``torch.empty``. Never return or save these views.
    """
    if not PERSISTENT_WORKSPACE.get(like.device.type, False):
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    nbytes = math.prod(shape) * like.element_size()
    buf = getattr(_WORKSPACE, "buf", None)
    if buf is None or buf.numel() < nbytes:
        _WORKSPACE.buf = buf = torch.empty(nbytes, dtype=torch.uint8, device=like.device)
    return buf[:nbytes].view(like.dtype).view(shape)


def release_workspace() -> None:
    """Free this thread's kept CPU workspace (see :data:`WORKSPACE_BYTES`)."""
    _WORKSPACE.buf = None


def _tap_view(flat: Tensor, n: int, cm: ConvMask, channels: int, start: int, backward: bool) -> Tensor:
    """A view ``[n, ki, kj, channels, H*W]`` of a flat buffer with shifted reads (no copy).

    Forward (``backward=False``): ``flat`` holds ``Z`` ``[n, T, channels + 1, H*W]`` from offset
    ``start`` (each tap's maps end with an all-zero map); element ``[b, i, j, c, p]`` is
    ``Z[b, t(i, j), c, p + off_t]``. Backward: ``flat`` holds ``dy`` ``[n, channels, H*W]`` from
    ``start``; element ``[b, i', j', c, q]`` is ``dy[b, c, q - off_t]`` for the tap ``t`` that is
    ``(i', j')`` in reversed order. A read outside its map lands in the neighbouring map of the same
    tap, in the zero map or in the zeroed margins at the ends of the buffer, and is always
    multiplied by a zero mask (backward) or reads a value already multiplied by one (forward).
    """
    i0, i1, j0, j1 = cm.box
    ki, kj, d, hw = i1 - i0, j1 - j0, cm.dilation, cm.height * cm.width
    row, col = d * cm.width, d
    if backward:
        last = cm.base + (ki - 1) * row + (kj - 1) * col
        return flat.as_strided((n, ki, kj, channels, hw), (channels * hw, row, col, hw, 1), start - last)
    tap = (channels + 1) * hw
    return flat.as_strided((n, ki, kj, channels, hw), (ki * kj * tap, kj * tap + row, tap + col, hw, 1), start + cm.base)


class _LMConvFunction(torch.autograd.Function):
    """Fast locally masked convolution; see the module docstring.

    Forward, per chunk of ``n`` images: one GEMM ``Z = W_stack · x`` (``[n, T·(C_out+1), H·W]``,
    box taps in forward order, each followed by a zero map), ``Z *= M_fwd`` (aligned, in place),
    then ``y = Σ_taps`` of the shifted view of :func:`_tap_view` (two reductions: kernel cols, then
    rows). Backward: ``dZ = dy_view · M_bwd`` (one op, taps in reversed order),
    ``dx = W_revᵀ · dZ``, ``dW_rev = Σ_b dZ_b · x_bᵀ``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, cm: ConvMask) -> Tensor:  # type: ignore[override]
        b, c_in, h, w = x.shape
        c_out, hw, n_taps, pad = weight.shape[0], h * w, cm.n_taps, cm.margin
        idx = cm.tap_index.to(x.device)
        # W_stack[t, o, c] = weight[o, c, tap t]; row o = c_out of each tap is zero (the zero map)
        w_fwd = x.new_zeros(n_taps, c_out + 1, c_in)
        w_fwd[:, :c_out] = weight.reshape(c_out, c_in, -1)[:, :, idx].permute(2, 0, 1)
        w_fwd = w_fwd.view(n_taps * (c_out + 1), c_in)
        masks = cm.forward_masks(x.dtype, x.device)
        x = x.contiguous()
        y = torch.empty(b, c_out, hw, dtype=x.dtype, device=x.device)
        rows = n_taps * (c_out + 1)
        chunk = _chunk_size(b, rows, hw, x)
        zlen = _align(chunk * rows * hw + 2 * pad)
        ki = masks.shape[-4]
        buf = _workspace((zlen + chunk * ki * c_out * hw,), x)
        for s in range(0, b, chunk):
            n = min(chunk, b - s)
            size = n * rows * hw
            buf[:pad].zero_()
            buf[pad + size : 2 * pad + size].zero_()
            z = buf[pad : pad + size].view(n, rows, hw)
            torch.bmm(w_fwd.expand(n, -1, -1), x[s : s + n].view(n, c_in, hw), out=z)
            # mask every tap map where it is read, in place (aligned, so no aliasing) ...
            z.view(n, *masks.shape[-4:-2], c_out + 1, hw).mul_(masks[s : s + n] if cm.per_image else masks)
            # ... then sum the shifted maps over the taps (kernel cols, then rows: a joint
            # reduction over both is ~10x slower in torch 2.x)
            partial = buf[zlen : zlen + n * ki * c_out * hw].view(n, ki, c_out, hw)
            torch.sum(_tap_view(buf, n, cm, c_out, pad, backward=False), dim=2, out=partial)
            torch.sum(partial, dim=1, out=y[s : s + n])
        if bias is not None:
            y += bias.view(1, -1, 1)
        ctx.cm = cm
        ctx.has_bias = bias is not None
        ctx.weight_shape = weight.shape
        ctx.save_for_backward(x, weight)
        return y.view(b, c_out, h, w)

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        cm: ConvMask = ctx.cm
        b, c_in, h, w = x.shape
        c_out, hw, n_taps, pad = weight.shape[0], h * w, cm.n_taps, cm.margin
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        gy = gy.contiguous().view(b, c_out, hw)
        gx = gweight = None
        if need_x or need_w:
            idx = cm.tap_index.flip(0).to(x.device)  # reversed tap order
            w_rev = weight.reshape(c_out, c_in, -1)[:, :, idx].permute(2, 0, 1).reshape(n_taps * c_out, c_in)
            masks = cm.backward_masks(x.dtype, x.device)
            gx = torch.empty_like(x) if need_x else None
            gw_rev = x.new_zeros(n_taps * c_out, c_in) if need_w else None
            chunk = _chunk_size(b, n_taps * c_out, hw, x)
            gy_len = _align(chunk * c_out * hw + 2 * pad)
            buf = _workspace((gy_len + chunk * n_taps * c_out * hw,), x)
            for s in range(0, b, chunk):
                n = min(chunk, b - s)
                size = n * c_out * hw
                buf[:pad].zero_()
                buf[pad + size : 2 * pad + size].zero_()
                buf[pad : pad + size].view(n, c_out, hw).copy_(gy[s : s + n])
                gz = buf[gy_len : gy_len + n * n_taps * c_out * hw].view(n, n_taps * c_out, hw)
                torch.mul(
                    _tap_view(buf, n, cm, c_out, pad, backward=True),
                    masks[s : s + n] if cm.per_image else masks,
                    out=gz.view(n, *masks.shape[-4:-2], c_out, hw),
                )
                if need_x:
                    torch.bmm(w_rev.t().expand(n, -1, -1), gz, out=gx[s : s + n].view(n, c_in, hw))
                if need_w:
                    gw_rev += torch.bmm(gz, x[s : s + n].view(n, c_in, hw).transpose(1, 2)).sum(0)
            if need_w:
                gweight = x.new_zeros(c_out, c_in, cm.k * cm.k)
                gweight[:, :, idx] = gw_rev.view(n_taps, c_out, c_in).permute(1, 2, 0)
                gweight = gweight.view(ctx.weight_shape)
        gbias = gy.sum((0, 2)) if need_b else None
        return gx, gweight, gbias, None


def lmconv2d(x: Tensor, weight: Tensor, bias: Tensor | None, cm: ConvMask) -> Tensor:
    """Fast locally masked convolution (see the module docstring); same contract as
    :func:`lmconv2d_reference`: x ``[B, C_in, H, W]`` → ``[B, C_out, H, W]``."""
    _check_input(x, weight, cm)
    weight = weight.to(x.dtype)  # no-op unless mixed precision; autograd sees the cast
    bias = None if bias is None else bias.to(x.dtype)
    if cm.n_taps == 0:  # nothing is ever open (type A with a 1x1 kernel): only the bias remains
        out = x.new_zeros(x.shape[0], weight.shape[0], x.shape[2], x.shape[3]) + 0 * weight.sum()
        return out if bias is None else out + bias.view(1, -1, 1, 1)
    return _LMConvFunction.apply(x, weight, bias, cm)


def masked_conv_at(
    x: Tensor, weight: Tensor, bias: Tensor | None, masks_at: Tensor, positions: Tensor, dilation: int = 1
) -> Tensor:
    """A locally masked convolution evaluated at one position per image.

    For incremental (cached) sampling: only the outputs at ``positions`` are computed.

    Args:
        x: float ``[B, C_in, H, W]`` (the layer's full input map).
        weight: ``[C_out, C_in, k, k]``; bias: ``[C_out]`` or None.
        masks_at: bool ``[B, k, k]``, the kernel mask at each image's position (e.g.
            ``ConvMask.masks[r, c]`` or ``masks[b, r, c]``).
        positions: long ``[B]``, flat index ``r * W + c`` of each image's position.
    Returns:
        float ``[B, C_out]``, equal to ``lmconv2d(x, ...)[b, :, r_b, c_b]``.
    """
    b, c_in, h, w = x.shape
    k = weight.shape[-1]
    pad = dilation * (k // 2)
    xp = F.pad(x, (pad, pad, pad, pad))
    r, c = positions // w, positions % w
    offs = torch.arange(k, device=x.device) * dilation
    rows = (r[:, None] + offs[None, :])[:, :, None].expand(b, k, k)  # padded coords of the taps
    cols = (c[:, None] + offs[None, :])[:, None, :].expand(b, k, k)
    flat = (rows * (w + 2 * pad) + cols).reshape(b, 1, k * k).expand(b, c_in, k * k)
    patch = torch.gather(xp.reshape(b, c_in, -1), 2, flat)  # [B, C_in, k*k]
    patch = patch * masks_at.reshape(b, 1, k * k).to(x.dtype)
    out = patch.reshape(b, c_in * k * k) @ weight.reshape(weight.shape[0], -1).t()
    return out if bias is None else out + bias


# ----------------------------------------------------------------------------- modules
CONV_IMPLS = ("fast", "reference", "plain", "footprint")
"""``fast`` / ``reference`` (unfold): locally masked; ``plain``: unmasked 3×3 ``conv2d`` (not
autoregressive; a benchmark comparator); ``footprint``: unmasked ``conv2d`` over only the kernel
taps the order opens somewhere (the mask's ``box``; not autoregressive either): the same
multiply-adds as the fast path without its masking, the honest comparator of masking's overhead."""


def footprint_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, cm: "ConvMask") -> Tensor:
    """Unmasked convolution over the taps of ``cm.box`` only (``[B, in, H, W]`` → ``[B, out, H, W]``).

    Output ``(r, c)`` = Σ over box taps ``(i, j)`` of ``w[:, :, i, j] · x[r + (i - k//2)·d, c + (j - k//2)·d]``
    (zero outside the image), computed as one ``conv2d`` on an asymmetrically padded input.
    """
    i0, i1, j0, j1 = cm.box
    half, d = cm.k // 2, cm.dilation
    if i1 == i0:
        return x.new_zeros(x.shape[0], weight.shape[0], *x.shape[2:]) + (0 if bias is None else bias.view(1, -1, 1, 1))
    xp = F.pad(x, ((half - j0) * d, (j1 - 1 - half) * d, (half - i0) * d, (i1 - 1 - half) * d))
    return F.conv2d(xp, weight[:, :, i0:i1, j0:j1], bias, dilation=d)


def _weight_norm(v: Tensor, g: Tensor) -> Tensor:
    """``g · v / ||v||`` with the norm over every dim but the first (torch ``weight_norm`` dim=0)."""
    norm = v.reshape(v.shape[0], -1).norm(dim=1).view(g.shape)
    return v * (g / norm)


class LocallyMaskedConv2d(nn.Module):
    """A locally masked convolution layer (official name: ``locally_masked_conv2d``).

    Parameters are ``weight`` ``[out, in, k, k]`` and ``bias`` ``[out]`` as in ``nn.Conv2d``, or,
    with ``weight_norm=True``, ``weight_v`` ``[out, in, k, k]`` and ``weight_g`` ``[out, 1, 1, 1]``
    (``weight = g · v / ||v||``), named as ``torch.nn.utils.weight_norm`` names them in the
    official checkpoints. Initialisation follows ``nn.Conv2d``.

    ``forward(x, mask)``: x float ``[B, in, H, W]``, mask a :class:`ConvMask` of this layer's
    ``kernel_size`` and ``dilation`` (ignored by ``impl="plain"``) → ``[B, out, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        bias: bool = True,
        weight_norm: bool = False,
        impl: str = "fast",
    ):
        super().__init__()
        if impl not in CONV_IMPLS:
            raise UserError(f"unknown conv_impl {impl!r}; allowed: {', '.join(CONV_IMPLS)}")
        if kernel_size % 2 != 1:
            raise UserError(f"kernel size must be odd, got {kernel_size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.dilation = kernel_size, dilation
        self.impl = impl
        self.use_weight_norm = weight_norm
        w = torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if weight_norm:
            self.weight_v = nn.Parameter(w)
            self.weight_g = nn.Parameter(w.reshape(out_channels, -1).norm(dim=1).view(-1, 1, 1, 1).clone())
        else:
            self.weight = nn.Parameter(w)
        if bias:
            bound = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
            self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    def effective_weight(self) -> Tensor:
        """The convolution weight ``[out, in, k, k]`` (weight norm applied if enabled)."""
        return _weight_norm(self.weight_v, self.weight_g) if self.use_weight_norm else self.weight

    def forward(self, x: Tensor, mask: ConvMask | None = None) -> Tensor:
        weight = self.effective_weight()
        if self.impl == "plain":
            pad = self.dilation * (self.kernel_size // 2)
            return F.conv2d(x, weight, self.bias, padding=pad, dilation=self.dilation)
        if mask is None:
            raise ValueError("a locally masked convolution needs its ConvMask")
        if mask.k != self.kernel_size or mask.dilation != self.dilation:
            raise ValueError(
                f"mask is for k={mask.k}, dilation={mask.dilation}; layer has k={self.kernel_size}, dilation={self.dilation}"
            )
        fn = {"fast": lmconv2d, "reference": lmconv2d_reference, "footprint": footprint_conv2d}[self.impl]
        return fn(x, weight, self.bias, mask)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"bias={self.bias is not None}, weight_norm={self.use_weight_norm}, impl={self.impl!r}"
        )


class WeightNormLinear(nn.Module):
    """``nn.Linear`` with weight normalisation; parameters ``weight_v`` ``[out, in]``,
    ``weight_g`` ``[out, 1]`` and ``bias`` ``[out]``, as ``torch.nn.utils.weight_norm`` names them."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        ref = nn.Linear(in_features, out_features)
        self.weight_v = nn.Parameter(ref.weight.detach().clone())
        self.weight_g = nn.Parameter(ref.weight.detach().norm(dim=1, keepdim=True).clone())
        self.bias = nn.Parameter(ref.bias.detach().clone())

    @property
    def weight(self) -> Tensor:
        return _weight_norm(self.weight_v, self.weight_g)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class nin(nn.Module):  # noqa: N801  (official name)
    """Network-in-network: a 1×1 convolution as a linear map over channels.

    ``forward(x)``: ``[B, dim_in, H, W]`` → ``[B, dim_out, H, W]``. The linear layer is ``lin_a``
    (weight-normalised by default, as in the official code, where every nin is).
    """

    def __init__(self, dim_in: int, dim_out: int, weight_norm: bool = True):
        super().__init__()
        self.lin_a = WeightNormLinear(dim_in, dim_out) if weight_norm else nn.Linear(dim_in, dim_out)
        self.dim_out = dim_out

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        weight = self.lin_a.weight
        out = torch.baddbmm(self.lin_a.bias.view(1, -1, 1), weight.expand(b, -1, -1), x.reshape(b, c, h * w))
        return out.view(b, -1, h, w)


def concat_elu(x: Tensor) -> Tensor:
    """``elu(cat([x, -x], dim=1))``: ``[B, C, H, W]`` → ``[B, 2C, H, W]``."""
    return F.elu(torch.cat([x, -x], dim=1))


def pono(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Positional normalisation over channels at each position: ``(x - mean) / sqrt(var + eps)``
    with the *unbiased* variance (``torch.var``'s default, as the official ``pono`` uses). No
    affine parameters (the official ``PONO`` module has none). ``[B, C, H, W]`` → same."""
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, keepdim=True, unbiased=True)
    return (x - mean) / (var + eps).sqrt()


class PONO(nn.Module):
    """Module wrapper of :func:`pono` (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return pono(x)


class gated_resnet(nn.Module):  # noqa: N801  (official name)
    """The gated residual block of PixelCNN++/LMConv (official ``gated_resnet``)::

        h = norm(conv_input(concat_elu(x)))          # masked conv, 2F -> F
        h = h + nin_skip(concat_elu(a))              # only with a skip input a (down path)
        h = conv_out(dropout(concat_elu(h)))         # masked conv, 2F -> 2F
        u, g = chunk(h, 2); return x + norm(u) * sigmoid(g)

    ``norm`` is PONO or the identity; dropout is ``nn.Dropout2d``. Submodule names match the
    official ones (``conv_input``, ``nin_skip``, ``conv_out``).
    """

    def __init__(
        self,
        num_filters: int,
        conv_op,
        normalization: str = "none",
        skip_connection: int = 0,
        dropout_prob: float = 0.5,
    ):
        super().__init__()
        self.skip_connection = skip_connection
        self.conv_input = conv_op(2 * num_filters, num_filters)
        if skip_connection:
            self.nin_skip = nin(2 * skip_connection * num_filters, num_filters)
        self.dropout = nn.Dropout2d(dropout_prob) if dropout_prob > 0 else nn.Identity()
        self.conv_out = conv_op(2 * num_filters, 2 * num_filters)
        self.use_pono = normalization == "pono"

    def _norm(self, x: Tensor) -> Tensor:
        return pono(x) if self.use_pono else x

    def forward(self, og_x: Tensor, a: Tensor | None = None, mask: ConvMask | None = None) -> Tensor:
        x = self._norm(self.conv_input(concat_elu(og_x), mask))
        if a is not None:
            x = x + self.nin_skip(concat_elu(a))
        x = self.dropout(concat_elu(x))
        x = self.conv_out(x, mask)
        u, g = torch.chunk(x, 2, dim=1)
        return og_x + self._norm(u) * torch.sigmoid(g)
