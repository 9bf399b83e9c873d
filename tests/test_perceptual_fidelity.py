"""FID/KID (torch-fidelity wrapper) and LPIPS with the real, provisioned weights.

The pinned FID comes from torchmetrics 1.9's ``FrechetInceptionDistance(feature=64)`` doctest,
whose expected output was produced with torch-fidelity's official Inception weights. Doctest
semantics (torchmetrics ``src/conftest.py`` + ``image/fid.py`` docstring): the seed is reset to
42, *then the metric (an Inception net with random init, later overwritten by the weights) is
built*, which consumes the global RNG, and only then are the images drawn. Drawing the images
right after seeding gives different images (FID 12.668 instead of 12.6388).
This test runs the first Inception block on 200 images at 299 x 299 (~30-60 s on 2 cores).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from lmconv_bench.errors import UserError
from lmconv_bench.metrics import fidelity, perceptual, weights


@pytest.fixture(autouse=True)
def _offline_mode(monkeypatch):
    monkeypatch.delenv(weights.ENV_MODE, raising=False)


# ----------------------------------------------------------------------------- FID / KID

@pytest.fixture(scope="module")
def torchmetrics_example_features():
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = weights.inception_weights_path(progress=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(42)
        FeatureExtractorInceptionV3("inception-v3-compat", ["64"], feature_extractor_weights_path=str(path))
        imgs_dist1 = torch.randint(0, 200, (100, 3, 299, 299), dtype=torch.uint8)
        imgs_dist2 = torch.randint(100, 255, (100, 3, 299, 299), dtype=torch.uint8)
    real = fidelity.inception_features(imgs_dist1, layer="64", batch_size=50, progress=False)
    fake = fidelity.inception_features(imgs_dist2, layer="64", batch_size=50, progress=False)
    return real, fake


def test_fid_matches_torchmetrics_doc_example(torchmetrics_example_features):
    real, fake = torchmetrics_example_features
    assert real.dtype == torch.float64 and real.shape == (100, 64)
    out = fidelity.fid_kid(fake, real, kid_subsets=2)
    torch.testing.assert_close(out["fid"], 12.6388, rtol=1e-3, atol=0.0)


def test_fid_of_a_set_with_itself_is_zero(torchmetrics_example_features):
    real, _ = torchmetrics_example_features
    out = fidelity.fid_kid(real, real.clone(), kid_subsets=2)
    assert abs(out["fid"]) < 1e-3


def test_fid_closed_form_equal_covariances_is_squared_mean_difference():
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    shift = np.array([0.5, -1.0, 2.0, 0.0, 0.25, 1.5])
    out = fidelity.fid_kid(torch.from_numpy(f1 + shift), torch.from_numpy(f1), kid_subsets=2)
    torch.testing.assert_close(out["fid"], float(shift @ shift), rtol=1e-6, atol=1e-8)


def test_fid_matches_sqrtm_formula_for_different_covariances():
    rng = np.random.default_rng(1)
    f1 = rng.normal(size=(300, 5))
    f2 = rng.normal(size=(250, 5)) @ np.diag([1.0, 2.0, 0.5, 1.5, 3.0]) + 0.3
    m1, m2, s1, s2 = f1.mean(0), f2.mean(0), np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    expected = float((m2 - m1) @ (m2 - m1) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s2 @ s1).real))
    torch.testing.assert_close(fidelity.fid_kid(f2, f1, kid_subsets=2)["fid"], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n_gen,n_ref", [(24, 90), (90, 24), (24, 24)])
def test_low_rank_fid_equals_torch_fidelity_sqrtm_when_samples_are_fewer_than_dims(n_gen, n_ref):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    rng = np.random.default_rng(3)
    mix = rng.normal(size=(40, 128))
    gen = torch.from_numpy(np.maximum(rng.normal(size=(n_gen, 40)) @ mix, 0))
    ref = torch.from_numpy(np.maximum(rng.normal(size=(n_ref, 40)) @ mix + 0.4, 0))
    expected = fid_statistics_to_metric(fid_features_to_statistics(gen), fid_features_to_statistics(ref), False)
    got = fidelity.fid_kid(gen, ref, kid_subsets=2)["fid"]  # min(n) <= D: the low-rank route
    assert got == fidelity.frechet_distance_low_rank(gen, ref)
    torch.testing.assert_close(got, expected["frechet_inception_distance"], rtol=1e-6, atol=1e-6)


def test_kid_subset_size_rule_and_determinism():
    rng = np.random.default_rng(2)
    a, b = torch.from_numpy(rng.normal(size=(30, 16))), torch.from_numpy(rng.normal(size=(40, 16)) + 0.5)
    assert fidelity.kid_subset_size_for(30, 40) == 30 and fidelity.kid_subset_size_for(5000, 2000) == 1000
    first = fidelity.fid_kid(a, b, kid_subsets=20, seed=1)  # default subset: min(1000, 30, 40), no assert
    assert first == fidelity.fid_kid(a, b, kid_subsets=20, seed=1)
    assert first["kid_mean"] > 0 and first["kid_std"] >= 0
    assert first["kid_mean"] != fidelity.fid_kid(a, b, kid_subset_size=10, kid_subsets=20, seed=1)["kid_mean"]
    with pytest.raises(UserError, match="KID subset size 31"):
        fidelity.fid_kid(a, b, kid_subset_size=31)
    with pytest.raises(UserError, match="at least 2"):
        fidelity.fid_kid(a[:1], b)


def test_inception_input_preprocessing():
    gray5 = torch.tensor([0, 31, 16], dtype=torch.uint8).reshape(1, 1, 1, 3)
    x = fidelity.to_inception_input(gray5, n_bits=5)
    assert x.dtype == torch.uint8 and x.shape == (1, 3, 1, 3)
    assert x[0, :, 0].tolist() == [[0, 255, 132]] * 3  # round(16 * 255 / 31) = round(131.6)
    with pytest.raises(ValueError, match="0..31"):
        fidelity.to_inception_input(torch.full((1, 1, 2, 2), 32, dtype=torch.uint8), n_bits=5)


def test_reference_features_are_cached_on_disk_and_reused(tmp_path, monkeypatch):
    real_weights_dir = weights.weights_dir()  # keep the provisioned weights, isolate the feature cache
    monkeypatch.setattr(weights, "weights_dir", lambda: real_weights_dir)
    monkeypatch.setenv("LMCONV_BENCH_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 1, 28, 28), generator=g, dtype=torch.uint8)
    key = {"dataset": "mnist", "split": "test", "ids": ["0", "1", "2"], "preprocessing": "none"}

    first = fidelity.reference_features(key, lambda: images, progress=False)
    assert first.shape == (3, 2048) and first.dtype == torch.float64
    files = list((tmp_path / "fid_stats").glob("*.npz"))
    assert [f.name for f in files] == [fidelity.reference_key(key) + ".npz"]

    def fail(*args, **kwargs):
        raise AssertionError("the network must not run on a cache hit")

    extractor = fidelity._extractor
    monkeypatch.setattr(fidelity, "_extractor", fail)
    second = fidelity.reference_features(key, fail, progress=False)
    torch.testing.assert_close(second, first, rtol=0.0, atol=0.0)
    # Grayscale repeated to RGB gives the same features as feeding RGB directly.
    monkeypatch.setattr(fidelity, "_extractor", extractor)
    rgb = fidelity.inception_features(images.repeat(1, 3, 1, 1), progress=False)
    torch.testing.assert_close(rgb, first)
    # Any change of the key (e.g. other ids) is a different cache entry.
    assert fidelity.reference_key({**key, "ids": ["0", "1", "3"]}) != fidelity.reference_key(key)


# ----------------------------------------------------------------------------- LPIPS

def _corrupt(x: torch.Tensor, amount: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(-amount, amount + 1, x.shape, generator=g)
    return (x.to(torch.int64) + noise).clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def mnist_like():
    g = torch.Generator().manual_seed(3)
    blobs = torch.zeros(6, 1, 28, 28)
    for i in range(6):
        r, c = torch.randint(6, 22, (2,), generator=g).tolist()
        blobs[i, 0, r - 5:r + 5, c - 3:c + 3] = 255.0
    return blobs.to(torch.uint8)


def test_lpips_uses_the_verified_alexnet_trunk():
    model = perceptual.lpips_model(progress=False)
    # lpips names trunk layers slice<k>.<torchvision index>.<param>; map back and hash.
    state = {f"features.{n.split('.')[1]}.{n.split('.')[2]}": p for n, p in model.net.named_parameters()}
    order = sorted(state, key=lambda k: (int(k.split(".")[1]), k.endswith("bias")))  # N.weight, N.bias, ...
    state = {k: state[k] for k in order}
    assert weights.content_sha256(state) == "8259ebdc8849c887b0b95a9414db11a3694493c318c41902269dfa328697ca4e"
    assert perceptual.describe()["resize"] == perceptual.LPIPS_RESIZE == 64


def test_lpips_identity_symmetry_and_28x28_grayscale(mnist_like):
    x = mnist_like
    y = _corrupt(x, 60, seed=1)
    same = perceptual.lpips_distance(x, x.clone())
    assert same.dtype == torch.float64 and same.shape == (6,)
    assert torch.equal(same, torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(perceptual.lpips_distance(x, y), perceptual.lpips_distance(y, x))
    assert (perceptual.lpips_distance(x, y) > 0).all()


def test_lpips_grows_with_corruption(mnist_like):
    x = mnist_like
    d = [perceptual.lpips_distance(x, _corrupt(x, amount, seed=2)).mean().item() for amount in (8, 40, 120)]
    assert d[0] < d[1] < d[2]


def test_lpips_input_scaling_and_resize():
    x5 = torch.tensor([0, 31], dtype=torch.uint8).repeat(16).reshape(1, 1, 4, 8)
    out = perceptual.to_lpips_input(x5, n_bits=5)
    assert out.shape == (1, 3, 64, 128)  # shorter side to 64, aspect kept, 3 channels
    assert out.min().item() == pytest.approx(-1.0) and out.max().item() == pytest.approx(1.0)
    big = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    assert perceptual.to_lpips_input(big).shape == (1, 3, 64, 64)
    # The 5-bit and the equivalent 8-bit image get the same distance.
    g = torch.Generator().manual_seed(4)
    a5 = torch.randint(0, 32, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    b5 = torch.randint(0, 32, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    to8 = lambda v: (v.to(torch.float64) * 255 / 31).round().to(torch.uint8)  # noqa: E731
    torch.testing.assert_close(perceptual.lpips_distance(a5, b5, n_bits=5),
                               perceptual.lpips_distance(to8(a5), to8(b5)), rtol=1e-2, atol=1e-3)
