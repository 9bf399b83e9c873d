"""What every dataset module shares: the registry (shapes, bits, splits, licences), data
locations, the ``ImageSet`` returned to callers, once-per-process warnings, and the pieces of
``lmconv-bench data`` inspection."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import UserError, unknown

CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
ENV_DATA = "LMCONV_BENCH_DATA"
ENV_CACHE = "LMCONV_BENCH_CACHE"
_LOCATION_HINT = "pass --data-root, set LMCONV_BENCH_DATA"


class DataWarning(UserWarning):
    """Something about the data files is unusual but the data are usable (e.g. a re-packed copy)."""


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry: what a dataset's images look like and where they come from.

    Images of this dataset are ``uint8 [N, channels, height, width]`` with values
    ``0 .. 2**n_bits - 1``.
    """

    name: str
    channels: int
    height: int
    width: int
    n_bits: int
    splits: tuple[str, ...]
    licence: str
    source_hint: str  # how to obtain the data

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)``."""
        return (self.channels, self.height, self.width)


_MNIST_LICENCE = "MNIST by Yann LeCun and Corinna Cortes, CC BY-SA 3.0"
_MNIST_HINT = (
    "rerun with --download (torchvision downloads MNIST into <root>/MNIST/raw), or place the "
    "uncompressed IDX files (train-images-idx3-ubyte, ...) in <root>/MNIST/raw"
)
_CELEBA_LICENCE = (
    "CelebA (Liu et al. 2015): non-commercial research purposes only, per the CelebA agreement"
)
_CELEBA_HINT = (
    f"download manually from {CELEBA_URL} (Google Drive quota prevents automatic download): "
    "unzip img_align_celeba.zip to <root>/celeba/img_align_celeba/ and put "
    "list_eval_partition.txt in <root>/celeba/"
)

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("mnist", 1, 28, 28, 8, ("train", "test"), _MNIST_LICENCE, _MNIST_HINT),
        DatasetInfo("mnist_binary", 1, 28, 28, 1, ("train", "test"), _MNIST_LICENCE, _MNIST_HINT),
        DatasetInfo(
            "cifar10",
            3,
            32,
            32,
            8,
            ("train", "test"),
            "CIFAR-10 (Krizhevsky 2009, 'Learning Multiple Layers of Features from Tiny Images', "
            "tech. report); no explicit licence: cite the report",
            "rerun with --download (torchvision downloads cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html), or unpack it to "
            "<root>/cifar-10-batches-py",
        ),
        DatasetInfo("celeba32", 3, 32, 32, 8, ("train", "valid", "test"), _CELEBA_LICENCE, _CELEBA_HINT),
        DatasetInfo("celeba64", 3, 64, 64, 5, ("train", "valid", "test"), _CELEBA_LICENCE, _CELEBA_HINT),
    )
}


def get_dataset_info(name: str) -> DatasetInfo:
    """The registry entry for ``name``; ``UserError`` with a suggestion when unknown."""
    try:
        return DATASETS[name]
    except KeyError:
        raise unknown("dataset", name, DATASETS) from None


# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$LMCONV_BENCH_CACHE``, else ``~/.cache/lmconv_bench``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmconv_bench"


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """The data directory: ``data_root`` if given, else ``$LMCONV_BENCH_DATA``, else
    ``default_cache_dir() / "data"``. Existence is not checked here (loaders name what is missing)."""
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser()
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env).expanduser()
    return default_cache_dir() / "data"


@dataclass
class ImageSet:
    """Images of one split with their stable ids.

    ``images``: uint8 ``[N, C, H, W]``, values ``0 .. 2**n_bits - 1``.
    ``ids``: N stable ids (str), aligned with ``images``.
    ``labels``: int64 ``[N]`` class labels where the dataset has them (MNIST, CIFAR-10), else None.
    """

    name: str
    split: str
    images: torch.Tensor
    ids: list[str]
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def info(self) -> DatasetInfo:
        return get_dataset_info(self.name)


class _Split(NamedTuple):
    """A full split sorted by id; never mutated (callers get copies)."""

    images: torch.Tensor
    ids: tuple[str, ...]
    labels: torch.Tensor | None


def _warn_once(key: tuple[str, ...], message: str) -> None:
    """Emit ``message`` as a one-line DataWarning, at most once per process per key.

    While ``inspect_datasets(verify=True)`` runs, messages are collected for its report instead.
    """
    if _collector is not None:
        _collector.append(message)
        return
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, DataWarning, stacklevel=5)  # points at load_split's caller


_WARNED: set[tuple[str, ...]] = set()
_collector: list[str] | None = None  # set while verifying: _warn_once appends here instead


def _inspect_file_splits(name: str, root: Path, verify: bool, folder: Path,
                         missing_files: Callable[[Path, str], list[Path]],
                         nominal_count: Callable[[str], int | None],
                         load: Callable[[Path, str], "_Split"]) -> dict:
    """Inspection of a dataset stored as fixed files per train/test split (MNIST, CIFAR-10).

    ``missing_files(root, split)`` lists absent files; ``nominal_count(split)`` is the count
    reported without ``verify`` (which loads the split and counts it instead).
    """
    counts: dict[str, int | None] = {}
    notes: list[str] = []
    errors: list[str] = []
    present = []
    for split in ("train", "test"):
        missing = missing_files(root, split)
        present.append(not missing)
        if missing:
            counts[split] = None
            notes.append(f"{split}: missing {', '.join(p.name for p in missing)}")
        elif verify:
            counts[split] = _verify_count(load, split, root, notes, errors)
        else:
            counts[split] = nominal_count(split)
    return _report(name, folder, _status(present), counts, notes, errors, verify)


def _verify_count(load: Callable[[Path, str], "_Split"], split: str, root: Path, notes: list[str],
                  errors: list[str]) -> int | None:
    """Load a split for real with ``load``, bypassing the in-process cache so that its warnings are seen."""
    global _collector
    collected: list[str] = []
    _collector = collected
    try:
        full = load(root, split)
    except UserError as exc:
        errors.append(f"{split}: {exc}")
        return None
    finally:
        _collector = None
    notes.extend(collected)  # these messages name the split themselves
    return len(full.ids)


def _report(
    name: str,
    path: Path,
    status: str,
    counts: dict[str, int | None],
    notes: list[str],
    errors: list[str],
    verify: bool,
) -> dict:
    info = DATASETS[name]
    if verify and errors and status != "missing":
        status = "invalid"
    return {
        "name": name,
        "path": str(path),
        "status": status,
        "counts": counts,
        "warnings": notes + errors,
        "how_to_get": None if status == "found" else info.source_hint,
        "verified": verify,
        "n_bits": info.n_bits,
        "shape": list(info.image_shape),
        "licence": info.licence,
    }


def _status(present: list[bool]) -> str:
    return "found" if all(present) else ("partial" if any(present) else "missing")


def torchvision_download(dataset_cls, root: Path, split: str, label: str, where: Path, hint: str = "") -> None:
    """Download one split with a torchvision dataset class (``MNIST``, ``CIFAR10``) into ``root``;
    a failure becomes one UserError naming ``label``, the folder ``where`` and the fix."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        dataset_cls(str(root), train=(split == "train"), download=True)
    except Exception as exc:
        raise UserError(
            f"{label} download into {where} failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); check the network and that the "
            f"directory is writable{hint}"
        ) from exc
