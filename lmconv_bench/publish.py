"""Publish a trained checkpoint as a reference checkpoint with a model card.

``publish(src_dir, name)`` takes the output folder of ``lmconv-bench train`` (``last.safetensors``
with its training state and ``train_log.jsonl``) and writes into the reference folder
(:func:`lmconv_bench.reference.reference_dir`):

- ``<name>.safetensors`` (+ ``.sha256``): the EMA evaluation weights only (no optimizer state);
- ``<name>.md``: the model card: exact training command, data, steps, epochs, wall time, hardware,
  test bits/dim on the test split (measured here, on the first N test ids, with stderr), the
  training curve, sha256 and the dataset's licence note.

Existing files are never overwritten unless ``force``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError, check_name

LICENCES = {
    "mnist": "MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.",
    "mnist_binary": "MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.",
    "cifar10": "CIFAR-10 (Krizhevsky, 2009): no explicit licence; cite the technical report.",
    "celeba32": "CelebA (Liu et al., 2015): non-commercial research purposes only, under the CelebA agreement; "
                "this checkpoint inherits that restriction.",
    "celeba64": "CelebA (Liu et al., 2015): non-commercial research purposes only, under the CelebA agreement; "
                "this checkpoint inherits that restriction.",
}


def train_command(cfg: dict[str, Any]) -> str:
    """The ``lmconv-bench train`` command line that reproduces a training config (defaults omitted)."""
    from .train import TrainConfig

    default = TrainConfig().to_dict()
    parts = ["lmconv-bench", "train"]
    for key in ("model", "dataset", "orders", "preset", "epochs", "max_steps", "batch_size", "lr", "lr_decay", "ema",
                "grad_clip", "seed", "train_limit", "eval_every", "eval_images", "checkpoint_every", "task_masks",
                "task_mask_prob"):
        val = cfg.get(key)
        if key not in ("model", "dataset", "preset") and (val is None or val == default.get(key)):
            continue
        if key == "task_mask_prob" and not cfg.get("task_masks"):
            continue
        parts += [f"--{key.replace('_', '-')}", shlex.quote(str(val))]
    return " ".join(parts)


def hardware() -> str:
    """A one-line description of this machine (CPU model and cores, or the GPU)."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, no GPU"


