"""Independent shards of one run: ``run --shard I/N`` and ``lmconv-bench merge RUN_DIR``.

A shard evaluates only the images ``range(I, n, N)`` of every cell (the split torchrun ranks use),
with no collective communication, so N processes on any machines can run the shards at any time,
in any order, each resumable after a kill. Instead of records, a shard stores each cell's
per-image *parts* (the values torchrun ranks would all-gather) as

    RUN_DIR/shards/<cell key>/<I>-of-<N>.npz      (written atomically; numpy arrays, no pickles)

``merge`` then assembles every cell from its N parts, checks that every image id of every cell is
covered exactly once (a missing or duplicated shard is named, nothing is written), and computes
the records exactly as an unsharded run does: per-image values are the same numbers, and FID/KID
use the union of all shards' completions.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .io_utils import atomic_write_bytes

SHARD_DIR = "shards"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/3"`` → ``(2, 3)``; None → None; UserError unless ``0 <= I < N``."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise UserError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _part_path(run_dir: Path, key: str, shard: tuple[int, int]) -> Path:
    return Path(run_dir) / SHARD_DIR / key / f"{shard[0]}-of-{shard[1]}.npz"


def save_part(run_dir: Path, key: str, shard: tuple[int, int], payload: tuple) -> None:
    """Store one shard's part of a cell: ``payload = (indices, *values)``; each value a tensor, a
    list of numbers (or of lists), or None."""
    arrays: dict[str, np.ndarray] = {"indices": np.asarray(payload[0], dtype=np.int64)}
    kinds = []
    for i, v in enumerate(payload[1:]):
        if v is None:
            kinds.append("none")
            continue
        if torch.is_tensor(v):
            kinds.append("tensor")
            arrays[f"v{i}"] = v.detach().cpu().numpy()
        else:
            kinds.append("list")
            arrays[f"v{i}"] = np.asarray(v, dtype=np.float64)
    arrays["kinds"] = np.asarray(kinds)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(_part_path(run_dir, key, shard), buf.getvalue())


def has_part(run_dir: Path, key: str, shard: tuple[int, int]) -> bool:
    return _part_path(run_dir, key, shard).is_file()


def _load_part(path: Path) -> tuple:
    with np.load(path, allow_pickle=False) as z:
        out: list[Any] = [z["indices"].tolist()]
        for i, kind in enumerate(z["kinds"].tolist()):
            if kind == "none":
                out.append(None)
            elif kind == "tensor":
                out.append(torch.from_numpy(z[f"v{i}"].copy()))
            else:
                out.append(z[f"v{i}"].tolist())
    return tuple(out)


def load_parts(run_dir: Path, key: str, n_images: int, what: str) -> list[tuple]:
    """Every shard's part of cell ``key``; UserError naming a missing shard, a mix of shard counts,
    or an image covered twice or not at all. ``what`` names the cell in messages."""
    d = Path(run_dir) / SHARD_DIR / key
    files = sorted(d.glob("*-of-*.npz")) if d.is_dir() else []
    if not files:
        raise UserError(f"no shard has written the cell {what}; run its shards with `lmconv-bench run ... --shard I/N` first")
    counts = {int(f.stem.split("-of-")[1]) for f in files}
    if len(counts) != 1:
        raise UserError(f"cell {what} holds parts of different shard counts {sorted(counts)}; "
                        f"delete {d} and rerun the shards with one N")
    n = counts.pop()
    have = {int(f.stem.split("-of-")[0]) for f in files}
    missing = sorted(set(range(n)) - have)
    if missing:
        raise UserError(f"shard {missing[0]}/{n} has not finished the cell {what} ({len(missing)} of {n} shards missing); "
                        f"run `lmconv-bench run ... --shard {missing[0]}/{n}` (the same command), then merge again")
    parts = [_load_part(_part_path(run_dir, key, (i, n))) for i in range(n)]
    seen = np.zeros(n_images, dtype=np.int64)
    for p in parts:
        np.add.at(seen, np.asarray(p[0], dtype=np.int64), 1)
    if (seen != 1).any():
        bad = int(np.flatnonzero(seen != 1)[0])
        raise UserError(f"cell {what}: image index {bad} is covered {int(seen[bad])} times by the shards; "
                        f"delete {d} and rerun its shards")
    return parts
