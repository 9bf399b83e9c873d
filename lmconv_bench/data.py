"""Datasets: a registry of image sets as uint8 tensors with stable ids.

Registered datasets (``DATASETS``):

==============  ==========  ======  ===============================  ==========================
name            C x H x W   n_bits  splits                           id
==============  ==========  ======  ===============================  ==========================
``mnist``        1 x 28 x 28   8    train (60,000) / test (10,000)   official index ``"0"``...
``mnist_binary`` 1 x 28 x 28   1    train / test                     same as mnist
``cifar10``      3 x 32 x 32   8    train (50,000) / test (10,000)   pickle ``filenames`` entry
``celeba32``     3 x 32 x 32   8    train / valid / test (official)  file name ``"182739.jpg"``
``celeba64``     3 x 64 x 64   5    train / valid / test (official)  file name
==============  ==========  ======  ===============================  ==========================

Images are ``uint8 [N, C, H, W]`` with values ``0 .. 2**n_bits - 1``. Models work on
``to_model_range(x, n_bits)`` (float32 in [-1, 1]); ``from_model_range`` inverts it.

Ordering: every split is returned in a fixed order of its ids, so ``limit=N`` takes the same
first N ids whatever the row order of the files on disk (the shared CIFAR-10 copy is re-packed in
a different row order; ids and therefore results are unaffected):

- MNIST ids numerically and CelebA file names lexicographically: the official order, which is
  already class-mixed.
- CIFAR-10 by ``(sha256(file name), file name)``. Its file names start with a sub-class word
  (``"abandoned_ship_s_000213.png"``), so a lexicographic order would put only 4 of the 10
  classes in the first 128 test images; the hash order is a fixed pseudo-random permutation, so
  every prefix is a class-mixed sample (the first 128 test images cover all 10 classes).

Per-dataset details:

- ``mnist``: the uncompressed IDX files in ``<root>/MNIST/raw``, read with torchvision's MNIST
  readers; ``download=True`` uses ``torchvision.datasets.MNIST(root, download=True)``.
- ``mnist_binary``: each pixel is 1 iff ``u < value / 255`` (float32), with ``u ~ U[0, 1)`` drawn
  by ``torch.rand`` from a generator seeded with ``stable_seed("mnist_binary", image_id)``, i.e. a
  Bernoulli(value/255) sample drawn once per image id. The binarized set is therefore fixed: the
  same for every load, batch size, ``limit`` or process.
- ``cifar10``: the python pickles in ``<root>/cifar-10-batches-py`` (read with
  ``encoding="latin1"``). Their md5 is checked against torchvision's ``CIFAR10`` table. The
  pickles are read directly, not through ``torchvision.datasets.CIFAR10``, because that class
  drops the ``filenames`` field that is our image id. If the md5 differs (e.g. a re-packed copy)
  the files are accepted after a content check (shapes, counts, 10 balanced classes,
  ``batches.meta``) with one warning per split and process; a failed content check is a
  ``UserError``. ``download=True`` uses torchvision's downloader.
- ``celeba32`` / ``celeba64``: ``<root>/celeba/img_align_celeba/*.jpg`` and
  ``<root>/celeba/list_eval_partition.txt`` (0 = train, 1 = valid, 2 = test). Each image is
  centre-cropped to 140 x 140 (box ``((W-140)//2, (H-140)//2)``, i.e. (19, 39) on the 178 x 218
  originals) and resized with PIL ``Image.resize(size, Image.BILINEAR, reducing_gap=None)``, which
  is antialiased when downscaling (its filter support is widened by the scale factor). Each size
  is resized from the 140 x 140 crop directly. ``celeba64`` is stored at 5 bits: the 8-bit
  resized value ``x`` becomes the integer ``x >> 3`` in ``0 .. 31`` (not rescaled to 0..255).
  Partition entries whose image is absent are skipped, with one warning giving the count.
  Processed tensors are cached on disk under ``default_cache_dir() / "celeba"``, keyed by a
  sha256 of the split's file names, sizes and mtimes and ``CELEBA_PREPROCESS_VERSION``.
  CelebA cannot be downloaded automatically (Google Drive quota).

Full MNIST / CIFAR-10 splits are held in memory (an in-process cache makes repeated loads cheap;
callers always get fresh tensors). ``clear_caches()`` empties the in-process caches.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .errors import UserError, unknown
from .seeding import stable_seed

__all__ = [
    "CELEBA_PREPROCESS_VERSION",
    "DATASETS",
    "DataWarning",
    "DatasetInfo",
    "binarize",
    "ImageSet",
    "clear_caches",
    "default_cache_dir",
    "from_model_range",
    "get_dataset_info",
    "inspect_datasets",
    "load_split",
    "resolve_data_root",
    "to_model_range",
]

ENV_DATA = "LMCONV_BENCH_DATA"
ENV_CACHE = "LMCONV_BENCH_CACHE"

# Bump when the CelebA preprocessing changes: it is part of the on-disk cache key.
CELEBA_PREPROCESS_VERSION = 1
CELEBA_CROP = 140
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
_CELEBA_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}

_LOCATION_HINT = "pass --data-root, set LMCONV_BENCH_DATA"


class DataWarning(UserWarning):
    """Something about the data files is unusual but the data are usable (e.g. a re-packed copy)."""


# --------------------------------------------------------------------------------------------
# Registry
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
# Locations
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


# --------------------------------------------------------------------------------------------
# Value ranges
# --------------------------------------------------------------------------------------------


from .pixels import from_model_range, to_model_range  # noqa: E402,F401  (re-exported)


# --------------------------------------------------------------------------------------------
# Image sets
# --------------------------------------------------------------------------------------------


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


_WARNED: set[tuple[str, ...]] = set()


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


def clear_caches() -> None:
    """Forget in-process caches (loaded splits, emitted once-per-process warnings).

    The on-disk CelebA cache is not touched.
    """
    _load_full.cache_clear()
    _id_positions.cache_clear()
    _celeba_partition.cache_clear()
    _WARNED.clear()


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


# --------------------------------------------------------------------------------------------
# MNIST
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

    try:
        root.mkdir(parents=True, exist_ok=True)
        MNIST(str(root), train=(split == "train"), download=True)
    except Exception as exc:
        raise UserError(
            f"MNIST download into {_mnist_dir(root)} failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); check the network and that the "
            "directory is writable, or place the IDX files there yourself"
        ) from exc


def _idx_count(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            header = f.read(8)
        return int.from_bytes(header[4:8], "big") if len(header) == 8 else None
    except OSError:
        return None


def _inspect_file_splits(name: str, root: Path, verify: bool, folder: Path,
                         missing_files: Callable[[Path, str], list[Path]],
                         nominal_count: Callable[[str], int | None]) -> dict:
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
            counts[split] = _verify_count(name, split, root, notes, errors)
        else:
            counts[split] = nominal_count(split)
    return _report(name, folder, _status(present), counts, notes, errors, verify)


def _mnist_inspect(name: str, root: Path, verify: bool) -> dict:
    return _inspect_file_splits(name, root, verify, _mnist_dir(root), _mnist_missing,
                                lambda split: _idx_count(_mnist_dir(root) / _MNIST_FILES[split][0]))


# --------------------------------------------------------------------------------------------
# mnist_binary
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
    full = _load_full("mnist", split, str(root))
    return _Split(binarize(full.images, full.ids), full.ids, full.labels)


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_COUNTS = {"train": 50000, "test": 10000}


def _cifar_files(split: str) -> list[tuple[str, str]]:
    """[(file name, official md5)] for the split, from torchvision's CIFAR10 table."""
    from torchvision.datasets import CIFAR10

    table = CIFAR10.train_list if split == "train" else CIFAR10.test_list
    return [(f, md5) for f, md5 in table]


