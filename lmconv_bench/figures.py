"""PNG figures of a report: completion grids and conditional NLL per order."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def _to_rgb(x: np.ndarray, n_bits: int) -> np.ndarray:
    """uint8 [N, C, H, W] with values 0..2^n-1 → float [N, H, W, 3] in [0, 1]."""
    x = x.astype(np.float64) / (2**n_bits - 1)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return x.transpose(0, 2, 3, 1)


def _masked(truth: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Observed pixels as they are, missing ones in mid grey with a red tint."""
    out = truth.copy()
    out[missing] = np.array([0.8, 0.35, 0.35])
    return out


def completion_grids(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """One PNG per task: ground truth, masked input, then one row per model/order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_task: dict[str, list[dict]] = {}
    for rd in run_dirs:
        for f in sorted((Path(rd) / "examples").glob("*.npz")):
            with np.load(f) as z:
                by_task.setdefault(str(z["task"]), []).append({k: z[k] for k in z.files})
    written = []
    for task, items in sorted(by_task.items()):
        items = sorted(items, key=lambda d: (not str(d["label"]).startswith("pixelcnnpp"), str(d["label"])))
        first = items[0]
        n_bits = int(first["n_bits"])
        truth = _to_rgb(first["truth"], n_bits)
        rows = [("ground truth", truth), ("masked input", _masked(truth, first["missing"].astype(bool)))]
        rows += [(str(d["label"]), _to_rgb(d["completion"], n_bits)) for d in items[:14]]
        n = truth.shape[0]
        fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 2.6, 1.1 * len(rows)), squeeze=False)
        for i, (name, imgs) in enumerate(rows):
            for j in range(n):
                ax = axes[i, j]
                ax.imshow(imgs[j], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel("\n".join(textwrap.wrap(name, 30)), rotation=0, ha="right", va="center", fontsize=7)
        fig.suptitle(f"{task}: completions (sample 0)", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"completions_{task}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def nll_per_order_plot(df: pd.DataFrame, out_dir: Path, max_px: int = 2000) -> Path | None:
    """Conditional NLL (bits/dim, ± stderr across images) per order: one panel per task, at most
    3 panels per row, bars coloured by model (legend) and labelled by order, the effective
    (observed-first) values only. The PNG's long side is at most ``max_px`` pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = df[df["metric"] == "cond_nll_bpd"]
    if "context" in d.columns:  # drop the as-is companions: one bar per model and order
        d = d.sort_values("context").drop_duplicates(["task", "checkpoint_sha256", "order"], keep="first")
    if d.empty:
        return None
    names = d["model_label"] if "model_label" in d.columns else d["model"]
    d = d.assign(name=names.fillna(d["model"]).astype(str))
    tasks = sorted(d["task"].unique())
    models = list(dict.fromkeys(d.sort_values("name")["name"]))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    n_bars = int(d.groupby("task").size().max())
    dpi = 100
    width = min(max_px / dpi, cols * max(4.0, 0.22 * n_bars + 1.5))
    height = min(max_px / dpi, rows * 3.6 + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    for ax, task in zip(axes.flat, tasks):
        g = d[d["task"] == task].sort_values(["name", "order"])
        ax.bar(range(len(g)), g["value"], yerr=g["stderr"].fillna(0), color=[colors[m] for m in g["name"]])
        ax.set_xticks(range(len(g)))
        ax.set_xticklabels([str(o).replace("ensemble(", "ens(") for o in g["order"]], rotation=90, fontsize=7)
        ax.set_ylabel("cond. NLL (bits/dim)", fontsize=8)
        ax.set_title(task, fontsize=10)
        lo = float((g["value"] - g["stderr"].fillna(0)).min())
        ax.set_ylim(bottom=max(0.0, lo * 0.9))
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[m]) for m in models]
    fig.legend(handles, models, loc="lower center", ncol=min(3, len(models)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if len(models) <= 3 else 0.1, 1, 1))
    path = out_dir / "cond_nll_per_order.png"
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def mask_examples(task, ids: list[str], out_png: Path, seed: int = 0) -> Path:
    """A row of ``task``'s masks for the given image ids (missing = dark red, observed = light grey),
    each titled with its image id and occluded fraction. Writes ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data import get_dataset_info
    from .masks import make_masks

    info = get_dataset_info(task.dataset)
    masks = make_masks(task.mask_family, task.mask_params, info.height, info.width, ids, seed).numpy()
    fig, axes = plt.subplots(1, len(ids), figsize=(1.6 * len(ids), 2.0), squeeze=False)
    for ax, m, i in zip(axes[0], masks, ids):
        img = np.where(m[..., None], np.array([0.55, 0.1, 0.1]), np.array([0.9, 0.9, 0.9]))
        ax.imshow(img, interpolation="nearest")
        ax.set_title(f"{m.mean():.0%} missing", fontsize=7)
        ax.set_xlabel(i if len(i) <= 14 else i[:13] + "…", fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{task.name}: masks (dark = missing)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def sample_grid(
    checkpoint: str | Path,
    order: str = "s_curve/0",
    n: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    out_png: str | Path = "samples.png",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> "torch.Tensor":
    """Unconditional samples of a checkpoint, written as one grid PNG.

    Every pixel is missing and sampled with ``complete(..., sampler="cached")``; image ``i`` uses
    seed ``stable_seed(seed, "sample", i)``, so the images do not depend on ``batch_size``.

    Args:
        checkpoint: a ``.safetensors`` checkpoint (lmconv or pixelcnnpp).
        order: order name (``"s_curve/0"``); fixed-order models (pixelcnnpp: ``raster/0``) use
            their own order and say so through ``log`` when another one was asked for.
        n: number of images (>= 1); temperature: > 0.
        out_png: the PNG to write (atomically); the grid has ``ceil(sqrt(n))`` images per row.
        batch_size: images completed at once (>= 1).
        device: where the model runs.
    Returns:
        uint8 ``[n, C, H, W]``, the samples.
    """
    import io
    import math

    from torchvision.utils import make_grid, save_image

    from .checkpoints import load_checkpoint
    from .errors import UserError
    from .io_utils import atomic_write_bytes, check_writable
    from .orders import canonical_name, check_size, get_order
    from .seeding import stable_seed

    if int(n) < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if int(batch_size) < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if not (float(temperature) > 0 and math.isfinite(float(temperature))):
        raise UserError(f"temperature must be a positive finite number, got {temperature}")
    out_png = check_writable(out_png)
    model, _ = load_checkpoint(checkpoint, map_location=device)
    cfg = model.config
    name = canonical_name(order)
    if model.fixed_order is not None and name != model.fixed_order:
        if log is not None:
            log(f"{cfg.model} samples only in {model.fixed_order} order; ignoring --order {name}")
        name = model.fixed_order
    check_size(name, cfg.height, cfg.width)
    perm = get_order(name, cfg.height, cfg.width).to(device)
    shape = (cfg.channels, cfg.height, cfg.width)
    images = []
    for s in range(0, int(n), int(batch_size)):
        ids = range(s, min(int(n), s + int(batch_size)))
        x = torch.zeros(len(ids), *shape, dtype=torch.uint8, device=device)
        missing = torch.ones(len(ids), cfg.height, cfg.width, dtype=torch.bool, device=device)
        seeds = torch.tensor([stable_seed(seed, "sample", i) for i in ids], dtype=torch.long)
        images.append(model.complete(x, missing, perm, seeds, temperature=temperature, sampler="cached").cpu())
    samples = torch.cat(images)
    grid = make_grid(samples.float() / (2**cfg.n_bits - 1), nrow=math.ceil(math.sqrt(len(samples))), padding=2)
    buf = io.BytesIO()
    save_image(grid, buf, format="png")
    atomic_write_bytes(out_png, buf.getvalue())
    return samples
