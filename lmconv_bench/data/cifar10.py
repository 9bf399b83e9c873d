"""CIFAR-10 (the python pickles, read with an unpickler that builds numpy arrays only)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .common import _LOCATION_HINT, _inspect_file_splits, _Split, _warn_once, torchvision_download

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

    torchvision_download(CIFAR10, root, split, "CIFAR-10", root / _CIFAR_DIR)


def _cifar_inspect(name: str, root: Path, verify: bool) -> dict:
    # nominal count: 10,000 images per batch file
    return _inspect_file_splits(name, root, verify, root / _CIFAR_DIR, _cifar_missing,
                                lambda split: 10000 * len(_cifar_files(split)), _cifar_load)
