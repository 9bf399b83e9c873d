"""Tests of the likelihood heads (lmconv_bench.models.likelihood), in float64.

References are independent: numerical integration (scipy.integrate.quad) of the logistic
density over each bin, with parameters unpacked from the paper's channels-last layout.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats

from lmconv_bench.errors import UserError
from lmconv_bench.models.likelihood import (
    HEAD_KINDS,
    bits_per_dim,
    levels_to_unit,
    make_head,
    n_params,
    nats_to_bits,
    unit_to_levels,
)
from lmconv_bench.seeding import stable_seed

F64 = torch.float64


# ------------------------------------------------------------------------------------------
# Independent reference
# ------------------------------------------------------------------------------------------


def _official_unpack(params: torch.Tensor, b: int, i: int, j: int, channels: int, k: int):
    """Unpack one pixel the way the paper's code does, from channels-last ``[B, H, W, P]``."""
    row = params.permute(0, 2, 3, 1)[b, i, j].numpy()
    logits = row[:k]
    per = 3 * k if channels == 3 else 2 * k
    rest = row[k:].reshape(channels, per)
    means = rest[:, :k]
    log_scales = np.maximum(rest[:, k : 2 * k], -7.0)
    coeffs = np.tanh(rest[:, 2 * k : 3 * k]) if channels == 3 else None
    return logits, means, log_scales, coeffs


def _bin_mass_quad(level: int, mean: float, scale: float, n_bits: int) -> float:
    """Mass of the logistic(mean, scale) density over the bin of ``level``, by quadrature."""
    top = 2**n_bits - 1
    x = level / top * 2 - 1
    lo = -np.inf if level == 0 else x - 1 / top
    hi = np.inf if level == top else x + 1 / top

    def pdf(t: float) -> float:  # logistic density, written out (symmetric, overflow-free form)
        z = -abs(t - mean) / scale
        e = math.exp(z)
        return e / (scale * (1 + e) ** 2)

    # Integrate with a breakpoint at the mean so quad sees the peak.
    if np.isfinite(lo) and np.isfinite(hi) and lo < mean < hi:
        val = integrate.quad(pdf, lo, mean, epsabs=0, epsrel=1e-12)[0]
        val += integrate.quad(pdf, mean, hi, epsabs=0, epsrel=1e-12)[0]
    elif np.isfinite(lo) and np.isfinite(hi):
        val = integrate.quad(pdf, lo, hi, epsabs=0, epsrel=1e-12)[0]
    else:
        a = lo if np.isfinite(lo) else -np.inf
        b = hi if np.isfinite(hi) else np.inf
        # split at the finite end and the mean to keep quad accurate on infinite ranges
        inner = max(a, min(b, mean))
        val = integrate.quad(pdf, a, inner, epsabs=0, epsrel=1e-12)[0] if a < inner else 0.0
        val += integrate.quad(pdf, inner, b, epsabs=0, epsrel=1e-12)[0] if inner < b else 0.0
    return val


def _reference_log_prob(params, x, b, i, j, channels, k, n_bits):
    """log p of pixel (b, i, j): mixture over components of the product of channel bin masses."""
    logits, means, log_scales, coeffs = _official_unpack(params, b, i, j, channels, k)
    top = 2**n_bits - 1
    levels = [int(x[b, c, i, j]) for c in range(channels)]
    xf = [lv / top * 2 - 1 for lv in levels]
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    total, masses = 0.0, []
    for m in range(k):
        mu = list(means[:, m])
        if channels == 3:
            mu[1] += coeffs[0, m] * xf[0]
            mu[2] += coeffs[1, m] * xf[0] + coeffs[2, m] * xf[1]
        prod = 1.0
        for c in range(channels):
            mass = _bin_mass_quad(levels[c], mu[c], float(np.exp(log_scales[c, m])), n_bits)
            masses.append(mass)
            prod *= mass
        total += weights[m] * prod
    return math.log(total), min(masses)