def _cifar_missing(root: Path, split: str) -> list[Path]:
    d = root / _CIFAR_DIR
    names = [f for f, _ in _cifar_files(split)] + ["batches.meta"]
    return [d / f for f in names if not (d / f).is_file()]


def _cifar_md5_ok(root: Path, split: str) -> bool:
    from torchvision.datasets.utils import check_integrity

    d = root / _CIFAR_DIR
    return all(check_integrity(str(d / f), md5) for f, md5 in _cifar_files(split))


_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}
"""The only globals a CIFAR-10 batch may reference: numpy array reconstruction. Builtin
containers (dict, list, str, bytes, int) need no global."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and builtin containers and nothing else: a crafted
    file that names any other callable (``os.system``, ``builtins.eval``, ...) is refused before it
    runs."""

    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _read_pickle(path: Path) -> dict:
    """Read one CIFAR-10 python pickle with :class:`_ArraysOnlyUnpickler` (UserError otherwise)."""
    try:
        with open(path, "rb") as f:
            return _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if "forbidden global" in str(exc):
            raise UserError(
                f"CIFAR-10 file {path} references {str(exc).split('global ', 1)[1]}, which a data file must not "
                "(only numpy arrays are allowed); nothing from it was run: delete it and rerun with --download"
            ) from None
        raise UserError(
            f"CIFAR-10 file {path} could not be unpickled (UnpicklingError); delete "
            f"{path.parent} and rerun with --download"
        ) from None
    except Exception as exc:
        raise UserError(
            f"CIFAR-10 file {path} could not be unpickled ({type(exc).__name__}); delete "
            f"{path.parent} and rerun with --download"
        ) from exc


