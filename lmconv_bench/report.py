"""Records → tables (LaTeX / markdown / CSV) and figures (PNG). Tables are pivots made here,
never stored wide.

Tables:
- ``test_bpd``: rows = model · order, columns = datasets (test bits/dim ± stderr);
- ``task_<name>``: rows = model · order, columns = cond_nll_bpd, lpips, fid, kid;
- ``comparisons``: paired Wilcoxon tests on per-image values.

Rows are named by ``model_label`` (family-preset, training orders, parameter count) and order.
Every metric but ``context gain`` is lower-is-better; the best value per column is bold (context
gain, higher-is-better, is never bold). Conditional metrics of any-order models run under the
order's ``observed_first`` form; the ``coverage`` column gives the ``trained_coverage`` of that
effective order and rows whose effective order was not trained are marked
"(untrained, coverage c)". ``cond_nll_bpd (as is)`` is the same network under the order as it is
(``context = preceding_only``), and ``context gain`` their per-image difference (± its stderr).
Quick-profile numbers are flagged in the caption as not comparable to published ones.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import UserError, unknown
from .io_utils import atomic_write_text, check_writable
from .records import COMPARISON_COLUMNS, PER_IMAGE_COLUMNS, read_records

FORMATS = ("latex", "markdown", "csv")
TASK_METRICS = ("cond_nll_bpd", "lpips", "fid", "kid", "psnr", "ssim", "l1_hole", "diversity")
AS_IS = "cond_nll_bpd (as is)"
GAIN = "context gain"
TASK_COLUMNS = ("cond_nll_bpd", AS_IS, GAIN, "lpips", "fid", "kid", "psnr", "ssim", "l1_hole", "diversity")
HIGHER_IS_BETTER = (GAIN, "psnr", "ssim", "diversity")
"""Columns never bolded as 'best = lowest' (higher is better, or, for diversity, neither)."""
DIGITS = {"test_bpd": 3, "cond_nll_bpd": 3, AS_IS: 3, GAIN: 3, "context_gain_bpd": 3, "lpips": 4, "fid": 2, "kid": 4,
          "psnr": 2, "ssim": 4, "l1_hole": 4, "diversity": 4}
QUICK_NOTE = "quick profile: small samples, not comparable to published numbers"


# ------------------------------------------------------------------------------ loading
def find_runs(run_dirs: list[str] | None) -> list[Path]:
    """The given run directories, or every run under ``results/runs/``."""
    if run_dirs:
        paths = [Path(p) for p in run_dirs]
        for p in paths:
            if not (p / "records.csv").exists():
                raise UserError(f"{p} has no records.csv; pass a directory written by `lmconv-bench run`")
        return paths
    root = Path("results/runs")
    paths = sorted(p.parent for p in root.glob("*/records.csv"))
    if not paths:
        raise UserError("no runs found under results/runs/; run `lmconv-bench run` first or pass RUN_DIR")
    return paths


def load_records(paths: list[Path]) -> pd.DataFrame:
    return pd.concat([read_records(p) for p in paths], ignore_index=True)


def load_per_image(paths: list[Path]) -> pd.DataFrame:
    """per_image.csv of every run (image ids as strings); empty when none has one."""
    frames = [pd.read_csv(p / "per_image.csv", dtype={"image_id": str}) for p in paths if (p / "per_image.csv").exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(PER_IMAGE_COLUMNS))


# ------------------------------------------------------------------------------ statistics
def companion_rows(rows: pd.DataFrame, records: pd.DataFrame) -> np.ndarray:
    """Boolean mask over ``rows``: the preceding-only ``cond_nll_bpd`` companions of reordered
    orders, recognised by a ``context_gain_bpd`` row for the same task, checkpoint and order in
    ``records`` (all False for files without a ``context`` column)."""
    if "context" not in rows.columns:
        return np.zeros(len(rows), dtype=bool)
    gains = set(zip(*(records[records["metric"] == "context_gain_bpd"][c] for c in ("task", "checkpoint_sha256", "order"))))
    return np.asarray([m == "cond_nll_bpd" and str(c) == "preceding_only" and (t, k, o) in gains
                       for m, c, t, k, o in zip(rows["metric"], rows["context"], rows["task"], rows["checkpoint_sha256"],
                                                rows["order"])], dtype=bool)


def main_per_image(df: pd.DataFrame) -> pd.DataFrame:
    """Per-image values with ``arm`` = model label and order, without the preceding-only
    companions of reordered orders (whose difference is ``context_gain_bpd``); lpips averaged over
    samples. Older files without labels use the registry name."""
    df = df.copy()
    if "model_label" not in df.columns:
        df["model_label"] = df["model"]
    df["model_label"] = df["model_label"].fillna(df["model"]).astype(str)
    df = df[~companion_rows(df, df)]
    keys = ["task", "metric", "model", "model_label", "order", "image_id"]
    return df.groupby(keys, sort=False)["value"].mean().reset_index()


def comparisons_for_run(run_dir: str | Path) -> list[dict[str, Any]]:
    """Paired tests on the same images: every (model, order) against the reference arm.

    The reference arm of a task is the fixed-order baseline (PixelCNN++ raster) when present,
    else the first order evaluated. Metrics: cond_nll_bpd (under the effective orders) and lpips
    (per-image values, averaged over samples). Models are named by their labels.
    """
    from .metrics.stats import paired_test

    p = Path(run_dir) / "per_image.csv"
    if not p.exists():
        return []
    df = main_per_image(pd.read_csv(p, dtype={"image_id": str}))
    out: list[dict[str, Any]] = []
    for (task, metric), g in df.groupby(["task", "metric"], sort=True):
        if metric not in ("cond_nll_bpd", "lpips"):
            continue
        arms = list(dict.fromkeys(zip(g["model_label"], g["order"], g["model"])))
        ref = next((a for a in arms if a[2] != "lmconv"), arms[0])
        ref_vals = g[(g["model_label"] == ref[0]) & (g["order"] == ref[1])].set_index("image_id")["value"]
        for arm in arms:
            if arm == ref:
                continue
            vals = g[(g["model_label"] == arm[0]) & (g["order"] == arm[1])].set_index("image_id")["value"]
            common = ref_vals.index.intersection(vals.index)
            if len(common) < 2:
                continue
            t = paired_test(vals.loc[common].to_numpy(), ref_vals.loc[common].to_numpy())
            out.append({"task": task, "model_a": arm[0], "order_a": arm[1], "model_b": ref[0], "order_b": ref[1],
                        "metric": metric, "statistic": t["statistic"], "p_value": t["p_value"], "n": t["n"]})
    return out


# ------------------------------------------------------------------------------ tables
def _truth(v) -> bool:
    return v if isinstance(v, bool) else str(v).lower() == "true"


def _name(r) -> str:
    """The model's name in tables: its label (older records without one: the registry name)."""
    lab = r.get("model_label") if hasattr(r, "get") else None
    return str(lab) if isinstance(lab, str) and lab else str(r["model"])


