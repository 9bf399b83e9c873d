"""Tests for lmconv_bench.data: registry, value ranges, loaders on the real data, CelebA cache."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lmconv_bench import data
from lmconv_bench.data import (
    DataWarning,
    clear_caches,
    from_model_range,
    get_dataset_info,
    inspect_datasets,
    load_split,
    resolve_data_root,
    to_model_range,
)
from lmconv_bench.errors import UserError


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path_factory, monkeypatch):
    """Every test writes its CelebA cache to a private directory (one per test session)."""
    monkeypatch.setenv("LMCONV_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "lmcache"))


# ---------------------------------------------------------------------------- no data needed


def test_registry_entries_and_unknown_name():
    shapes = {n: (i.channels, i.height, i.width, i.n_bits) for n, i in data.DATASETS.items()}
    assert shapes == {
        "mnist": (1, 28, 28, 8),
        "mnist_binary": (1, 28, 28, 1),
        "cifar10": (3, 32, 32, 8),
        "celeba32": (3, 32, 32, 8),
        "celeba64": (3, 64, 64, 5),
    }
    assert get_dataset_info("celeba64").splits == ("train", "valid", "test")
    with pytest.raises(UserError, match='did you mean "mnist"'):
        get_dataset_info("mnsit")
    with pytest.raises(UserError, match='did you mean "test"'):
        load_split("mnist", "tset", data_root="/nonexistent")


@pytest.mark.parametrize("n_bits", [1, 5, 8])
def test_model_range_round_trip(n_bits):
    top = 2**n_bits - 1
    x = torch.arange(top + 1, dtype=torch.uint8).reshape(1, 1, 1, -1)
    y = to_model_range(x, n_bits)
    assert y.dtype == torch.float32
    assert y.min().item() == -1.0 and y.max().item() == 1.0
    assert y[..., 0].item() == -1.0 and y[..., -1].item() == 1.0
    torch.testing.assert_close(from_model_range(y, n_bits), x, rtol=0, atol=0)
    # Small perturbations round back; out-of-range values clamp.
    noisy = y + 0.4 * (2.0 / top) * torch.sign(torch.randn_like(y))
    torch.testing.assert_close(from_model_range(noisy.clamp(-1.5, 1.5), n_bits), x, rtol=0, atol=0)
    outside = from_model_range(torch.tensor([-3.0, 3.0]), n_bits)
    assert outside.tolist() == [0, top]


def test_resolve_data_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("LMCONV_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LMCONV_BENCH_DATA", raising=False)
    assert resolve_data_root() == tmp_path / "cache" / "data"
    monkeypatch.setenv("LMCONV_BENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"


def test_missing_data_names_expected_path(tmp_path):
    with pytest.raises(UserError) as e:
        load_split("mnist", "test", data_root=tmp_path)
    assert str(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte") in str(e.value)
    assert "--download" in str(e.value)
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_split("cifar10", "test", data_root=tmp_path)
    with pytest.raises(UserError) as e:
        load_split("celeba32", "test", data_root=tmp_path)
    assert str(tmp_path / "celeba") in str(e.value) and data.CELEBA_URL in str(e.value)
    with pytest.raises(UserError, match="downloaded automatically.*mmlab"):
        load_split("celeba64", "test", data_root=tmp_path, download=True)


def _write_idx(path: Path, arr: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_inspect_missing_and_invalid(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)  # a truncated MNIST test split: 3 images instead of 10,000
    _write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), 2051)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(3), 2049)
    cheap = {r["name"]: r for r in inspect_datasets(tmp_path)}
    assert cheap["mnist"]["status"] == "partial"
    assert cheap["mnist"]["counts"] == {"train": None, "test": 3}
    assert cheap["cifar10"]["status"] == "missing" and "--download" in cheap["cifar10"]["how_to_get"]
    assert cheap["celeba32"]["status"] == "missing" and data.CELEBA_URL in cheap["celeba32"]["how_to_get"]
    verified = {r["name"]: r for r in inspect_datasets(tmp_path, verify=True)}
    assert verified["mnist"]["status"] == "invalid"
    assert any("3 images" in w for w in verified["mnist"]["warnings"])
    with pytest.raises(UserError, match="expected 10000"):
        load_split("mnist", "test", data_root=tmp_path)


# ---------------------------------------------------------------------------- MNIST


def test_mnist_test_split(data_root):
    s = load_split("mnist", "test", data_root)
    assert s.images.shape == (10000, 1, 28, 28) and s.images.dtype == torch.uint8
    assert s.ids == [str(i) for i in range(10000)]
    assert s.labels.dtype == torch.int64 and s.labels.shape == (10000,)
    assert s.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first MNIST test labels
    assert torch.bincount(s.labels).sum() == 10000 and int(s.images.max()) == 255

    first = load_split("mnist", "test", data_root, limit=7)
    assert first.ids == s.ids[:7]
    assert torch.equal(first.images, s.images[:7])

    picked = load_split("mnist", "test", data_root, ids=["9999", "3"])
    assert picked.ids == ["9999", "3"]
    assert torch.equal(picked.images, s.images[[9999, 3]])
    assert picked.labels.tolist() == s.labels[[9999, 3]].tolist()

    picked.images.zero_()  # callers own their tensors: the cached split is unaffected
    assert torch.equal(load_split("mnist", "test", data_root, limit=7).images, first.images)

    with pytest.raises(UserError, match="'10000'"):
        load_split("mnist", "test", data_root, ids=["1", "10000"])
    for bad in (0, -3):
        with pytest.raises(UserError, match="limit"):
            load_split("mnist", "test", data_root, limit=bad)


def test_mnist_binary_is_fixed(data_root):
    clear_caches()
    a = load_split("mnist_binary", "test", data_root)
    clear_caches()  # force a fresh binarization
    b = load_split("mnist_binary", "test", data_root)
    assert a.images.dtype == torch.uint8 and a.images.shape == (10000, 1, 28, 28)
    assert set(torch.unique(a.images).tolist()) == {0, 1}
    assert torch.equal(a.images, b.images) and a.ids == b.ids
    head = load_split("mnist_binary", "test", data_root, limit=50)
    assert torch.equal(head.images, a.images[:50])
    one = load_split("mnist_binary", "test", data_root, ids=["1234"])
    assert torch.equal(one.images[0], a.images[1234])
    # The draw depends on the image id only, not on which other images are binarized with it.
    gray = load_split("mnist", "test", data_root, ids=["1234"]).images
    assert torch.equal(data.binarize(gray, ["1234"]), one.images)
    expected_mean = load_split("mnist", "test", data_root).images.double().mean() / 255
    assert abs(a.images.double().mean() - expected_mean) < 2e-3
    # Pixels at 0 stay 0 and pixels at 255 become 1.
    full = load_split("mnist", "test", data_root).images
    assert (a.images[full == 0] == 0).all() and (a.images[full == 255] == 1).all()


# ---------------------------------------------------------------------------- CIFAR-10


def test_cifar10_test_split(data_root, recwarn):
    official = data.cifar10._cifar_md5_ok(data_root, "test")  # the shared copy is re-packed: md5 differs
    clear_caches()
    s = load_split("cifar10", "test", data_root)
    load_split("cifar10", "test", data_root, limit=3)
    md5_warnings = [w for w in recwarn if issubclass(w.category, DataWarning) and "md5" in str(w.message)]
    assert len(md5_warnings) == (0 if official else 1)
    if md5_warnings:
        msg = str(md5_warnings[0].message)
        assert "\n" not in msg and "content check passed" in msg and "file names" in msg

    assert s.images.shape == (10000, 3, 32, 32) and s.images.dtype == torch.uint8
    assert torch.bincount(s.labels, minlength=10).tolist() == [1000] * 10
    assert all(i.endswith(".png") for i in s.ids)
    assert s.ids == sorted(s.ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    assert len(set(s.ids)) == 10000

    with open(data_root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    by_hash = sorted(raw["filenames"], key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    first = load_split("cifar10", "test", data_root, limit=128)
    assert first.ids == by_hash[:128]
    assert len(set(first.labels.tolist())) == 10  # a class-mixed prefix, unlike name order
    for row in (0, 4321, 9999):
        name = raw["filenames"][row]
        got = load_split("cifar10", "test", data_root, ids=[name])
        expected = torch.from_numpy(raw["data"][row].reshape(3, 32, 32))
        assert torch.equal(got.images[0], expected)
        assert got.labels.item() == raw["labels"][row]


# ---------------------------------------------------------------------------- CelebA


def _partition(root: Path, code: str) -> list[str]:
    with open(root / "celeba" / "list_eval_partition.txt", newline="") as f:
        text = f.read()
    rows = [line.split() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    return sorted(name for name, c in rows if c == code)


def _reference(path: Path, size: int) -> torch.Tensor:
    """Independent re-statement of the preprocessing: centred 140 crop, PIL bilinear resize."""
    with Image.open(path) as im:
        w, h = im.size
        box = ((w - 140) // 2, (h - 140) // 2, (w - 140) // 2 + 140, (h - 140) // 2 + 140)
        if (w, h) == (178, 218):
            assert box == (19, 39, 159, 179)
        small = im.convert("RGB").crop(box).resize((size, size), Image.BILINEAR, reducing_gap=None)
    return torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1)


def test_celeba_test_split(data_root, recwarn):
    img_dir = data_root / "celeba" / "img_align_celeba"
    if not img_dir.is_dir():
        pytest.skip(f"CelebA images not found at {img_dir}")
    entries = _partition(data_root, "2")
    on_disk = set(os.listdir(img_dir))
    expected_ids = [n for n in entries if n in on_disk]
    clear_caches()
    s32 = load_split("celeba32", "test", data_root)
    load_split("celeba32", "test", data_root)
    skipped = [w for w in recwarn if issubclass(w.category, DataWarning) and "skipped" in str(w.message)]
    n_missing = len(entries) - len(expected_ids)
    assert len(skipped) == (1 if n_missing else 0)
    if n_missing:
        assert f"{n_missing} of {len(entries)}" in str(skipped[0].message)
    if len(on_disk) == 3505:  # the documented shared copy (SOURCES.md)
        assert len(expected_ids) == 660
    assert s32.ids == expected_ids and all(i.endswith(".jpg") for i in s32.ids)
    assert s32.images.shape == (len(expected_ids), 3, 32, 32) and s32.images.dtype == torch.uint8
    assert s32.labels is None

    s64 = load_split("celeba64", "test", data_root, limit=20)
    assert s64.ids == expected_ids[:20]
    assert s64.images.shape == (20, 3, 64, 64) and s64.images.dtype == torch.uint8
    assert int(s64.images.max()) <= 31 and int(s64.images.max()) >= 28  # 5-bit, not rescaled

    for k in (0, 7):
        name = expected_ids[k]
        assert torch.equal(s32.images[k], _reference(img_dir / name, 32))
        assert torch.equal(s64.images[k], _reference(img_dir / name, 64) >> 3)


def test_celeba_cache_and_skips(data_root, tmp_path, monkeypatch):
    """A tiny CelebA root: 3 real JPEGs, one partition entry without its image, CRLF lines."""
    src = data_root / "celeba" / "img_align_celeba"
    if not src.is_dir():
        pytest.skip(f"CelebA images not found at {src}")
    names = sorted(os.listdir(src))[:3]
    root = tmp_path / "root"
    (root / "celeba" / "img_align_celeba").mkdir(parents=True)
    for n in names:
        shutil.copy(src / n, root / "celeba" / "img_align_celeba" / n)
    lines = [f"{n} 2" for n in reversed(names)] + ["999999.jpg 2", "000000.jpg 0"]
    (root / "celeba" / "list_eval_partition.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    cache = tmp_path / "cache"
    monkeypatch.setenv("LMCONV_BENCH_CACHE", str(cache))

    clear_caches()
    with pytest.warns(DataWarning, match="1 of 4 entries"):
        first = load_split("celeba32", "test", root)
    assert first.ids == names  # sorted, independent of the file's row order
    cached = list((cache / "celeba").glob("test-*.pt"))
    assert len(cached) == 1

    # A second process (simulated by clearing in-memory caches) must not decode again.
    clear_caches()

    def no_decode(*a, **k):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(data.celeba, "_celeba_process", no_decode)
    with pytest.warns(DataWarning):
        again = load_split("celeba32", "test", root)
        s64 = load_split("celeba64", "test", root)  # same cache file serves both sizes
    assert torch.equal(again.images, first.images) and s64.images.shape == (3, 3, 64, 64)

    # Touching a file changes the content hash: the cache is rebuilt.
    os.utime(root / "celeba" / "img_align_celeba" / names[0], ns=(1, 10**18))
    clear_caches()
    with pytest.raises(AssertionError, match="decoded"), pytest.warns(DataWarning):
        load_split("celeba32", "test", root)

    with pytest.raises(UserError, match="none of the 1 images"):
        load_split("celeba32", "train", root)


def test_inspect_real_data(data_root):
    report = {r["name"]: r for r in inspect_datasets(data_root)}
    assert set(report) == set(data.DATASETS)
    assert report["mnist"]["status"] == "found"
    assert report["mnist"]["counts"] == {"train": 60000, "test": 10000}
    assert report["cifar10"]["counts"] == {"train": 50000, "test": 10000}
    celeba = report["celeba64"]
    if (data_root / "celeba" / "img_align_celeba").is_dir():
        test_ids = _partition(data_root, "2")
        on_disk = set(os.listdir(data_root / "celeba" / "img_align_celeba"))
        assert celeba["counts"]["test"] == sum(n in on_disk for n in test_ids)
        assert celeba["status"] in ("found", "partial")
        if celeba["status"] == "partial":
            assert celeba["how_to_get"] and any("test:" in w for w in celeba["warnings"])