def _random_params(gen, b, channels, k, h, w, mean_rng=0.5, ls_rng=(-0.5, 0.3), coeff_rng=1.0):
    p = n_params("logistic_mixture", channels, k)
    params = torch.empty((b, p, h, w), dtype=F64)
    params[:, :k] = torch.randn((b, k, h, w), generator=gen, dtype=F64)
    per = 3 * k if channels == 3 else 2 * k
    rest = torch.empty((b, channels, per, h, w), dtype=F64)
    rest[:, :, :k] = (torch.rand((b, channels, k, h, w), generator=gen, dtype=F64) * 2 - 1) * mean_rng
    lo, hi = ls_rng
    rest[:, :, k : 2 * k] = lo + (hi - lo) * torch.rand((b, channels, k, h, w), generator=gen, dtype=F64)
    if channels == 3:
        rest[:, :, 2 * k :] = (torch.rand((b, 3, k, h, w), generator=gen, dtype=F64) * 2 - 1) * coeff_rng
    params[:, k:] = rest.reshape(b, channels * per, h, w)
    return params


def _gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# ------------------------------------------------------------------------------------------
# log_prob against numerical integration
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_bits", [3, 8])
def test_one_channel_matches_quadrature(n_bits):
    head = make_head("logistic_mixture", channels=1, n_mix=3, n_bits=n_bits)
    g = _gen(1)
    params = _random_params(g, 2, 1, 3, 2, 3)
    x = torch.randint(0, 2**n_bits, (2, 1, 2, 3), generator=g)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0, 2**n_bits - 1  # both edge bins
    got = head.log_prob(params, x)
    assert got.shape == (2, 2, 3) and got.dtype == F64
    for b, i, j in itertools.product(range(2), range(2), range(3)):
        ref, min_mass = _reference_log_prob(params, x, b, i, j, 1, 3, n_bits)
        assert min_mass > 1e-5  # precondition: the fallback does not apply
        torch.testing.assert_close(got[b, i, j].item(), ref, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("n_bits", [4, 8])
def test_three_channels_match_quadrature(n_bits):
    k = 4
    head = make_head("logistic_mixture", channels=3, n_mix=k, n_bits=n_bits)
    g = _gen(2)
    params = _random_params(g, 2, 3, k, 2, 2, ls_rng=(-0.4, 0.3), coeff_rng=1.0)
    x = torch.randint(0, 2**n_bits, (2, 3, 2, 2), generator=g).to(torch.uint8)
    x[0, :, 0, 0] = torch.tensor([0, 2**n_bits - 1, 0])
    got = head.log_prob(params, x)
    assert got.shape == (2, 2, 2)
    for b, i, j in itertools.product(range(2), range(2), range(2)):
        ref, min_mass = _reference_log_prob(params, x, b, i, j, 3, k, n_bits)
        assert min_mass > 1e-5
        torch.testing.assert_close(got[b, i, j].item(), ref, rtol=1e-8, atol=1e-9)


def test_layout_is_the_official_channels_last_layout():
    """A parameter placed at the official channels-last index drives the matching quantity."""
    k = 2
    head = make_head("logistic_mixture", channels=3, n_mix=k, n_bits=8)
    official = torch.zeros((1, 1, 1, 10 * k), dtype=F64)  # [B, H, W, 10K] as in the paper's code
    rest = official[0, 0, 0, k:].view(3, 3 * k)
    rest[1, 1] = 0.25  # means[G, component 1]
    rest[2, k + 0] = -2.0  # log_scales[B, component 0]
    rest[0, 2 * k + 1] = 0.5  # raw coeff a (G from R), component 1
    official[0, 0, 0, 1] = 3.0  # logit of component 1
    logits, means, log_scales, coeffs = head.unpack(official.permute(0, 3, 1, 2))
    assert logits[0, :, 0, 0].tolist() == [0.0, 3.0]
    assert means[0, 1, 1, 0, 0] == 0.25 and means.abs().sum() == 0.25
    assert log_scales[0, 2, 0, 0, 0] == -2.0 and log_scales.sum() == -2.0
    torch.testing.assert_close(coeffs[0, 0, 1, 0, 0], torch.tanh(torch.tensor(0.5, dtype=F64)))
    assert torch.count_nonzero(coeffs) == 1
    # 1 channel: logits, means, log_scales
    head1 = make_head("logistic_mixture", channels=1, n_mix=k, n_bits=8)
    p1 = torch.arange(3 * k, dtype=F64).view(1, 3 * k, 1, 1) - 10
    lg, mu, ls, co = head1.unpack(p1)
    assert lg.flatten().tolist() == [-10.0, -9.0]
    assert mu.flatten().tolist() == [-8.0, -7.0]
    assert ls.flatten().tolist() == [-6.0, -5.0]  # clamp at -7 leaves these
    assert co is None


# ------------------------------------------------------------------------------------------
# Normalization
# ------------------------------------------------------------------------------------------


def _all_levels_1ch(head, params_pixel):
    n = head.n_levels
    x = torch.arange(n).view(1, 1, 1, n)
    return head.log_prob(params_pixel.expand(1, -1, 1, n), x)


def _all_combos_3ch(head, params_pixel):
    n = head.n_levels
    grid = torch.cartesian_prod(torch.arange(n), torch.arange(n), torch.arange(n))  # [n^3, 3]
    x = grid.T.reshape(1, 3, 1, n**3)
    return head.log_prob(params_pixel.expand(1, -1, 1, n**3), x)


def test_one_channel_8bit_sums_to_one():
    head = make_head("logistic_mixture", channels=1, n_mix=5, n_bits=8)
    params = _random_params(_gen(3), 4, 1, 5, 1, 1, mean_rng=0.9, ls_rng=(-0.5, 0.5))
    for b in range(4):
        total = torch.exp(_all_levels_1ch(head, params[b : b + 1])).sum()
        torch.testing.assert_close(total.item(), 1.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_bits", [3, 4])
def test_three_channels_sum_to_one(n_bits):
    head = make_head("logistic_mixture", channels=3, n_mix=3, n_bits=n_bits)
    params = _random_params(_gen(4), 3, 3, 3, 1, 1, mean_rng=0.8, ls_rng=(-1.5, 0.0), coeff_rng=2.0)
    for b in range(3):
        total = torch.exp(_all_combos_3ch(head, params[b : b + 1])).sum()
        torch.testing.assert_close(total.item(), 1.0, rtol=0, atol=1e-6)


def test_sharp_components_still_normalized():
    """log_scales at the -7 clamp (and below it): nearly all mass in one or two bins."""
    head = make_head("logistic_mixture", channels=1, n_mix=2, n_bits=8)
    top = 255
    mean_on_edge = (100.5 / top) * 2 - 1  # exactly between levels 100 and 101
    params = torch.tensor([0.0, 0.0, mean_on_edge, 0.3, -9.0, -7.0], dtype=F64).view(1, 6, 1, 1)
    lp = _all_levels_1ch(head, params)
    torch.testing.assert_close(torch.exp(lp).sum().item(), 1.0, rtol=0, atol=1e-6)
    # component 0 (weight 1/2, scale e^-7) has its mean on the upper edge of bin 100
    expected = 0.5 * (0.5 - 1 / (1 + math.exp(2 / top / math.exp(-7.0))))
    torch.testing.assert_close(torch.exp(lp[0, 0, 100]).item(), expected, rtol=1e-9, atol=0)


# ------------------------------------------------------------------------------------------
# Edge bins and the mid-bin fallback
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_bits", [5, 8])
def test_fallback_uses_log_half_levels(n_bits):
    top = 2**n_bits - 1
    head = make_head("logistic_mixture", channels=1, n_mix=1, n_bits=n_bits)
    mean, log_scale = -0.9, -3.0
    params = torch.tensor([0.0, mean, log_scale], dtype=F64).view(1, 3, 1, 1)
    level = top - 3  # interior, ~34 scales from the mean: bin mass far below 1e-5
    xv = level / top * 2 - 1
    got = head.log_prob(params, torch.tensor(level).view(1, 1, 1, 1)).item()
    log_pdf = stats.logistic.logpdf(xv, loc=mean, scale=math.exp(log_scale))
    torch.testing.assert_close(got, log_pdf - math.log(top / 2), rtol=1e-12, atol=1e-12)
    if n_bits == 5:
        assert math.log(top / 2) == pytest.approx(math.log(15.5))
        assert abs(got - (log_pdf - math.log(127.5))) > 2.0  # not the paper's hard-coded constant
    # Edge bins never fall back: they integrate the tails even when far from the mean.
    lp_top = head.log_prob(params, torch.tensor(top).view(1, 1, 1, 1)).item()
    ref_top = stats.logistic.logsf(1 - 1 / top, loc=mean, scale=math.exp(log_scale))
    torch.testing.assert_close(lp_top, ref_top, rtol=1e-10, atol=0)
    far_right = torch.tensor([0.0, 0.9, log_scale], dtype=F64).view(1, 3, 1, 1)
    lp_bottom = head.log_prob(far_right, torch.tensor(0).view(1, 1, 1, 1)).item()
    ref_bottom = stats.logistic.logcdf(-1 + 1 / top, loc=0.9, scale=math.exp(log_scale))
    torch.testing.assert_close(lp_bottom, ref_bottom, rtol=1e-10, atol=0)


def test_float32_tail_bins_are_accurate():
    """Bin masses in the upper tail keep precision in float32 (log-space difference of CDFs)."""
    head = make_head("logistic_mixture", channels=1, n_mix=1, n_bits=8)
    levels = torch.tensor([225, 228, 230]).view(1, 1, 1, 3)  # x ~ 0.77..0.8: masses ~1e-4..1e-5
    p64 = torch.tensor([0.0, 0.0, math.log(0.1)], dtype=F64).view(1, 3, 1, 1).expand(1, 3, 1, 3)
    lp64 = head.log_prob(p64, levels)
    assert (lp64 > math.log(1e-5)).all()  # precondition: no fallback
    lp32 = head.log_prob(p64.float(), levels)
    torch.testing.assert_close(lp32.double(), lp64, rtol=0, atol=2e-5)


def test_gradients_are_finite_for_extreme_params():
    head = make_head("logistic_mixture", channels=3, n_mix=2, n_bits=8)
    params = (torch.randn((2, 20, 3, 3), generator=_gen(5)) * 30).requires_grad_()
    x = torch.randint(0, 256, (2, 3, 3, 3), generator=_gen(6)).to(torch.uint8)
    lp = head.log_prob(params, x)
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(params.grad).all()


# ------------------------------------------------------------------------------------------
# Bernoulli heads
# ------------------------------------------------------------------------------------------


def test_bernoulli_heads_match_hand_computation():
    logits = torch.randn((2, 1, 3, 4), generator=_gen(7), dtype=F64) * 3
    x = torch.randint(0, 2, (2, 1, 3, 4), generator=_gen(8)).to(torch.uint8)
    head = make_head("bernoulli", channels=1, n_mix=1, n_bits=8)
    assert head.n_params == 1 and head.n_bits == 1
    lp = head.log_prob(logits, x)
    ln = logits.numpy()[:, 0]
    p_on = 1 / (1 + np.exp(-ln))
    ref = np.where(x.numpy()[:, 0] == 1, np.log(p_on), np.log(1 - p_on))
    torch.testing.assert_close(lp, torch.from_numpy(ref))
    lp0 = head.log_prob(logits, torch.zeros_like(x))
    lp1 = head.log_prob(logits, torch.ones_like(x))
    torch.testing.assert_close(torch.exp(lp0) + torch.exp(lp1), torch.ones_like(lp0))

    two = torch.randn((2, 2, 3, 4), generator=_gen(9), dtype=F64) * 3
    head2 = make_head("bernoulli2", channels=1, n_mix=1, n_bits=1)
    assert head2.n_params == 2
    lp2 = head2.log_prob(two, x)
    a = two.numpy()
    lse = np.log(np.exp(a).sum(axis=1))
    ref2 = np.where(x.numpy()[:, 0] == 1, a[:, 1] - lse, a[:, 0] - lse)
    torch.testing.assert_close(lp2, torch.from_numpy(ref2))
    torch.testing.assert_close(lp2, -F.cross_entropy(two, x[:, 0].long(), reduction="none"))
    s = sum(torch.exp(head2.log_prob(two, torch.full_like(x, v))) for v in (0, 1))
    torch.testing.assert_close(s, torch.ones_like(s))


def test_bernoulli_sampling_frequencies():
    head = make_head("bernoulli2", channels=1, n_mix=1, n_bits=1)
    params = torch.tensor([0.3, -0.9], dtype=F64).view(1, 2, 1, 1).expand(1, 2, 200, 200)
    s = head.sample(params, [123])
    assert s.dtype == torch.uint8 and set(s.unique().tolist()) <= {0, 1}
    p_on = 1 / (1 + math.exp(0.3 + 0.9))
    n = s.numel()
    assert abs(s.double().mean().item() - p_on) < 4 * math.sqrt(p_on * (1 - p_on) / n)


# ------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,channels", [("logistic_mixture", 3), ("logistic_mixture", 1), ("bernoulli", 1)]
)
def test_sampling_is_per_image_deterministic(kind, channels):
    head = make_head(kind, channels=channels, n_mix=3, n_bits=8)
    params = torch.randn((7, head.n_params, 4, 5), generator=_gen(10), dtype=F64)
    seeds = [stable_seed("test", i) for i in range(7)]
    batch = head.sample(params, [_gen(s) for s in seeds])
    assert batch.shape == (7, channels, 4, 5) and batch.dtype == torch.uint8
    alone = head.sample(params[3:4], [_gen(seeds[3])])
    torch.testing.assert_close(alone[0], batch[3], rtol=0, atol=0)
    subset = head.sample(params[[5, 1]], torch.tensor([seeds[5], seeds[1]]))  # int seeds work too
    torch.testing.assert_close(subset, batch[[5, 1]], rtol=0, atol=0)
    assert not torch.equal(batch[0], batch[1])


def test_sampling_any_spatial_shape():
    head = make_head("logistic_mixture", channels=3, n_mix=2, n_bits=5)
    for h, w in [(1, 1), (1, 7), (3, 2)]:
        params = torch.randn((2, head.n_params, h, w), dtype=torch.float32, generator=_gen(h * w))
        s = head.sample(params, [1, 2])
        assert s.shape == (2, 3, h, w) and int(s.max()) <= 31


def _chi2_ok(counts: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Chi-square statistic (bins with expected < 5 lumped) and its 1e-4 critical value."""
    n = counts.sum()
    exp = probs * n
    small = exp < 5
    obs_b = np.append(counts[~small], counts[small].sum())
    exp_b = np.append(exp[~small], exp[small].sum())
    keep = exp_b > 0
    stat = float(((obs_b[keep] - exp_b[keep]) ** 2 / exp_b[keep]).sum())
    return stat, float(stats.chi2.ppf(1 - 1e-4, keep.sum() - 1))


def test_one_channel_sample_frequencies_match_log_prob():
    k, n_bits = 3, 3
    head = make_head("logistic_mixture", channels=1, n_mix=k, n_bits=n_bits)
    pix = torch.tensor([0.5, -0.2, 0.0, -0.6, 0.1, 0.7, -1.5, -0.8, -2.0], dtype=F64).view(1, 9, 1, 1)
    probs = torch.exp(_all_levels_1ch(head, pix))[0, 0].numpy()
    assert abs(probs.sum() - 1) < 1e-9
    samples = head.sample(pix.expand(1, 9, 100, 200), [_gen(11)])  # 20000 draws
    counts = np.bincount(samples.flatten().numpy(), minlength=8)
    stat, crit = _chi2_ok(counts, probs)
    assert stat < crit, (stat, crit, counts, probs * counts.sum())


def test_three_channel_joint_frequencies_match_log_prob():
    """Exact discretized conditioning: joint sample frequencies equal exp(log_prob)."""
    k, n_bits = 2, 2
    head = make_head("logistic_mixture", channels=3, n_mix=k, n_bits=n_bits)
    means = [[-0.1, 0.2], [0.05, -0.15], [0.1, 0.0]]
    log_scales = [[-1.0, -1.3], [-1.5, -1.1], [-1.4, -1.2]]
    coeffs = [[1.8, -1.5], [-1.6, 1.4], [1.7, -1.2]]  # tanh ~ +-0.9: strong R->G->B coupling
    rest = torch.tensor([m + s + c for m, s, c in zip(means, log_scales, coeffs)], dtype=F64)
    pix = torch.cat([torch.tensor([0.2, -0.2], dtype=F64), rest.flatten()]).view(1, 10 * k, 1, 1)
    probs = torch.exp(_all_combos_3ch(head, pix))[0, 0].numpy()
    assert abs(probs.sum() - 1) < 1e-9
    samples = head.sample(pix.expand(1, 10 * k, 400, 500), [_gen(12)])  # 200000 draws
    codes = (samples[0, 0].long() * 16 + samples[0, 1].long() * 4 + samples[0, 2].long()).flatten()
    counts = np.bincount(codes.numpy(), minlength=64)
    stat, crit = _chi2_ok(counts, probs)
    assert stat < crit, (stat, crit)

    # Power: conditioning on the continuous (un-rounded) R and G, as PixelCNN++'s sampler does,
    # with the same noise, is clearly rejected by this test.
    big = pix.expand(1, 10 * k, 400, 500)
    u = head.draw_uniforms([_gen(12)], 400, 500)
    logits, mu, ls, co = head.unpack(big)
    comp = (torch.cumsum(torch.softmax(logits, 1), 1) <= u[:, :1]).sum(1, keepdim=True).clamp_max(k - 1)
    idx = comp.unsqueeze(1).expand(1, 3, 1, 400, 500)
    m, sc, cf = (torch.gather(t, 2, idx).squeeze(2) for t in (mu, ls.exp(), co))
    z = torch.log(u[:, 1:]) - torch.log1p(-u[:, 1:])
    xr = (m[:, 0] + sc[:, 0] * z[:, 0]).clamp(-1, 1)
    xg = (m[:, 1] + cf[:, 0] * xr + sc[:, 1] * z[:, 1]).clamp(-1, 1)
    xb = m[:, 2] + cf[:, 1] * xr + cf[:, 2] * xg + sc[:, 2] * z[:, 2]
    lv = [unit_to_levels(t, n_bits)[0].long() for t in (xr, xg, xb)]
    cont = np.bincount((lv[0] * 16 + lv[1] * 4 + lv[2]).flatten().numpy(), minlength=64)
    assert _chi2_ok(cont, probs)[0] > 10 * crit


def test_low_temperature_gives_the_mode():
    n_bits = 3
    head = make_head("logistic_mixture", channels=1, n_mix=2, n_bits=n_bits)
    x5 = levels_to_unit(torch.tensor(5), n_bits, F64).item()
    x1 = levels_to_unit(torch.tensor(1), n_bits, F64).item()
    # component 0: weight e^1/(e^1+1) ~ 0.73, mean at level 5; component 1 at level 1; wide scales
    pix = torch.tensor([1.0, 0.0, x5, x1, -1.0, -1.0], dtype=F64).view(1, 6, 1, 1).expand(1, 6, 50, 50)
    cold = head.sample(pix, [_gen(13)], temperature=0.01)
    assert (cold == 5).all()
    warm = head.sample(pix, [_gen(13)], temperature=1.0)
    assert len(warm.unique()) > 3  # at T=1 the same noise spreads over many levels

    # 3 channels: the mode follows the coefficients applied to the discretized R and G.
    head3 = make_head("logistic_mixture", channels=3, n_mix=1, n_bits=n_bits)
    p3 = torch.tensor([0.0, x5, -3.0, 0.5, 0.0, -3.0, -0.4, 0.0, -3.0, 0.7], dtype=F64)
    s3 = head3.sample(p3.view(1, 10, 1, 1).expand(1, 10, 10, 10), [_gen(14)], temperature=0.01)
    a, b, c = math.tanh(0.5), math.tanh(-0.4), math.tanh(0.7)
    top = 2**n_bits - 1
    v_r = unit_to_levels(torch.tensor(x5, dtype=F64), n_bits)
    x_r = levels_to_unit(v_r, n_bits, F64)
    m_g = 0.0 + a * x_r
    v_g = unit_to_levels(m_g, n_bits)
    x_g = levels_to_unit(v_g, n_bits, F64)
    m_b = 0.0 + b * x_r + c * x_g
    v_b = unit_to_levels(m_b, n_bits)
    for m in (m_g, m_b):  # precondition: the modes are well inside their bins
        pos = (m.item() + 1) / 2 * top
        assert abs(pos - round(pos)) < 0.4
    expected = torch.stack([v_r, v_g, v_b]).view(1, 3, 1, 1).expand(1, 3, 10, 10)
    torch.testing.assert_close(s3, expected, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# API, errors, units
# ------------------------------------------------------------------------------------------


def test_n_params_and_errors():
    assert n_params("logistic_mixture", 3, 10) == 100
    assert n_params("logistic_mixture", 1, 5) == 15
    assert n_params("bernoulli", 1, 5) == 1 and n_params("bernoulli2", 1, 5) == 2
    assert set(HEAD_KINDS) == {"logistic_mixture", "bernoulli", "bernoulli2"}
    with pytest.raises(UserError, match="did you mean"):
        make_head("logistic_mixtures", 3, 10, 8)
    with pytest.raises(UserError, match="n_bits"):
        make_head("logistic_mixture", 3, 10, 9)
    with pytest.raises(UserError, match="1 or 3 channels"):
        make_head("logistic_mixture", 2, 10, 8)
    with pytest.raises(UserError, match="n_mix"):
        make_head("logistic_mixture", 3, 0, 8)
    head = make_head("logistic_mixture", 1, 2, 5)
    params = torch.zeros((1, 6, 1, 1))
    with pytest.raises(ValueError, match="outside 0..31"):
        head.log_prob(params, torch.tensor(40).view(1, 1, 1, 1))
    with pytest.raises(ValueError, match="params"):
        head.log_prob(torch.zeros((1, 7, 1, 1)), torch.zeros((1, 1, 1, 1), dtype=torch.long))
    with pytest.raises(UserError, match="temperature"):
        head.sample(params, [0], temperature=0.0)


def test_units():
    torch.testing.assert_close(bits_per_dim(3 * 32 * 32 * math.log(2), 3 * 32 * 32).item(), 1.0)
    nll = torch.tensor([2.0, 4.0], dtype=F64)
    expected = torch.tensor([2.0, 2.0], dtype=F64) / math.log(2)
    torch.testing.assert_close(bits_per_dim(nll, torch.tensor([1, 2])), expected)
    torch.testing.assert_close(nats_to_bits(math.log(2) * 5).item(), 5.0)