def _label(r) -> str:
    """Row label: model label and order, marked when the order run was not a trained one."""
    lab = f"{_name(r)} {r['order']}"
    if _truth(r["order_trained"]):
        return lab
    cov = r.get("trained_coverage") if hasattr(r, "get") else None
    return lab + (f" (untrained, coverage {float(cov):.2f})" if cov is not None and not pd.isna(cov) else " (untrained)")


def task_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The records of task tables, with ``column`` naming their table column: the metric, except
    ``cond_nll_bpd (as is)`` for the preceding-only companion rows of reordered orders and
    ``context gain`` for ``context_gain_bpd``."""
    d = df[df["metric"].isin((*TASK_METRICS, "context_gain_bpd"))].copy()
    col = d["metric"].where(~pd.Series(companion_rows(d, d), index=d.index), AS_IS)
    d["column"] = col.where(d["metric"] != "context_gain_bpd", GAIN)
    return d


def _row_sort_key(model: str, order: str) -> tuple:
    """Rows by model, then order family and variant number, ensembles after their orders."""
    order = str(order)
    if order.startswith("ensemble("):
        return (str(model), 1, order, 0)
    base, _, k = order.partition("/")
    return (str(model), 0, base, int(k) if k.isdigit() else 0)


def _cell(value: float, err: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    s = f"{value:.{digits}f}"
    if err is not None and not (isinstance(err, float) and math.isnan(err)):
        s += f" ± {err:.{digits}f}"
    return s


def pivot(df: pd.DataFrame, rows: str, cols: str, metric_of_col=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Wide display table (strings 'v ± se') and the numeric values it shows (for bolding).

    ``rows``: ``"label"`` (model label, order and untrained mark), ``"model_order"`` (model label
    and order) or a column name."""
    if rows == "label":
        df = df.assign(row=df.apply(_label, axis=1))
    elif rows == "model_order":
        df = df.assign(row=[f"{_name(r)} {r['order']}" for _, r in df.iterrows()])
    else:
        df = df.assign(row=df[rows])
    df = df.drop_duplicates(["row", cols], keep="first")
    values = df.pivot(index="row", columns=cols, values="value")
    errs = df.pivot(index="row", columns=cols, values="stderr")
    df = df.assign(_key=[_row_sort_key(m, o) for m, o in zip(df["model"], df["order"])]).sort_values("_key", kind="stable")
    row_order = list(dict.fromkeys(df["row"]))
    values, errs = values.loc[row_order], errs.loc[row_order]
    disp = values.copy().astype(object)
    for c in values.columns:
        d = DIGITS.get(metric_of_col(c) if metric_of_col else c, 3)
        disp[c] = [_cell(v, e, d) for v, e in zip(values[c], errs[c])]
    return disp, values


