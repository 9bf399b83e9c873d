"""Locally masked convolution: the fast path against the unfold reference, and the small blocks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lmconv_bench.models import layers as L
from lmconv_bench.orders import BASE_ORDERS, get_order, kernel_masks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CONFIGS = [(3, 1, False), (3, 1, True), (3, 2, True), (3, 2, False), (5, 1, True), (5, 2, False)]


def _inputs(b, c_in, c_out, h, w, k, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c_in, h, w, generator=g, dtype=dtype)
    weight = torch.randn(c_out, c_in, k, k, generator=g, dtype=dtype) / math.sqrt(c_in * k * k)
    bias = torch.randn(c_out, generator=g, dtype=dtype)
    grad = torch.randn(b, c_out, h, w, generator=g, dtype=dtype)
    return x, weight, bias, grad


def _both(x, weight, bias, grad, cm):
    """Output and gradients (x, weight, bias) of the reference and the fast path."""
    out = []
    for fn in (L.lmconv2d_reference, L.lmconv2d):
        xs, ws, bs = (t.detach().clone().requires_grad_(True) for t in (x, weight, bias))
        y = fn(xs, ws, bs, cm)
        y.backward(grad)
        out.append((y.detach(), xs.grad, ws.grad, bs.grad))
    return out


def _check(x, weight, bias, grad, cm, atol):
    """Outputs agree within ``atol``; gradients (sums over many positions) within ``atol``
    relative to their largest entry."""
    ref, fast = _both(x, weight, bias, grad, cm)
    for name, a, b in zip(("y", "dx", "dweight", "dbias"), ref, fast):
        tol = atol if name == "y" else atol * max(1.0, float(a.abs().max()))
        assert_close(b, a, atol=tol, rtol=atol, msg=lambda m: f"{name}: {m}")


def _explicit(x, weight, bias, masks, d):
    """Direct definition: y[b, :, r, c] = bias + sum over open taps of W[:, :, i, j] x[neighbour]."""
    b, _, h, w = x.shape
    k = weight.shape[-1]
    y = bias.view(1, -1, 1, 1).repeat(b, 1, h, w)
    for r in range(h):
        for c in range(w):
            for i in range(k):
                for j in range(k):
                    rr, cc = r + (i - k // 2) * d, c + (j - k // 2) * d
                    if masks[r, c, i, j] and 0 <= rr < h and 0 <= cc < w:
                        y[:, :, r, c] += x[:, :, rr, cc] @ weight[:, :, i, j].t()
    return y


def test_reference_matches_the_definition():
    perm = get_order("hilbert/3", 6, 6)
    for k, d, centre in [(3, 1, False), (3, 2, True)]:
        x, weight, bias, _ = _inputs(2, 3, 4, 6, 6, k, torch.float64)
        cm = L.conv_mask(perm, 6, 6, k, d, centre)
        assert_close(L.lmconv2d_reference(x, weight, bias, cm), _explicit(x, weight, bias, cm.masks, d))


@pytest.mark.parametrize("base", BASE_ORDERS)
def test_fast_matches_reference_all_orders_and_variants(base):
    x, _, bias, _ = _inputs(3, 5, 6, 8, 8, 3)
    for var in range(8):
        perm = get_order(f"{base}/{var}", 8, 8)
        for k, d, centre in CONFIGS:
            _, weight, _, grad = _inputs(3, 5, 6, 8, 8, k, seed=var * 7 + k + d)
            _check(x, weight, bias, grad, L.conv_mask(perm, 8, 8, k, d, centre), atol=1e-5)


def test_fast_matches_reference_random_orders_nonsquare():
    g = torch.Generator().manual_seed(1)
    for h, w in [(7, 9), (5, 5), (12, 4)]:
        x, _, bias, _ = _inputs(2, 4, 3, h, w, 3)
        for trial in range(3):
            perm = torch.randperm(h * w, generator=g)
            for k, d, centre in CONFIGS:
                _, weight, _, grad = _inputs(2, 4, 3, h, w, k, seed=trial)
                _check(x, weight, bias, grad, L.conv_mask(perm, h, w, k, d, centre), atol=1e-5)


def test_fast_matches_reference_per_image_orders():
    g = torch.Generator().manual_seed(2)
    b, h, w = 4, 9, 9
    perms = torch.stack([torch.randperm(h * w, generator=g) for _ in range(b - 1)] + [get_order("s_curve/5", h, w)])
    x, _, bias, _ = _inputs(b, 3, 5, h, w, 3)
    for k, d, centre in CONFIGS:
        _, weight, _, grad = _inputs(b, 3, 5, h, w, k, seed=k + d)
        cm = L.conv_mask(perms, h, w, k, d, centre)
        assert cm.per_image and cm.masks.shape == (b, h, w, k, k)
        _check(x, weight, bias, grad, cm, atol=1e-5)
        # each image alone, with its own order, gives the same rows
        y = L.lmconv2d(x, weight, bias, cm)
        for i in range(b):
            alone = L.lmconv2d(x[i : i + 1], weight, bias, L.conv_mask(perms[i], h, w, k, d, centre))
            assert_close(y[i : i + 1], alone, atol=1e-6, rtol=1e-6)


def test_float64_tight():
    x, weight, bias, grad = _inputs(2, 4, 3, 10, 10, 3, torch.float64)
    for name in ("s_curve/2", "hilbert/6", "center_last/1"):
        cm = L.conv_mask(get_order(name, 10, 10), 10, 10, 3, 2, True)
        _check(x, weight, bias, grad, cm, atol=1e-12)


def test_larger_image_and_channels():
    x, weight, bias, grad = _inputs(3, 16, 12, 28, 28, 3)
    for name in ("s_curve/4", "hilbert/1"):
        for d in (1, 2):
            _check(x, weight, bias, grad, L.conv_mask(get_order(name, 28, 28), 28, 28, 3, d, True), atol=1e-5)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    perms = torch.stack([torch.randperm(25, generator=g) for _ in range(2)])
    for perm in (get_order("hilbert/2", 5, 5), perms):
        cm = L.conv_mask(perm, 5, 5, 3, 1, False)
        assert torch.autograd.gradcheck(lambda a, b_, c: L.lmconv2d(a, b_, c, cm), (x, weight, bias))


def test_chunking_and_workspace_modes_agree(monkeypatch):
    x, weight, bias, grad = _inputs(5, 4, 6, 8, 8, 3)
    cm = L.conv_mask(get_order("hilbert/4", 8, 8), 8, 8, 3, 1, True)
    expect = _both(x, weight, bias, grad, cm)[0]
    for budget, persistent in [(1, True), (30_000, True), (30_000, False), (10**9, False)]:
        monkeypatch.setitem(L.WORKSPACE_BYTES, "cpu", budget)
        monkeypatch.setitem(L.PERSISTENT_WORKSPACE, "cpu", persistent)
        got = _both(x, weight, bias, grad, cm)[1]
        for a, b in zip(expect, got):
            assert_close(b, a, atol=1e-5 * max(1.0, float(a.abs().max())), rtol=1e-5)
    L.release_workspace()


def test_no_bias_and_no_input_grad():
    x, weight, _, grad = _inputs(2, 3, 4, 6, 6, 3)
    cm = L.conv_mask(get_order("raster/0", 6, 6), 6, 6, 3, 1, False)
    w1 = weight.clone().requires_grad_(True)
    w2 = weight.clone().requires_grad_(True)
    L.lmconv2d(x, w1, None, cm).backward(grad)
    L.lmconv2d_reference(x, w2, None, cm).backward(grad)
    assert_close(w1.grad, w2.grad, atol=1e-5, rtol=1e-5)
    # taps never open (the bottom row for raster) get exactly zero gradient
    assert torch.all(w1.grad[:, :, 2] == 0)


def test_type_a_1x1_kernel_is_bias_only():
    perm = get_order("s_curve/0", 4, 4)
    cm = L.conv_mask(perm, 4, 4, 1, 1, False)
    x = torch.randn(2, 3, 4, 4)
    weight, bias = torch.randn(5, 3, 1, 1), torch.randn(5)
    assert_close(L.lmconv2d(x, weight, bias, cm), bias.view(1, 5, 1, 1).expand(2, 5, 4, 4))


def test_mask_cache_is_keyed_by_order_and_type():
    L.clear_mask_cache()
    perm = get_order("s_curve/1", 8, 8)
    a = L.conv_mask(perm, 8, 8, 3, 1, True)
    assert L.conv_mask(perm.clone(), 8, 8, 3, 1, True) is a
    assert L.conv_mask(perm, 8, 8, 3, 1, False) is not a
    assert L.conv_mask(perm, 8, 8, 3, 2, True) is not a
    assert L.conv_mask(get_order("s_curve/2", 8, 8), 8, 8, 3, 1, True) is not a
    assert torch.equal(a.masks, kernel_masks(perm, 8, 8, 3, 1, True))


def test_used_tap_box():
    # s-curve and raster never look at the row below: only 2 of 3 kernel rows are computed
    for name in ("s_curve/0", "raster/0"):
        cm = L.conv_mask(get_order(name, 8, 8), 8, 8, 3, 1, True)
        assert cm.box == (0, 2, 0, 3) and cm.n_taps == 6
    cm = L.conv_mask(get_order("s_curve/4", 8, 8), 8, 8, 3, 1, True)  # transposed: cols
    assert cm.box == (0, 3, 0, 2)
    assert L.conv_mask(get_order("hilbert/0", 8, 8), 8, 8, 3, 1, True).n_taps == 9


def test_masked_conv_at_matches_full_conv():
    h = w = 7
    g = torch.Generator().manual_seed(4)
    perms = torch.stack([torch.randperm(h * w, generator=g) for _ in range(3)])
    x, weight, bias, _ = _inputs(3, 4, 5, h, w, 3)
    for d in (1, 2):
        cm = L.conv_mask(perms, h, w, 3, d, True)
        full = L.lmconv2d_reference(x, weight, bias, cm)
        pos = torch.tensor([0, 24, 48])
        masks_at = cm.masks.reshape(3, h * w, 3, 3)[torch.arange(3), pos]
        got = L.masked_conv_at(x, weight, bias, masks_at, pos, d)
        assert_close(got, full.reshape(3, 5, h * w)[torch.arange(3), :, pos], atol=1e-5, rtol=1e-5)


def test_conv_module_impls_and_weight_norm():
    perm = get_order("hilbert/0", 8, 8)
    cm = L.conv_mask(perm, 8, 8, 3, 2, True)
    x = torch.randn(2, 4, 8, 8)
    mods = {impl: L.LocallyMaskedConv2d(4, 6, 3, 2, weight_norm=True, impl=impl) for impl in L.CONV_IMPLS}
    state = mods["fast"].state_dict()
    assert set(state) == {"weight_g", "weight_v", "bias"} and state["weight_g"].shape == (6, 1, 1, 1)
    for m in mods.values():
        m.load_state_dict(state)
    assert_close(mods["fast"](x, cm), mods["reference"](x, cm), atol=1e-5, rtol=1e-5)
    plain = F.conv2d(x, mods["plain"].effective_weight(), mods["plain"].bias, padding=2, dilation=2)
    assert_close(mods["plain"](x), plain)
    # weight norm starts at the plain weight: g = ||v|| per output channel
    w = mods["fast"].effective_weight()
    assert_close(w, mods["fast"].weight_v.detach(), atol=1e-6, rtol=1e-6)
    assert set(L.LocallyMaskedConv2d(4, 6).state_dict()) == {"weight", "bias"}
    with pytest.raises(ValueError, match="dilation"):
        L.LocallyMaskedConv2d(4, 6, 3, 1)(x, cm)


def test_nin_concat_elu_pono():
    x = torch.randn(2, 6, 3, 4)
    n = L.nin(6, 5)
    assert set(n.state_dict()) == {"lin_a.weight_g", "lin_a.weight_v", "lin_a.bias"}
    expect = torch.einsum("oc,bchw->bohw", n.lin_a.weight, x) + n.lin_a.bias.view(1, 5, 1, 1)
    assert_close(n(x), expect, atol=1e-6, rtol=1e-6)
    assert_close(L.concat_elu(x), F.elu(torch.cat([x, -x], 1)))
    p = L.pono(x)
    assert_close(p.mean(1), torch.zeros(2, 3, 4), atol=1e-6, rtol=0)
    # unbiased variance, as torch.var (and the official code) computes it
    assert_close(p.var(1), torch.full((2, 3, 4), 1.0), atol=1e-3, rtol=0)
