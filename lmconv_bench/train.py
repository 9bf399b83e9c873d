"""Training loop: one process or ``torchrun`` DistributedDataParallel, EMA, checkpoints, resume.

One code path runs on CPU or GPU, as a single process or as N torchrun ranks
(``torchrun --nproc_per_node N -m lmconv_bench train ...``; gloo on CPU, nccl on GPU).

What a step does (step ``t`` counts optimizer updates done before it, from 0):

* **Batch.** Epoch ``e = t // steps_per_epoch`` visits the training images in the permutation
  drawn from ``generator(seed, "epoch", e)``; the last incomplete global batch is dropped. The
  *global* batch is ``batch_size × world_size`` images (``batch_size`` is per rank); rank ``r``
  takes the ``r``-th contiguous block of ``batch_size`` of it, so ranks see disjoint images.
* **Order.** One order for the whole global batch, drawn uniformly from the trained orders by
  ``generator(seed, "order", t)`` (as in the paper: a random order per batch), so all ranks agree.
* **Dropout noise.** The global torch RNG is re-seeded every step with
  ``stable_seed(seed, "dropout", rank, t)``. Together with the above, every random choice is a
  function of ``(seed, rank, t)``: resuming from a checkpoint at step ``t`` continues exactly as
  if training had not stopped (the RNG states are saved too, but are not needed).
* **Loss.** Mean over the batch of the negative log-likelihood in **bits per dimension**,
  ``-sum(log_prob) / (C·H·W·ln 2)``. Adam (torch defaults β = (0.9, 0.999)), learning rate
  ``lr · lr_decay**t`` (per-step exponential decay, as PixelCNN++), gradients clipped to a global
  norm of ``grad_clip`` (``None``/``0`` disables).
* **EMA (Polyak) weights.** After each update ``ema ← d·ema + (1-d)·weights`` with
  ``d = min(ema, (1 + n) / (10 + n))``, ``n`` the number of updates so far (the usual warm-up, so
  short runs are not dominated by the initial weights). The EMA weights are the evaluation
  weights: they are evaluated and saved as ``model.*``.

Evaluation: every ``eval_every`` steps (and at step 0 of a fresh run, and at the end), test
bits/dim of the EMA model on a fixed subset, the first ``eval_images`` ids of the test split,
under the **first trained order** (``s_curve/0`` for the default spec), so successive values
are comparable. Images are sharded over ranks (``range(rank, N, world)``) and the sums reduced.

Output directory ``out`` (only rank 0 writes; every write is atomic):

* ``last.safetensors``: EMA weights + raw weights + optimizer + ``train_state``; resumable.
  Written every ``checkpoint_every`` steps and at the end.
* ``best.safetensors``: EMA weights of the best test bits/dim so far (evaluation weights only).
* ``train_log.jsonl``: one JSON line per evaluation: step, epoch, loss_bpd (mean training loss
  since the previous evaluation), test_bpd, lr, time (seconds of training so far).

``out`` holding a checkpoint is refused unless ``resume=True``; then its config must match.
A non-finite loss or gradient stops training with :class:`UserError`; the last checkpoint on
disk (always a finite one) is kept. Resuming with a different world size is allowed but no
longer exact (the global batch changes); a warning says so.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import distributed as D
from .checkpoints import (
    clean_stray_temps,
    load_state_strict,
    load_train_state,
    load_weights,
    read_config,
    rng_state_from_str,
    rng_state_to_str,
    save_checkpoint,
)
from .errors import UserError, check_interrupt
from .io_utils import writer_lock
from .models.base import AutoregressiveImageModel, ModelConfig, build_model, get_model_class
from .configs import make_config
from .masks import parse_task_masks, training_masks
from .orders import DEFAULT_SPEC, get_order, observed_first, parse_spec
from .seeding import generator, stable_seed

LAST = "last.safetensors"
BEST = "best.safetensors"
LOG = "train_log.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``lmconv-bench train``.

    Attributes:
        model, preset, dataset: what to train (registry names).
        orders: order SPEC (see ``orders.parse_spec``); ``None`` = ``s_curve`` (its 8 variants),
            or the model's fixed order (``raster/0`` for ``pixelcnnpp``, which accepts only
            ``raster``/``raster/0``).
        epochs / max_steps: length of training; at least one is required; with both, the shorter.
        batch_size: images per rank per step (global batch = batch_size × world size).
        lr: Adam learning rate at step 0. The paper's code uses 2e-4 for its large models;
            tiny models tolerate ~1e-3.
        lr_decay: per-step multiplicative decay (PixelCNN++: 0.999995, i.e. ×0.61 per 100k steps).
        ema: Polyak decay of the evaluation weights (PixelCNN++: 0.9995), warmed up as in the
            module docstring.
        grad_clip: max global gradient norm (of the bits/dim loss); None or 0 disables.
        seed: the one seed every random choice derives from.
        out: output directory; default ``results/checkpoints/{model}-{dataset}-{preset}``.
        resume: continue from ``out/last.safetensors``.
        data_root: data directory (default: ``$LMCONV_BENCH_DATA``, then the cache).
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        eval_every: steps between evaluations of test bits/dim (EMA weights).
        eval_images: number of test images evaluated (the first ids of the test split).
        eval_batch_size: batch size of evaluation (per rank).
        train_limit: use only the first N training images (by sorted id).
        checkpoint_every: steps between writes of ``last.safetensors``.
        task_masks: comma-separated mask families (``random,center,top_half``) for task-aware
            training of any-order models: a batch chosen with probability ``task_mask_prob`` (drawn
            per step) trains on ``observed_first(order, mask)`` with one mask per image from these
            families (default parameters; see ``masks.training_masks``). The loss stays the full
            joint likelihood under that order. None = plain orders only.
        task_mask_prob: probability that a step is a task-mask step (in [0, 1]).
    """

    model: str = "lmconv"
    dataset: str = "mnist"
    orders: str | None = None
    preset: str = "small"
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 2e-4
    lr_decay: float = 0.999995
    ema: float = 0.9995
    grad_clip: float | None = 1.0
    seed: int = 0
    out: str | None = None
    resume: bool = False
    data_root: str | None = None
    device: str = "auto"
    eval_every: int = 500
    eval_images: int = 256
    eval_batch_size: int = 64
    train_limit: int | None = None
    checkpoint_every: int = 500
    task_masks: str | None = None
    task_mask_prob: float = 0.5

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("results/checkpoints") / f"{self.model}-{self.dataset}-{self.preset}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------ validation
def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Raise UserError for option values that cannot work (before any data or model is loaded)."""
    if cfg.epochs is None and cfg.max_steps is None:
        raise UserError("say how long to train: pass --epochs N or --max-steps N")
    for name in ("epochs", "max_steps", "train_limit"):
        _positive_int(name, getattr(cfg, name), allow_none=True)
    for name in ("batch_size", "eval_every", "eval_images", "eval_batch_size", "checkpoint_every"):
        _positive_int(name, getattr(cfg, name))
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise UserError(f"--lr must be a positive number, got {cfg.lr!r}")
    if not 0 < cfg.lr_decay <= 1:
        raise UserError(f"--lr-decay must be in (0, 1] (per-step factor, e.g. 0.999995), got {cfg.lr_decay!r}")
    if not 0 <= cfg.ema < 1:
        raise UserError(f"--ema must be in [0, 1) (e.g. 0.9995), got {cfg.ema!r}")
    if cfg.grad_clip is not None and not (math.isfinite(cfg.grad_clip) and cfg.grad_clip >= 0):
        raise UserError(f"--grad-clip must be >= 0 (0 disables clipping), got {cfg.grad_clip!r}")
    if not (isinstance(cfg.task_mask_prob, (int, float)) and 0 <= cfg.task_mask_prob <= 1):
        raise UserError(f"--task-mask-prob must be in [0, 1], got {cfg.task_mask_prob!r}")
    families = parse_task_masks(cfg.task_masks)
    if families and getattr(get_model_class(cfg.model), "fixed_order", None) is not None:
        raise UserError(
            f"--task-masks needs an any-order model; {cfg.model} generates in one fixed order; drop --task-masks"
        )


def resolve_orders(cfg: TrainConfig, height: int, width: int) -> list[str]:
    """The canonical names of the orders to train on (recorded as ``trained_orders``)."""
    fixed = getattr(get_model_class(cfg.model), "fixed_order", None)
    if fixed is not None:
        if cfg.orders is None or cfg.orders.strip() in (fixed, fixed.split("/")[0]):
            return [fixed]
        raise UserError(
            f"model {cfg.model} generates in the fixed order {fixed} only, got --orders {cfg.orders}; "
            f"drop --orders or pass --orders {fixed}"
        )
    return parse_spec(DEFAULT_SPEC if cfg.orders is None else cfg.orders, height, width)


def _config_diff(a: ModelConfig, b: ModelConfig) -> list[str]:
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return [f"{k}: checkpoint {da[k]!r} vs requested {db[k]!r}" for k in da if da[k] != db[k]]


def check_out_dir(cfg: TrainConfig, model_config: ModelConfig) -> Path:
    """Refuse to overwrite an existing run; on resume, check the checkpoint matches. Returns out."""
    out = cfg.out_dir()
    last = out / LAST
    existing = sorted(p.name for p in out.glob("*.safetensors")) if out.is_dir() else []
    if not cfg.resume:
        if existing:
            raise UserError(
                f"{out} already holds a checkpoint ({', '.join(existing)}); "
                "pass --resume to continue or choose another --out"
            )
        if (out / LOG).exists():
            raise UserError(
                f"{out} holds the {LOG} of an earlier run that saved no checkpoint; "
                "choose another --out (or delete that directory)"
            )
        from .io_utils import check_writable

        check_writable(out, is_dir=True)
        return out
    if not last.exists():
        raise UserError(f"--resume given but {last} does not exist; drop --resume to start a new run")
    stored = read_config(last)
    diff = _config_diff(stored, model_config)
    if diff:
        raise UserError(
            f"cannot resume: {last} was trained with a different configuration ({'; '.join(diff)}); "
            "pass the original --model/--dataset/--preset/--orders or choose another --out"
        )
    return out


# ------------------------------------------------------------------------------ pieces
def batch_loss_bpd(net: torch.nn.Module, model: AutoregressiveImageModel, x: Tensor, perm: Tensor) -> Tensor:
    """Mean NLL of the uint8 batch ``x`` ``[B, C, H, W]`` under ``perm`` ``[H*W]`` (or one order per
    image, ``[B, H*W]``), in bits/dim.

    ``net`` is what to call for the forward pass (the DDP wrapper, or ``model`` itself);
    ``model.head`` turns its output into per-pixel log-probabilities (nats, ``[B, H, W]``).
    Returns a scalar float tensor.
    """
    from .data import to_model_range

    c, h, w = x.shape[1:]
    params = net(to_model_range(x, model.config.n_bits), perm)
    logp = model.head.log_prob(params, x)
    return -logp.sum(dim=(1, 2)).mean() / (c * h * w * math.log(2.0))


@torch.no_grad()
def evaluate_bpd(model: AutoregressiveImageModel, images: Tensor, perm: Tensor, batch_size: int, device: torch.device) -> float:
    """Test bits/dim of ``model`` on uint8 ``images`` ``[N, C, H, W]`` under ``perm`` (all ranks
    take part: each evaluates ``range(rank, N, world)``, and the sums are reduced)."""
    was_training = model.training
    model.eval()
    shard = images[D.shard_indices(len(images))]
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(shard), batch_size):
        x = shard[i : i + batch_size].to(device)
        total += -model.log_prob(x, perm).double().sum()
    model.train(was_training)
    total = D.all_reduce_sum(total)
    c, h, w = images.shape[1:]
    return float(total) / (len(images) * c * h * w * math.log(2.0))


@torch.no_grad()
def ema_update(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema ← decay·ema + (1-decay)·weights`` for parameters; buffers are copied."""
    for e, p in zip(ema_model.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema_model.buffers(), model.buffers()):
        e.copy_(b)


