"""Published figures of the field (``results/published.yaml``) beside our records.

Each entry: ``model``, ``dataset``, ``task`` (None: any task of the dataset, for task-independent
metrics such as ``test_bpd``), ``metric``, ``order`` (``ensemble``, ``single`` or ``raster``),
``value``, ``source`` and ``protocol``. :func:`published_table` pairs each entry with our records of
the same dataset, task and metric: their values are comparable only at the full profile (the whole
test split), so quick-profile records are shown as "not comparable (quick profile)".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .errors import UserError

DEFAULT_PATH = Path("results/published.yaml")
KEYS = ("model", "dataset", "task", "metric", "order", "value", "source", "protocol")


def load_published(path: str | Path = DEFAULT_PATH) -> list[dict[str, Any]]:
    """The entries of a published-figures file ([] if the default file is absent)."""
    path = Path(path)
    if not path.exists():
        if path == DEFAULT_PATH:
            return []
        raise UserError(f"published-figures file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"{path} is not valid YAML; fix the syntax") from None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UserError(f"{path} must hold a mapping with an 'entries' list")
    for i, e in enumerate(entries):
        missing = [k for k in KEYS if not isinstance(e, dict) or k not in e]
        if missing:
            raise UserError(f"{path}: entry {i + 1} lacks {', '.join(missing)}")
    return entries


def _ours(records: pd.DataFrame, e: dict[str, Any]) -> tuple[str, str]:
    """(our value, our row) for one published entry."""
    r = records[(records["dataset"] == e["dataset"]) & (records["metric"] == e["metric"])]
    if e.get("task"):
        r = r[r["task"] == e["task"]]
    is_ens = r["order"].astype(str).str.startswith("ensemble(")
    if e["order"] == "ensemble":
        r = r[is_ens]
    elif e["order"] == "raster":
        r = r[r["order"].astype(str).str.startswith("raster")]
    else:
        r = r[~is_ens]
    if "context" in r.columns and e["metric"] == "cond_nll_bpd":
        r = r[r["context"] != "preceding_only"] if (r["context"] != "preceding_only").any() else r
    if r.empty:
        return "not measured", ""
    full = r[r["profile"].astype(str) == "full"]
    if full.empty:
        return "not comparable (quick profile)", ""
    best = full.loc[full["value"].idxmin()]
    label = best.get("model_label", best["model"])
    return f"{best['value']:.3f} ± {best['stderr']:.3f}", f"{label} {best['order']} ({best['task']})"


def published_table(records: pd.DataFrame, entries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per published entry: its figure and source beside our comparable value (if any)."""
    rows = []
    for e in entries:
        ours, which = _ours(records, e)
        rows.append({"dataset": e["dataset"], "task": e.get("task") or "any", "metric": e["metric"],
                     "model (published)": e["model"], "order": e["order"], "published": f"{e['value']:.3f}",
                     "ours (full profile)": ours, "our row": which, "source": e["source"]})
    return pd.DataFrame(rows)
