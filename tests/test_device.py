"""Checks with a CUDA variant (``pytest -m cuda``): they run on ``$LMCONV_BENCH_TEST_DEVICE``,
default CUDA when available, else the CPU, so they run (never skip) in CI and on a GPU machine
through ``scripts/gpu_check.sh``."""

from __future__ import annotations

import os

import pytest
import torch

from lmconv_bench.masks import make_masks
from lmconv_bench.models.base import build_model
from lmconv_bench.configs import make_config
from lmconv_bench.models.layers import conv_mask, lmconv2d, lmconv2d_reference
from lmconv_bench.orders import get_order, observed_first

pytestmark = pytest.mark.cuda

DEVICE = torch.device(os.environ.get("LMCONV_BENCH_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


def test_fast_conv_equals_the_unfold_reference_on_the_device():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 9, 9, dtype=torch.float64, device=DEVICE)
    w = torch.randn(4, 5, 3, 3, dtype=torch.float64, device=DEVICE)
    b = torch.randn(4, dtype=torch.float64, device=DEVICE)
    missing = make_masks("random", {"p": 0.4}, 9, 9, ["a", "b", "c"])
    for perm in (get_order("s_curve/3", 9, 9), get_order("hilbert/6", 9, 9), observed_first(get_order("s_curve/0", 9, 9), missing)):
        for d, c in ((1, False), (2, True)):
            cm = conv_mask(perm.to(DEVICE), 9, 9, 3, d, include_center=c)
            torch.testing.assert_close(lmconv2d(x, w, b, cm), lmconv2d_reference(x, w, b, cm), rtol=0, atol=1e-10)


@pytest.mark.parametrize("model", ["lmconv", "pixelcnnpp"])
def test_cached_completion_equals_naive_in_float64_on_the_device(model):
    torch.manual_seed(1)
    net = build_model(make_config(model, "tiny", "mnist", ["raster/0"] if model == "pixelcnnpp" else ["s_curve/0"]))
    net = net.to(DEVICE, torch.float64).eval()
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, device=DEVICE)
    missing = make_masks("center", {}, 28, 28, ["0", "1"]).to(DEVICE)
    order = get_order("raster/0" if model == "pixelcnnpp" else "s_curve/0", 28, 28)
    perm = (order if model == "pixelcnnpp" else observed_first(order, missing[0].cpu())).to(DEVICE)
    seeds = torch.tensor([3, 4])
    cached = net.complete(x, missing, perm, seeds, sampler="cached")
    naive = net.complete(x, missing, perm, seeds, sampler="naive")
    assert torch.equal(cached, naive)
    assert torch.equal(cached[~missing.unsqueeze(1).expand_as(cached)], x[~missing.unsqueeze(1).expand_as(x)])


def test_training_step_on_the_device_matches_the_cpu_in_float64():
    from lmconv_bench.data import to_model_range

    def batch_loss_bpd(net, _model, x, perm):  # as train.batch_loss_bpd, in float64
        logp = net.head.log_prob(net(to_model_range(x, 8).double(), perm), x)
        return -logp.sum(dim=(1, 2)).mean() / (784 * 0.6931471805599453)

    torch.manual_seed(2)
    cpu = build_model(make_config("lmconv", "tiny", "mnist", ["s_curve/0"])).double()
    dev = build_model(make_config("lmconv", "tiny", "mnist", ["s_curve/0"])).double().to(DEVICE)
    dev.load_state_dict(cpu.state_dict())
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    perm = get_order("s_curve/2", 28, 28)
    loss_cpu = batch_loss_bpd(cpu, cpu, x, perm)
    loss_dev = batch_loss_bpd(dev, dev, x.to(DEVICE), perm.to(DEVICE))
    loss_cpu.backward()
    loss_dev.backward()
    assert torch.isfinite(loss_dev) and abs(loss_cpu.item() - loss_dev.item()) < 1e-9
    g_cpu = torch.cat([p.grad.flatten() for p in cpu.parameters()])
    g_dev = torch.cat([p.grad.flatten() for p in dev.parameters()]).cpu()
    torch.testing.assert_close(g_dev, g_cpu, rtol=1e-7, atol=1e-10)
