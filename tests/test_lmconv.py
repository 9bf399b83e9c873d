"""The LMConv network: causality under every order, per-image orders, fast == reference, names."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from lmconv_bench.errors import UserError
from lmconv_bench.models.base import ModelConfig, build_model
from lmconv_bench.configs import make_config
from lmconv_bench.models.lmconv import PRESETS, LMConv
from lmconv_bench.orders import BASE_ORDERS, get_order, kernel_masks, ranks


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(channels=1, size=8, dtype=torch.float64, head="logistic_mixture", n_bits=8, seed=0, **arch):
    cfg = ModelConfig("lmconv", "tiny", "test", channels, size, size, n_bits, head, {**PRESETS["tiny"], **arch})
    torch.manual_seed(seed)
    return LMConv(cfg).to(dtype).eval()


def _image(net, batch=1, seed=0):
    c, h, w, bits = net.config.channels, net.config.height, net.config.width, net.config.n_bits
    g = torch.Generator().manual_seed(seed)
    x8 = torch.randint(0, 2**bits, (batch, c, h, w), generator=g, dtype=torch.uint8)
    return x8, (x8.to(net.dtype_) / (2**bits - 1) * 2 - 1)


def _per_position_grads(net, perm, positions, seed=0):
    """Gradients of the output at each position w.r.t. the input image, in one backward pass.

    The image is copied once per position; copy b's target is a random mix of the head's params
    at positions[b] (or its log_prob there), and copies do not interact (eval mode), so row b of
    the input gradient belongs to positions[b] alone. Returns two bool/float maps
    ``[len(positions), H*W]``: |d params| and |d log_prob| summed over channels.
    """
    n = len(positions)
    x8, xf = _image(net, seed=seed)
    x8, xf = x8.expand(n, -1, -1, -1), xf.expand(n, -1, -1, -1).clone().requires_grad_(True)
    params = net(xf, perm)  # [n, P, H, W]
    lp = net.head.log_prob(params, x8)  # [n, H, W]
    b = torch.arange(n)
    mix = torch.randn(params.shape[1], generator=torch.Generator().manual_seed(seed + 1), dtype=params.dtype)
    flat_p = params.flatten(2)[b, :, positions]  # [n, P]
    out = []
    for target in ((flat_p * mix).sum(), lp.flatten(1)[b, positions].sum()):
        (g,) = torch.autograd.grad(target, xf, retain_graph=True)
        out.append(g.abs().sum(1).flatten(1))
    return out


def _assert_causal(net, perm, positions, seed=0):
    """No gradient from any pixel not strictly earlier than the position (exactly zero), and
    some gradient at every position that has an earlier pixel among its 8 neighbours (the
    type-A first layer sees those directly)."""
    h, w = net.config.height, net.config.width
    positions = torch.as_tensor(positions)
    rank = ranks(perm)
    # [n, H*W]: True where input pixel q comes strictly before positions[b]
    earlier = rank.view(1, h * w) < rank[positions].view(-1, 1)
    has_earlier_neighbour = kernel_masks(perm, h, w, 3, 1, False).flatten(2).any(-1).flatten()[positions]
    for grads in _per_position_grads(net, perm, positions, seed):
        leaks = (grads != 0) & ~earlier
        assert not bool(leaks.any()), f"position(s) {positions[leaks.any(1)].tolist()} see later pixels"
        dependent = ((grads != 0) & earlier).any(1)
        blind = has_earlier_neighbour & ~dependent
        assert not bool(blind.any()), f"position(s) {positions[blind].tolist()} ignore their earlier neighbours"


@pytest.mark.parametrize("base", BASE_ORDERS)
def test_causal_every_order_and_variant_8x8(base):
    net = _net(1, 8)
    for var in range(8):
        perm = get_order(f"{base}/{var}", 8, 8)
        _assert_causal(net, perm, torch.arange(64), seed=var)
        # every position but the first has an earlier neighbour in these orders
        assert int(kernel_masks(perm, 8, 8, 3, 1, False).flatten(2).any(-1).sum()) == 63


def test_causal_rgb_and_random_orders():
    net = _net(3, 8, seed=1)
    g = torch.Generator().manual_seed(5)
    for trial in range(3):
        _assert_causal(net, torch.randperm(64, generator=g), torch.arange(64), seed=trial)


def test_causal_bernoulli_head():
    net = _net(1, 8, head="bernoulli", n_bits=1, seed=2)
    _assert_causal(net, get_order("hilbert/5", 8, 8), torch.arange(64))


@pytest.mark.parametrize(("channels", "size", "name"), [(1, 28, "s_curve/3"), (1, 28, "hilbert/6"), (3, 32, "center_last/4")])
def test_causal_full_size(channels, size, name):
    net = _net(channels, size, seed=3)
    perm = get_order(name, size, size)
    g = torch.Generator().manual_seed(6)
    positions = torch.cat([perm[:3], perm[-3:], torch.randperm(size * size, generator=g)[:18]])
    _assert_causal(net, perm, positions)


def test_per_image_orders_equal_each_image_alone():
    net = _net(3, 8, seed=4)
    x8, xf = _image(net, batch=3, seed=7)
    g = torch.Generator().manual_seed(8)
    perms = torch.stack([get_order("hilbert/2", 8, 8), torch.randperm(64, generator=g), get_order("s_curve/7", 8, 8)])
    together = net(xf, perms)
    for i in range(3):
        assert_close(together[i : i + 1], net(xf[i : i + 1], perms[i]), atol=1e-12, rtol=1e-12)
    # a per-image batch whose orders are all equal is the shared-order case
    same = perms[:1].expand(3, -1)
    assert_close(net(xf, same), net(xf, perms[0]), atol=0, rtol=0)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_fast_equals_reference_network(dtype, tol):
    fast = _net(3, 8, dtype=dtype, seed=5)
    ref = _net(3, 8, dtype=dtype, seed=5, conv_impl="reference")
    assert ref.conv_impl == "reference"
    ref.load_state_dict(fast.state_dict())
    x8, xf = _image(fast, batch=2, seed=9)
    g = torch.Generator().manual_seed(10)
    for perm in (get_order("s_curve/1", 8, 8), get_order("hilbert/4", 8, 8), torch.stack([torch.randperm(64, generator=g) for _ in range(2)])):
        assert_close(fast(xf, perm), ref(xf, perm), atol=tol, rtol=tol)
    # training gradients agree too
    perm = get_order("center_last/2", 8, 8)
    for net in (fast, ref):
        net.zero_grad()
        (-net.head.log_prob(net(xf, perm), x8).sum()).backward()
    for (name, p_fast), p_ref in zip(fast.named_parameters(), ref.parameters()):
        scale = max(1.0, float(p_ref.grad.abs().max()))
        assert_close(p_fast.grad, p_ref.grad, atol=tol * 10 * scale, rtol=tol * 10, msg=lambda m: f"{name}: {m}")


def _official_names(nr_resnet, conv_params=("weight", "bias")):
    lin = ("lin_a.weight_g", "lin_a.weight_v", "lin_a.bias")
    names = {f"u_init.{p}" for p in conv_params} | {f"nin_out.{p}" for p in lin}
    for i in range(2):
        names |= {f"{s}.{i}.{p}" for s in ("downsize_u_stream", "upsize_u_stream") for p in conv_params}
    for s in range(3):
        for j in range(nr_resnet):
            names |= {f"up_layers.{s}.u_stream.{j}.{c}.{p}" for c in ("conv_input", "conv_out") for p in conv_params}
        for j in range(nr_resnet + (s > 0)):
            pre = f"down_layers.{s}.u_stream.{j}"
            names |= {f"{pre}.{c}.{p}" for c in ("conv_input", "conv_out") for p in conv_params}
            names |= {f"{pre}.nin_skip.{p}" for p in lin}
    return names


def test_parameter_names_match_official_model():
    net = _net(3, 8, nr_resnet=2)
    assert set(net.state_dict()) == _official_names(2)
    shapes = net.state_dict()
    assert shapes["u_init.weight"].shape == (8, 4, 3, 3)  # C + 1 input channels (the ones channel)
    assert shapes["down_layers.1.u_stream.2.nin_skip.lin_a.weight_v"].shape == (8, 16)
    assert shapes["nin_out.lin_a.weight_v"].shape == (net.head.n_params, 8)
    wn = _net(1, 8, normalization="weight_norm")
    assert set(wn.state_dict()) == _official_names(1, ("weight_g", "weight_v", "bias"))


def test_registry_presets_and_log_prob():
    assert {"tiny", "small", "bench-default", "paper"} <= set(PRESETS)
    paper = PRESETS["paper"]
    assert (paper["nr_resnet"], paper["nr_filters"], paper["nr_logistic_mix"], paper["kernel_size"]) == (5, 160, 10, 3)
    assert paper["normalization"] == "pono" and paper["max_dilation"] == 2
    net = build_model(make_config("lmconv", "tiny", "mnist"))
    assert isinstance(net, LMConv) and net.head.n_params == 3 * PRESETS["tiny"]["nr_logistic_mix"]
    x8 = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    lp = net.log_prob(x8, get_order("s_curve/0", 28, 28))
    assert lp.shape == (2, 28, 28) and bool(torch.isfinite(lp).all()) and bool((lp <= 0).all())


def test_dropout_only_in_training():
    net = _net(1, 8, dropout_prob=0.5)
    _, xf = _image(net, batch=2)
    perm = get_order("raster/0", 8, 8)
    assert_close(net(xf, perm), net(xf, perm), atol=0, rtol=0)
    net.train()
    assert not torch.equal(net(xf, perm), net(xf, perm))


def test_bad_arguments():
    with pytest.raises(UserError, match="normalization"):
        _net(normalization="batch_norm")
    with pytest.raises(UserError, match="conv_impl"):
        _net(conv_impl="winograd")
    net = _net(1, 8)
    _, xf = _image(net, batch=2)
    with pytest.raises(ValueError, match="orders"):
        net(xf, torch.arange(63))
    with pytest.raises(ValueError, match="per-image"):
        net(xf, torch.stack([torch.arange(64)] * 3))