def _read_log(src: Path) -> list[dict[str, Any]]:
    """The evaluations of ``train_log.jsonl``; a torn last line (a killed write) is dropped, any
    other unreadable line is a UserError naming it."""
    p = src / "train_log.jsonl"
    if not p.exists():
        return []
    lines = [line for line in p.read_text().splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise UserError(f"{p} line {i + 1} is not JSON; repair or delete that line, then publish again") from None
    return out


@torch.no_grad()
def test_bpd(model, dataset: str, order: str, n_images: int | None, data_root=None, batch_size: int = 64) -> dict[str, Any]:
    """Mean test bits/dim (± stderr) of ``model`` under ``order`` on the first ``n_images`` test ids."""
    from . import orders as O
    from .data import load_split
    from .progress import progress_bar

    data = load_split(dataset, "test", data_root, limit=n_images)
    info = data.info
    perm = O.get_order(order, info.height, info.width)
    dims = info.height * info.width * info.channels
    values = []
    with progress_bar(len(data), f"test bits/dim ({order})", True) as adv:
        for start in range(0, len(data), batch_size):
            x = data.images[start:start + batch_size]
            lp = model.log_prob(x, perm).double().flatten(1).sum(1)
            values.append((-lp / (dims * math.log(2.0))).numpy())
            adv(len(x))
    v = np.concatenate(values)
    return {"order": order, "images": len(v), "mean": float(v.mean()),
            "stderr": float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")}


def publish(src_dir: str | Path, name: str, eval_images: int | None = None, data_root=None,
            hardware_note: str | None = None, note: str | None = None, force: bool = False) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.md`` into the reference folder; returns the card path."""
    from .checkpoints import (
        has_train_state, load_checkpoint, load_train_state, read_meta, save_checkpoint, sidecar_path,
    )
    from .io_utils import atomic_write_text, file_sha256, writer_lock
    from .reference import reference_dir

    src = Path(src_dir)
    last = src / "last.safetensors"
    if not last.is_file():
        raise UserError(f"{last} does not exist; pass the --out folder of a finished `lmconv-bench train`")
    check_name(name, "--name")
    dest = reference_dir()
    ckpt, card = dest / f"{name}.safetensors", dest / f"{name}.md"
    with writer_lock(dest, "reference folder"):
        for p in (ckpt, card):
            if p.exists() and not force:
                raise UserError(f"{p} exists; pass --force to replace it, or choose another --name")
        # everything that can fail comes first; the checkpoint is moved into place last, so `run`
        # never meets a published checkpoint without its card
        meta = read_meta(last)
        state = load_train_state(last) if has_train_state(last) else {}
        log = _read_log(src)
        model, _ = load_checkpoint(last)
        cfg = model.config
        order = model.fixed_order or cfg.trained_orders[0]
        tb = test_bpd(model, cfg.dataset, order, eval_images, data_root)
        keep = {k: meta[k] for k in ("step", "epoch", "train_config", "world_size", "git_commit", "torch_version", "created") if k in meta}
        keep.update({"kind": "reference", "metrics": {"test_bpd": tb["mean"], "test_bpd_stderr": tb["stderr"]},
                     "eval": {"images": tb["images"], "split": "test", "order": order, "weights": "ema"},
                     "wall_time_s": state.get("elapsed_s"), "n_params": sum(p.numel() for p in model.parameters())})
        with tempfile.TemporaryDirectory(prefix=".publish-", dir=dest) as tmp:
            staged = save_checkpoint(Path(tmp) / ckpt.name, model, keep)
            sha = file_sha256(staged)
            atomic_write_text(card, render_card(name, model, meta, state, tb, log, sha, hardware_note or hardware(), note))
            os.replace(sidecar_path(staged), sidecar_path(ckpt))
            os.replace(staged, ckpt)
    return card


def render_card(name, model, meta, state, tb, log, sha, hw, note) -> str:
    """The markdown model card (see the module docstring for its content)."""
    from .data import get_dataset_info

    cfg = model.config
    tc = meta.get("train_config", {})
    info = get_dataset_info(cfg.dataset)
    wall = state.get("elapsed_s")
    n_params = sum(p.numel() for p in model.parameters())
    orders = ", ".join(cfg.trained_orders)
    masks = cfg.trained_task_masks
    seen = int(meta.get("step") or 0) * int(tc.get("batch_size") or 0) * int(meta.get("world_size", 1))
    lines = [
        f"# Model card: {name}",
        "",
        f"- **Model:** `{cfg.model}`, preset `{cfg.preset}` ({n_params:,} parameters); "
        f"architecture `{json.dumps(cfg.arch, sort_keys=True)}`; head `{cfg.head}`.",
        f"- **Trained orders** ({len(cfg.trained_orders)}): {orders}.",
        (f"- **Task-aware training:** with probability {tc.get('task_mask_prob')} a step trained on "
         f"`observed_first(order, mask)` with one mask per image from {', '.join(masks)} (default parameters); "
         "the loss is the full joint likelihood either way." if masks else
         "- **Task-aware training:** none (plain orders only)."),
        f"- **Data:** `{cfg.dataset}` training split ({info.height}x{info.width}x{info.channels}, {cfg.n_bits} bits); "
        f"{tc.get('train_limit') or 'all'} training images.",
        f"- **Command:** `{train_command(tc)}`"
        + (" (continued with `--resume` across sessions; resumption is exact)." if tc.get("resume") else "."),
        f"- **Steps:** {meta.get('step')} at batch {tc.get('batch_size')} x {meta.get('world_size', 1)} process(es) "
        f"= {float(meta.get('epoch', 0)):.2f} epochs; **images seen: {seen:,}** (steps x batch).",
        f"- **Wall time:** {wall / 60:.1f} min of training (evaluation included)." if wall else "- **Wall time:** not recorded.",
        f"- **Hardware:** {hw}.",
        f"- **Test bits/dim:** {tb['mean']:.4f} ± {tb['stderr']:.4f} (stderr) under `{tb['order']}`, "
        f"EMA weights, first {tb['images']} test images.",
        f"- **File:** `{name}.safetensors`, sha256 `{sha}` (EMA weights only; the training state stays in the "
        "training folder).",
        f"- **Code:** lmconv-bench {meta.get('lmconv_bench_version', '')} at git commit `{meta.get('git_commit')}`, "
        f"torch {meta.get('torch_version')}.",
        f"- **Data licence:** {LICENCES.get(cfg.dataset, 'see the dataset documentation.')}",
    ]
    if note:
        lines.append(f"- **Note:** {note}")
    if log:
        lines += ["", "## Training curve", "", "| step | epoch | train loss (bits/dim) | test bits/dim (eval subset) | minutes |",
                  "|---:|---:|---:|---:|---:|"]
        for r in log:
            loss = "" if r.get("loss_bpd") is None else f"{r['loss_bpd']:.4f}"
            lines.append(f"| {r['step']} | {r['epoch']:.2f} | {loss} | {r['test_bpd']:.4f} | {r['time'] / 60:.1f} |")
        ev = meta.get("eval", {})
        lines += ["", f"The curve's test bits/dim uses the first {ev.get('images')} test images under `{ev.get('order')}`."]
    return "\n".join(lines) + "\n"
