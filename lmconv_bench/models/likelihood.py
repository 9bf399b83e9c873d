"""Per-pixel likelihood heads: discretized logistic mixture (PixelCNN++) and Bernoulli.

A head turns the network output ``params`` (float ``[B, n_params, H, W]``) into

* ``log_prob(params, x)``: log p(x) of each pixel, all of its channels jointly, in **nats**,
  ``[B, H, W]``; ``x`` holds integer levels ``0 .. 2**n_bits - 1`` (uint8 or any integer dtype),
  ``[B, C, H, W]``;
* ``sample(params, generators, temperature)``: uint8 levels ``[B, C, H, W]`` drawn exactly from
  the distribution that ``log_prob`` defines (at ``temperature=1``).

Heads (``make_head(kind, channels, n_mix, n_bits)``)
----------------------------------------------------
``"logistic_mixture"``
    The discretized mixture of logistics of PixelCNN++ (Salimans et al. 2017) for ``C = 3``
    (with the linear R→G→B dependence) or ``C = 1``. Level ``v`` sits at
    ``x = v / (2**n_bits - 1) * 2 - 1`` in ``[-1, 1]``; its bin has half-width
    ``1 / (2**n_bits - 1)``; the lowest bin integrates the logistic from ``-inf`` and the highest
    to ``+inf``; an interior bin whose mass is below ``1e-5`` uses the mid-bin density
    ``log_pdf(x) - log((2**n_bits - 1) / 2)``. The edge bins are selected by the integer level
    (``v == 0``, ``v == 2**n_bits - 1``), which is exact at every ``n_bits``. Log-scales are
    clamped below at -7.

    *Difference from the paper's code:* ajayjain/lmconv (and PixelCNN++) hard-code
    ``log(127.5)`` in the fallback, which is only right at 8 bits. We use
    ``log((2**n_bits - 1) / 2)`` (15.5 at 5 bits); at 8 bits the two agree. Bin masses are computed
    in log space (``logsigmoid(a) + logsigmoid(-b) + log(-expm1(b - a))``), which equals
    ``log(sigmoid(a) - sigmoid(b))`` but keeps its precision in both tails.

``"bernoulli"``
    One logit channel, the log-odds that the pixel is on (value 1). ``C = 1``, values ``{0, 1}``.

``"bernoulli2"``
    Two logit channels ``[off, on]`` with a softmax over them, as in the paper's binarized MNIST
    model (class 1 = pixel on). ``C = 1``, values ``{0, 1}``.

Parameter layout of the logistic mixture (K = ``n_mix``)
--------------------------------------------------------
It is the layout of ``discretized_mix_logistic_loss`` in the paper's code, read channel-first, so
imported checkpoints work unchanged. With ``l = params`` (``[B, n_params, H, W]``):

* ``C = 3``, ``n_params = 10 K``: ``l[:, 0:K]`` are the mixture logits; then for channel
  ``c in (R, G, B)`` the block ``l[:, K + 3Kc : K + 3K(c+1)]`` holds ``means[c]`` (K),
  ``log_scales[c]`` (K) and ``raw_coeffs[c]`` (K). The coefficients are ``tanh(raw_coeffs)``, and
  ``coeffs[0] = a`` (G from R), ``coeffs[1] = b`` (B from R), ``coeffs[2] = c`` (B from G):
  ``mean_G += a * x_R``, ``mean_B += b * x_R + c * x_G``, where ``x_R``, ``x_G`` are the pixel's
  (discretized) values in ``[-1, 1]``.
* ``C = 1``, ``n_params = 3 K``: logits (K), means (K), log_scales (K).

This is exactly the official channels-last indexing ``l.permute(0, 2, 3, 1)``:
``logit_probs = l[..., :K]`` and ``l[..., K:].view(B, H, W, C, 3K or 2K)``.

Sampling and noise
------------------
Noise for image ``i`` comes only from ``generators[i]`` (one ``torch.Generator`` per image, or an
integer seed per image), so samples do not depend on batch size or composition. Each call draws
``head.n_uniforms * h * w`` float64 uniforms from each generator, laid out ``[n_uniforms, h, w]``
(see :meth:`LikelihoodHead.draw_uniforms`); CPU generators give the same noise whatever the
device of ``params``. :meth:`LikelihoodHead.sample_from_uniforms` maps given noise to samples
deterministically, for callers that manage noise themselves.

The logistic sampler picks one mixture component per pixel (shared by all channels) by inverse
CDF, draws R from the logistic, discretizes it to its level (``round((clamp(x, -1, 1) + 1) / 2 *
(2**n_bits - 1))``), then draws G with its mean shifted by ``a * x_R`` using the **discretized**
R value, then B likewise. Because ``log_prob`` conditions on the data's discretized values, this
draws exactly from the distribution ``log_prob`` defines (up to the < 1e-5 fallback bins).
PixelCNN++'s and the paper's samplers condition on the continuous, un-rounded sample instead,
which is slightly off that distribution.

Temperature ``T > 0``: the logistic scales are multiplied by ``T`` and the mixture logits (and the
Bernoulli logits) are divided by ``T``; ``T = 1`` samples the model. (The paper's
``sample_from_discretized_mix_logistic`` has ``logistic_temperature``, which scales the logistic
noise as we do, and ``mixture_temperature``, which divides the means, log-scales and coefficients
rather than the mixture logits; we do not reproduce the latter.) As ``T -> 0`` a sample tends to
the mean of the most probable component, discretized.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from lmconv_bench.errors import UserError, unknown

HEAD_KINDS = ("logistic_mixture", "bernoulli", "bernoulli2")
LOG_SCALE_MIN = -7.0
FALLBACK_MASS = 1e-5  # interior bins with less mass than this use the mid-bin density
_LOG_FALLBACK_MASS = math.log(FALLBACK_MASS)

Generators = Union[Sequence[torch.Generator], Sequence[int], Tensor]


# ----------------------------------------------------------------------------------------------
# Small public helpers
# ----------------------------------------------------------------------------------------------


def n_params(head: str, channels: int, n_mix: int) -> int:
    """Number of output channels the network must produce for ``head``.

    ``logistic_mixture``: ``10 * n_mix`` for 3 channels, ``3 * n_mix`` for 1 channel.
    ``bernoulli``: 1. ``bernoulli2``: 2 (both need ``channels == 1``; ``n_mix`` is ignored).
    """
    if head == "logistic_mixture":
        _check_n_mix(n_mix)
        if channels == 3:
            return 10 * n_mix
        if channels == 1:
            return 3 * n_mix
        raise UserError(f"logistic_mixture supports 1 or 3 channels, got {channels}")
    if head in ("bernoulli", "bernoulli2"):
        if channels != 1:
            raise UserError(f"{head} head supports 1 channel (binarized images), got {channels}")
        return 1 if head == "bernoulli" else 2
    raise unknown("likelihood head", head, HEAD_KINDS)


def make_head(kind: str, channels: int, n_mix: int = 10, n_bits: int = 8) -> "LikelihoodHead":
    """Create the head ``kind`` (one of :data:`HEAD_KINDS`).

    ``n_bits`` (1..8) sets the grid of the logistic mixture (5 for celeba64); Bernoulli heads
    ignore ``n_mix`` and ``n_bits`` (their values are {0, 1}, ``head.n_bits == 1``).
    Raises :class:`UserError` on an unknown kind or unsupported arguments.
    """
    if kind == "logistic_mixture":
        return DiscretizedLogisticMixture(channels=channels, n_mix=n_mix, n_bits=n_bits)
    if kind == "bernoulli":
        return Bernoulli(channels=channels)
    if kind == "bernoulli2":
        return Bernoulli2(channels=channels)
    raise unknown("likelihood head", kind, HEAD_KINDS)


def nats_to_bits(x: Tensor | float) -> Tensor:
    """Convert nats to bits: ``x / ln 2`` (as a tensor)."""
    return torch.as_tensor(x) / math.log(2.0)


def bits_per_dim(nll_nats: Tensor | float, n_dims: int | Tensor) -> Tensor:
    """Bits per dimension: ``nll_nats / (n_dims * ln 2)``.

    ``nll_nats`` is a negative log-likelihood in nats (any shape); ``n_dims`` the number of
    dimensions it covers (e.g. ``C * H * W`` for a whole image, ``C * n_missing`` for a region),
    broadcast against it.
    """
    nll = torch.as_tensor(nll_nats)
    if not nll.is_floating_point():
        nll = nll.double()
    return nll / (torch.as_tensor(n_dims, dtype=nll.dtype, device=nll.device) * math.log(2.0))


def levels_to_unit(x: Tensor, n_bits: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Integer levels ``0 .. 2**n_bits - 1`` to ``[-1, 1]``: ``v / (2**n_bits - 1) * 2 - 1``."""
    return x.to(dtype) * (2.0 / (2**n_bits - 1)) - 1.0