def _cifar_load(root: Path, split: str) -> _Split:
    d = root / _CIFAR_DIR
    missing = _cifar_missing(root, split)
    if missing:
        raise UserError(
            f"CIFAR-10 not found: expected {missing[0]}; {_LOCATION_HINT}, or rerun with --download"
        )
    md5_ok = _cifar_md5_ok(root, split)

    def bad(why: str) -> UserError:
        return UserError(
            f"CIFAR-10 {split} in {d} failed the content check: {why}; delete it and rerun with --download"
        )

    meta = _read_pickle(d / "batches.meta")
    if not isinstance(meta, dict) or len(meta.get("label_names", ())) != 10:
        raise bad("batches.meta has no 10 label_names")
    datas, labels, names = [], [], []
    for f, _ in _cifar_files(split):
        batch = _read_pickle(d / f)
        if not isinstance(batch, dict) or not {"data", "labels", "filenames"} <= set(batch):
            raise bad(f"{f} lacks data/labels/filenames")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise bad(f"{f} data is {data.dtype} {data.shape}, expected uint8 [n, 3072]")
        if not len(batch["labels"]) == len(batch["filenames"]) == data.shape[0]:
            raise bad(f"{f} has mismatched data/labels/filenames lengths")
        datas.append(data)
        labels.extend(int(v) for v in batch["labels"])
        names.extend(str(v) for v in batch["filenames"])
    data = np.concatenate(datas)
    label_arr = np.asarray(labels, dtype=np.int64)
    expected = _CIFAR_COUNTS[split]
    if data.shape[0] != expected:
        raise bad(f"{data.shape[0]} images, expected {expected}")
    per_class = np.bincount(label_arr, minlength=10) if label_arr.min() >= 0 else np.zeros(0)
    if per_class.shape != (10,) or not (per_class == expected // 10).all():
        raise bad(f"class counts {per_class.tolist()}, expected {expected // 10} for each of 10 classes")
    if len(set(names)) != len(names):
        raise bad("duplicate filenames")
    if not md5_ok:
        _warn_once(
            ("cifar10-md5", str(d), split),
            f"CIFAR-10 {split} files in {d} differ from the official release's md5 (re-packed "
            "copy?); the content check passed (shapes, counts, 10 balanced classes, batches.meta) "
            "and image ids are the file names, so results are unaffected",
        )
    order = sorted(range(len(names)), key=lambda i: _cifar_id_order_key(names[i]))
    images = torch.from_numpy(data[order].reshape(-1, 3, 32, 32).copy())
    return _Split(images, tuple(names[i] for i in order), torch.from_numpy(label_arr[order]))


def _cifar_id_order_key(name: str) -> tuple[str, str]:
    """Sort key of a CIFAR-10 id (file name): its sha256 hex digest, then the name itself."""
    return hashlib.sha256(name.encode()).hexdigest(), name


def _cifar_download(root: Path, split: str) -> None:
    if not _cifar_missing(root, split):
        return  # present (official or re-packed): never overwrite
    from torchvision.datasets import CIFAR10

    try:
        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(root), train=(split == "train"), download=True)
    except Exception as exc:
        raise UserError(
            f"CIFAR-10 download into {root / _CIFAR_DIR} failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); check the network and that the "
            "directory is writable"
        ) from exc


