"""Cached PixelCNN++ completion (``sampler="cached"``) against the naive reference.

Tiny random models in float64 and eval mode: with the same seeds both samplers must give
bitwise identical samples, hence identical log-probabilities under the model.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from lmconv_bench.baselines.pixelcnnpp import PRESETS, PixelCNNPP
from lmconv_bench.errors import UserError
from lmconv_bench.masks import make_masks
from lmconv_bench.models.base import ModelConfig, build_model
from lmconv_bench.configs import make_config
from lmconv_bench.orders import get_order


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(c: int, h: int, w: int, head: str = "logistic_mixture", n_bits: int = 8, seed: int = 0, **arch):
    cfg = ModelConfig(
        model="pixelcnnpp", preset="tiny", dataset="test", channels=c, height=h, width=w,
        n_bits=n_bits, head=head, arch={**PRESETS["tiny"], **arch},
    )
    torch.manual_seed(seed)
    return PixelCNNPP(cfg).double().eval()


def images(n: int, c: int, h: int, w: int, n_levels: int = 256, seed: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_levels, (n, c, h, w), generator=gen, dtype=torch.uint8)


def masks(family: str, n: int, h: int, w: int, **params) -> torch.Tensor:
    return make_masks(family, params, h, w, [f"img{i}" for i in range(n)], seed=1)


def naive(model, x, missing, seeds, **kw) -> torch.Tensor:
    # Weight norm evaluated once per call instead of once per pass: same numbers, less time.
    with parametrize.cached():
        return model.complete(x, missing, None, seeds, sampler="naive", **kw)


def assert_same_completion(model, x, missing, seeds, **kw) -> torch.Tensor:
    """cached == naive bitwise; their per-pixel log-probs agree within 1e-9; observed pixels kept."""
    ref = naive(model, x, missing, seeds, **kw)
    got = model.complete(x, missing, None, seeds, sampler="cached", **kw)
    assert got.dtype == torch.uint8 and got.shape == x.shape
    assert torch.equal(got, ref), f"{int((got != ref).sum())} values differ from the naive sampler"
    keep = ~missing.unsqueeze(1).expand_as(x)
    assert torch.equal(got[keep], x[keep])
    raster = get_order("raster/0", x.shape[2], x.shape[3])
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(got, raster), model.log_prob(ref, raster), rtol=0, atol=1e-9)
    return got


FAMILIES = [
    pytest.param("top_half", {}, id="top_half"),
    pytest.param("center", {}, id="center"),
    pytest.param("bottom_half", {}, id="bottom_half"),
    pytest.param("random", {"p": 0.5}, id="random"),
]


@pytest.mark.parametrize("family,params", FAMILIES)
@pytest.mark.parametrize("c", [1, 3])
def test_matches_naive_small_images(family, params, c):
    """Every mask family on 12x12 (widths 12 / 6 / 3 across the resolutions)."""
    x = images(2, c, 12, 12)
    model = tiny_model(c, 12, 12)
    missing = masks(family, 2, 12, 12, **params)
    assert_same_completion(model, x, missing, torch.tensor([3, 1]))


def test_matches_naive_deeper_unnormalized_with_temperature():
    """Two resnets per resolution (skip bookkeeping), no weight norm, temperature != 1."""
    model = tiny_model(3, 8, 8, nr_resnet=2, normalization="none")
    x = images(2, 3, 8, 8)
    missing = torch.stack([masks("center", 1, 8, 8)[0], masks("random", 1, 8, 8, p=0.3)[0]])
    assert_same_completion(model, x, missing, torch.tensor([7, 8]), temperature=0.7)


def test_matches_naive_mnist_size_one_channel():
    """1x28x28 logistic mixture (lowest resolution 7 wide): two centre masks of different sizes."""
    model = tiny_model(1, 28, 28)
    x = images(2, 1, 28, 28)
    missing = torch.stack([masks("center", 1, 28, 28)[0], masks("center", 1, 28, 28, size=9)[0]])
    assert_same_completion(model, x, missing, torch.tensor([10, 20]))


def test_matches_naive_cifar_size_three_channels():
    """3x32x32 logistic mixture: a random mask (p = 0.05) and a bottom-right rectangle."""
    model = tiny_model(3, 32, 32)
    x = images(2, 3, 32, 32)
    rect = masks("rectangle", 1, 32, 32, top=26, left=20, height=6, width=12)[0]
    missing = torch.stack([masks("random", 1, 32, 32, p=0.05)[0], rect])
    assert_same_completion(model, x, missing, torch.tensor([5, 6]))


def test_matches_naive_bernoulli_head():
    """Binarized MNIST (Bernoulli head, 1 bit) with the registry config of ``mnist_binary``."""
    cfg = make_config("pixelcnnpp", "tiny", "mnist_binary")
    assert cfg.head == "bernoulli" and (cfg.height, cfg.width) == (28, 28)
    torch.manual_seed(1)
    model = build_model(cfg).double().eval()
    x = images(2, 1, 28, 28, n_levels=2)
    missing = torch.stack([masks("bottom_half", 1, 28, 28)[0], masks("random", 1, 28, 28, p=0.05)[0]])
    missing[0, 17:] = False  # rows 14..16 of the bottom half (keeps the naive reference affordable)
    out = assert_same_completion(model, x, missing, torch.tensor([1, 2]))
    assert int(out.max()) <= 1


def test_per_image_results_do_not_depend_on_the_batch():
    model = tiny_model(3, 12, 12)
    x = images(3, 3, 12, 12)
    missing = masks("random", 3, 12, 12, p=0.4)
    seeds = torch.tensor([100, 200, 300])
    batch = model.complete(x, missing, None, seeds, sampler="cached")
    for i in range(3):
        alone = model.complete(x[i : i + 1], missing[i : i + 1], None, seeds[i : i + 1], sampler="cached")
        assert torch.equal(alone[0], batch[i])
    # The missing values of the input are never read, and other seeds give other samples.
    x_other = x.clone()
    x_other[missing.unsqueeze(1).expand_as(x)] ^= 0xFF
    assert torch.equal(model.complete(x_other, missing, None, seeds, sampler="cached"), batch)
    other = model.complete(x, missing, None, seeds + 1, sampler="cached")
    holes = missing.unsqueeze(1).expand_as(x)
    assert not torch.equal(other[holes], batch[holes])


def test_progress_counts_raster_positions_and_nothing_missing_is_a_copy():
    model = tiny_model(1, 8, 8)
    x = images(2, 1, 8, 8)
    missing = torch.zeros(2, 8, 8, dtype=torch.bool)
    missing[0, 2, 3] = missing[1, 2, 3] = True  # one shared position
    missing[1, 5, 0] = True
    steps: list[int] = []
    model.complete(x, missing, None, torch.tensor([1, 2]), sampler="cached", progress=steps.append)
    assert sum(steps) == 2
    none = torch.zeros(2, 8, 8, dtype=torch.bool)
    assert torch.equal(model.complete(x, none, None, torch.tensor([1, 2]), sampler="cached"), x)


def test_float32_runs_and_keeps_observed_pixels():
    torch.manual_seed(0)
    model = PixelCNNPP(tiny_model(3, 8, 8).config).eval()  # float32 weights
    x = images(2, 3, 8, 8)
    missing = masks("top_half", 2, 8, 8)
    out = model.complete(x, missing, None, torch.tensor([1, 2]), sampler="cached")
    keep = ~missing.unsqueeze(1).expand_as(x)
    assert out.dtype == torch.uint8 and torch.equal(out[keep], x[keep])


def test_errors():
    model = tiny_model(1, 8, 8, dropout_prob=0.5)
    x, missing = images(1, 1, 8, 8), masks("top_half", 1, 8, 8)
    with pytest.raises(UserError, match="cached"):
        model.complete(x, missing, None, torch.tensor([1]), sampler="cahced")
    model.train()
    with pytest.raises(UserError, match="eval"):
        model.complete(x, missing, None, torch.tensor([1]), sampler="cached")
