"""Findings: the paper's claims that the records can test, each with its measured test.

One row per (task, claim, metric). Arms of a task are found from the records:

* **A**, the any-order model: an ``lmconv`` checkpoint evaluated under several orders. Its
  conditional NLL and test bits/dim are those of its order ensemble; its completion metrics
  (LPIPS, FID, KID) are the mean over its evaluated orders (per image, then across images),
  because completions are drawn per order.
* **control**, the same network trained on one order (label ``[raster/0]``), evaluated under that
  order as it is; compared on conditional NLL and LPIPS (both paired per image).
* **baseline**, the fixed-order PixelCNN++. The claim names it "matched" only when its parameter
  count is within 5% of A's; otherwise the claim says by how much it differs.

Each row compares A with B on the same images: the mean per-image difference A − B with a 95%
bootstrap CI and a two-sided Wilcoxon signed-rank p. Verdicts: **reproduced** when the CI excludes
0 on the claimed side and p < 0.05; **not reproduced (reversed)** when both point the other way;
**not reproduced (no significant difference)** otherwise. FID and KID have one value per set of
completions (no paired per-image values): **not testable here**. A claim whose arms are absent from
the records is **not testable here** with the reason.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .cells.model_entry import is_single_order_label
from .io_utils import atomic_write_text
from .report import main_per_image, to_latex, to_markdown

ALPHA = 0.05
MATCH_TOLERANCE = 0.05
COLUMNS = ("task", "claim", "metric", "A", "B", "A value", "B value", "A − B [95% CI]", "p (Wilcoxon)", "verdict")


def _arms(rec: pd.DataFrame) -> dict[str, Any]:
    """The any-order models, the single-order control and the fixed-order baseline of one task."""
    out: dict[str, Any] = {"any_order": [], "control": None, "baseline": None}
    for label, g in rec.groupby("model_label", sort=True):
        model = str(g["model"].iloc[0])
        n_params = int(g["n_params"].iloc[0]) if "n_params" in g else 0
        if model != "lmconv":
            out["baseline"] = out["baseline"] or (label, n_params)
        elif is_single_order_label(str(label)):
            out["control"] = out["control"] or (label, n_params)
        elif g["order"].nunique() > 1:
            out["any_order"].append((label, n_params))
    return out


def _pair(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    common = a.index.intersection(b.index)
    return a.loc[common].to_numpy(float), b.loc[common].to_numpy(float)


def _test(a: np.ndarray, b: np.ndarray, seed: int, sign: int) -> dict[str, Any]:
    """Paired test of A − B; ``sign`` -1 when the claim is A < B, +1 when A > B."""
    from .metrics.stats import paired_test, summarize

    d = a - b
    s = summarize(d, seed=seed)
    p = paired_test(a, b)["p_value"] if len(d) > 1 else math.nan
    lo, hi = s["ci_low"], s["ci_high"]
    claimed = (hi < 0) if sign < 0 else (lo > 0)
    other = (lo > 0) if sign < 0 else (hi < 0)
    if claimed and p < ALPHA:
        verdict = "reproduced"
    elif other and p < ALPHA:
        verdict = "not reproduced (reversed)"
    else:
        verdict = "not reproduced (no significant difference)"
    return {"A value": float(a.mean()), "B value": float(b.mean()),
            "A − B [95% CI]": f"{s['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]", "p (Wilcoxon)": f"{p:.2g}", "verdict": verdict}


def _untestable(why: str, a=math.nan, b=math.nan) -> dict[str, Any]:
    return {"A value": a, "B value": b, "A − B [95% CI]": "", "p (Wilcoxon)": "", "verdict": f"not testable here ({why})"}


def _values(pi: pd.DataFrame, label: str, metric: str, order: str | None) -> pd.Series:
    """Per-image values of one arm; ``order`` None = the mean over the arm's single orders."""
    g = pi[(pi["model_label"] == label) & (pi["metric"] == metric)]
    if order is None:
        g = g[~g["order"].astype(str).str.startswith("ensemble(")]
        return g.groupby("image_id")["value"].mean()
    return g[g["order"] == order].set_index("image_id")["value"]


