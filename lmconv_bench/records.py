"""Tidy records of a benchmark run: one row per measured value, written atomically and incrementally.

A run directory holds::

    manifest.json      run-level facts: command, config + its hash, git commit, versions, device, ...
    cells/<key>.json   one finished grid cell (task × model × order × metric group): its rows and
                       its per-image values. Written atomically; a rerun skips cells that exist.
    records.csv        all rows (RECORD_COLUMNS), rebuilt atomically after every cell
    per_image.csv      per-image values (PER_IMAGE_COLUMNS) for paired tests and bootstraps
    comparisons.csv    paired tests (COMPARISON_COLUMNS)

Only rank 0 writes. A directory made by a different configuration is refused (nothing overwritten).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UserError
from .io_utils import LOCK_NAME, atomic_write_json, atomic_write_text, check_writable

RECORD_COLUMNS = (
    "run_id", "task", "task_version", "dataset", "split", "profile", "model", "preset", "model_label", "n_params",
    "checkpoint_sha256", "order", "effective_order", "order_trained", "trained_coverage", "metric", "value", "unit",
    "n", "stderr", "ci_low", "ci_high", "context", "seed", "nfe", "wall_s",
)
"""Columns of records.csv. ``order``: the order asked for; ``effective_order``: the order actually
run (``observed_first(<order>)`` where conditional metrics reordered it; an ensemble's own name);
``order_trained``: the effective order is one the checkpoint trained on; ``trained_coverage``: the
fraction of positions whose kernel masks the checkpoint trained on (``coverage.trained_coverage``);
``context``: ``unconditional``, ``all_observed`` (every observed pixel precedes every missing one)
or ``preceding_only``; ``model_label``: family-preset, training orders and parameter count;
``n_params``: parameter count. ``stderr``: standard error of the mean across images, or empty.
``nfe``: network evaluations behind the value, in full-forward-pass equivalents per image (per
completion for completion metrics), counted by the samplers and likelihood code; it depends on
batching (a cached sampler steps a batch through the union of its images' missing positions).
``wall_s``: seconds the cell took (summed over processes or shards). Both are costs, not results:
they differ with batch size, process count and hardware."""
PER_IMAGE_COLUMNS = ("run_id", "task", "model", "model_label", "checkpoint_sha256", "order", "effective_order",
                     "context", "metric", "image_id", "sample", "value", "occluded_fraction")
"""Columns of per_image.csv; ``occluded_fraction``: the fraction of the image's pixels that its
mask hides (for binning results by hole size, ``report --bins``)."""
COMPARISON_COLUMNS = ("task", "model_a", "order_a", "model_b", "order_b", "metric", "statistic", "p_value", "n")
METRIC_UNITS = {"test_bpd": "bits/dim", "cond_nll_bpd": "bits/dim", "context_gain_bpd": "bits/dim",
                "lpips": "lpips", "fid": "fid", "kid": "kid", "psnr": "dB", "ssim": "ssim",
                "l1_hole": "fraction of max value", "diversity": "lpips"}


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of a JSON-serialisable configuration (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


_WHAT = {"task_content": "task content (a task file changed)", "code": "code version (lmconv-bench or results schema)",
         "checkpoints": "checkpoints"}


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``"different task content (a task file changed), option samples"``: what differs between
    two result configurations, for the refusal of a run directory."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not keys:
        return "different configuration hash"
    return "different " + ", ".join(_WHAT.get(k, f"option {k}") for k in keys)


def cell_key(*parts: object) -> str:
    """A file-name-safe key of a grid cell: a readable prefix plus a short hash of all parts."""
    text = "|".join(str(p) for p in parts)
    readable = "_".join(str(p) for p in parts[:2]).replace("/", "-")[:60]
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _csv(rows: list[dict[str, Any]], columns: Iterable[str]) -> str:
    buf = io.StringIO()
    pd.DataFrame(rows, columns=list(columns)).to_csv(buf, index=False)
    return buf.getvalue()


class RunDir:
    """The output directory of one run. See the module docstring for its layout."""

    def __init__(self, path: str | Path, config: dict[str, Any], write: bool = True):
        self.path = Path(path)
        self.config = config
        self.hash = config_hash(config)
        self.write = write
        self.cells = self.path / "cells"

    # -- opening ----------------------------------------------------------------------------
    def open(self, manifest: dict[str, Any], clean: bool = True) -> "RunDir":
        """Create the directory, or check that an existing one was made by the same config.

        ``clean``: delete stray temp files of a killed run (only for the directory's one writer;
        a shard leaves other shards' in-flight files alone)."""
        mpath = self.path / "manifest.json"
        if mpath.exists():
            try:
                old = json.loads(mpath.read_text())
            except (OSError, json.JSONDecodeError):
                raise UserError(f"{mpath} is unreadable; choose another --out") from None
            if old.get("config_hash") != self.hash:
                raise UserError(
                    f"{self.path} holds a run with a different configuration ({describe_difference(old.get('config') or {}, self.config)}); "
                    "its results are not reused: choose a new --out, or rerun with the original arguments to resume"
                )
        elif self.path.exists() and any(not p.name.startswith(LOCK_NAME) for p in self.path.iterdir()):
            raise UserError(f"{self.path} exists and is not a lmconv-bench run directory; choose another --out")
        if self.write:
            check_writable(self.path, is_dir=True)
            self.cells.mkdir(parents=True, exist_ok=True)
            if clean:
                for stray in self.path.rglob(".*.tmp"):  # left by a killed run's atomic writes
                    stray.unlink(missing_ok=True)
            if not mpath.exists():
                self.write_manifest(manifest)
        return self

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        if self.write:
            atomic_write_json(self.path / "manifest.json", {**manifest, "config": self.config, "config_hash": self.hash})

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    # -- cells ------------------------------------------------------------------------------
    def has_cell(self, key: str) -> bool:
        """Whether cell ``key`` is stored and readable. Cells are written atomically, so an
        unreadable one was damaged from outside: it is deleted (when writing) and computed again."""
        p = self.cells / f"{key}.json"
        if not p.exists():
            return False
        try:
            json.loads(p.read_text())
            return True
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            if self.write:
                p.unlink(missing_ok=True)
            return False

    def load_cell(self, key: str) -> dict[str, Any]:
        return json.loads((self.cells / f"{key}.json").read_text())

    def save_cell(self, key: str, rows: list[dict[str, Any]], per_image: list[dict[str, Any]], extra: dict | None = None) -> None:
        """Store one finished cell atomically, then rebuild the CSV files."""
        if not self.write:
            return
        for r in rows:
            missing = set(RECORD_COLUMNS) - set(r)
            if missing:
                raise ValueError(f"record row lacks columns {sorted(missing)}")
        atomic_write_json(self.cells / f"{key}.json", {"rows": rows, "per_image": per_image, **(extra or {})})
        self.rebuild()

    def all_cells(self) -> list[dict[str, Any]]:
        """Every readable cell, in key order (damaged ones are skipped; see :meth:`has_cell`)."""
        out = []
        for p in sorted(self.cells.glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                continue
        return out

    def rebuild(self, comparisons: list[dict[str, Any]] | None = None) -> None:
        """Rewrite records.csv and per_image.csv (and comparisons.csv if given) from the cells."""
        if not self.write:
            return
        cells = self.all_cells()
        rows = [r for c in cells for r in c["rows"]]
        per_image = [p for c in cells for p in c["per_image"]]
        atomic_write_text(self.path / "records.csv", _csv(rows, RECORD_COLUMNS))
        atomic_write_text(self.path / "per_image.csv", _csv(per_image, PER_IMAGE_COLUMNS))
        if comparisons is not None:
            atomic_write_text(self.path / "comparisons.csv", _csv(comparisons, COMPARISON_COLUMNS))


def read_records(run_dir: str | Path) -> pd.DataFrame:
    """records.csv of a run directory as a DataFrame (UserError if absent)."""
    p = Path(run_dir) / "records.csv"
    if not p.exists():
        raise UserError(f"{run_dir} has no records.csv; is it a finished `lmconv-bench run` directory?")
    try:
        df = pd.read_csv(p)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        raise UserError(f"{p} is empty or not a CSV table; rerun the `lmconv-bench run` command that made it") from None
    lacking = [c for c in ("task", "model", "order", "metric", "value") if c not in df.columns]
    if lacking:
        raise UserError(f"{p} is not a lmconv-bench records file (no column {lacking[0]!r}); pass a directory written by `lmconv-bench run`")
    return df
