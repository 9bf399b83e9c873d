"""Reference result files and the regression check on checkpoints.

A *reference CSV* is the ``records.csv`` of one finished run, preceded by ``# key: value`` header
lines that make it reproducible on its own::

    # lmconv-bench reference results v1
    # command: <the run's command line>
    # git_commit: <commit of the code that produced the numbers>
    # date: <UTC time of freezing>
    # run_config: {"task": ..., "orders": ..., "samples": ..., "seed": ..., ...}   (JSON)
    # checkpoints: {"<sha256>": "<file name in the reference checkpoint folder>", ...}
    # image_ids: {"<task>": ["<id>", ...]}
    run_id,task,...            (RECORD_COLUMNS, one row per measured value)

:func:`freeze` writes one from a run directory. :func:`check` recomputes exactly the cells of such a
file (same task, orders, metrics, samples, seeds and image ids), compares each value with the
recorded one under a per-metric tolerance (:data:`TOLERANCES`) and reports the drifting cells.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UserError, unknown
from .io_utils import atomic_write_text, check_writable, writer_lock
from .records import METRIC_UNITS, RECORD_COLUMNS, read_records

MAGIC = "# lmconv-bench reference results v1"
HEADER_KEYS = ("command", "git_commit", "date", "run_config", "checkpoints", "image_ids")
JSON_KEYS = ("run_config", "checkpoints", "image_ids")
KEY_COLUMNS = ("task", "model_label", "order", "metric", "context")
"""A reference cell: the model by its label (family-preset, training orders, parameter count), the
order asked for, the metric, and the context (which tells an order's observed-first conditional
NLL from its as-is companion)."""

#: (absolute, relative) tolerance per metric: a value passes when |obtained - expected| <=
#: max(absolute, relative * |expected|). Likelihoods are deterministic up to float summation
#: order, so their tolerance is tight (bits/dim); sampled metrics can change when one sample
#: flips on other hardware, so theirs is looser.
TOLERANCES: dict[str, tuple[float, float]] = {
    "test_bpd": (1e-3, 0.0),
    "cond_nll_bpd": (1e-3, 0.0),
    "lpips": (0.02, 0.0),
    "fid": (1.0, 0.05),
    "kid": (0.005, 0.1),
    "context_gain_bpd": (2e-3, 0.0),
}


# ------------------------------------------------------------------------------ reading / writing
@dataclass
class Reference:
    """A parsed reference CSV: its header facts and its records (a DataFrame of RECORD_COLUMNS)."""

    path: Path
    command: str
    git_commit: str
    date: str
    run_config: dict[str, Any]
    checkpoints: dict[str, str]  # sha256 -> file name
    image_ids: dict[str, list[str]]  # task -> ids
    records: pd.DataFrame
    version: str = "unknown"  # lmconv-bench version that made it (absent in older files)


def read_reference(path: str | Path) -> Reference:
    """Parse a reference CSV (UserError naming the problem if it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"reference file {path} does not exist; pass a CSV written by `lmconv-bench freeze`")
    text = path.read_text()
    lines = text.splitlines()
    if not lines or lines[0].strip() != MAGIC:
        raise UserError(f"{path} is not a lmconv-bench reference CSV (first line must be {MAGIC!r}); "
                        "make one with `lmconv-bench freeze RUN_DIR --out CSV`")
    header: dict[str, Any] = {}
    n_header = 1
    for line in lines[1:]:
        if not line.startswith("#"):
            break
        n_header += 1
        m = re.match(r"#\s*([a-z_]+):\s?(.*)$", line)
        if m:
            header[m.group(1)] = m.group(2)
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise UserError(f"{path} lacks header line(s) {', '.join(missing)}; regenerate it with `lmconv-bench freeze`")
    for k in JSON_KEYS:
        try:
            header[k] = json.loads(header[k])
        except json.JSONDecodeError:
            raise UserError(f"{path}: header '{k}' is not valid JSON; regenerate it with `lmconv-bench freeze`") from None
    try:
        records = pd.read_csv(io.StringIO("\n".join(lines[n_header:])))
    except (pd.errors.ParserError, pd.errors.EmptyDataError):
        raise UserError(f"{path}: the records after the header are not a CSV table") from None
    lacking = set(RECORD_COLUMNS) - set(records.columns)
    if lacking or records.empty:
        raise UserError(f"{path}: the records lack columns {sorted(lacking)} or are empty; regenerate it with `lmconv-bench freeze`")
    if not (isinstance(header["run_config"], dict) and isinstance(header["checkpoints"], dict)
            and isinstance(header["image_ids"], dict)):
        raise UserError(f"{path}: header run_config/checkpoints/image_ids must be JSON objects; regenerate it with `lmconv-bench freeze`")
    return Reference(path, header["command"], header["git_commit"], header["date"], header["run_config"],
                     header["checkpoints"], header["image_ids"], records, header.get("lmconv_bench_version", "unknown"))


