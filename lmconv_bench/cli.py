"""The ``lmconv-bench`` command line (typer). Thin commands: parse options, call library code.

User errors (:class:`~lmconv_bench.errors.UserError`) are printed as one line on stderr with exit
status 2, never as a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import UserError

app = typer.Typer(
    name="lmconv-bench",
    help="Benchmark any-order autoregressive image models (LMConv, PixelCNN++) on image completion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Performance ratios measured side by side in one run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

DataRoot = Annotated[
    Optional[str],
    typer.Option(
        "--data-root",
        help="Directory with MNIST/raw, cifar-10-batches-py and celeba/ "
        "(default: $LMCONV_BENCH_DATA, then ~/.cache/lmconv_bench/data).",
    ),
]


def _print_json_last(obj) -> None:
    """Print ``obj`` as one JSON line (the contract: JSON is the last line of output)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------ data
@app.command("data")
def data_cmd(
    verify: Annotated[bool, typer.Option("--verify", help="Load every split and check counts and content (slower).")] = False,
    data_root: DataRoot = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (last line).")] = False,
) -> None:
    """Show where each dataset was found, its counts per split, and what is missing."""
    from rich.console import Console
    from rich.table import Table

    from .data import inspect_datasets

    rows = inspect_datasets(data_root, verify=verify)
    if as_json:
        _print_json_last(rows)
        return
    table = Table(title="lmconv-bench datasets")
    for col in ("dataset", "status", "counts", "path", "notes"):
        table.add_column(col, overflow="fold")
    for r in rows:
        counts = ", ".join(f"{k} {v}" for k, v in (r.get("counts") or {}).items())
        notes = "; ".join([*r.get("warnings", []), r.get("how_to_get", "") if r.get("status") != "found" else ""])
        table.add_row(r["name"], r["status"], counts, str(r.get("path", "")), notes.strip("; "))
    Console().print(table)


# ------------------------------------------------------------------------------ tasks
@app.command("tasks")
def tasks_cmd(
    show: Annotated[Optional[str], typer.Option("--show", help="Show one task's full definition (name or YAML path).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (last line) instead of a table.")] = False,
) -> None:
    """List the shipped completion tasks, or show one definition."""
    from rich.console import Console
    from rich.table import Table

    from .config import get_task, load_task_file, task_names

    if show:
        t = load_task_file(show) if show.endswith((".yaml", ".yml")) else get_task(show)
        d = t.to_dict()
        if as_json:
            _print_json_last(d)
        else:
            import yaml

            typer.echo(f"# {t.source}")
            typer.echo(yaml.safe_dump(d, sort_keys=False).rstrip())
        return
    tasks = [get_task(n) for n in task_names()]
    if as_json:
        _print_json_last([t.to_dict() for t in tasks])
        return
    table = Table(title=f"{len(tasks)} tasks (run with --task NAME, or --task FAMILY --dataset D)")
    for col in ("task", "dataset", "split", "mask", "quick n", "full n", "metrics"):
        table.add_column(col)
    for t in tasks:
        params = ", ".join(f"{k}={v}" for k, v in t.mask_params.items())
        q, f = t.profiles["quick"], t.profiles["full"]
        table.add_row(
            t.name, t.dataset, t.split, t.mask_family + (f" ({params})" if params else ""),
            str(q.n_images or "all"), str(f.n_images or "all"), " ".join(t.metrics),
        )
    Console().print(table)


# ------------------------------------------------------------------------------ orders
def _parse_size(size: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise UserError(f"--size must look like 28x28 (HxW, positive integers), got {size!r}") from None
    return h, w


@app.command("orders")
def orders_cmd(
    size: Annotated[str, typer.Option("--size", help="Image size HxW, e.g. 28x28.")],
    orders: Annotated[str, typer.Option("--orders", help="Order SPEC: 'all', a base name (its 8 variants: raster, s_curve, hilbert, center_last), NAME/k, or a comma list.")] = "s_curve",
    as_json: Annotated[bool, typer.Option("--json", help="Print {name: [flat indices in visiting order]} as the last line.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw the orders as curves into this PNG file.")] = None,
) -> None:
    """Print generation orders as permutations of the H*W pixels, or draw them."""
    from . import orders as O

    h, w = _parse_size(size)
    names = O.parse_spec(orders, h, w)
    if plot is not None:
        from .io_utils import check_writable

        check_writable(plot)
        O.plot_orders(names, h, w, str(plot))
        typer.echo(f"wrote {plot} ({len(names)} orders)", err=as_json)
    if as_json:
        _print_json_last({n: O.get_order(n, h, w).tolist() for n in names})
    elif plot is None:
        for n in names:
            perm = O.get_order(n, h, w).tolist()
            head = ", ".join(map(str, perm[:12]))
            typer.echo(f"{n:16s} [{head}, ...] ({len(perm)} pixels)")


# ------------------------------------------------------------------------------ entry point
def main() -> None:
    """Console entry point: run the app, turning user errors into one line and exit status 2."""
    try:
        app()
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
