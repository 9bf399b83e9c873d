"""Issue-15 mask families and pixel metrics: seeding, occluded fractions, validation, reference values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmconv_bench.config import load_task_file, resolve_tasks
from lmconv_bench.errors import UserError
from lmconv_bench.masks import make_mask, make_masks
from lmconv_bench.metrics import pixelwise


@pytest.mark.parametrize("ds", ["mnist", "mnist_binary", "cifar10", "celeba32", "celeba64"])
def test_every_dataset_has_the_new_families(ds):
    for fam in ("strokes", "lines", "super_resolution", "expand"):
        (t,) = resolve_tasks(f"{ds}_{fam}")
        assert t.mask_family == fam and {"psnr", "ssim", "l1_hole", "diversity"} <= set(t.metrics)


def test_strokes_are_seeded_per_image_and_hit_their_fraction_range():
    a = make_masks("strokes", {}, 32, 32, [str(i) for i in range(40)])
    b = make_masks("strokes", {}, 32, 32, [str(i) for i in range(40)])
    assert torch.equal(a, b)  # same ids, same masks
    assert not torch.equal(a[0], a[1])  # different ids, different masks
    frac = a.flatten(1).double().mean(1)
    assert (frac >= 0.1).all() and (frac <= 0.5).all()
    thick = make_masks("strokes", {"width": "thick"}, 32, 32, [str(i) for i in range(40)])
    thin = make_masks("strokes", {"width": "thin"}, 32, 32, [str(i) for i in range(40)])
    # a thicker brush reaches the target with fewer, wider strokes: fewer isolated edge pixels
    edge = lambda m: (m[:, 1:, :] != m[:, :-1, :]).sum().item() / m.sum().item()  # noqa: E731
    assert edge(thick) < edge(thin)
    assert not torch.equal(make_mask("strokes", {}, 32, 32, "x", seed=0), make_mask("strokes", {}, 32, 32, "x", seed=1))


def test_regular_families_have_exact_fractions():
    assert make_mask("lines", {}, 28, 28).double().mean().item() == 0.5
    m = make_mask("lines", {"k": 4, "axis": "cols"}, 28, 28)
    assert m[:, 3].all() and not m[:, 0].any() and m.double().mean().item() == 7 / 28
    sr = make_mask("super_resolution", {"stride": 2}, 28, 28)
    assert sr.double().mean().item() == 0.75 and not sr[0, 0] and sr[0, 1] and not sr[2, 2]
    ex = make_mask("expand", {}, 32, 32)
    assert ex[:8].all() and ex[:, -8:].all() and not ex[8:24, 8:24].any() and ex.double().mean().item() == 0.75
    left = make_mask("expand", {"side": "left", "width": 4}, 28, 28)
    assert left[:, :4].all() and not left[:, 4:].any()


@pytest.mark.parametrize("family,params,match", [
    ("strokes", {"width": "huge"}, "did you mean|allowed"),
    ("strokes", {"min_fraction": 0.6, "max_fraction": 0.5}, "min_fraction"),
    ("lines", {"k": 1}, "k"),
    ("lines", {"axis": "diag"}, "axis"),
    ("super_resolution", {"stride": 0}, "stride"),
    ("expand", {"side": "middle"}, "side"),
    ("expand", {"width": 16}, "nothing observed"),
    ("lines", {"kk": 2}, "did you mean"),
])
def test_family_parameters_are_validated(family, params, match):
    with pytest.raises(UserError, match=match):
        make_mask(family, params, 32, 32)


def test_task_file_validation_names_the_file(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("dataset: mnist\nmask: {family: strokes, width: wide}\nmetrics: [psnr]\n"
                 "profiles: {quick: {n_images: 2, fid_reference_size: 2}, full: {n_images: 2, fid_reference_size: 2}}\n")
    with pytest.raises(UserError, match="t.yaml"):
        load_task_file(p)


def test_pixel_metrics_against_independent_computations():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    b = (a.int() + torch.randint(-40, 40, a.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(pixelwise.psnr(a, b), 10 * torch.log10(255.0**2 / mse))
    ref = [structural_similarity(a[i].permute(1, 2, 0).numpy().astype(float), b[i].permute(1, 2, 0).numpy().astype(float),
                                 channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255) for i in range(3)]
    np.testing.assert_allclose(pixelwise.ssim(a, b).numpy(), ref, atol=1e-6)
    missing = torch.zeros(3, 32, 32, dtype=torch.bool)
    missing[:, :4, :5] = True
    want = [(a[i, :, :4, :5].double() - b[i, :, :4, :5].double()).abs().mean().item() / 255 for i in range(3)]
    np.testing.assert_allclose(pixelwise.l1_hole(a, b, missing).numpy(), want, rtol=1e-12)
    assert math.isinf(pixelwise.psnr(a[:1], a[:1]).item())


def test_run_help_names_every_metric_and_each_completion_metric_has_a_cell():
    """`run --help` lists every metric a user can pass; every completion metric is computed by a
    cell (LPIPS and diversity beside the samples, FID/KID by the fidelity cell, the rest by
    SAMPLE_METRICS), so a metric can't be accepted and then silently never written."""
    import re

    from typer.testing import CliRunner

    from lmconv_bench.cells.completion import SAMPLE_METRICS
    from lmconv_bench.cli import app
    from lmconv_bench.config import COMPLETION_METRICS, METRICS

    out = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200", "TERM": "dumb"}).output
    text = re.sub(r"[\s│]+", " ", out)
    for m in METRICS:
        assert m in text, f"`run --help` does not name metric {m}"
    assert set(COMPLETION_METRICS) == {"lpips", "diversity", "fid", "kid"} | set(SAMPLE_METRICS)
