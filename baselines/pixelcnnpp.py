"""PixelCNN++ raster baseline (Salimans et al. 2017), registered as model ``"pixelcnnpp"``.

The original two-stream design, written from the paper and its reference code's semantics:

* **Streams.** ``u`` (the "up" stream) at ``(r, c)`` sees only rows ``< r``; ``ul`` (the
  "up-left" stream) sees rows ``< r`` and row ``r`` left of ``c``. Together they cover every
  pixel before ``(r, c)`` in raster order without a blind spot. ``u`` uses down-shifted
  convolutions (kernel 2×3, padded above and on both sides); ``ul`` uses down-right-shifted
  convolutions (kernel 2×2, padded above and on the left).
* **Input.** The image in ``[-1, 1]`` with an extra constant-ones channel (so the network can
  tell image from zero padding). ``u = down_shift(down_shifted_conv_2x3(x))``;
  ``ul = down_shift(down_shifted_conv_1x3(x)) + right_shift(down_right_shifted_conv_2x1(x))``.
* **Three resolutions.** Up pass: ``nr_resnet`` gated resnets per resolution, stride-2 shifted
  convolutions between (``H → H/2 → H/4``); every intermediate ``u``/``ul`` is kept. Down pass:
  ``nr_resnet`` then ``nr_resnet + 1``, ``nr_resnet + 1`` gated resnets, stride-2 shifted transposed
  convolutions between, each resnet taking one kept activation as its skip input (``u`` gets the
  ``u`` skip; ``ul`` gets ``concat(u, ul skip)``).
* **Gated resnet.** ``c = conv(concat_elu(x)) [+ nin(concat_elu(skip))]``;
  ``c = dropout(concat_elu(c))``; ``a, b = split(conv(c))``; ``out = x + a * sigmoid(b)``.
* **Output.** ``nin(elu(ul))`` to the head's ``n_params`` channels.

Differences from the reference code, none of which change the function class:
weight norm (optional, ``arch["normalization"]``) uses PyTorch's parametrization with the default
initialisation instead of the data-dependent init; dropout is element-wise (as in the TF original).

H and W must be divisible by 4 (28 → 14 → 7, 32 → 16 → 8, 64 → 32 → 16).

The building blocks (:class:`DownShiftedConv2d`, :class:`DownRightShiftedConv2d`, their transposed
versions, :class:`Nin`, :class:`GatedResnet`) are explicit modules, and the network keeps its
layers in per-resolution lists, so the cached raster sampler (``pixelcnnpp_cache.py``, Fast
PixelCNN++-style; ``complete(..., sampler="cached")``) runs them one row / one pixel at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmconv_bench.errors import UserError, did_you_mean, unknown
from lmconv_bench.models.base import AutoregressiveImageModel, ModelConfig, Orders, check_arch, register_model
from lmconv_bench.models.likelihood import make_head
from lmconv_bench.orders import get_order

from .pixelcnnpp_layers import (  # noqa: F401  (re-exported for users of this module)
    N_RESOLUTIONS,
    DownRightShiftedConv2d,
    DownRightShiftedDeconv2d,
    DownShiftedConv2d,
    DownShiftedDeconv2d,
    GatedResnet,
    Nin,
    down_shift,
    right_shift,
)

NORMALIZATIONS = ("weight_norm", "none")

_WN = {"normalization": "weight_norm"}

PRESETS: dict[str, dict[str, Any]] = {
    # Smoke-test size: seconds on a CPU.
    "tiny": {"nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 2, "dropout_prob": 0.0, **_WN},
    # 2 resnets, 32 filters in each of the two streams: about 2x the parameters of LMConv `small`
    # (971k against 468k on MNIST). Kept for the old reference checkpoints; not a fair match.
    "small": {"nr_resnet": 2, "nr_filters": 32, "nr_logistic_mix": 5, "dropout_prob": 0.0, **_WN},
    # Capacity-matched to LMConv `small`: 22 filters put it within 2% of LMConv small's parameter
    # count on every dataset (see `lmconv-bench models`); the raster baseline of the fair comparison.
    "matched": {"nr_resnet": 2, "nr_filters": 22, "nr_logistic_mix": 5, "dropout_prob": 0.0, **_WN},
    # Salimans et al. (2017), CIFAR-10: 5 resnets per resolution, 160 filters, 10 mixtures, dropout 0.5.
    "paper": {"nr_resnet": 5, "nr_filters": 160, "nr_logistic_mix": 10, "dropout_prob": 0.5, **_WN},
}
"""Architecture presets (plain ``arch`` dicts). Keys as in :data:`ARCH_DEFAULTS`."""

ARCH_DEFAULTS: dict[str, Any] = {
    "nr_resnet": 5,
    "nr_filters": 160,
    "nr_logistic_mix": 10,
    "dropout_prob": 0.5,
    "normalization": "weight_norm",
}
"""Every ``arch`` key this model understands (a config may omit any): ``nr_resnet`` (gated resnets
per resolution in the up pass; the down pass has ``nr_resnet``, ``nr_resnet + 1``,
``nr_resnet + 1``), ``nr_filters`` (F, channels of both streams), ``nr_logistic_mix`` (mixture
components of the logistic head; ignored by Bernoulli heads), ``dropout_prob`` (element-wise
dropout inside each gated resnet, training only), ``normalization`` (``"weight_norm"`` or
``"none"``). Key names match the LMConv presets."""


# ------------------------------------------------------------------------------ network
def resolve_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """``ARCH_DEFAULTS`` overridden by ``arch``; unknown keys and bad values raise UserError."""
    extra = sorted(set(arch) - set(ARCH_DEFAULTS))
    if extra:
        hint = did_you_mean(extra[0], ARCH_DEFAULTS)
        raise UserError(
            f"unknown pixelcnnpp arch key {extra[0]!r}{hint}; allowed: {', '.join(sorted(ARCH_DEFAULTS))}"
        )
    out = {**ARCH_DEFAULTS, **arch}
    for key in ("nr_resnet", "nr_filters", "nr_logistic_mix"):
        if int(out[key]) < 1:
            raise UserError(f"pixelcnnpp arch {key} must be >= 1, got {out[key]}")
    if not 0.0 <= float(out["dropout_prob"]) < 1.0:
        raise UserError(f"pixelcnnpp arch dropout_prob must be in [0, 1), got {out['dropout_prob']}")
    if out["normalization"] not in NORMALIZATIONS:
        raise unknown("pixelcnnpp normalization", out["normalization"], NORMALIZATIONS)
    return out


@register_model("pixelcnnpp", presets=PRESETS)
class PixelCNNPP(AutoregressiveImageModel):
    """PixelCNN++ over ``C×H×W`` images in raster order (H, W divisible by 4).

    ``forward(x, orders)``: ``x`` float ``[B, C, H, W]`` in ``[-1, 1]``; ``orders`` is ignored
    (always raster). Returns the head's parameters, float ``[B, head.n_params, H, W]``; position
    ``(r, c)`` depends only on pixels strictly before it in raster order (all channels of earlier
    pixels, none of its own).

    Layers, by resolution ``s = 0, 1, 2`` (full, 1/2, 1/4):

    * ``up_u[s][k]``, ``up_ul[s][k]``: ``nr_resnet`` resnets each; ``up_ul`` takes the new ``u``
      as skip input; ``downsize_u[s-1]``, ``downsize_ul[s-1]`` come before resolution ``s > 0``;
    * ``down_u[s]``, ``down_ul[s]`` for ``s = 2, 1, 0`` visited in that order (``down_*[2]`` is the
      lowest resolution): ``nr_resnet`` resnets at ``s = 2``, ``nr_resnet + 1`` at ``s = 1, 0``;
      ``upsize_u[s]``, ``upsize_ul[s]`` bring resolution ``s + 1`` up to ``s``.
    """

    fixed_order = "raster/0"

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.height % 4 or config.width % 4:
            raise UserError(
                f"pixelcnnpp downsamples twice by 2 and needs H and W divisible by 4, "
                f"got {config.height}x{config.width}"
            )
        arch = resolve_arch(dict(config.arch))
        check_arch("pixelcnnpp", arch, ("nr_resnet", "nr_filters", "nr_logistic_mix"))
        self.config = config
        self.arch = arch
        nr_resnet, nf = int(arch["nr_resnet"]), int(arch["nr_filters"])
        wn, p = arch["normalization"] == "weight_norm", float(arch["dropout_prob"])
        self.nr_resnet = nr_resnet
        self.head = make_head(config.head, config.channels, int(arch["nr_logistic_mix"]), config.n_bits)

        c_in = config.channels + 1  # + the constant-ones channel
        self.init_u = DownShiftedConv2d(c_in, nf, (2, 3), weight_norm=wn)
        self.init_ul_up = DownShiftedConv2d(c_in, nf, (1, 3), weight_norm=wn)
        self.init_ul_left = DownRightShiftedConv2d(c_in, nf, (2, 1), weight_norm=wn)

        def u_block(skip: int) -> GatedResnet:
            return GatedResnet(nf, DownShiftedConv2d, skip, p, wn)

        def ul_block(skip: int) -> GatedResnet:
            return GatedResnet(nf, DownRightShiftedConv2d, skip, p, wn)

        self.up_u = nn.ModuleList(
            nn.ModuleList(u_block(0) for _ in range(nr_resnet)) for _ in range(N_RESOLUTIONS)
        )
        self.up_ul = nn.ModuleList(
            nn.ModuleList(ul_block(nf) for _ in range(nr_resnet)) for _ in range(N_RESOLUTIONS)
        )
        self.downsize_u = nn.ModuleList(
            DownShiftedConv2d(nf, nf, (2, 3), stride=2, weight_norm=wn) for _ in range(N_RESOLUTIONS - 1)
        )
        self.downsize_ul = nn.ModuleList(
            DownRightShiftedConv2d(nf, nf, (2, 2), stride=2, weight_norm=wn) for _ in range(N_RESOLUTIONS - 1)
        )
        n_down = [nr_resnet + 1] * (N_RESOLUTIONS - 1) + [nr_resnet]
        self.down_u = nn.ModuleList(nn.ModuleList(u_block(nf) for _ in range(n)) for n in n_down)
        self.down_ul = nn.ModuleList(nn.ModuleList(ul_block(2 * nf) for _ in range(n)) for n in n_down)
        self.upsize_u = nn.ModuleList(
            DownShiftedDeconv2d(nf, nf, (2, 3), stride=2, weight_norm=wn) for _ in range(N_RESOLUTIONS - 1)
        )
        self.upsize_ul = nn.ModuleList(
            DownRightShiftedDeconv2d(nf, nf, (2, 2), stride=2, weight_norm=wn) for _ in range(N_RESOLUTIONS - 1)
        )
        self.out_nin = Nin(nf, self.head.n_params, wn)

    def initial_streams(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` float ``[B, C, H, W]`` in ``[-1, 1]`` → the first ``(u, ul)``, each ``[B, F, H, W]``."""
        xp = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        u = down_shift(self.init_u(xp))
        ul = down_shift(self.init_ul_up(xp)) + right_shift(self.init_ul_left(xp))
        return u, ul

    def forward(self, x: Tensor, orders: Orders | None = None) -> Tensor:
        """x: float ``[B, C, H, W]`` in ``[-1, 1]``; ``orders`` ignored (raster).

        Returns float ``[B, head.n_params, H, W]``.
        """
        b, c, h, w = x.shape
        cfg = self.config
        if (c, h, w) != (cfg.channels, cfg.height, cfg.width):
            raise UserError(
                f"pixelcnnpp was built for {cfg.channels}x{cfg.height}x{cfg.width} images, got {c}x{h}x{w}"
            )
        u, ul = self.initial_streams(x)
        us, uls = [u], [ul]
        for s in range(N_RESOLUTIONS):
            if s > 0:
                us.append(self.downsize_u[s - 1](us[-1]))
                uls.append(self.downsize_ul[s - 1](uls[-1]))
            for block_u, block_ul in zip(self.up_u[s], self.up_ul[s]):
                us.append(block_u(us[-1]))
                uls.append(block_ul(uls[-1], us[-1]))

        u, ul = us.pop(), uls.pop()
        for s in reversed(range(N_RESOLUTIONS)):
            if s < N_RESOLUTIONS - 1:
                u = self.upsize_u[s](u)
                ul = self.upsize_ul[s](ul)
            for block_u, block_ul in zip(self.down_u[s], self.down_ul[s]):
                u = block_u(u, us.pop())
                ul = block_ul(ul, torch.cat([u, uls.pop()], dim=1))
        assert not us and not uls, "every kept activation is used exactly once"
        return self.out_nin(F.elu(ul))

    def complete(
        self,
        x: Tensor,
        missing: Tensor,
        orders: Orders,
        seeds: Tensor,
        temperature: float = 1.0,
        sampler: str = "naive",
        progress: Callable[[int], None] | None = None,
        cost=None,
    ) -> Tensor:
        """As :meth:`AutoregressiveImageModel.complete`, but always samples in raster order.

        ``orders`` is ignored: this model only defines raster conditionals, so the missing pixels
        are sampled in raster order whatever is passed (each sees every pixel before it in
        raster order, observed or already sampled). ``sampler``: ``"naive"`` (one full pass per
        step) or ``"cached"`` (same samples, far fewer operations; see ``pixelcnnpp_cache``).
        """
        if sampler == "cached":
            from .pixelcnnpp_cache import cached_complete

            return cached_complete(self, x, missing, seeds, temperature, progress, cost=cost)
        if sampler != "naive":
            raise unknown("sampler", sampler, ["naive", "cached"])
        raster = get_order(self.fixed_order, x.shape[2], x.shape[3]).to(x.device)
        return super().complete(x, missing, raster, seeds, temperature, sampler, progress, cost)
