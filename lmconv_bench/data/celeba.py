"""CelebA 32x32 / 64x64 (aligned JPEGs and the official partition list; preprocessed once and cached on disk)."""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .common import (
    _CELEBA_HINT,
    _LOCATION_HINT,
    CELEBA_URL,
    DATASETS,
    _report,
    _Split,
    _verify_count,
    _warn_once,
    default_cache_dir,
)

# Bump when the CelebA preprocessing changes: it is part of the on-disk cache key.
CELEBA_PREPROCESS_VERSION = 1
CELEBA_CROP = 140
_CELEBA_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}

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
                counts[split] = _verify_count(_celeba_load_as(name), split, root, notes, errors)
            else:
                counts[split] = len(names)
    except UserError as exc:
        errors.append(str(exc))
    if any(counts.values()):
        status = "found" if len(complete) == len(info.splits) and all(complete) else "partial"
    else:
        status = "missing"
    return _report(name, _celeba_dir(root), status, counts, notes, errors, verify)