def _cifar_inspect(name: str, root: Path, verify: bool) -> dict:
    # nominal count: 10,000 images per batch file
    return _inspect_file_splits(name, root, verify, root / _CIFAR_DIR, _cifar_missing,
                                lambda split: 10000 * len(_cifar_files(split)))


# --------------------------------------------------------------------------------------------
# CelebA
# --------------------------------------------------------------------------------------------


def _celeba_dir(root: Path) -> Path:
    return root / "celeba"


def _celeba_size(name: str) -> int:
    return DATASETS[name].height


@functools.lru_cache(maxsize=4)
def _celeba_partition(path: str, size: int, mtime_ns: int) -> dict[str, tuple[str, ...]]:
    """Partition file -> {split: sorted file names}. Handles CRLF or LF line endings."""
    by_code: dict[int, list[str]] = {0: [], 1: [], 2: []}
    with open(path, encoding="ascii", newline=None) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise UserError(f"{path}:{lineno}: expected '<file>.jpg <0|1|2>', got {line.strip()!r}")
            by_code[int(parts[1])].append(parts[0])
    return {s: tuple(sorted(by_code[c])) for s, c in _CELEBA_SPLIT_CODES.items()}


def _celeba_entries(root: Path) -> dict[str, tuple[str, ...]]:
    part = _celeba_dir(root) / "list_eval_partition.txt"
    img_dir = _celeba_dir(root) / "img_align_celeba"
    if not part.is_file() or not img_dir.is_dir():
        missing = part if not part.is_file() else img_dir
        raise UserError(
            f"CelebA not found: expected {missing}; {_LOCATION_HINT}; CelebA must be downloaded "
            f"manually from {CELEBA_URL} (img_align_celeba.zip and list_eval_partition.txt)"
        )
    st = part.stat()
    return _celeba_partition(str(part), st.st_size, st.st_mtime_ns)


def _celeba_present(root: Path, split: str) -> tuple[list[str], int]:
    """(sorted names of the split whose image exists, number of split entries)."""
    entries = _celeba_entries(root)[split]
    on_disk = set(os.listdir(_celeba_dir(root) / "img_align_celeba"))
    return [n for n in entries if n in on_disk], len(entries)