def unit_to_levels(x: Tensor, n_bits: int) -> Tensor:
    """Continuous values to the level whose bin contains them, as uint8.

    ``round((clamp(x, -1, 1) + 1) / 2 * (2**n_bits - 1))``; bin ``v`` is
    ``[x_v - 1/(2**n_bits-1), x_v + 1/(2**n_bits-1))`` with the outer bins extended to ``+-inf``.
    """
    top = 2**n_bits - 1
    v = torch.round((x.clamp(-1.0, 1.0) + 1.0) * (top / 2.0))
    return v.clamp(0, top).to(torch.uint8)


def as_generators(seeds_or_generators: Generators) -> list[torch.Generator]:
    """One ``torch.Generator`` per image from generators (returned as is) or integer seeds.

    Integer seeds (a list of ints or an int64 tensor ``[B]``) become CPU generators seeded with
    ``manual_seed(seed)``; use :func:`lmconv_bench.seeding.stable_seed` to derive them.
    """
    if isinstance(seeds_or_generators, Tensor):
        return [_seeded(int(s)) for s in seeds_or_generators.reshape(-1).tolist()]
    out = []
    for g in seeds_or_generators:
        out.append(g if isinstance(g, torch.Generator) else _seeded(int(g)))
    return out


def discretized_logistic_log_mass(
    v: Tensor, mean: Tensor, log_scale: Tensor, n_bits: int
) -> Tensor:
    """Log-probability (nats) of level ``v`` under one discretized logistic.

    ``v``: integer levels; ``mean`` in model units ([-1, 1] grid); ``log_scale`` already clamped.
    All broadcast together. Edge levels integrate the tails; interior bins with mass below
    :data:`FALLBACK_MASS` return ``log_pdf(x_v) - log((2**n_bits - 1) / 2)``.
    """
    top = 2**n_bits - 1
    half = 1.0 / top
    dtype = mean.dtype
    xv = levels_to_unit(v, n_bits, dtype)
    inv_s = torch.exp(-log_scale)
    centered = xv - mean
    plus_in = inv_s * (centered + half)  # standardized upper bin edge
    min_in = inv_s * (centered - half)  # standardized lower bin edge
    log_cdf_plus = F.logsigmoid(plus_in)  # log P(X < upper edge): lowest bin
    log_sf_min = F.logsigmoid(-min_in)  # log P(X > lower edge): highest bin
    # log(sigmoid(a) - sigmoid(b)) = logsigmoid(a) + logsigmoid(-b) + log(1 - exp(b - a)), a > b.
    tiny = torch.finfo(dtype).tiny
    log_width = torch.log((-torch.expm1(min_in - plus_in)).clamp_min(tiny))
    log_delta = log_cdf_plus + log_sf_min + log_width
    mid_in = inv_s * centered
    log_pdf_mid = mid_in - log_scale - 2.0 * F.softplus(mid_in)
    interior = torch.where(
        log_delta > _LOG_FALLBACK_MASS, log_delta, log_pdf_mid - math.log(top / 2.0)
    )
    return torch.where(v == 0, log_cdf_plus, torch.where(v == top, log_sf_min, interior))