def _best_mask(values: pd.DataFrame) -> pd.DataFrame:
    """Bold the minimum of each lower-is-better column; never a higher-is-better one."""
    return values.apply(lambda col: (col == col.min(skipna=True)) & (col.name not in HIGHER_IS_BETTER), axis=0).fillna(False)


def to_latex(disp: pd.DataFrame, values: pd.DataFrame, caption: str, label: str, best: pd.DataFrame | None = None) -> str:
    """LaTeX via pandas Styler: every cell, index label and header escaped; booktabs; best bold
    (``best``: a boolean mask; default the minimum of each column)."""
    best = _best_mask(values) if best is None else best
    styler = (
        disp.style.format(escape="latex")
        .format_index(escape="latex", axis=0)
        .format_index(escape="latex", axis=1)
        .format_index_names(escape="latex", axis=0)
        .format_index_names(escape="latex", axis=1)
    )
    if best.to_numpy().any():
        styler = styler.apply(lambda _: np.where(best.to_numpy(), "textbf:--rwrap;", ""), axis=None)
    from pandas.io.formats.style_render import _escape_latex  # same escaping as Styler uses

    text = styler.to_latex(hrules=True, caption=_escape_latex(caption), label=label.replace("_", "-"),
                           position="t", column_format="l" + "r" * disp.shape[1])
    return text.replace("±", r"$\pm$")


