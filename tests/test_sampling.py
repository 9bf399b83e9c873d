"""Cached LMConv completion (``sampler="cached"``) against the naive reference, and sample grids.

Tiny random networks in float64 and eval mode: with the same seeds both samplers must give
bitwise identical samples (a different sample would need a parameter exactly on a bin edge), and
the cached per-position computation must reproduce ``forward`` at every position.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from lmconv_bench.checkpoints import save_checkpoint
from lmconv_bench.data import to_model_range
from lmconv_bench.errors import UserError
from lmconv_bench.masks import make_masks
from lmconv_bench.models.base import ModelConfig
from lmconv_bench.configs import make_config
from lmconv_bench.models.lmconv import PRESETS, LMConv
from lmconv_bench.orders import get_order, is_observed_first, observed_first
from lmconv_bench.figures import sample_grid
from lmconv_bench.models.lmconv_cache import _StepNet, cached_complete


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def net(c=1, size=8, head="logistic_mixture", n_bits=8, seed=0, dtype=torch.float64, **arch) -> LMConv:
    cfg = ModelConfig("lmconv", "tiny", "test", c, size, size, n_bits, head, {**PRESETS["tiny"], **arch})
    torch.manual_seed(seed)
    return LMConv(cfg).to(dtype).eval()


def images(model, n: int, seed: int = 5) -> torch.Tensor:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    shape = (n, cfg.channels, cfg.height, cfg.width)
    return torch.randint(0, 2**cfg.n_bits, shape, generator=g, dtype=torch.uint8)


def masks(family: str, n: int, hw: int, **params) -> torch.Tensor:
    return make_masks(family, params, hw, hw, [f"img{i}" for i in range(n)], seed=1)


def seeds_for(n: int) -> torch.Tensor:
    return torch.tensor([101 + 7 * i for i in range(n)], dtype=torch.long)


def assert_same_completion(model, x, missing, orders, seeds=None, **kw) -> torch.Tensor:
    """cached == naive bitwise; per-pixel log-probs equal within 1e-9; observed pixels kept."""
    seeds = seeds_for(len(x)) if seeds is None else seeds
    ref = model.complete(x, missing, orders, seeds, sampler="naive", **kw)
    got = model.complete(x, missing, orders, seeds, sampler="cached", **kw)
    assert got.dtype == torch.uint8 and got.shape == x.shape
    assert torch.equal(got, ref), f"{int((got != ref).sum())} values differ from the naive sampler"
    keep = ~missing.unsqueeze(1).expand_as(x)
    assert torch.equal(got[keep], x[keep])
    assert not torch.equal(got, x), "nothing was sampled"
    with torch.no_grad():
        assert_close(model.log_prob(got, orders), model.log_prob(ref, orders), rtol=0, atol=1e-9)
    return got


def step_params(model, x, orders) -> tuple[torch.Tensor, torch.Tensor]:
    """Visit every position of the order(s) with the cached per-position network on the final
    image ``x`` (the prefill is deliberately made from a corrupted image, so every cached value
    must be recomputed). Returns (cached params ``[T, B, P]``, forward params at the same places)."""
    b, n = x.shape[0], x.shape[2] * x.shape[3]
    perm = orders if orders.dim() == 2 else orders.expand(b, n)
    steps = perm.t().contiguous()
    xf = to_model_range(x, model.config.n_bits).to(model.dtype_)
    sn = _StepNet(model, orders, steps, model.dtype_, x.device)
    with torch.no_grad():
        sn.prefill(torch.zeros_like(xf), orders)  # stale everywhere
        sn.u_init.fill(torch.cat([xf, torch.ones_like(xf[:, :1])], 1))  # the true pixels
        got = torch.stack([sn.step(t) for t in range(n)])
        ref = model(xf, orders).reshape(b, -1, n)
    want = ref[torch.arange(b)[None, :], :, steps]  # [T, B, P]
    return got, want


# ------------------------------------------------------------------------------ exactness
ORDER_NAMES = [
    "raster/0", "raster/3", "raster/5",
    "s_curve/0", "s_curve/2", "s_curve/4", "s_curve/7",
    "hilbert/0", "hilbert/1", "hilbert/6",
    "center_last/0", "center_last/3", "center_last/5",
]  # fmt: skip


@pytest.mark.parametrize("name", ORDER_NAMES)
def test_step_network_equals_forward_at_every_position(name):
    """The per-position network reproduces forward everywhere, for every kind of order."""
    model = net(size=8)
    x = images(model, 2)
    got, want = step_params(model, x, get_order(name, 8, 8))
    assert_close(got, want, rtol=0, atol=1e-12)


# Architectures other than the tiny preset (pono normalization, kernel 3, dilation 2, 1 resnet).
ARCH_VARIANTS = [
    pytest.param({"normalization": "weight_norm"}, id="weight_norm"),
    pytest.param({"normalization": "none", "conv_bias": False}, id="none-nobias"),
    pytest.param({"nr_resnet": 2, "kernel_size": 5, "max_dilation": 3}, id="k5-d3-nr2"),
]


@pytest.mark.parametrize("arch", [pytest.param({"normalization": "pono"}, id="pono"), *ARCH_VARIANTS])
def test_step_network_equals_forward_arch_variants(arch):
    model = net(size=8, c=3, **arch)
    x = images(model, 2)
    perms = torch.stack([get_order("hilbert/2", 8, 8), get_order("s_curve/5", 8, 8)])  # per image
    got, want = step_params(model, x, perms)
    assert_close(got, want, rtol=0, atol=1e-12)


def test_step_network_float32_close_to_forward():
    model = net(size=8, dtype=torch.float32)
    x = images(model, 2)
    got, want = step_params(model, x, get_order("s_curve/1", 8, 8))
    assert_close(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ cached == naive
@pytest.mark.parametrize("name", ["raster/0", "raster/6", "s_curve/0", "s_curve/3", "s_curve/5",
                                  "hilbert/0", "hilbert/4", "hilbert/7", "center_last/0", "center_last/6"])
def test_matches_naive_orders(name):
    """Centre hole, observed_first of each order (transposed variants included)."""
    model = net(size=8)
    x = images(model, 2)
    missing = masks("center", 2, 8)
    perm = observed_first(get_order(name, 8, 8), missing[0])
    assert_same_completion(model, x, missing, perm)


@pytest.mark.parametrize("family,params", [("center", {}), ("top_half", {}), ("random", {"p": 0.3})])
@pytest.mark.parametrize("c", [1, 3])
def test_matches_naive_masks(family, params, c):
    """Mask families on 12x12; random masks differ per image, so their orders are per image."""
    model = net(c=c, size=12, seed=c)
    x = images(model, 2)
    missing = masks(family, 2, 12, **params)
    perm = observed_first(get_order("s_curve/0", 12, 12), missing)  # [2, 144]
    if family != "random":
        perm = perm[0]
    assert_same_completion(model, x, missing, perm)


@pytest.mark.parametrize("arch", ARCH_VARIANTS)
def test_matches_naive_arch_variants(arch):
    model = net(c=3, size=8, **arch)
    x = images(model, 2)
    missing = masks("random", 2, 8, p=0.4)
    assert_same_completion(model, x, missing, observed_first(get_order("hilbert/5", 8, 8), missing))


def test_matches_naive_when_not_observed_first():
    """Observed pixels after missing ones: the sampler must recompute them, not trust the prefill."""
    model = net(size=8)
    x = images(model, 2)
    missing = masks("random", 2, 8, p=0.3)
    perm = get_order("s_curve/0", 8, 8)
    assert not bool(is_observed_first(perm, missing).any())
    assert_same_completion(model, x, missing, perm)
    # a centre hole under an order that visits the hole early (bottom-up raster)
    hole = masks("center", 2, 8)
    assert_same_completion(model, x, hole, get_order("raster/1", 8, 8))


def test_matches_naive_random_per_image_permutations():
    """Arbitrary per-image permutations (not named orders, not observed first)."""
    model = net(c=3, size=8, seed=3)
    x = images(model, 3)
    g = torch.Generator().manual_seed(0)
    perms = torch.stack([torch.randperm(64, generator=g) for _ in range(3)])
    assert_same_completion(model, x, masks("random", 3, 8, p=0.5), perms)


def test_per_image_orders_batch_equals_each_image_alone():
    model = net(size=12, seed=4)
    x = images(model, 3)
    missing = masks("random", 3, 12, p=0.5)
    perms = torch.stack([
        observed_first(get_order(name, 12, 12), m) for name, m in zip(["s_curve/0", "hilbert/3", "raster/6"], missing)
    ])  # fmt: skip
    seeds = seeds_for(3)
    batch = assert_same_completion(model, x, missing, perms, seeds)
    for i in range(3):
        alone = model.complete(x[i : i + 1], missing[i : i + 1], perms[i], seeds[i : i + 1], sampler="cached")
        assert torch.equal(alone[0], batch[i])


def test_bernoulli_head_full_size_mnist_binary():
    """The Bernoulli head, at the full 28x28 size of a registry config."""
    cfg = make_config("lmconv", "tiny", "mnist_binary")
    assert cfg.head == "bernoulli" and (cfg.height, cfg.width) == (28, 28)
    torch.manual_seed(1)
    model = LMConv(cfg).double().eval()
    x = images(model, 2)
    missing = masks("center", 2, 28, size=5)
    assert_same_completion(model, x, missing, observed_first(get_order("s_curve/3", 28, 28), missing[0]))


def test_bernoulli2_head_and_temperature():
    model = net(size=8, head="bernoulli2", n_bits=1)
    x = images(model, 2)
    missing = masks("top_half", 2, 8)
    perm = observed_first(get_order("center_last/4", 8, 8), missing[0])
    assert_same_completion(model, x, missing, perm, temperature=0.5)


def test_full_size_mnist_logistic_with_temperature():
    cfg = make_config("lmconv", "tiny", "mnist")
    torch.manual_seed(2)
    model = LMConv(cfg).double().eval()
    x = images(model, 2)
    missing = masks("center", 2, 28, size=5)
    perm = observed_first(get_order("hilbert/6", 28, 28), missing[0])
    assert_same_completion(model, x, missing, perm, temperature=0.8)


def test_reference_conv_impl_and_chunking():
    """The unfold implementation gives the same caches; tiny cache budgets complete in chunks."""
    model = net(c=3, size=8, seed=5)
    x = images(model, 3)
    missing = masks("random", 3, 8, p=0.5)
    perms = observed_first(get_order("s_curve/0", 8, 8), missing)
    seeds = seeds_for(3)
    whole = assert_same_completion(model, x, missing, perms, seeds)
    chunked = cached_complete(model, x, missing, perms, seeds, max_cache_bytes=1)
    assert torch.equal(chunked, whole)
    ref_model = LMConv(model.config, conv_impl="reference").double().eval()
    ref_model.load_state_dict(model.state_dict())
    assert torch.equal(ref_model.complete(x, missing, perms, seeds, sampler="cached"), whole)


def test_thread_setting_is_restored_and_irrelevant():
    model = net(size=8)
    x = images(model, 2)
    missing = masks("rectangle", 2, 8, top=3, left=3, height=2, width=2)
    perm = observed_first(get_order("raster/0", 8, 8), missing[0])
    seeds = seeds_for(2)
    one = cached_complete(model, x, missing, perm, seeds, threads=2)
    assert torch.get_num_threads() == 1  # the module fixture's setting is back
    assert torch.equal(one, cached_complete(model, x, missing, perm, seeds))


# ------------------------------------------------------------------------------ edges and errors
def test_progress_counts_sampling_steps_and_nothing_missing_is_a_copy():
    model = net(size=8)
    x = images(model, 2)
    missing = masks("random", 2, 8, p=0.3)
    perms = observed_first(get_order("s_curve/0", 8, 8), missing)
    calls = []
    model.complete(x, missing, perms, seeds_for(2), sampler="cached", progress=calls.append)
    # steps at which some image samples: the union over images of their missing steps
    n_missing = missing.flatten(1).sum(1)
    assert len(calls) == int(n_missing.max()) and set(calls) == {1}
    none = torch.zeros_like(missing)
    out = model.complete(x, none, perms, seeds_for(2), sampler="cached")
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_only_the_first_pixel_of_the_order_missing():
    """One visited step at the order's first pixel: no tap of the type-A layer is open there."""
    model = net(size=8)
    x = images(model, 2)
    missing = masks("rectangle", 2, 8, top=7, left=7, height=1, width=1)
    assert_same_completion(model, x, missing, get_order("raster/3", 8, 8))  # starts at (7, 7)