def _celeba_key(img_dir: Path, names: Sequence[str], split: str) -> str:
    h = hashlib.sha256()
    h.update(f"celeba:v{CELEBA_PREPROCESS_VERSION}:crop{CELEBA_CROP}:sizes32,64:{split}\n".encode())
    for n in names:
        st = (img_dir / n).stat()
        h.update(f"{n}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _celeba_process_one(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One JPEG -> (uint8 [3, 32, 32], uint8 [3, 64, 64]) at 8 bits."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if w < CELEBA_CROP or h < CELEBA_CROP:
            raise UserError(f"CelebA image {path} is {w}x{h}, smaller than the {CELEBA_CROP}px crop")
        left, top = (w - CELEBA_CROP) // 2, (h - CELEBA_CROP) // 2
        crop = im.crop((left, top, left + CELEBA_CROP, top + CELEBA_CROP))
        out = []
        for s in (32, 64):
            small = crop.resize((s, s), Image.Resampling.BILINEAR, reducing_gap=None)
            out.append(np.asarray(small, dtype=np.uint8).transpose(2, 0, 1).copy())
    return out[0], out[1]


def _celeba_process(img_dir: Path, names: Sequence[str]) -> dict[str, torch.Tensor]:
    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL
        results = list(pool.map(_celeba_process_one, (img_dir / n for n in names), chunksize=32))
    return {
        "images32": torch.from_numpy(np.stack([r[0] for r in results])),
        "images64": torch.from_numpy(np.stack([r[1] for r in results])),
    }


def _atomic_torch_save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _celeba_cached(root: Path, split: str, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Processed 8-bit tensors for ``names`` (32 and 64 px), from the disk cache when valid."""
    img_dir = _celeba_dir(root) / "img_align_celeba"
    key = _celeba_key(img_dir, names, split)
    path = default_cache_dir() / "celeba" / f"{split}-{key[:24]}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("key") == key and list(blob.get("ids", ())) == list(names):
                return {k: blob[k] for k in ("images32", "images64")}
        except Exception:
            pass  # corrupt or foreign file: recompute and overwrite
    out = _celeba_process(img_dir, names)
    try:
        _atomic_torch_save({"key": key, "ids": list(names), **out}, path)
    except OSError as exc:
        _warn_once(
            ("celeba-cache", str(path.parent)),
            f"could not write the CelebA cache in {path.parent} ({exc}); continuing without it",
        )
    return out


def _celeba_load_as(name: str) -> Callable[[Path, str], _Split]:
    def load(root: Path, split: str) -> _Split:
        names, n_entries = _celeba_present(root, split)
        img_dir = _celeba_dir(root) / "img_align_celeba"
        if not names:
            raise UserError(
                f"CelebA {split}: none of the {n_entries} images listed in list_eval_partition.txt "
                f"are in {img_dir}; {_CELEBA_HINT}"
            )
        if len(names) < n_entries:
            _warn_once(
                ("celeba-skipped", name, str(root), split),
                f"{name} {split}: {n_entries - len(names)} of {n_entries} entries of "
                f"list_eval_partition.txt have no image in {img_dir} and were skipped "
                f"({len(names)} images used)",
            )
        processed = _celeba_cached(root, split, names)
        size = _celeba_size(name)
        images = processed[f"images{size}"]
        shift = 8 - DATASETS[name].n_bits
        if shift:
            images = images >> shift  # 5-bit: integers 0..31
        return _Split(images.contiguous(), tuple(names), None)

    return load


def _celeba_download(root: Path, split: str) -> None:
    try:
        names, _ = _celeba_present(root, split)
    except UserError:
        names = []
    if not names:
        raise UserError(
            f"CelebA cannot be downloaded automatically (Google Drive quota): download "
            f"img_align_celeba.zip and list_eval_partition.txt from {CELEBA_URL}, unzip to "
            f"{_celeba_dir(root) / 'img_align_celeba'} and put the list in {_celeba_dir(root)}"
        )


def _celeba_inspect(name: str, root: Path, verify: bool) -> dict:
    info = DATASETS[name]
    counts: dict[str, int | None] = dict.fromkeys(info.splits)
    notes: list[str] = []
    errors: list[str] = []
    complete = []
    try:
        for split in info.splits:
            names, n_entries = _celeba_present(root, split)
            complete.append(len(names) == n_entries)
            if len(names) < n_entries and not (verify and names):  # else the loader warns
                notes.append(f"{split}: {len(names)} of {n_entries} images present")
            if verify and names:
                counts[split] = _verify_count(name, split, root, notes, errors)
            else:
                counts[split] = len(names)
    except UserError as exc:
        errors.append(str(exc))
    if any(counts.values()):
        status = "found" if len(complete) == len(info.splits) and all(complete) else "partial"
    else:
        status = "missing"
    return _report(name, _celeba_dir(root), status, counts, notes, errors, verify)


# --------------------------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------------------------

_collector: list[str] | None = None  # set while verifying: _warn_once appends here instead


def _verify_count(name: str, split: str, root: Path, notes: list[str], errors: list[str]) -> int | None:
    """Load a split for real, bypassing the in-process cache so that its warnings are seen."""
    global _collector
    collected: list[str] = []
    _collector = collected
    try:
        full = _LOADERS[name].load(root, split)
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