def to_markdown(disp: pd.DataFrame, values: pd.DataFrame, caption: str, best: pd.DataFrame | None = None) -> str:
    best = _best_mask(values) if best is None else best
    head = [disp.index.name or ""] + [str(c) for c in disp.columns]
    lines = [f"**{caption}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, idx in enumerate(disp.index):
        cells = [f"**{v}**" if best.iloc[i, j] else str(v) for j, v in enumerate(disp.iloc[i])]
        lines.append("| " + " | ".join([str(idx), *cells]) + " |")
    return "\n".join(lines) + "\n"


def build_tables(df: pd.DataFrame) -> list[dict[str, Any]]:
    """All tables of a set of records: dicts with name, caption, display and numeric frames."""
    tables = []
    quick = df["profile"].astype(str).str.startswith("quick").any()
    note = f" ({QUICK_NOTE})" if quick else ""
    bpd = df[df["metric"] == "test_bpd"]
    if len(bpd):
        rows, sizes = across_datasets(bpd)
        disp, vals = pivot(rows, "label", "dataset")
        disp.index.name, disp.columns.name = "model / order", "dataset"
        tables.append({"name": "test_bpd", "caption": f"Test bits/dim per order and order ensemble; ± is the standard error across images{sizes}{note}",
                       "display": disp, "values": vals, "long": bpd})
    for task, g in task_columns(df).groupby("task", sort=True):
        disp, vals = pivot(g, "model_order", "column")
        cols = [m for m in TASK_COLUMNS if m in disp.columns]
        disp, vals = disp[cols], vals[cols]
        if "trained_coverage" in g.columns:
            cond = g[g["column"] == "cond_nll_bpd"] if (g["column"] == "cond_nll_bpd").any() else g
            cov = {f"{_name(r)} {r['order']}": (float(r["trained_coverage"]), _truth(r["order_trained"]))
                   for _, r in cond.iterrows()}
            disp.insert(0, "coverage", [_coverage_cell(*cov.get(i, (float("nan"), True))) for i in disp.index])
            vals.insert(0, "coverage", float("nan"))
        disp.index.name, disp.columns.name = "model / order", "metric"
        tables.append({"name": f"task_{task}", "caption": f"{task}: completion metrics, lower is better except context "
                       "gain; ± is the standard error across images (KID: jackknife over images); coverage: the "
                       "fraction of positions whose kernel masks under the effective order were trained "
                       f"(* = the effective order itself was not trained){note}", "display": disp,
                       "values": vals, "long": g})
    tables.extend(summary_tables(df, note))
    return tables


def summary_tables(df: pd.DataFrame, note: str = "") -> list[dict[str, Any]]:
    """The summary table (:func:`summary_table`): one named ``summary`` when the records hold one
    dataset, else one per dataset (``summary_<dataset>``), since each dataset has its own models and
    one table over all would be mostly empty columns."""
    datasets = sorted(df["dataset"].astype(str).unique()) if "dataset" in df.columns else []
    parts = [(f"summary_{ds}", df[df["dataset"].astype(str) == ds]) for ds in datasets] if len(datasets) > 1 else [("summary", df)]
    out = []
    for name, part in parts:
        summary = summary_table(part)
        if summary is None:
            continue
        disp, vals, best = summary
        out.append({"name": name, "best": best, "caption": "Per task and model: one value per single-order model; "
                    "an any-order model's order ensemble and its best single order; lower is better; ± is the "
                    f"standard error across images (KID: jackknife over images){note}", "display": disp, "values": vals,
                    "long": part[part["metric"].isin(TASK_METRICS)]})
    return out


PARAMS_SUFFIX = re.compile(r" (\d+k)$")


def across_datasets(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Records of several datasets made to share table rows: one model's labels differ across
    datasets only by their parameter count (``... 468k`` on MNIST, ``... 469k`` on CIFAR-10), so the
    count leaves the label and goes into a caption note instead. One dataset: unchanged, no note."""
    if "dataset" not in df.columns or df["dataset"].nunique() < 2:
        return df, ""
    names = [_name(r) for _, r in df.iterrows()]
    short = [PARAMS_SUFFIX.sub("", n) for n in names]
    sizes: dict[str, dict[str, str]] = {}
    for n, sh, ds in zip(names, short, df["dataset"].astype(str)):
        m = PARAMS_SUFFIX.search(n)
        if m:
            sizes.setdefault(sh, {})[ds] = m.group(1)
    note = "; ".join(f"{sh}: " + ", ".join(f"{ds} {k}" for ds, k in sorted(per.items())) for sh, per in sizes.items())
    return df.assign(model_label=short), (f"; parameters per dataset: {note}" if note else "")


def _coverage_cell(cov: float, trained: bool) -> str:
    if math.isnan(cov):
        return "–"
    return f"{cov:.2f}" + ("" if trained else "*")


def summary_table(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None:
    """Rows = task, columns = (metric, arm). Arms per model: a model evaluated under one order gives
    that value; an any-order model gives its order ensemble and its best single order (the lowest
    mean among its single orders, ± that order's stderr across images). The conditional metrics are
    those of the effective orders (the ``as is`` companions and context gains are left out).

    None when the records hold no task metric.
    """
    d = task_columns(df)
    d = d[d["column"].isin(TASK_METRICS)].copy()
    if d.empty:
        return None
    d["name"] = [_name(r) for _, r in d.iterrows()]
    d["is_ens"] = d["order"].astype(str).str.startswith("ensemble(")
    pieces = []
    for (task, name, metric), g in d.groupby(["task", "name", "metric"], sort=False):
        singles = g[~g["is_ens"]]
        if len(singles) == 1 and not g["is_ens"].any():  # one order: one value
            r = singles.iloc[0]
            pieces.append((task, metric, f"{name} {r['order']}", r["value"], r["stderr"]))
            continue
        for r in g[g["is_ens"]].itertuples():
            pieces.append((task, metric, f"{name} ensemble", r.value, r.stderr))
        if len(singles):
            best = singles.loc[singles["value"].idxmin()]
            pieces.append((task, metric, f"{name} best single order", best["value"], best["stderr"]))
    long = pd.DataFrame(pieces, columns=["task", "metric", "arm", "value", "stderr"])
    long["col"] = long["metric"] + ": " + long["arm"]
    metric_of = dict(zip(long["col"], long["metric"]))
    cols = sorted(metric_of, key=lambda c: (TASK_METRICS.index(metric_of[c]), c))
    values = long.pivot(index="task", columns="col", values="value")[cols]
    errs = long.pivot(index="task", columns="col", values="stderr")[cols]
    disp = values.copy().astype(object)
    for c in cols:
        disp[c] = [_cell(v, e, DIGITS[metric_of[c]]) for v, e in zip(values[c], errs[c])]
    disp.index.name, disp.columns.name = "task", "metric: model"
    # the best arm per task and metric: row-wise within each metric's columns
    best = pd.DataFrame(False, index=values.index, columns=cols)
    for m in TASK_METRICS:
        mc = [c for c in cols if metric_of[c] == m]
        if mc and m not in HIGHER_IS_BETTER:
            best[mc] = values[mc].eq(values[mc].min(axis=1), axis=0)
        elif mc and m in ("psnr", "ssim"):
            best[mc] = values[mc].eq(values[mc].max(axis=1), axis=0)
    return disp, values, best


BIN_METRICS = ("cond_nll_bpd", "lpips", "psnr", "ssim", "l1_hole")


def binned_tables(per_image: pd.DataFrame, bins: int = 10) -> list[dict[str, Any]]:
    """Per task whose images' occluded fractions fall in more than one of ``bins`` equal bins over
    [0, 1] (e.g. ``strokes``, or ``random`` with its per-image spread): rows = model · order ·
    metric, columns = bins, cells = mean ± stderr over the images in the bin (``n`` per bin in the
    caption). LaMa reports its results in such bins."""
    if per_image.empty or "occluded_fraction" not in per_image.columns:
        return []
    df = main_per_image_with_fraction(per_image)
    df = df[df["metric"].isin(BIN_METRICS)]
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for task, g in df.groupby("task", sort=True):
        b = np.clip(np.digitize(g["occluded_fraction"], edges[1:-1]), 0, bins - 1)
        if len(set(b)) < 2:
            continue
        g = g.assign(bin=[f"{edges[i]:.1f}-{edges[i + 1]:.1f}" for i in b])
        g = g.assign(row=[f"{lab} {o} {m}" for lab, o, m in zip(g["model_label"], g["order"], g["metric"])])
        stats = g.groupby(["row", "bin"])["value"].agg(["mean", "std", "count"]).reset_index()
        stats["stderr"] = stats["std"] / np.sqrt(stats["count"])
        values = stats.pivot(index="row", columns="bin", values="mean")
        errs = stats.pivot(index="row", columns="bin", values="stderr")
        disp = values.copy().astype(object)
        for c in values.columns:
            disp[c] = [_cell(v, e, 4) for v, e in zip(values[c], errs[c])]
        counts = g.drop_duplicates("image_id").groupby("bin").size()
        disp.index.name, disp.columns.name = "model / order / metric", "occluded fraction"
        cap = (f"{task}: metrics binned by the occluded fraction of each image (mean ± stderr across the images of a "
               f"bin; images per bin: {', '.join(f'{k}: {v}' for k, v in counts.items())})")
        out.append({"name": f"bins_{task}", "caption": cap, "display": disp,
                    "values": pd.DataFrame(np.nan, index=disp.index, columns=disp.columns), "long": stats,
                    "best": pd.DataFrame(False, index=disp.index, columns=disp.columns)})
    return out


COST_METRICS = ("cond_nll_bpd", "lpips")


def cost_table(df: pd.DataFrame, samplers: dict[str, str]) -> dict[str, Any] | None:
    """Metric value beside its cost, per task, model and sampler: for ``cond_nll_bpd`` (the
    likelihood cell) and ``lpips`` (the completion cell), the mean over the model's single orders
    (ensembles and preceding-only companions left out) of the value, of ``nfe`` (network
    evaluations per image, in full-forward-pass equivalents, as counted by the samplers) and of
    the cell's seconds per image (``wall_s / n``). ``samplers``: run id → sampler of that run."""
    if not {"nfe", "wall_s"} <= set(df.columns):
        return None
    d = df[df["metric"].isin(COST_METRICS) & ~df["order"].astype(str).str.startswith("ensemble(")]
    d = d[~companion_rows(d, df)]  # the preceding-only companion of a reordered order is not its own cell
    d = d[np.isfinite(pd.to_numeric(d["nfe"], errors="coerce"))]
    if d.empty:
        return None
    d = d.assign(model_name=[_name(r) for _, r in d.iterrows()], sampler=[samplers.get(str(r), "?") for r in d["run_id"]],
                 s_per_image=pd.to_numeric(d["wall_s"]) / d["n"])
    g = d.groupby(["task", "model_name", "sampler", "metric"], sort=True)
    stats = g.agg(value=("value", "mean"), nfe=("nfe", "mean"), s_per_image=("s_per_image", "mean"),
                  orders=("order", "nunique")).reset_index()
    disp = pd.DataFrame({"model": stats["model_name"].tolist(), "sampler": stats["sampler"].tolist(),
                         "metric": stats["metric"].tolist(), "value": [f"{v:.4f}" for v in stats["value"]],
                         "nfe": [f"{v:.1f}" for v in stats["nfe"]],
                         "seconds per image": [f"{v:.3f}" for v in stats["s_per_image"]],
                         "orders": stats["orders"].astype(str).tolist()},
                        index=pd.Index(stats["task"].tolist(), name="task"))
    cap = ("Cost: each metric's value beside what it cost, means over the model's single orders (orders: how many). "
           "nfe: network evaluations in full-forward-pass equivalents, counted by the likelihood code and the samplers: "
           "per image for cond_nll_bpd (the pass under the effective order), per completion for lpips (the sampler's "
           "work). Seconds per image: the cell's wall time (likelihood passes, or sampling of all K samples plus the "
           "metrics) over its images, on the run's device")
    return {"name": "cost", "caption": cap, "display": disp,
            "values": pd.DataFrame(np.nan, index=disp.index, columns=disp.columns), "long": stats,
            "best": pd.DataFrame(False, index=disp.index, columns=disp.columns)}


def run_samplers(paths: list[Path]) -> dict[str, str]:
    """run id → the sampler its manifest names (``cached`` or ``naive``)."""
    import json

    out = {}
    for p in paths:
        try:
            m = json.loads((p / "manifest.json").read_text())
            out[str(m["run_id"])] = str(m.get("sampler", "?"))
        except (OSError, ValueError, KeyError):
            continue
    return out


def main_per_image_with_fraction(per_image: pd.DataFrame) -> pd.DataFrame:
    """:func:`main_per_image` keeping each image's occluded fraction."""
    frac = per_image.drop_duplicates(["task", "image_id"]).set_index(["task", "image_id"])["occluded_fraction"]
    df = main_per_image(per_image)
    return df.assign(occluded_fraction=[frac.get((t, i), np.nan) for t, i in zip(df["task"], df["image_id"])])


def write_report(run_dirs: list[str] | None, fmt: str = "latex", out: str | None = None, bins: int = 10,
                 published: str | None = None) -> Path:
    """Write tables (and PNG figures) for the given runs; returns the output directory. ``bins``:
    the number of occluded-fraction bins of the binned tables (0: none). ``published``: the
    published-figures YAML (default ``results/published.yaml`` when present)."""
    if fmt not in FORMATS:
        raise unknown("report format", fmt, FORMATS)
    paths = find_runs(run_dirs)
    df = load_records(paths)
    out_dir = check_writable(Path(out) if out else Path("results/report"), is_dir=True)
    ext = {"latex": "tex", "markdown": "md", "csv": "csv"}[fmt]
    if not isinstance(bins, int) or bins < 0:
        raise UserError(f"--bins must be a non-negative number of bins, got {bins!r}")
    tables = build_tables(df) + (binned_tables(load_per_image(paths), bins) if bins else [])
    cost = cost_table(df, run_samplers(paths))
    if cost is not None:
        tables.append(cost)
    for t in tables:
        target = out_dir / f"{t['name']}.{ext}"
        if fmt == "latex":
            atomic_write_text(target, to_latex(t["display"], t["values"], t["caption"], f"tab:{t['name']}", t.get("best")))
        elif fmt == "markdown":
            atomic_write_text(target, to_markdown(t["display"], t["values"], t["caption"], t.get("best")))
        else:
            atomic_write_text(target, t["long"].to_csv(index=False))
    comps = [pd.read_csv(p / "comparisons.csv") for p in paths if (p / "comparisons.csv").exists()]
    comps = [c for c in comps if len(c)]
    if comps:
        c = pd.concat(comps, ignore_index=True)[list(COMPARISON_COLUMNS)]
        keys = [(r.task, r.metric, *_row_sort_key(r.model_a, r.order_a)) for r in c.itertuples()]
        c = c.iloc[sorted(range(len(c)), key=keys.__getitem__)]
        target = out_dir / f"comparisons.{ext}"
        if fmt == "csv":
            atomic_write_text(target, c.to_csv(index=False))
        else:
            disp = c.assign(statistic=c["statistic"].map(lambda v: f"{v:.1f}"),
                            p_value=c["p_value"].map(lambda v: f"{v:.2g}")).set_index("task")
            vals = pd.DataFrame(np.nan, index=disp.index, columns=disp.columns)
            cap = "Paired Wilcoxon signed-rank tests on per-image values (a vs b)"
            text = to_latex(disp, vals, cap, "tab:comparisons") if fmt == "latex" else to_markdown(disp, vals, cap)
            atomic_write_text(target, text)
    from .published import load_published, published_table

    entries = load_published(published) if published else load_published()
    if entries:
        pub = published_table(df, entries).set_index("dataset")
        cap = ("Published figures beside ours: comparable only where dataset, metric and protocol match, so only "
               "full-profile records are shown (quick-profile numbers are labelled not comparable)")
        vals = pd.DataFrame(np.nan, index=pub.index, columns=pub.columns)
        text = {"latex": lambda: to_latex(pub, vals, cap, "tab:published"), "markdown": lambda: to_markdown(pub, vals, cap),
                "csv": lambda: pub.reset_index().to_csv(index=False)}[fmt]()
        atomic_write_text(out_dir / f"published.{ext}", text)
    from .figures import completion_grids, nll_per_order_plot

    completion_grids(paths, out_dir)
    nll_per_order_plot(df, out_dir)
    return out_dir