def test_errors():
    model = net(size=8, dropout_prob=0.5)
    x = images(model, 1)
    missing = masks("center", 1, 8)
    perm = get_order("s_curve/0", 8, 8)
    model.train()
    with pytest.raises(UserError, match="eval"):
        model.complete(x, missing, perm, seeds_for(1), sampler="cached")
    model.eval()
    with pytest.raises(UserError, match="cached"):
        model.complete(x, missing, perm, seeds_for(1), sampler="fast")
    plain = LMConv(model.config, conv_impl="plain").double().eval()
    with pytest.raises(UserError, match="plain"):
        plain.complete(x, missing, perm, seeds_for(1), sampler="cached")
    with pytest.raises(ValueError, match="orders"):
        model.complete(x, missing, perm[:10], seeds_for(1), sampler="cached")


# ------------------------------------------------------------------------------ sample grids
@pytest.mark.parametrize("family", ["lmconv", "pixelcnnpp"])
def test_sample_grid(tmp_path, family):
    cfg = make_config(family, "tiny", "mnist")
    cfg = dataclasses.replace(cfg, height=8, width=8, dataset="test")
    torch.manual_seed(0)
    from lmconv_bench.models.base import build_model

    ckpt = save_checkpoint(tmp_path / f"{family}.safetensors", build_model(cfg).eval())
    notes = []
    a = sample_grid(ckpt, "hilbert/2", n=5, seed=3, out_png=tmp_path / "a.png", batch_size=2, log=notes.append)
    b = sample_grid(ckpt, "hilbert/2", n=5, seed=3, out_png=tmp_path / "b.png", batch_size=5)
    assert a.shape == (5, 1, 8, 8) and a.dtype == torch.uint8
    assert torch.equal(a, b), "samples must not depend on the batch size"
    assert not torch.equal(a[0], a[1])
    with Image.open(tmp_path / "a.png") as im:
        assert im.size == (3 * 10 + 2, 2 * 10 + 2)  # 3 per row, 8 px + 2 px padding
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    if family == "pixelcnnpp":
        assert notes and "raster/0" in notes[0]
        # the raster model samples the same whatever order is asked for
        c = sample_grid(ckpt, "raster/0", n=2, seed=3, out_png=tmp_path / "c.png")
        assert torch.equal(c, a[:2])
    else:
        c = sample_grid(ckpt, "s_curve/0", n=2, seed=3, out_png=tmp_path / "c.png")
        assert not torch.equal(c, a[:2])
    with pytest.raises(UserError):
        sample_grid(ckpt, "zigzag", n=2, out_png=tmp_path / "d.png")
