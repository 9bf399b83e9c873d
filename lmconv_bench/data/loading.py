"""Loading by dataset name: ``load_split`` (ids, limits, id selections, in-process caches), the per-dataset loaders, and ``inspect_datasets``."""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import UserError, unknown
from . import common
from .celeba import _celeba_download, _celeba_inspect, _celeba_load_as, _celeba_partition
from .cifar10 import _cifar_download, _cifar_inspect, _cifar_load
from .common import DATASETS, DatasetInfo, ImageSet, _Split, get_dataset_info, resolve_data_root
from .mnist import _mnist_binary_load, _mnist_download, _mnist_inspect, _mnist_load

def clear_caches() -> None:
    """Forget in-process caches (loaded splits, emitted once-per-process warnings).

    The on-disk CelebA cache is not touched.
    """
    _load_full.cache_clear()
    _id_positions.cache_clear()
    _celeba_partition.cache_clear()
    common._WARNED.clear()


def _check_split(info: DatasetInfo, split: str) -> None:
    if split not in info.splits:
        raise unknown("split", split, info.splits, where=f"dataset {info.name}")


def load_split(
    name: str,
    split: str,
    data_root: str | Path | None = None,
    limit: int | None = None,
    ids: Sequence[str] | None = None,
    download: bool = False,
) -> ImageSet:
    """Load one split of a registered dataset as uint8 tensors.

    Images come in the dataset's fixed id order (module docstring: numerically for MNIST,
    lexicographically for CelebA, by a hash of the file name for CIFAR-10).
    ``ids`` selects exactly those ids, in the order given (``UserError`` naming any missing or
    repeated id). ``limit`` then keeps the first ``limit`` images (in the split's id order, or
    of the ``ids`` selection); a limit above the split size returns everything; ``limit <= 0`` is a
    ``UserError``. ``data_root`` is resolved with :func:`resolve_data_root`. ``download=True``
    downloads missing MNIST / CIFAR-10 files with torchvision (network needed); CelebA must be
    obtained manually.

    Returns an :class:`ImageSet` whose tensors the caller owns (they may be modified freely).
    """
    info = get_dataset_info(name)
    _check_split(info, split)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
            raise UserError(f"limit must be a positive integer, got {limit!r}")
        limit = int(limit)
    root = resolve_data_root(data_root)
    if download:
        _LOADERS[name].download(root, split)
    full = _load_full(name, split, str(root))

    if ids is None:
        n = len(full.ids) if limit is None else min(limit, len(full.ids))
        images = full.images[:n].clone()
        labels = None if full.labels is None else full.labels[:n].clone()
        return ImageSet(name, split, images, list(full.ids[:n]), labels)

    wanted = [ids] if isinstance(ids, str) else [str(i) for i in ids]
    if limit is not None:
        wanted = wanted[:limit]
    dupes = sorted(i for i, c in collections.Counter(wanted).items() if c > 1)
    if dupes:
        raise UserError(f"{name} {split}: ids requested more than once: {_preview(dupes)}")
    position = _id_positions(name, split, str(root))
    missing = [i for i in wanted if i not in position]
    if missing:
        raise UserError(
            f"{name} {split}: {len(missing)} requested id(s) not in the split: {_preview(missing)}; "
            f"ids look like {_preview(list(full.ids[:3]))}"
        )
    index = torch.tensor([position[i] for i in wanted], dtype=torch.long)
    images = full.images.index_select(0, index)
    labels = None if full.labels is None else full.labels.index_select(0, index)
    return ImageSet(name, split, images, wanted, labels)


def _preview(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


@functools.lru_cache(maxsize=8)
def _id_positions(name: str, split: str, root: str) -> dict[str, int]:
    return {i: k for k, i in enumerate(_load_full(name, split, root).ids)}


@functools.lru_cache(maxsize=8)
def _load_full(name: str, split: str, root: str) -> _Split:
    """The whole split, sorted by id. Cached per process; never mutate the result."""
    return _LOADERS[name].load(Path(root), split)


class _Loader(NamedTuple):
    load: Callable[[Path, str], _Split]
    download: Callable[[Path, str], None]
    inspect: Callable[[str, Path, bool], dict]


def inspect_datasets(data_root: str | Path | None = None, verify: bool = False) -> list[dict]:
    """Where each registered dataset is, its counts, and what is missing (for ``lmconv-bench data``).

    One dict per dataset: ``name``, ``path`` (where it was found or is expected), ``status``
    (``found`` / ``partial`` / ``missing``, or ``invalid`` when ``verify`` finds a content
    error), ``counts`` ({split: number of images or None}), ``warnings`` (list of str),
    ``how_to_get`` (None when found), ``verified``, ``n_bits``, ``shape`` ([C, H, W]), ``licence``.

    Without ``verify`` only cheap checks run: files exist, MNIST counts from the IDX headers,
    CIFAR-10 nominal counts (10,000 per batch file), CelebA partition entries with an image on
    disk. With ``verify`` every split is loaded (md5 / content checks, JPEG decoding) and counted.
    """
    root = resolve_data_root(data_root)
    return [_LOADERS[name].inspect(name, root, verify) for name in DATASETS]


_LOADERS: dict[str, _Loader] = {
    "mnist": _Loader(_mnist_load, _mnist_download, _mnist_inspect),
    "mnist_binary": _Loader(_mnist_binary_load, _mnist_download, _mnist_inspect),
    "cifar10": _Loader(_cifar_load, _cifar_download, _cifar_inspect),
    "celeba32": _Loader(_celeba_load_as("celeba32"), _celeba_download, _celeba_inspect),
    "celeba64": _Loader(_celeba_load_as("celeba64"), _celeba_download, _celeba_inspect),
}
assert set(_LOADERS) == set(DATASETS)
