"""MNIST (the official IDX files) and its binarized variant (one Bernoulli draw per image id)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import UserError
from ..seeding import stable_seed
from .common import _LOCATION_HINT, _inspect_file_splits, _Split, torchvision_download

# --------------------------------------------------------------------------------------------

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_COUNTS = {"train": 60000, "test": 10000}


def _mnist_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def _mnist_missing(root: Path, split: str) -> list[Path]:
    return [_mnist_dir(root) / f for f in _MNIST_FILES[split] if not (_mnist_dir(root) / f).is_file()]


def _mnist_load(root: Path, split: str) -> _Split:
    # torchvision's own IDX readers (what ``MNIST._load_data`` calls). The ``MNIST`` class itself
    # refuses to load either split unless all four files exist, so it is used only to download.
    from torchvision.datasets.mnist import read_image_file, read_label_file

    missing = _mnist_missing(root, split)
    if missing:
        raise UserError(
            f"MNIST not found: expected {missing[0]}; {_LOCATION_HINT}, or rerun with --download"
        )
    image_file, label_file = (_mnist_dir(root) / f for f in _MNIST_FILES[split])
    try:
        images = read_image_file(str(image_file)).to(torch.uint8).unsqueeze(1).contiguous()
        labels = read_label_file(str(label_file)).to(torch.int64)
    except Exception as exc:  # unreadable / truncated files
        raise UserError(
            f"MNIST in {_mnist_dir(root)} could not be read ({type(exc).__name__}: {exc}); "
            "delete it and rerun with --download"
        ) from exc
    expected = _MNIST_COUNTS[split]
    if images.shape != (expected, 1, 28, 28) or labels.shape != (expected,):
        raise UserError(
            f"MNIST {split} in {_mnist_dir(root)} has {images.shape[0]} images of shape "
            f"{tuple(images.shape[1:])} ({labels.shape[0]} labels); expected {expected} of 1x28x28. "
            "Delete it and rerun with --download"
        )
    ids = tuple(str(i) for i in range(expected))  # numeric order == file order
    return _Split(images, ids, labels)


def _mnist_download(root: Path, split: str) -> None:
    if not _mnist_missing(root, split):
        return
    from torchvision.datasets import MNIST

    torchvision_download(MNIST, root, split, "MNIST", _mnist_dir(root), ", or place the IDX files there yourself")


def _idx_count(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            header = f.read(8)
        return int.from_bytes(header[4:8], "big") if len(header) == 8 else None
    except OSError:
        return None



def _mnist_inspect(name: str, root: Path, verify: bool) -> dict:
    load = _mnist_binary_load if name == "mnist_binary" else _mnist_load
    return _inspect_file_splits(name, root, verify, _mnist_dir(root), _mnist_missing,
                                lambda split: _idx_count(_mnist_dir(root) / _MNIST_FILES[split][0]), load)


# --------------------------------------------------------------------------------------------


def binarize(images: torch.Tensor, ids: Sequence[str]) -> torch.Tensor:
    """Fixed Bernoulli binarization of 8-bit MNIST: uint8 ``[N, 1, H, W]`` -> uint8 {0, 1}.

    Pixel = 1 iff ``u < value / 255`` (float32) with ``u = torch.rand`` from a generator seeded by
    ``stable_seed("mnist_binary", image_id)``; depends only on the image and its id.
    """
    if images.shape[0] != len(ids):
        raise ValueError(f"{images.shape[0]} images but {len(ids)} ids")
    u = torch.empty(images.shape, dtype=torch.float32)
    g = torch.Generator()
    for k, image_id in enumerate(ids):
        g.manual_seed(stable_seed("mnist_binary", image_id))
        torch.rand(images.shape[1:], generator=g, out=u[k])
    return (u < images.to(torch.float32) / 255.0).to(torch.uint8)


def _mnist_binary_load(root: Path, split: str) -> _Split:
    full = _mnist_load(root, split)
    return _Split(binarize(full.images, full.ids), full.ids, full.labels)