# ----------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------


class LikelihoodHead:
    """Base class. Attributes: ``kind``, ``channels`` (C), ``n_bits``, ``n_params`` (network
    output channels), ``n_uniforms`` (uniform numbers drawn per pixel when sampling)."""

    kind: str
    channels: int
    n_bits: int
    n_params: int
    n_uniforms: int

    @property
    def n_levels(self) -> int:
        """Number of values per channel, ``2**n_bits``."""
        return 2**self.n_bits

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x) per pixel, all channels jointly, in nats: float ``[B, H, W]``.

        ``params``: float ``[B, n_params, H, W]``; ``x``: integer ``[B, C, H, W]`` in
        ``0 .. 2**n_bits - 1``. Differentiable in ``params``.
        """
        raise NotImplementedError

    def sample_from_uniforms(self, params: Tensor, u: Tensor, temperature: float = 1.0) -> Tensor:
        """Samples (uint8 ``[B, C, h, w]``) as a deterministic function of the noise ``u``.

        ``u``: uniforms in [0, 1), ``[B, n_uniforms, h, w]`` (float64 recommended), e.g. from
        :meth:`draw_uniforms`. ``params``: ``[B, n_params, h, w]`` for any ``h, w``.
        """
        raise NotImplementedError

    def draw_uniforms(
        self, generators: Generators, h: int, w: int, device: torch.device | str | None = None
    ) -> Tensor:
        """float64 uniforms ``[B, n_uniforms, h, w]``; row ``i`` drawn only from generator ``i``
        as ``torch.rand((n_uniforms, h, w), generator=g_i, dtype=float64)`` on ``g_i``'s device."""
        gens = as_generators(generators)
        shape = (self.n_uniforms, h, w)
        rows = [torch.rand(shape, generator=g, device=g.device, dtype=torch.float64) for g in gens]
        if not rows:
            return torch.empty((0, *shape), dtype=torch.float64, device=device)
        return torch.stack([r.to(device) if device is not None else r for r in rows])

    def sample(self, params: Tensor, generators: Generators, temperature: float = 1.0) -> Tensor:
        """Draw levels, uint8 ``[B, C, h, w]``, one generator (or integer seed) per image.

        ``params``: ``[B, n_params, h, w]`` (any ``h, w``, e.g. ``1 x 1`` for one position).
        ``temperature > 0``; ``1`` samples the model exactly (see the module docstring).
        """
        self._check_params(params)
        gens = as_generators(generators)
        if len(gens) != params.shape[0]:
            raise ValueError(f"need one generator per image: {len(gens)} for batch {params.shape[0]}")
        u = self.draw_uniforms(gens, params.shape[2], params.shape[3], device=params.device)
        return self.sample_from_uniforms(params, u, temperature)

    # -- checks --------------------------------------------------------------------------------

    def _check_params(self, params: Tensor) -> None:
        if params.dim() != 4 or params.shape[1] != self.n_params:
            raise ValueError(
                f"{self.kind} head expects params [B, {self.n_params}, H, W], got {tuple(params.shape)}"
            )
        if not params.is_floating_point():
            raise ValueError(f"params must be floating point, got {params.dtype}")

    def _check_x(self, params: Tensor, x: Tensor) -> None:
        self._check_params(params)
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must be [B, {self.channels}, H, W], got {tuple(x.shape)}")
        if (x.shape[0], *x.shape[2:]) != (params.shape[0], *params.shape[2:]):
            raise ValueError(f"x {tuple(x.shape)} and params {tuple(params.shape)} disagree on B, H, W")
        if x.is_floating_point() or x.is_complex():
            raise ValueError(f"x must hold integer levels (uint8 or integer), got {x.dtype}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > self.n_levels - 1):
            raise ValueError(
                f"x has values outside 0..{self.n_levels - 1} for the {self.kind} head "
                f"(n_bits={self.n_bits}); quantize the data to n_bits first"
            )

    @staticmethod
    def _check_temperature(temperature: float) -> float:
        t = float(temperature)
        if not (t > 0 and math.isfinite(t)):
            raise UserError(f"temperature must be a positive finite number, got {temperature}")
        return t


class DiscretizedLogisticMixture(LikelihoodHead):
    """Discretized mixture of ``n_mix`` logistics for 1 or 3 channels (see module docstring)."""

    kind = "logistic_mixture"

    def __init__(self, channels: int, n_mix: int, n_bits: int = 8):
        if isinstance(n_bits, bool) or not isinstance(n_bits, int) or not 1 <= n_bits <= 8:
            raise UserError(f"n_bits must be an integer in 1..8, got {n_bits!r}")
        self.channels = channels
        self.n_mix = n_mix
        self.n_bits = n_bits
        self.n_params = n_params(self.kind, channels, n_mix)
        self.n_uniforms = 1 + channels  # component choice + one logistic draw per channel

    def __repr__(self) -> str:
        c, k, n = self.channels, self.n_mix, self.n_bits
        return f"DiscretizedLogisticMixture(channels={c}, n_mix={k}, n_bits={n})"

    def unpack(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Split ``params`` ``[B, n_params, h, w]`` into

        ``logits`` ``[B, K, h, w]``, ``means`` ``[B, C, K, h, w]``, ``log_scales`` ``[B, C, K, h, w]``
        (clamped at -7) and, for C = 3, ``coeffs`` ``[B, 3, K, h, w]`` (after tanh; index 0 = a,
        1 = b, 2 = c), else ``None``.
        """
        self._check_params(params)
        b, _, h, w = params.shape
        k, c = self.n_mix, self.channels
        per = 3 * k if c == 3 else 2 * k
        logits = params[:, :k]
        rest = params[:, k:].reshape(b, c, per, h, w)
        means = rest[:, :, :k]
        log_scales = rest[:, :, k : 2 * k].clamp_min(LOG_SCALE_MIN)
        coeffs = torch.tanh(rest[:, :, 2 * k : 3 * k]) if c == 3 else None
        return logits, means, log_scales, coeffs

    def component_log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log(pi_k) + log p(x | k), nats, ``[B, K, H, W]``; ``log_prob`` is its logsumexp over K."""
        self._check_x(params, x)
        logits, means, log_scales, coeffs = self.unpack(params)
        v = x.long().unsqueeze(2)  # [B, C, 1, H, W]
        if coeffs is not None:
            xf = levels_to_unit(v, self.n_bits, params.dtype)
            m_r = means[:, 0]
            m_g = means[:, 1] + coeffs[:, 0] * xf[:, 0]
            m_b = means[:, 2] + coeffs[:, 1] * xf[:, 0] + coeffs[:, 2] * xf[:, 1]
            means = torch.stack([m_r, m_g, m_b], dim=1)
        lp = discretized_logistic_log_mass(v, means, log_scales, self.n_bits).sum(dim=1)
        return lp + F.log_softmax(logits, dim=1)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return torch.logsumexp(self.component_log_prob(params, x), dim=1)

    def sample_from_uniforms(self, params: Tensor, u: Tensor, temperature: float = 1.0) -> Tensor:
        t = self._check_temperature(temperature)
        logits, means, log_scales, coeffs = self.unpack(params)
        b, k, h, w = logits.shape
        if u.shape != (b, self.n_uniforms, h, w):
            raise ValueError(f"u must be [{b}, {self.n_uniforms}, {h}, {w}], got {tuple(u.shape)}")
        dtype = params.dtype
        # Mixture component by inverse CDF, one per pixel, shared by all channels.
        cdf = torch.cumsum(torch.softmax(logits / t, dim=1), dim=1)
        comp = (cdf <= u[:, :1].to(dtype)).sum(dim=1, keepdim=True).clamp_max(k - 1)  # [B,1,h,w]
        idx = comp.unsqueeze(1).expand(b, self.channels, 1, h, w)
        mean = torch.gather(means, 2, idx).squeeze(2)  # [B, C, h, w]
        scale = torch.exp(torch.gather(log_scales, 2, idx).squeeze(2)) * t
        # Standard logistic noise by inverse CDF, computed in float64 (finite for u in [tiny, 1)).
        u64 = u[:, 1:].to(torch.float64).clamp_min(torch.finfo(torch.float64).tiny)
        z = (torch.log(u64) - torch.log1p(-u64)).to(dtype)
        if coeffs is None:
            return unit_to_levels(mean + scale * z, self.n_bits)
        co = torch.gather(coeffs, 2, idx).squeeze(2)  # [B, 3, h, w]
        v_r = unit_to_levels(mean[:, 0] + scale[:, 0] * z[:, 0], self.n_bits)
        x_r = levels_to_unit(v_r, self.n_bits, dtype)  # condition on the discretized value
        v_g = unit_to_levels(mean[:, 1] + co[:, 0] * x_r + scale[:, 1] * z[:, 1], self.n_bits)
        x_g = levels_to_unit(v_g, self.n_bits, dtype)
        m_b = mean[:, 2] + co[:, 1] * x_r + co[:, 2] * x_g
        v_b = unit_to_levels(m_b + scale[:, 2] * z[:, 2], self.n_bits)
        return torch.stack([v_r, v_g, v_b], dim=1)


class _BinaryHead(LikelihoodHead):
    """Shared code of the Bernoulli heads: values {0, 1}, one channel."""

    n_bits = 1
    n_uniforms = 1

    def __init__(self, channels: int = 1):
        self.channels = channels
        self.n_params = n_params(self.kind, channels, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels})"

    def log_odds(self, params: Tensor) -> Tensor:
        """log p(on) - log p(off), ``[B, 1, h, w]``."""
        raise NotImplementedError

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        self._check_x(params, x)
        lo = self.log_odds(params)[:, 0]
        on = x[:, 0] == 1
        return torch.where(on, F.logsigmoid(lo), F.logsigmoid(-lo))

    def sample_from_uniforms(self, params: Tensor, u: Tensor, temperature: float = 1.0) -> Tensor:
        t = self._check_temperature(temperature)
        self._check_params(params)
        b, _, h, w = params.shape
        if u.shape != (b, 1, h, w):
            raise ValueError(f"u must be [{b}, 1, {h}, {w}], got {tuple(u.shape)}")
        # u < sigmoid(l / T)  <=>  logit(u) < l / T; compared in float64.
        u64 = u.to(torch.float64).clamp_min(torch.finfo(torch.float64).tiny)
        z = torch.log(u64) - torch.log1p(-u64)
        return (z < self.log_odds(params).to(torch.float64) / t).to(torch.uint8)


class Bernoulli(_BinaryHead):
    """One logit per pixel: the log-odds of value 1. ``params`` ``[B, 1, H, W]``."""

    kind = "bernoulli"

    def log_odds(self, params: Tensor) -> Tensor:
        self._check_params(params)
        return params


class Bernoulli2(_BinaryHead):
    """Two logits per pixel, softmax over ``[off, on]`` (the paper's binarized MNIST head).
    ``params`` ``[B, 2, H, W]``; p(on) = softmax(params, dim=1)[:, 1]."""

    kind = "bernoulli2"

    def log_odds(self, params: Tensor) -> Tensor:
        self._check_params(params)
        return params[:, 1:2] - params[:, 0:1]


# ----------------------------------------------------------------------------------------------


def _check_n_mix(n_mix: int) -> None:
    if isinstance(n_mix, bool) or not isinstance(n_mix, int) or n_mix < 1:
        raise UserError(
            f"n_mix (number of logistic mixture components) must be a positive integer, got {n_mix!r}"
        )


def _seeded(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g