def ema_decay(ema: float, updates: int) -> float:
    """Warmed-up EMA decay after ``updates`` optimizer steps: ``min(ema, (1+n)/(10+n))``."""
    return min(ema, (1.0 + updates) / (10.0 + updates))


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 over the float32 bytes of the state dict (sorted names): equal ⇔ identical weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        t = t.detach().cpu()
        h.update((t.float() if t.is_floating_point() else t).contiguous().numpy().tobytes())
    return h.hexdigest()


def _finite_state(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def _append_log(path: Path, entry: dict[str, Any]) -> None:
    """Append one JSON line with a single O_APPEND write (a line is never interleaved or torn)."""
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _trim_log(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint being resumed (step > ``step``)."""
    if not path.exists():
        return
    from .io_utils import atomic_write_text

    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write_text(path, "".join(k + "\n" for k in keep))


class _Progress:
    """A rich progress bar on rank 0 (no-op elsewhere or when disabled)."""

    def __init__(self, enabled: bool, total: int, start: int, desc: str):
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]} · test {task.fields[test]} bpd · {task.fields[speed]} step/s"),
            TimeRemainingColumn(),
        )
        self.task = self.bar.add_task(desc, total=total, completed=start, loss="-", test="-", speed="-")

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, step: int, **fields: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, **fields)


# ------------------------------------------------------------------------------ train
def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train a model as configured by ``cfg``; returns the path of the last checkpoint.

    Runs as one process, or as one rank of a torchrun job (the process group is started here
    when torchrun's environment is present and none exists). See the module docstring.
    """
    validate(cfg)
    with D.distributed(cfg.device) as ctx:
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # leave the caller's RNG state alone
            return _train(cfg, ctx, progress)


_TRAJECTORY_FIELDS = ("task_mask_prob", "batch_size", "seed", "train_limit", "lr", "lr_decay", "ema", "grad_clip")
"""Options that change the sequence of updates; changing them on resume gives a warning.
(``max_steps``/``epochs``, evaluation and checkpoint intervals, paths and device may change freely.)"""


def _trajectory_changes(ts: dict[str, Any], cfg: TrainConfig, world: int) -> list[str]:
    old = ts.get("train_config") or {}
    changes = [f"{k} {old[k]!r} -> {getattr(cfg, k)!r}" for k in _TRAJECTORY_FIELDS if k in old and old[k] != getattr(cfg, k)]
    if ts.get("world_size", world) != world:
        changes.append(f"world size {ts['world_size']} -> {world}")
    return changes


def _train(cfg: TrainConfig, ctx: D.DistContext, progress: bool) -> Path:
    from .data import get_dataset_info

    info = get_dataset_info(cfg.dataset)
    names = resolve_orders(cfg, info.height, info.width)
    families = parse_task_masks(cfg.task_masks)
    mcfg = dataclasses.replace(
        make_config(cfg.model, cfg.preset, cfg.dataset, trained_orders=names), trained_task_masks=families
    )
    out = D.on_main(check_out_dir, cfg, mcfg)  # refuse bad options before creating anything
    lock = contextlib.ExitStack()
    D.on_main(lock.enter_context, writer_lock(out, "training directory"))  # one writer per directory
    with lock:
        return _train_locked(cfg, ctx, progress, info, names, mcfg)


def _train_locked(cfg: TrainConfig, ctx: D.DistContext, progress: bool, info, names: list[str], mcfg: ModelConfig) -> Path:
    out = D.on_main(check_out_dir, cfg, mcfg)  # again, under the lock
    return _Trainer(cfg, ctx, info, names, mcfg, out).run(progress)


class _Trainer:
    """One training run as named steps (see the module docstring): :meth:`setup` (data, orders,
    model, EMA copy, optimizer), :meth:`resume`, then per step :meth:`batch`, :meth:`draw_order`,
    :meth:`update` (loss, backward, clip, Adam, EMA), and, on schedule, :meth:`evaluate` and
    :meth:`save_last`."""

    def __init__(self, cfg: TrainConfig, ctx: D.DistContext, info, names: list[str], mcfg: ModelConfig, out: Path):
        self.cfg, self.ctx, self.info, self.names, self.mcfg = cfg, ctx, info, names, mcfg
        self.families = mcfg.trained_task_masks
        self.last_path, self.best_path, self.log_path = out / LAST, out / BEST, out / LOG
        self.dev = ctx.device
        self.step, self.best, self.best_step, self.elapsed0, self.last_saved = 0, math.inf, None, 0.0, None
        self.last_test = None
        self.epoch_cache: dict[int, Tensor] = {}
        self.setup()
        if cfg.resume:
            self.resume()
        self.t_start = time.perf_counter()

    # -- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        from .data import load_split

        cfg, world = self.cfg, self.ctx.world_size
        self.train_images = load_split(cfg.dataset, "train", cfg.data_root, limit=cfg.train_limit).images
        self.test_images = load_split(cfg.dataset, "test", cfg.data_root, limit=cfg.eval_images).images
        self.global_batch = cfg.batch_size * world
        self.steps_per_epoch = len(self.train_images) // self.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(self.train_images)} training images are fewer than one global batch of {self.global_batch} "
                f"({cfg.batch_size} per rank x {world} ranks); lower --batch-size or raise --train-limit"
            )
        self.total = int(min(
            cfg.max_steps if cfg.max_steps is not None else math.inf,
            cfg.epochs * self.steps_per_epoch if cfg.epochs is not None else math.inf,
        ))
        self.perms = [get_order(n, self.info.height, self.info.width).to(self.dev) for n in self.names]
        torch.manual_seed(stable_seed(cfg.seed, "init"))
        self.model = build_model(self.mcfg).to(self.dev)
        self.ema_model = copy.deepcopy(self.model).eval()
        for p in self.ema_model.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.net: torch.nn.Module = self.model

    def resume(self) -> None:
        ts = load_train_state(self.last_path)
        if self.ctx.is_main:  # under the writer lock, after the checkpoint was verified
            for p in (self.last_path, self.best_path):
                clean_stray_temps(p)
        load_state_strict(self.last_path, self.model, ts["raw_weights"], "raw training weights")
        load_state_strict(self.last_path, self.ema_model, load_weights(self.last_path, verify=False), "weights")
        if ts.get("optimizer") is not None:
            self.optimizer.load_state_dict(ts["optimizer"])
        self.step = int(ts["step"])
        self.best = ts.get("best_test_bpd") if ts.get("best_test_bpd") is not None else math.inf
        self.best_step = ts.get("best_step")
        self.last_test = ts.get("last_test_bpd")
        self.elapsed0 = float(ts.get("elapsed_s", 0.0))
        self.last_saved = self.step
        if ts.get("rng", {}).get("torch_cpu"):
            torch.set_rng_state(rng_state_from_str(ts["rng"]["torch_cpu"]))
        changed = _trajectory_changes(ts, self.cfg, self.ctx.world_size)
        if changed and self.ctx.is_main:
            warnings.warn(
                f"resuming {self.last_path} with changed {'; '.join(changed)}: training continues, "
                "but not exactly as the original run would have",
                stacklevel=2,
            )
        if self.ctx.is_main:
            _trim_log(self.log_path, self.step)

    # -- small pieces ----------------------------------------------------------------------------
    def lr_at(self, t: int) -> float:
        return self.cfg.lr * self.cfg.lr_decay**t

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t_start

    def train_state(self) -> dict[str, Any]:
        cfg, step = self.cfg, self.step
        return {
            "raw_weights": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "best_test_bpd": None if not math.isfinite(self.best) else self.best,
            "best_step": self.best_step,
            "last_test_bpd": self.last_test,
            "scheduler": {"kind": "exponential_per_step", "lr0": cfg.lr, "decay": cfg.lr_decay, "lr": self.lr_at(step)},
            "ema": {"decay": cfg.ema, "updates": step, "warmup": "min(decay, (1+n)/(10+n))"},
            "data_position": {
                "epoch": step // self.steps_per_epoch,
                "batch_in_epoch": step % self.steps_per_epoch,
                "steps_per_epoch": self.steps_per_epoch,
                "samples_seen": step * self.global_batch,
            },
            "rng": {
                "torch_cpu": rng_state_to_str(torch.get_rng_state()),
                "cuda": rng_state_to_str(torch.cuda.get_rng_state(self.dev)) if self.dev.type == "cuda" else None,
                "note": "every step reseeds from stable_seed(seed, 'dropout', rank, step); these states are informational",
            },
            "world_size": self.ctx.world_size,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "elapsed_s": self.elapsed(),
            "train_config": cfg.to_dict(),
        }

    def meta(self, kind: str) -> dict[str, Any]:
        return {
            "kind": kind,
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "metrics": {"test_bpd": self.last_test, "best_test_bpd": None if not math.isfinite(self.best) else self.best},
            "eval": {"images": len(self.test_images), "split": "test", "order": self.names[0], "weights": "ema"},
            "train_config": self.cfg.to_dict(),
            "world_size": self.ctx.world_size,
        }

    def save_last(self) -> None:
        hashes = D.all_gather_object(state_sha256(self.model))
        if len(set(hashes)) != 1:
            raise RuntimeError(f"ranks hold different weights at step {self.step}: {hashes}")
        if self.ctx.is_main:
            m = self.meta("last")
            m["rank_weight_sha256"] = hashes
            save_checkpoint(self.last_path, self.ema_model, m, self.train_state())
        D.barrier()
        self.last_saved = self.step

    def stop_non_finite(self, what: str, value: float) -> None:
        lr = self.cfg.lr
        if self.last_saved is not None:
            kept = (f"last good checkpoint kept at {self.last_path} (step {self.last_saved}); lower --lr (was {lr:g}) "
                    "and rerun with --resume")
        else:
            kept = f"no checkpoint was written yet; lower --lr (was {lr:g}) and rerun with another --out"
        raise UserError(f"{what} became {'NaN' if math.isnan(value) else 'inf'} at step {self.step}; {kept}")

    def evaluate(self, loss_avg: float | None) -> float:
        """Test bits/dim of the EMA weights; logged, and the best checkpoint kept."""
        test = evaluate_bpd(self.ema_model, self.test_images, self.perms[0], self.cfg.eval_batch_size, self.dev)
        self.last_test = test
        if self.ctx.is_main:
            _append_log(self.log_path, {
                "step": self.step, "epoch": round(self.step / self.steps_per_epoch, 6), "loss_bpd": loss_avg,
                "test_bpd": test, "lr": self.lr_at(self.step), "time": round(self.elapsed(), 3),
            })
        if math.isfinite(test) and test < self.best:
            self.best, self.best_step = test, self.step
            if self.ctx.is_main:
                save_checkpoint(self.best_path, self.ema_model, self.meta("best"))
        return test

    # -- one step ---------------------------------------------------------------------------------
    def batch(self) -> Tensor:
        """This rank's images of the step: uint8 ``[batch_size, C, H, W]``."""
        epoch, pos = divmod(self.step, self.steps_per_epoch)
        if epoch not in self.epoch_cache:
            self.epoch_cache.clear()
            self.epoch_cache[epoch] = torch.randperm(len(self.train_images), generator=generator(self.cfg.seed, "epoch", epoch))
        lo = pos * self.global_batch + self.ctx.rank * self.cfg.batch_size
        return self.train_images[self.epoch_cache[epoch][lo: lo + self.cfg.batch_size]].to(self.dev, non_blocking=True)

    def draw_order(self, n_images: int) -> Tensor:
        """The step's order (one for the global batch), or, on a task-mask step, its
        ``observed_first`` form under one training mask per image (``[B, H*W]``)."""
        cfg = self.cfg
        k = int(torch.randint(len(self.perms), (1,), generator=generator(cfg.seed, "order", self.step)))
        perm = self.perms[k]
        if self.families and float(torch.rand(1, generator=generator(cfg.seed, "task_mask_on", self.step))) < cfg.task_mask_prob:
            masks = training_masks(self.families, self.info.height, self.info.width, self.step,
                                   self.ctx.rank * cfg.batch_size, n_images, cfg.seed)
            perm = observed_first(perm, masks.to(self.dev))
        return perm

    def update(self, x: Tensor, perm: Tensor) -> float:
        """Loss (bits/dim, mean over ranks), backward, clipping, Adam, EMA; returns the loss."""
        torch.manual_seed(stable_seed(self.cfg.seed, "dropout", self.ctx.rank, self.step))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        loss = batch_loss_bpd(self.net, self.model, x, perm)
        loss_value = float(D.all_reduce_mean(loss.detach()))
        if not math.isfinite(loss_value):
            self.stop_non_finite("loss", loss_value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.grad_clip if self.cfg.grad_clip else math.inf
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(gnorm):
            self.stop_non_finite("gradient norm", gnorm)
        self.optimizer.step()
        self.step += 1
        ema_update(self.ema_model, self.model, ema_decay(self.cfg.ema, self.step))
        return loss_value

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, progress: bool) -> Path:
        cfg, ctx = self.cfg, self.ctx
        if ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.model, device_ids=[self.dev] if self.dev.type == "cuda" else None)
        if ctx.is_main:
            self.last_path.parent.mkdir(parents=True, exist_ok=True)
        losses: list[float] = []
        self.model.train()
        desc = f"{cfg.model}/{cfg.preset} {cfg.dataset}"
        with _Progress(progress and ctx.is_main and self.step < self.total, self.total, self.step, desc) as bar:
            if self.step == 0 and not cfg.resume:
                bar.update(self.step, test=f"{self.evaluate(None):.3f}")
            t_speed, s_speed = time.perf_counter(), self.step
            while self.step < self.total:
                check_interrupt()  # Ctrl-C even if its exception was dropped inside a finalizer
                x = self.batch()
                losses.append(self.update(x, self.draw_order(len(x))))
                if self.step % 10 == 0 or self.step == self.total:
                    now = time.perf_counter()
                    speed = (self.step - s_speed) / max(now - t_speed, 1e-9)
                    t_speed, s_speed = now, self.step
                    bar.update(self.step, loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}", speed=f"{speed:.2f}")
                self.on_schedule(losses, bar)
        return self.last_path

    def on_schedule(self, losses: list[float], bar) -> None:
        """Evaluation and checkpoint writes that are due after this step (``losses`` is emptied at
        each evaluation)."""
        step, cfg = self.step, self.cfg
        is_eval = step % cfg.eval_every == 0 or step == self.total
        is_ckpt = step % cfg.checkpoint_every == 0 or step == self.total
        if (is_eval or is_ckpt) and not (_finite_state(self.model) and _finite_state(self.ema_model)):
            self.stop_non_finite("weights", math.nan)
        if is_eval:
            avg = sum(losses) / len(losses) if losses else None
            losses.clear()
            bar.update(step, test=f"{self.evaluate(avg):.3f}")
        if is_ckpt:
            self.save_last()


# ------------------------------------------------------------------------------ __main__
def _parser() -> argparse.ArgumentParser:
    """argparse mirror of TrainConfig (``python -m lmconv_bench.train``; the CLI has ``train`` too)."""
    p = argparse.ArgumentParser(prog="python -m lmconv_bench.train", description="Train a model (see lmconv_bench.train).")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        d = getattr(defaults, f.name)
        if f.name == "resume":
            p.add_argument(flag, action="store_true")
        elif f.name in ("lr", "lr_decay", "ema", "grad_clip", "task_mask_prob"):
            p.add_argument(flag, type=float, default=d)
        elif f.name in ("epochs", "max_steps", "batch_size", "seed", "eval_every", "eval_images",
                        "eval_batch_size", "train_limit", "checkpoint_every"):
            p.add_argument(flag, type=int, default=d)
        else:
            p.add_argument(flag, type=str, default=d)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> None:
    args = vars(_parser().parse_args(argv))
    no_progress = args.pop("no_progress")
    try:
        path = train(TrainConfig(**args), progress=not no_progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if int(os.environ.get("RANK", 0)) == 0:
        print(path)


if __name__ == "__main__":
    main()
