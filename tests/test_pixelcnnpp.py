"""PixelCNN++ raster baseline: raster causality, log_prob, naive completion, config handling."""

from __future__ import annotations

import pytest
import torch

from lmconv_bench.baselines.pixelcnnpp import PRESETS, PixelCNNPP, down_shift, right_shift
from lmconv_bench.errors import UserError
from lmconv_bench.models.base import ModelConfig, build_model, get_model_class, presets
from lmconv_bench.orders import get_order


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(c: int, h: int, w: int, head: str = "logistic_mixture", n_bits: int = 8, **arch) -> ModelConfig:
    return ModelConfig(
        model="pixelcnnpp", preset="tiny", dataset="test", channels=c, height=h, width=w,
        n_bits=n_bits, head=head, arch={**PRESETS["tiny"], **arch},
    )


def tiny_model(c: int, h: int, w: int, dtype=torch.float64, seed: int = 0, **kw) -> PixelCNNPP:
    torch.manual_seed(seed)
    return PixelCNNPP(tiny_config(c, h, w, **kw)).to(dtype).eval()


def test_registered_with_presets():
    assert get_model_class("pixelcnnpp") is PixelCNNPP
    table = presets("pixelcnnpp")
    assert {k: table["tiny"][k] for k in ("nr_resnet", "nr_filters", "nr_logistic_mix")} == {
        "nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 2}
    assert {k: table["paper"][k] for k in ("nr_resnet", "nr_filters", "nr_logistic_mix", "dropout_prob")} == {
        "nr_resnet": 5, "nr_filters": 160, "nr_logistic_mix": 10, "dropout_prob": 0.5}
    assert PixelCNNPP.fixed_order == "raster/0"
    m = tiny_model(3, 8, 8)
    assert m.head.n_params == 10 * 2
    assert m(torch.zeros(2, 3, 8, 8, dtype=torch.float64)).shape == (2, 20, 8, 8)


def test_shifts():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    torch.testing.assert_close(down_shift(x), torch.tensor([[[[0.0, 0, 0], [0, 1, 2]]]]))
    torch.testing.assert_close(right_shift(x), torch.tensor([[[[0.0, 0, 1], [0, 3, 4]]]]))


CAUSAL_CASES = [
    pytest.param(1, 28, 28, {}, id="28x28x1"),
    pytest.param(3, 32, 32, {}, id="32x32x3"),
    pytest.param(3, 8, 8, {"nr_resnet": 2, "normalization": "none"}, id="8x8x3-deeper-no-wn"),
]


@pytest.mark.parametrize("c,h,w,arch", CAUSAL_CASES)
def test_raster_causality(c, h, w, arch):
    """Output params at p have zero gradient w.r.t. every channel of pixels at raster index >= p,
    and nonzero gradient w.r.t. its left, upper and upper-right neighbours (no blind spot)."""
    model = tiny_model(c, h, w, **arch)
    positions = sorted({
        (0, 0), (0, 1), (0, w // 2), (0, w - 1),  # first row
        (1, 0), (h // 2, 0),  # first column
        (1, w - 1), (h // 2, w - 1),  # last column
        (h // 2, w // 2), (h - 1, 0), (h - 1, w - 1),  # interior, last row, last pixel
    })
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(len(positions), c, h, w, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    out = model(x, None)
    # One image per position; images don't interact in eval mode, so one backward serves all.
    weights = torch.randn(len(positions), out.shape[1], generator=gen, dtype=torch.float64)
    rows = torch.tensor([r for r, _ in positions])
    cols = torch.tensor([cc for _, cc in positions])
    picked = out[torch.arange(len(positions)), :, rows, cols]  # [k, n_params]
    (picked * weights).sum().backward()
    grad = x.grad.abs()  # [k, C, H, W]
    for k, (r, col) in enumerate(positions):
        p = r * w + col
        g = grad[k].reshape(c, h * w)
        assert torch.count_nonzero(g[:, p:]) == 0, f"output at {(r, col)} depends on pixel >= raster index {p}"
        neighbours = [(r, col - 1), (r - 1, col), (r - 1, col + 1)]
        for nr, nc in neighbours:
            if 0 <= nr and 0 <= nc < w:
                assert bool((g[:, nr * w + nc] > 0).all()), f"output at {(r, col)} ignores pixel {(nr, nc)}"
        if p == 0:
            assert torch.count_nonzero(g) == 0


@pytest.mark.parametrize(
    "c,h,w,head,n_bits",
    [(1, 28, 28, "logistic_mixture", 8), (1, 28, 28, "bernoulli", 1), (3, 32, 32, "logistic_mixture", 8),
     (3, 64, 64, "logistic_mixture", 5)],
)
def test_log_prob_shape_and_range(c, h, w, head, n_bits):
    model = tiny_model(c, h, w, dtype=torch.float32, head=head, n_bits=n_bits)
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 2**n_bits, (2, c, h, w), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        lp = model.log_prob(x, get_order("raster/0", h, w))
        lp_other = model.log_prob(x, get_order("s_curve/1", h, w))
    assert lp.shape == (2, h, w)
    assert bool(torch.isfinite(lp).all())
    assert bool((lp < 0).all())
    torch.testing.assert_close(lp_other, lp, rtol=0, atol=0)  # orders are ignored: always raster


def _complete_inputs(n: int, h: int = 8, w: int = 8):
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (n, 3, h, w), generator=gen, dtype=torch.uint8)
    missing = torch.zeros(n, h, w, dtype=torch.bool)
    missing[:, h // 2 :, :] = True  # bottom half
    missing[:, 1, 2] = True  # and a pixel above observed ones
    missing[1:, 2, :3] = True  # differs between images
    seeds = torch.tensor([11, 22, 33][:n], dtype=torch.long)
    return x, missing, seeds


def test_complete_keeps_observed_fills_missing_and_is_deterministic():
    model = tiny_model(3, 8, 8)
    x, missing, seeds = _complete_inputs(3)
    s_curve = get_order("s_curve/3", 8, 8)
    out = model.complete(x, missing, s_curve, seeds)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    keep = ~missing.unsqueeze(1).expand_as(x)
    assert torch.equal(out[keep], x[keep])

    # The missing values of the input are never read: they are filled by sampling.
    x_other = x.clone()
    x_other[~keep] = 255 - x_other[~keep]
    assert torch.equal(model.complete(x_other, missing, s_curve, seeds), out)

    # The order argument is ignored (always raster), and image 1 alone equals image 1 in the batch.
    alone = model.complete(x[1:2], missing[1:2], get_order("raster/0", 8, 8), seeds[1:2])
    assert torch.equal(alone[0], out[1])

    # Different seeds give different samples.
    other = model.complete(x, missing, s_curve, seeds + 1000)
    assert not torch.equal(other[~keep], out[~keep])


def test_config_round_trip_rebuilds_same_model():
    model = tiny_model(1, 28, 28, dtype=torch.float32)
    cfg = ModelConfig.from_json(model.config.to_json())
    rebuilt = build_model(cfg).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(1, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, None), model(x, None), rtol=0, atol=0)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = PixelCNNPP(tiny_config(1, 8, 8, dropout_prob=0.5)).double()
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x, None), model(x, None), rtol=0, atol=0)
        model.train()
        assert not torch.equal(model(x, None), model(x, None))


def test_user_errors():
    with pytest.raises(UserError, match="divisible by 4"):
        PixelCNNPP(tiny_config(1, 30, 30))
    with pytest.raises(UserError, match="nr_filter"):
        PixelCNNPP(tiny_config(1, 8, 8, nr_filter=4))
    with pytest.raises(UserError, match="normalization"):
        PixelCNNPP(tiny_config(1, 8, 8, normalization="pono"))
    model = tiny_model(1, 8, 8)
    with pytest.raises(UserError, match="8x8"):
        model(torch.zeros(1, 1, 16, 16, dtype=torch.float64))