def task_findings(task: str, rec: pd.DataFrame, pi: pd.DataFrame, seed: int = 0) -> list[dict[str, Any]]:
    """The finding rows of one task (records and main per-image values of that task only)."""
    arms = _arms(rec)
    rows: list[dict[str, Any]] = []

    def add(claim, metric, a_name, b_name, result):
        rows.append({"task": task, "claim": claim, "metric": metric, "A": a_name, "B": b_name, **result})

    for label, n_a in arms["any_order"]:
        mine = rec[rec["model_label"] == label]
        ens = sorted(o for o in mine["order"].astype(str).unique() if o.startswith("ensemble("))
        metrics = set(mine["metric"])
        ens_name = ens[0] if ens else None
        a_cond = f"{label} {ens_name}" if ens_name else None
        for metric in ("test_bpd", "cond_nll_bpd"):
            if metric not in metrics:
                continue
            claim = "the order ensemble beats the best single order"
            if not ens_name:
                add(claim, metric, label, "", _untestable("no ensemble in these records"))
                continue
            singles = mine[(mine["metric"] == metric) & ~mine["order"].astype(str).str.startswith("ensemble(")]
            singles = singles[singles["context"] != "preceding_only"] if metric == "cond_nll_bpd" and \
                (singles["context"] != "preceding_only").any() else singles
            best = str(singles.loc[singles["value"].idxmin(), "order"])
            a, b = _pair(_values(pi, label, metric, ens_name), _values(pi, label, metric, best))
            add(claim, metric, a_cond, f"{label} {best} (best single)", _test(a, b, seed, -1))
        if "cond_nll_bpd" in metrics and ens_name:
            gain = _values(pi, label, "context_gain_bpd", ens_name)
            claim = "the context gain (as is minus observed-first) is positive"
            if len(gain):
                g = gain.to_numpy(float)
                add(claim, "context_gain_bpd", a_cond, "0", _test(g, np.zeros_like(g), seed, +1))
            else:
                add(claim, "context_gain_bpd", a_cond, "0", _untestable("every order is already observed-first"))
        for kind, other in (("control", arms["control"]), ("baseline", arms["baseline"])):
            rows.extend(_against(task, label, n_a, ens_name, kind, other, mine, rec, pi, seed))
    return rows


def _against(task, label, n_a, ens_name, kind, other, mine, rec, pi, seed) -> list[dict[str, Any]]:
    """Rows comparing the any-order model with the control or the baseline."""
    rows = []
    if kind == "control":
        claim = "observed-first beats the same network trained on raster only (control)"
        metrics = ("cond_nll_bpd", "lpips")
    else:
        claim = "beats the raster PixelCNN++"
        if other is not None:
            ratio = n_a / other[1] if other[1] else math.nan
            claim += " (matched)" if abs(ratio - 1) <= MATCH_TOLERANCE else f" (NOT matched: {other[1] / 1000:.0f}k vs {n_a / 1000:.0f}k params)"
        metrics = ("cond_nll_bpd", "lpips", "fid", "kid")
    for metric in metrics:
        if metric not in set(mine["metric"]):
            continue
        a_order = ens_name if metric == "cond_nll_bpd" else None
        a_name = f"{label} {ens_name}" if a_order else f"{label} mean over orders"
        if other is None:
            rows.append({"task": task, "claim": claim, "metric": metric, "A": a_name, "B": "",
                         **_untestable(f"no {kind} model in these records")})
            continue
        b_label = other[0]
        b_rec = rec[(rec["model_label"] == b_label) & (rec["metric"] == metric)]
        b_order = str(b_rec["order"].iloc[0]) if len(b_rec) else ""
        if metric in ("fid", "kid"):
            a_val = mine[(mine["metric"] == metric) & ~mine["order"].astype(str).str.startswith("ensemble(")]["value"].mean()
            b_val = float(b_rec["value"].iloc[0]) if len(b_rec) else math.nan
            res = _untestable("one value per set of completions, no paired per-image values", a_val, b_val)
        else:
            a, b = _pair(_values(pi, label, metric, a_order), _values(pi, b_label, metric, b_order))
            res = _test(a, b, seed, -1) if len(a) > 1 else _untestable("fewer than 2 paired images")
        rows.append({"task": task, "claim": claim, "metric": metric, "A": a_name, "B": f"{b_label} {b_order}", **res})
    return rows


def build_findings(records: pd.DataFrame, per_image: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """All finding rows (:data:`COLUMNS`) of a set of records and their per-image values."""
    if "model_label" not in records.columns:
        records = records.assign(model_label=records["model"], n_params=0)
    pi = main_per_image(per_image)
    rows = []
    for task, rec in records.groupby("task", sort=True):
        rows += task_findings(str(task), rec, pi[pi["task"] == task], seed)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_findings(records: pd.DataFrame, per_image: pd.DataFrame, out_dir: Path, fmt: str = "latex") -> list[Path]:
    """Write ``findings.md`` (always) and ``findings.tex`` (latex format) into ``out_dir``."""
    f = build_findings(records, per_image)
    if f.empty:
        return []
    disp = f.copy()
    for c in ("A value", "B value"):
        disp[c] = [("" if pd.isna(v) else f"{v:.4f}") for v in disp[c]]
    disp = disp.set_index("task")
    vals = pd.DataFrame(np.nan, index=disp.index, columns=disp.columns)
    cap = ("Findings: the paper's claims tested on these records (A − B: mean per-image difference with a 95% "
           "bootstrap CI over images; p: paired Wilcoxon signed-rank; 'reproduced' only where both say so)")
    paths = [out_dir / "findings.md"]
    atomic_write_text(paths[0], to_markdown(disp, vals, cap))
    if fmt == "latex":
        paths.append(out_dir / "findings.tex")
        atomic_write_text(paths[1], to_latex(disp, vals, cap, "tab:findings"))
    return paths
