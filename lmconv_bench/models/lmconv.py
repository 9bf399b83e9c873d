"""The LMConv network (Jain, Abbeel & Pathak, UAI 2020): PixelCNN++ with locally masked convolutions.

The architecture of the paper's released model (github ajayjain/lmconv, class ``OurPixelCNN`` in
``model.py``, ``ours.py`` in older commits, and ``layers.py``), re-implemented here:

* the input ``x`` (``[B, C, H, W]`` in ``[-1, 1]``) gets a constant-ones channel, so zero padding
  and image content are distinguishable at the borders;
* ``u_init``: type-A locally masked conv (a pixel never sees itself), ``C+1 -> F``; then norm;
* up path: 3 stages of ``nr_resnet`` gated resnets (type-B undilated masks), with a type-B
  dilated (``max_dilation``) LMConv + norm between stages (``downsize_u_stream``; no striding,
  the name is historical). Every activation is pushed on a list;
* down path: 3 stages of ``nr_resnet``, ``nr_resnet + 1``, ``nr_resnet + 1`` gated resnets whose
  skip inputs ``a`` are the up-path activations popped from the list (``nin_skip`` of
  ``concat_elu(a)``), with dilated LMConv + norm between stages (``upsize_u_stream``);
* output: ``nin_out(elu(u))``, a weight-normalised 1×1 layer to the likelihood head's parameters.

``norm`` is PONO (positional normalisation over channels, no parameters) when ``normalization`` is
``"pono"``, else the identity; gated resnets also apply it after ``conv_input`` and to the gated
half of ``conv_out``. With ``normalization="weight_norm"`` the LMConv layers are weight-normalised
(every ``nin`` always is, as in the official code). Dropout is ``nn.Dropout2d`` inside gated resnets.

The order is an argument of ``forward``: the same weights run under any order. The three kernel
mask types (A; B undilated; B dilated) are prepared once per order and cached
(:func:`layers.conv_mask`).

Parameter names (identical to the official ``OurPixelCNN`` state dict, without the
``DataParallel`` prefix ``module.``)
-------------------------------------------------------------------------------------------------
=====================================================  ==========================================
official                                               ours (same name)
=====================================================  ==========================================
``u_init.weight``, ``u_init.bias``                     type-A LMConv ``[F, C+1, k, k]``
``up_layers.{s}.u_stream.{j}.conv_input.{weight,bias}``  gated resnet LMConv ``2F -> F``
``up_layers.{s}.u_stream.{j}.conv_out.{weight,bias}``    gated resnet LMConv ``2F -> 2F``
``downsize_u_stream.{i}.{weight,bias}``                dilated LMConv between up stages (i=0,1)
``down_layers.{s}.u_stream.{j}.conv_input/conv_out``   as above (down path)
``down_layers.{s}.u_stream.{j}.nin_skip.lin_a.{weight_g,weight_v,bias}``  skip 1×1, ``2F -> F``
``upsize_u_stream.{i}.{weight,bias}``                  dilated LMConv between down stages
``nin_out.lin_a.{weight_g,weight_v,bias}``             output 1×1, ``F -> head.n_params``
=====================================================  ==========================================

With ``normalization="weight_norm"`` each LMConv's ``weight`` is replaced by ``weight_g``
``[out, 1, 1, 1]`` and ``weight_v`` (``torch.nn.utils.weight_norm`` naming). The official
``norm_init``/``norm_ds``/``norm_us``/``norm_input``/``norm_out`` modules (PONO) hold no
parameters; here they are the function :func:`layers.pono`. The official ``conv_mask_weight``
(``--learn_weight_for_masks``) and ``order_rescale`` options are not supported (the released
checkpoints use neither). For the binarized-MNIST checkpoint the official ``nin_out`` has 2 outputs
(the ``"bernoulli2"`` head).

Presets (``arch`` dicts): ``tiny`` for tests, ``small`` for CPU reference checkpoints (an Adam
step on MNIST at batch 16 takes ~0.7 s on 2 CPU cores; 32 filters would take ~1.0 s),
``bench-default`` for ``lmconv-bench bench conv`` and ``paper`` for the paper's CIFAR-10 model
(its README: ``-k 3 --normalization pono``, 160 filters, 5 resnets, 10 mixtures). The official
default dropout is 0.5 (``paper`` keeps it); the released checkpoints were trained with ``-dp 0``.
Dropout does not change the parameters, so it does not matter for importing them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError, unknown
from .base import AutoregressiveImageModel, ModelConfig, Orders, check_arch, register_model
from .layers import CONV_IMPLS, ConvMask, LocallyMaskedConv2d, conv_mask, gated_resnet, nin, pono
from .likelihood import make_head

NORMALIZATIONS = ("none", "weight_norm", "pono")
SAMPLERS = ("naive", "cached")

_COMMON: dict[str, Any] = {"kernel_size": 3, "max_dilation": 2, "normalization": "pono", "conv_bias": True}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {**_COMMON, "nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 2, "dropout_prob": 0.0},
    "small": {**_COMMON, "nr_resnet": 2, "nr_filters": 24, "nr_logistic_mix": 5, "dropout_prob": 0.0},
    "bench-default": {**_COMMON, "nr_resnet": 1, "nr_filters": 64, "nr_logistic_mix": 5, "dropout_prob": 0.0},
    "paper": {**_COMMON, "nr_resnet": 5, "nr_filters": 160, "nr_logistic_mix": 10, "dropout_prob": 0.5},
}
"""Architecture presets. Keys: ``nr_resnet`` (gated resnets per stage), ``nr_filters`` (F),
``nr_logistic_mix``, ``kernel_size`` (odd), ``max_dilation`` (dilation of the between-stage convs),
``normalization`` (``none``/``weight_norm``/``pono``), ``dropout_prob`` (``nn.Dropout2d`` in gated
resnets), ``conv_bias``. Optional ``conv_impl``: ``fast`` (default), ``reference`` (unfold) or
``plain`` (unmasked ``conv2d``: NOT autoregressive, only a benchmark baseline)."""


class OurPixelCNNLayer_up(nn.Module):  # noqa: N801  (official name)
    """An up-path stage: ``nr_resnet`` gated resnets; returns every intermediate activation."""

    def __init__(self, nr_resnet: int, nr_filters: int, conv_op, normalization: str, dropout_prob: float):
        super().__init__()
        self.u_stream = nn.ModuleList(
            gated_resnet(nr_filters, conv_op, normalization, skip_connection=0, dropout_prob=dropout_prob)
            for _ in range(nr_resnet)
        )

    def forward(self, u: Tensor, mask: ConvMask | None) -> list[Tensor]:
        out = []
        for block in self.u_stream:
            u = block(u, mask=mask)
            out.append(u)
        return out


class OurPixelCNNLayer_down(nn.Module):  # noqa: N801  (official name)
    """A down-path stage: gated resnets, each fed a skip input popped from the up-path list."""

    def __init__(self, nr_resnet: int, nr_filters: int, conv_op, normalization: str, dropout_prob: float):
        super().__init__()
        self.u_stream = nn.ModuleList(
            gated_resnet(nr_filters, conv_op, normalization, skip_connection=1, dropout_prob=dropout_prob)
            for _ in range(nr_resnet)
        )

    def forward(self, u: Tensor, u_list: list[Tensor], mask: ConvMask | None) -> Tensor:
        for block in self.u_stream:
            u = block(u, a=u_list.pop(), mask=mask)
        return u


@register_model("lmconv", presets=PRESETS)
class LMConv(AutoregressiveImageModel):
    """LMConv network; see the module docstring. Built as ``LMConv(config)``.

    Args:
        config: a :class:`ModelConfig` whose ``arch`` holds the keys of :data:`PRESETS`.
        conv_impl: overrides ``arch["conv_impl"]`` (``fast``/``reference``/``plain``).
    """

    def __init__(self, config: ModelConfig, conv_impl: str | None = None):
        super().__init__()
        self.config = config
        arch = {**_COMMON, "dropout_prob": 0.0, **config.arch}
        missing = [k for k in ("nr_resnet", "nr_filters", "nr_logistic_mix") if k not in arch]
        if missing:
            raise UserError(f"lmconv arch is missing {missing}; start from a preset ({', '.join(PRESETS)})")
        check_arch("lmconv", arch, ("nr_resnet", "nr_filters", "nr_logistic_mix", "kernel_size", "max_dilation"))
        nr_resnet, nr_filters = int(arch["nr_resnet"]), int(arch["nr_filters"])
        k = int(arch.get("kernel_size", 3))
        self.kernel_size, self.max_dilation = k, int(arch.get("max_dilation", 2))
        normalization = arch.get("normalization", "pono")
        if normalization not in NORMALIZATIONS:
            raise unknown("lmconv normalization", normalization, NORMALIZATIONS)
        self.conv_impl = conv_impl or arch.get("conv_impl", "fast")
        if self.conv_impl not in CONV_IMPLS:
            raise unknown("conv_impl", self.conv_impl, CONV_IMPLS)
        self.normalization = normalization
        dropout = float(arch.get("dropout_prob", 0.0))
        bias, wn = bool(arch.get("conv_bias", True)), normalization == "weight_norm"

        def conv_op(cin: int, cout: int, dilation: int = 1) -> LocallyMaskedConv2d:
            return LocallyMaskedConv2d(cin, cout, k, dilation, bias=bias, weight_norm=wn, impl=self.conv_impl)

        self.u_init = conv_op(config.channels + 1, nr_filters)
        self.up_layers = nn.ModuleList(
            OurPixelCNNLayer_up(nr_resnet, nr_filters, conv_op, normalization, dropout) for _ in range(3)
        )
        self.downsize_u_stream = nn.ModuleList(conv_op(nr_filters, nr_filters, self.max_dilation) for _ in range(2))
        self.down_layers = nn.ModuleList(
            OurPixelCNNLayer_down(n, nr_filters, conv_op, normalization, dropout)
            for n in (nr_resnet, nr_resnet + 1, nr_resnet + 1)
        )
        self.upsize_u_stream = nn.ModuleList(conv_op(nr_filters, nr_filters, self.max_dilation) for _ in range(2))
        self.head = make_head(config.head, config.channels, int(arch["nr_logistic_mix"]), config.n_bits)
        self.nin_out = nin(nr_filters, self.head.n_params)

    # ------------------------------------------------------------------------------------
    def conv_masks(self, orders: Orders, batch: int, height: int, width: int, device: torch.device):
        """The three :class:`ConvMask` s of an order: (type A, type B, type B dilated).

        ``orders``: long ``[H*W]`` or ``[B, H*W]``; a per-image batch whose rows are all equal is
        treated as one shared order. Cached per order (see ``layers.conv_mask``).
        """
        n = height * width
        if orders.dim() not in (1, 2) or orders.shape[-1] != n:
            raise ValueError(f"orders must be [H*W] or [B, H*W] with H*W={n}, got {tuple(orders.shape)}")
        if orders.dim() == 2:
            if orders.shape[0] != batch:
                raise ValueError(f"{orders.shape[0]} per-image orders for a batch of {batch}")
            if bool((orders == orders[:1]).all()):
                orders = orders[0]
        orders = orders.to(device)
        k, d = self.kernel_size, self.max_dilation
        return (
            conv_mask(orders, height, width, k, 1, include_center=False),
            conv_mask(orders, height, width, k, 1, include_center=True),
            conv_mask(orders, height, width, k, d, include_center=True),
        )

    def _norm(self, x: Tensor) -> Tensor:
        return pono(x) if self.normalization == "pono" else x

    def complete(
        self,
        x: Tensor,
        missing: Tensor,
        orders: Orders,
        seeds: Tensor,
        temperature: float = 1.0,
        sampler: str = "naive",
        progress=None,
        cost=None,
    ) -> Tensor:
        """As :meth:`AutoregressiveImageModel.complete`; ``sampler``: ``"naive"`` (one full pass
        per step) or ``"cached"`` (the same samples for about one forward pass of work, any order;
        see :mod:`lmconv_bench.models.lmconv_cache`)."""
        if sampler == "cached":
            from .lmconv_cache import cached_complete

            return cached_complete(self, x, missing, orders, seeds, temperature, progress, cost=cost)
        if sampler != "naive":
            raise unknown("sampler", sampler, SAMPLERS)
        return super().complete(x, missing, orders, seeds, temperature, sampler, progress, cost)

    def forward(self, x: Tensor, orders: Orders) -> Tensor:
        """x: float ``[B, C, H, W]`` in ``[-1, 1]``; orders: ``[H*W]`` or ``[B, H*W]``.

        Returns the head's parameters, float ``[B, head.n_params, H, W]``; position p depends
        only on pixels strictly earlier than p in its image's order (except with
        ``conv_impl="plain"``).
        """
        b, _, h, w = x.shape
        if self.conv_impl == "plain":
            m_init = m_undil = m_dil = None
        else:
            m_init, m_undil, m_dil = self.conv_masks(orders, b, h, w, x.device)
        x = torch.cat([x, x.new_ones(b, 1, h, w)], dim=1)

        u_list = [self._norm(self.u_init(x, m_init))]
        for i in range(2):
            u_list += self.up_layers[i](u_list[-1], m_undil)
            u_list.append(self._norm(self.downsize_u_stream[i](u_list[-1], m_dil)))
        u_list += self.up_layers[2](u_list[-1], m_undil)

        u = u_list.pop()
        for i in range(2):
            u = self.down_layers[i](u, u_list, m_undil)
            u = self._norm(self.upsize_u_stream[i](u, m_dil))
        u = self.down_layers[2](u, u_list, m_undil)
        return self.nin_out(F.elu(u))
