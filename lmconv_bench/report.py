"""Records → tables (LaTeX / markdown / CSV) and figures (PNG). Tables are pivots made here,
never stored wide.

Tables:
- ``test_bpd``: rows = model · order, columns = datasets (test bits/dim ± stderr);
- ``task_<name>``: rows = model · order, columns = cond_nll_bpd, lpips, fid, kid;
- ``comparisons``: paired Wilcoxon tests on per-image values.

Every metric here is lower-is-better; the best value per column is bold. Orders a checkpoint was
not trained on are marked "(untrained)"; quick-profile numbers are flagged in the caption as not
comparable to published ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import UserError, unknown
from .io_utils import atomic_write_text, check_writable
from .records import COMPARISON_COLUMNS, read_records

FORMATS = ("latex", "markdown", "csv")
TASK_METRICS = ("cond_nll_bpd", "lpips", "fid", "kid")
DIGITS = {"test_bpd": 3, "cond_nll_bpd": 3, "lpips": 4, "fid": 2, "kid": 4}
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


# ------------------------------------------------------------------------------ statistics
def comparisons_for_run(run_dir: str | Path) -> list[dict[str, Any]]:
    """Paired tests on the same images: every (model, order) against the reference arm.

    The reference arm of a task is the fixed-order baseline (PixelCNN++ raster) when present,
    else the first order evaluated. Metrics: cond_nll_bpd and lpips (per-image values).
    """
    from .metrics.stats import paired_test

    p = Path(run_dir) / "per_image.csv"
    if not p.exists():
        return []
    df = pd.read_csv(p, dtype={"image_id": str})
    out: list[dict[str, Any]] = []
    for (task, metric), g in df.groupby(["task", "metric"], sort=True):
        if metric not in ("cond_nll_bpd", "lpips"):
            continue
        g = g.groupby(["model", "order", "image_id"], sort=False)["value"].mean().reset_index()
        arms = list(dict.fromkeys(zip(g["model"], g["order"])))
        ref = next((a for a in arms if a[0] != "lmconv"), arms[0])
        ref_vals = g[(g["model"] == ref[0]) & (g["order"] == ref[1])].set_index("image_id")["value"]
        for arm in arms:
            if arm == ref:
                continue
            vals = g[(g["model"] == arm[0]) & (g["order"] == arm[1])].set_index("image_id")["value"]
            common = ref_vals.index.intersection(vals.index)
            if len(common) < 2:
                continue
            t = paired_test(vals.loc[common].to_numpy(), ref_vals.loc[common].to_numpy())
            out.append({"task": task, "model_a": arm[0], "order_a": arm[1], "model_b": ref[0], "order_b": ref[1],
                        "metric": metric, "statistic": t["statistic"], "p_value": t["p_value"], "n": t["n"]})
    return out


# ------------------------------------------------------------------------------ tables
def _label(r) -> str:
    lab = f"{r['model']} {r['order']}"
    trained = r["order_trained"]
    if isinstance(trained, str):
        trained = trained.lower() == "true"
    return lab if trained else lab + " (untrained)"


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
    """Wide display table (strings 'v ± se') and the numeric values it shows (for bolding)."""
    df = df.assign(row=df.apply(_label, axis=1) if rows == "label" else df[rows])
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
    return values.apply(lambda col: col == col.min(skipna=True), axis=0).fillna(False)


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
        disp, vals = pivot(bpd, "label", "dataset")
        disp.index.name, disp.columns.name = "model / order", "dataset"
        tables.append({"name": "test_bpd", "caption": f"Test bits/dim per order and order ensemble{note}",
                       "display": disp, "values": vals, "long": bpd})
    for task, g in df[df["metric"].isin(TASK_METRICS)].groupby("task", sort=True):
        disp, vals = pivot(g, "label", "metric")
        cols = [m for m in TASK_METRICS if m in disp.columns]
        disp, vals = disp[cols], vals[cols]
        disp.index.name, disp.columns.name = "model / order", "metric"
        ctx = ", ".join(sorted(set(g["context"].astype(str))))
        tables.append({"name": f"task_{task}", "caption": f"{task}: completion metrics, lower is better "
                       f"(context: {ctx}){note}", "display": disp, "values": vals, "long": g})
    summary = summary_table(df)
    if summary is not None:
        disp, vals, best = summary
        tables.append({"name": "summary", "best": best, "caption": "Per task: the raster baseline against LMConv (order ensemble, "
                       f"and the mean over its trained orders); lower is better{note}", "display": disp, "values": vals,
                       "long": df[df["metric"].isin(TASK_METRICS)]})
    return tables


def summary_table(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None:
    """Rows = task, columns = (metric, arm): fixed-order baselines, the any-order model's order
    ensemble, and the mean over its trained single orders (± the stderr of that mean across orders).

    None when the records hold no task metric.
    """
    d = df[df["metric"].isin(TASK_METRICS)].copy()
    if d.empty:
        return None
    d["trained"] = d["order_trained"].map(lambda v: v if isinstance(v, bool) else str(v).lower() == "true")
    d["is_ens"] = d["order"].astype(str).str.startswith("ensemble(")
    pieces = []
    for (task, model, metric), g in d.groupby(["task", "model", "metric"], sort=False):
        singles = g[~g["is_ens"]]
        if len(singles) == 1 and not g["is_ens"].any():  # a fixed-order model: one value
            r = singles.iloc[0]
            pieces.append((task, metric, f"{model} {r['order']}", r["value"], r["stderr"]))
            continue
        for r in g[g["is_ens"]].itertuples():
            pieces.append((task, metric, f"{model} ensemble", r.value, r.stderr))
        tr = singles[singles["trained"]]
        if len(tr):
            err = tr["value"].std(ddof=1) / math.sqrt(len(tr)) if len(tr) > 1 else float("nan")
            pieces.append((task, metric, f"{model} mean of {len(tr)} orders", tr["value"].mean(), err))
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
        if mc:
            best[mc] = values[mc].eq(values[mc].min(axis=1), axis=0)
    return disp, values, best


def write_report(run_dirs: list[str] | None, fmt: str = "latex", out: str | None = None) -> Path:
    """Write tables (and PNG figures) for the given runs; returns the output directory."""
    if fmt not in FORMATS:
        raise unknown("report format", fmt, FORMATS)
    paths = find_runs(run_dirs)
    df = load_records(paths)
    out_dir = check_writable(Path(out) if out else Path("results/report"), is_dir=True)
    ext = {"latex": "tex", "markdown": "md", "csv": "csv"}[fmt]
    for t in build_tables(df):
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
    from .figures import completion_grids, nll_per_order_plot

    completion_grids(paths, out_dir)
    nll_per_order_plot(df, out_dir)
    return out_dir
