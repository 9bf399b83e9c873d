"""Building blocks of the two-stream PixelCNN++ (Salimans et al. 2017): shifted convolutions,
the gated resnet, the network-in-network layer. Shared by the network (``pixelcnnpp``) and its
cached sampler (``pixelcnnpp_cache``), so neither imports the other's module at load time."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

N_RESOLUTIONS = 3
"""Number of resolutions (two stride-2 down/up-samplings), as in the paper."""


# ------------------------------------------------------------------------------ functions
def concat_elu(x: Tensor) -> Tensor:
    """``elu(concat([x, -x]))`` over channels: ``[B, F, H, W]`` → ``[B, 2F, H, W]``."""
    return F.elu(torch.cat([x, -x], dim=1))


def down_shift(x: Tensor) -> Tensor:
    """Shift down by one row, zero-filling the top row: ``out[:, :, r] = x[:, :, r - 1]``."""
    return F.pad(x, (0, 0, 1, 0))[:, :, : x.shape[2], :]


def right_shift(x: Tensor) -> Tensor:
    """Shift right by one column, zero-filling column 0: ``out[..., c] = x[..., c - 1]``."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, : x.shape[3]]


def _wn(module: nn.Module, enabled: bool, dim: int = 0) -> nn.Module:
    """Wrap ``module`` in weight norm (one scale per output channel, ``dim``) when ``enabled``."""
    if enabled:
        return nn.utils.parametrizations.weight_norm(module, name="weight", dim=dim)
    return module


# ------------------------------------------------------------------------------ layers
class Nin(nn.Module):
    """Network-in-network: a 1×1 convolution ``[B, c_in, H, W]`` → ``[B, c_out, H, W]``."""

    def __init__(self, c_in: int, c_out: int, weight_norm: bool = True):
        super().__init__()
        self.conv = _wn(nn.Conv2d(c_in, c_out, 1), weight_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class DownShiftedConv2d(nn.Module):
    """Convolution whose output at ``(r, c)`` sees input rows ``r - kh + 1 .. r`` and columns
    ``c - kw//2 .. c + kw//2`` (zero padding above and on both sides; ``kw`` odd).

    With ``stride=2`` the output is ``[B, c_out, H/2, W/2]`` (H, W even): output ``(i, j)`` sees input
    rows ``2i - kh + 1 .. 2i``. Combined with :func:`down_shift` it sees only rows above.
    """

    def __init__(
        self, c_in: int, c_out: int, kernel: tuple[int, int] = (2, 3), stride: int = 1, weight_norm: bool = True
    ):
        super().__init__()
        kh, kw = kernel
        if kw % 2 != 1:
            raise ValueError(f"DownShiftedConv2d needs an odd kernel width, got {kw}")
        self.kernel, self.stride = (kh, kw), stride
        self.padding = (kw // 2, kw // 2, kh - 1, 0)  # left, right, top, bottom
        self.conv = _wn(nn.Conv2d(c_in, c_out, kernel, stride=stride), weight_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.padding))


class DownRightShiftedConv2d(nn.Module):
    """Convolution whose output at ``(r, c)`` sees input rows ``r - kh + 1 .. r`` and columns
    ``c - kw + 1 .. c`` (zero padding above and on the left).

    With ``stride=2`` the output is ``[B, c_out, H/2, W/2]``: output ``(i, j)`` sees input rows
    ``2i - kh + 1 .. 2i`` and columns ``2j - kw + 1 .. 2j``.
    """

    def __init__(
        self, c_in: int, c_out: int, kernel: tuple[int, int] = (2, 2), stride: int = 1, weight_norm: bool = True
    ):
        super().__init__()
        kh, kw = kernel
        self.kernel, self.stride = (kh, kw), stride
        self.padding = (kw - 1, 0, kh - 1, 0)
        self.conv = _wn(nn.Conv2d(c_in, c_out, kernel, stride=stride), weight_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.padding))


class DownShiftedDeconv2d(nn.Module):
    """Stride-2 transposed convolution, ``[B, c_in, h, w]`` → ``[B, c_out, 2h, 2w]``.

    Input ``(i, j)`` writes to output rows ``2i .. 2i + kh - 1`` and columns
    ``2j - kw//2 .. 2j + kw//2`` (cropped to the image), so output row ``r`` only receives inputs
    from rows ``i <= r / 2``.
    """

    def __init__(
        self, c_in: int, c_out: int, kernel: tuple[int, int] = (2, 3), stride: int = 2, weight_norm: bool = True
    ):
        super().__init__()
        kh, kw = kernel
        if kw % 2 != 1:
            raise ValueError(f"DownShiftedDeconv2d needs an odd kernel width, got {kw}")
        self.kernel, self.stride = (kh, kw), stride
        deconv = nn.ConvTranspose2d(c_in, c_out, kernel, stride=stride, output_padding=stride - 1)
        self.deconv = _wn(deconv, weight_norm, dim=1)  # ConvTranspose2d weight: [in, out, kh, kw]

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2] * self.stride, x.shape[3] * self.stride
        y = self.deconv(x)  # [B, c_out, s*(h-1) + kh + s-1, s*(w-1) + kw + s-1]
        left = self.kernel[1] // 2
        return y[:, :, :h, left : left + w]


class DownRightShiftedDeconv2d(nn.Module):
    """Stride-2 transposed convolution, ``[B, c_in, h, w]`` → ``[B, c_out, 2h, 2w]``.

    Input ``(i, j)`` writes to output rows ``2i .. 2i + kh - 1`` and columns ``2j .. 2j + kw - 1``
    (cropped to the image).
    """

    def __init__(
        self, c_in: int, c_out: int, kernel: tuple[int, int] = (2, 2), stride: int = 2, weight_norm: bool = True
    ):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), stride
        deconv = nn.ConvTranspose2d(c_in, c_out, kernel, stride=stride, output_padding=stride - 1)
        self.deconv = _wn(deconv, weight_norm, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2] * self.stride, x.shape[3] * self.stride
        return self.deconv(x)[:, :, :h, :w]


ConvFactory = Callable[..., nn.Module]


class GatedResnet(nn.Module):
    """Gated residual block ``[B, F, H, W]`` → ``[B, F, H, W]`` with an optional skip input.

    ``c = conv_in(concat_elu(x)) + nin_skip(concat_elu(skip))``; ``c = dropout(concat_elu(c))``;
    ``a, b = split(conv_out(c))``; returns ``x + a * sigmoid(b)``. ``conv`` is the shifted
    convolution class of the stream (:class:`DownShiftedConv2d` for ``u``,
    :class:`DownRightShiftedConv2d` for ``ul``); ``skip_channels`` is the channel count of the skip
    input (0: no skip input).
    """

    def __init__(
        self,
        filters: int,
        conv: ConvFactory,
        skip_channels: int = 0,
        dropout: float = 0.0,
        weight_norm: bool = True,
    ):
        super().__init__()
        self.conv_in = conv(2 * filters, filters, weight_norm=weight_norm)
        self.nin_skip = Nin(2 * skip_channels, filters, weight_norm) if skip_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = conv(2 * filters, 2 * filters, weight_norm=weight_norm)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        c = self.conv_in(concat_elu(x))
        if self.nin_skip is not None:
            if skip is None:
                raise ValueError("this GatedResnet was built with a skip input; pass one")
            c = c + self.nin_skip(concat_elu(skip))
        c = self.conv_out(self.dropout(concat_elu(c)))
        a, b = torch.chunk(c, 2, dim=1)
        return x + a * torch.sigmoid(b)