def freeze(run_dir: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write the records of a finished run as a reference CSV at ``out`` (atomically).

    Refuses to overwrite an existing file unless ``force``.
    """
    run_dir, out = Path(run_dir), Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; pass a file name such as {out / 'task.csv'}")
    if out.resolve().parent == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise UserError(f"--out {out} lies inside the run directory {run_dir}; write the reference elsewhere "
                        "(e.g. results/reference/ci/TASK.csv)")
    records = read_records(run_dir)
    mpath = run_dir / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise UserError(f"{run_dir} has no manifest.json; pass a directory written by `lmconv-bench run`") from None
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{mpath} is unreadable or corrupt; rerun the `lmconv-bench run` command that made it") from None
    if not isinstance(manifest, dict) or manifest.get("image_ids") is None or "config" not in manifest:
        raise UserError(f"{run_dir} is not finished (its manifest has no image ids); rerun the same `lmconv-bench run` command to complete it")
    with writer_lock(out.parent, "reference folder"):
        if out.exists() and not force:
            raise UserError(f"{out} exists; pass --force to replace it, or choose another --out")
        check_writable(out)
        cfg = dict(manifest["config"])
        cfg.pop("checkpoints", None)
        checkpoints = {sha: Path(p).name for p, sha in manifest["checkpoints"].items()}
        header = {
            "command": manifest.get("command", ""),
            "git_commit": manifest.get("git_commit") or "unknown",
            "lmconv_bench_version": manifest.get("lmconv_bench_version") or "unknown",
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "run_config": json.dumps(cfg, sort_keys=True),
            "checkpoints": json.dumps(checkpoints, sort_keys=True),
            "image_ids": json.dumps(manifest["image_ids"]),
        }
        body = io.StringIO()
        records.to_csv(body, index=False, columns=list(RECORD_COLUMNS))
        text = MAGIC + "\n" + "".join(f"# {k}: {v}\n" for k, v in header.items()) + body.getvalue()
        atomic_write_text(out, text)
    return out


def reference_files(items: list[str]) -> list[Path]:
    """Expand ``--reference`` arguments: files as given, folders to their ``*.csv`` (sorted)."""
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.csv"))
            if not found:
                raise UserError(f"{p} holds no *.csv reference files; pass a CSV written by `lmconv-bench freeze`")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"reference {p} does not exist; pass a CSV written by `lmconv-bench freeze`, or a folder of them")
    return files


# ------------------------------------------------------------------------------ recomputation
def parse_tolerances(items: list[str] | None) -> dict[str, tuple[float, float]]:
    """``["lpips=0.05", "fid=2:0.1"]`` (absolute[:relative]) over :data:`TOLERANCES`."""
    tol = dict(TOLERANCES)
    for item in items or ():
        name, _, val = item.partition("=")
        if name not in METRIC_UNITS:
            raise unknown("metric in --tolerance", name, tuple(METRIC_UNITS))
        try:
            parts = [float(v) for v in val.split(":")]
        except ValueError:
            parts = []
        if len(parts) not in (1, 2) or any(p < 0 or math.isnan(p) for p in parts):
            raise UserError(f"--tolerance {item!r}: expected METRIC=ABS or METRIC=ABS:REL with non-negative numbers, e.g. lpips=0.05")
        tol[name] = (parts[0], parts[1] if len(parts) == 2 else 0.0)
    return tol


def _orders_spec(ref: Reference) -> str:
    """The order SPEC that recomputes exactly the reference's cells.

    An ensemble row carries its SPEC (``ensemble(SPEC)``); otherwise the individual any-order
    orders are listed (fixed-order models evaluate their own order whatever the SPEC).
    """
    orders = [str(o) for o in ref.records["order"].unique()]
    ens = [o[len("ensemble("):-1] for o in orders if o.startswith("ensemble(") and o.endswith(")")]
    if len(set(ens)) > 1:
        raise UserError(f"{ref.path} mixes ensembles of different order SPECs {sorted(set(ens))}; split it into one file per SPEC")
    if ens:
        return ens[0]
    from .models.base import get_model_class

    rows = ref.records
    from .cells.model_entry import is_single_order_label

    any_order = [m for m in rows["model"].unique() if get_model_class(str(m)).fixed_order is None]
    rows_any = rows[rows["model"].isin(any_order)]
    if "model_label" in rows_any.columns:  # single-order controls evaluate their own order whatever the SPEC
        rows_any = rows_any[[not is_single_order_label(str(lab)) for lab in rows_any["model_label"]]]
    names = rows_any["order"].unique().tolist()
    if not names:  # only fixed-order models: they evaluate their own order whatever the SPEC
        names = rows["order"].unique().tolist()
    return ",".join(dict.fromkeys(str(o) for o in names))


def _resolve_checkpoints(ref: Reference, given: list[str] | None, log) -> list[str]:
    """Checkpoint paths to evaluate: the given ones, or the recorded reference files by name."""
    from .checkpoints import read_config
    from .io_utils import file_sha256
    from .reference import reference_dir

    models = sorted(set(ref.records["model"]))
    if given:
        paths = list(given)
        given_models = {read_config(p).model for p in paths}
        lacking = [m for m in models if m not in given_models]
        if lacking:
            raise UserError(f"the reference has cells for model(s) {', '.join(lacking)} but no --checkpoint of that model was given; "
                            "pass one per model, or omit --checkpoint to use the reference checkpoints")
        return list(dict.fromkeys(paths))
    paths = []
    for sha, name in sorted(ref.checkpoints.items(), key=lambda kv: kv[1]):
        p = reference_dir() / name
        if not p.is_file():
            raise UserError(f"reference checkpoint {name} is not in {reference_dir()}; pass --checkpoint PATH "
                            "or set LMCONV_BENCH_REFERENCE_DIR to the folder that holds it")
        if file_sha256(p) != sha:
            log(f"note: {p} differs from the checkpoint the reference was made with (sha256 {sha[:12]}); checking it anyway")
        paths.append(str(p))
    return paths


@dataclass
class CheckResult:
    table: pd.DataFrame  # one row per reference cell: keys, expected, obtained, diff, tolerance, ok
    run_dir: Path

    @property
    def failed(self) -> pd.DataFrame:
        return self.table[~self.table["ok"]]

    @property
    def ok(self) -> bool:
        return self.failed.empty


def compare(expected: pd.DataFrame, obtained: pd.DataFrame, tol: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """Join expected and obtained records on :data:`KEY_COLUMNS` and test each.

    A reference cell with no obtained value fails (``obtained`` NaN).
    """
    exp = expected[list(KEY_COLUMNS) + ["value"]].rename(columns={"value": "expected"})
    dup = exp.duplicated(list(KEY_COLUMNS))
    if dup.any():
        raise UserError("the reference has several values for the same task/model label/order/metric/context; "
                        "it must come from one run with one checkpoint per model label")
    got = obtained[list(KEY_COLUMNS) + ["value"]].rename(columns={"value": "obtained"})
    t = exp.merge(got, on=list(KEY_COLUMNS), how="left")
    t["diff"] = t["obtained"] - t["expected"]
    t["tolerance"] = [max(tol[m][0], tol[m][1] * abs(e)) for m, e in zip(t["metric"], t["expected"])]
    t["ok"] = t["diff"].abs() <= t["tolerance"]  # NaN (missing or non-finite) compares False
    from .report import TASK_METRICS, _row_sort_key

    rank = {m: i for i, m in enumerate(("test_bpd", *TASK_METRICS))}
    keys = [(task, *_row_sort_key(model, order), rank.get(metric, 99), str(ctx))
            for task, model, order, metric, ctx in zip(t["task"], t["model_label"], t["order"], t["metric"], t["context"])]
    return t.iloc[sorted(range(len(t)), key=keys.__getitem__)].reset_index(drop=True)


def check(reference: str | Path, checkpoints: list[str] | None = None, tolerances: list[str] | None = None,
          data_root: str | None = None, out: str | None = None, device: str = "auto", batch_size: int = 32,
          progress: bool = True, log=print) -> CheckResult:
    """Recompute the cells of a reference CSV and compare them (see the module docstring)."""
    from .evaluate import RunConfig, run

    ref = read_reference(reference)
    log(f"{ref.path}: reference made by lmconv-bench {ref.version} at git commit {ref.git_commit[:12]} on {ref.date}")
    tol = parse_tolerances(tolerances)
    rc = ref.run_config
    tasks = sorted(set(ref.records["task"]))
    if len(tasks) != 1:
        raise UserError(f"{ref.path} holds records of {len(tasks)} tasks; a reference file covers one task")
    ids = ref.image_ids.get(tasks[0])
    if not ids:
        raise UserError(f"{ref.path}: no image ids recorded for task {tasks[0]}; regenerate it with `lmconv-bench freeze`")
    paths = _resolve_checkpoints(ref, checkpoints, log)
    from .config import METRICS

    # derived rows (context_gain_bpd) come with cond_nll_bpd; only measured metrics are requested
    metrics = tuple(dict.fromkeys(str(m) for m in ref.records["metric"] if str(m) in METRICS))
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="lmconv-bench-check-")
        out = str(Path(tmp.name) / "run")
    cfg = RunConfig(
        task=tasks[0], orders=_orders_spec(ref), checkpoints=tuple(paths), profile=rc.get("profile", "quick"),
        limit=rc.get("limit"), metrics=metrics, samples=int(rc.get("samples", 1)),
        sampler=rc.get("sampler", "cached"), temperature=float(rc.get("temperature", 1.0)),
        seed=int(rc.get("seed", 0)), image_ids=tuple(str(i) for i in ids), data_root=data_root, out=out,
        batch_size=batch_size, device=device, progress=progress,
    )
    try:
        run_dir = run(cfg, argv=["lmconv-bench", "check", "--reference", str(reference)], summary=False)
        table = compare(ref.records, read_records(run_dir), tol)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return CheckResult(table, Path(out))


def print_check(result: CheckResult, reference: str | Path) -> None:
    """The obtained / expected / diff table (rich), then one verdict line naming drifting cells."""
    from rich.table import Table

    from .progress import stdout_console

    t = result.table
    table = Table(title=f"check: {reference}")
    for col in ("task", "model", "order", "metric", "context", "expected", "obtained", "diff", "tolerance", "status"):
        table.add_column(col, justify="right" if col in ("expected", "obtained", "diff", "tolerance") else "left")
    for r in t.itertuples():
        table.add_row(r.task, r.model_label, r.order, r.metric, str(r.context), f"{r.expected:.6g}", f"{r.obtained:.6g}",
                      f"{r.diff:+.3g}", f"{r.tolerance:.3g}", "ok" if r.ok else "DRIFT")
    stdout_console().print(table)


def verdict(result: CheckResult) -> str:
    """One line: ``ok: N cells within tolerance`` or ``FAILED: k of N cells drifted: cell; cell``."""
    n = len(result.table)
    if result.ok:
        return f"ok: all {n} cells within tolerance"
    cells = "; ".join(f"{r.task} {r.model_label} {r.order} {r.metric} [{r.context}] ({r.diff:+.4g})" for r in result.failed.itertuples())
    return f"FAILED: {len(result.failed)} of {n} cells drifted: {cells}"
