"""The benchmark grid: tasks × models × orders × metrics, written as tidy records.

For each task, the images of the profile (or ``--limit``) and their masks are fixed by image id.
For each checkpoint, every order of SPEC (``raster/0`` only for fixed-order models) gives:

- ``test_bpd``: −log p(x) of the whole image under that order, in bits per dimension;
- ``cond_nll_bpd``: −log p(x_missing | x_observed), in bits per missing dimension, under the
  order's ``observed_first`` form (exact for any-order models); fixed-order models use their own
  order, and ``context`` records whether it saw every observed pixel (``all_observed``) or only
  the preceding ones (``preceding_only``);
- ``lpips``: LPIPS(completion, ground truth), K samples per image;
- ``fid`` / ``kid``: completions against the task's reference split.

Order ensembles (``order = ensemble(<spec>)``): ``test_bpd`` is the log of the mean of the joint
likelihoods; ``cond_nll_bpd`` the log of the uniform mean of the conditionals (as in the paper's
code). Images are sharded by global index ``range(rank, N, world)``; every random choice is seeded
per image, order and sample, so results don't depend on batch size or process count.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed as dist
from . import orders as O
from .config import COMPLETION_METRICS, METRICS, TaskConfig, resolve_tasks
from .coverage import in_training_distribution, trained_coverage
from .data import ImageSet, get_dataset_info, load_split
from .errors import UserError, unknown
from .masks import make_masks
from .models.base import Cost
from .progress import console, progress_bar
from .records import METRIC_UNITS, RunDir, cell_key
from .seeding import stable_seed

LN2 = math.log(2.0)
SAMPLERS = ("cached", "naive")
RESULTS_SCHEMA = 2
"""Version of what a run directory's cells and records hold; part of the resume hash, so a run
directory written by code with another schema is refused rather than mixed."""


@dataclass(frozen=True)
class RunConfig:
    """Options of ``lmconv-bench run``. Fields marked ``result=False`` don't change the numbers."""

    task: str
    dataset: str | None = None
    orders: str = O.DEFAULT_SPEC
    checkpoints: tuple[str, ...] = ()
    profile: str = "quick"
    limit: int | None = None
    metrics: tuple[str, ...] | None = None  # None = the task's metrics
    samples: int = 1
    sampler: str = "cached"
    temperature: float = 1.0
    seed: int = 0
    image_ids: tuple[str, ...] | None = None  # exactly these test ids (used by `check`); None = the profile's first N
    data_root: str | None = field(default=None, metadata={"result": False})
    out: str | None = field(default=None, metadata={"result": False})
    batch_size: int = field(default=32, metadata={"result": False})
    device: str = field(default="auto", metadata={"result": False})
    progress: bool = field(default=True, metadata={"result": False})
    shard: tuple[int, int] | None = field(default=None, metadata={"result": False})  # (I, N): see shards.py
    merge: bool = field(default=False, metadata={"result": False})  # assemble the shards' parts

    def result_config(self, checkpoint_hashes: dict[str, str], task_hashes: dict[str, str] | None = None) -> dict[str, Any]:
        """The part of the config that determines results (hashed to recognise a resumable run):
        the options, the checkpoints' sha256, the tasks' content hashes, and the code (package
        version and :data:`RESULTS_SCHEMA`)."""
        from .checkpoints import package_version

        d = {k: v for k, v in asdict(self).items()
             if self.__dataclass_fields__[k].metadata.get("result", True)}
        d["checkpoints"] = sorted(checkpoint_hashes.values())
        d["task_content"] = dict(sorted((task_hashes or {}).items()))
        d["code"] = {"lmconv_bench": package_version(), "results_schema": RESULTS_SCHEMA}
        d["metrics"] = list(self.metrics) if self.metrics else None
        if self.image_ids is None:
            d.pop("image_ids")  # keeps the hashes of ordinary runs as they were
        else:
            d["image_ids"] = list(self.image_ids)
        return d


def validate(cfg: RunConfig) -> None:
    """Reject bad options before any work (UserError with the fix)."""
    if cfg.limit is not None and cfg.limit <= 0:
        raise UserError(f"--limit must be a positive number of images, got {cfg.limit}")
    if cfg.samples <= 0:
        raise UserError(f"--samples must be >= 1, got {cfg.samples}")
    if cfg.batch_size <= 0:
        raise UserError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if not (math.isfinite(cfg.temperature) and cfg.temperature > 0):
        raise UserError(f"--temperature must be a finite number > 0, got {cfg.temperature}")
    if cfg.profile not in ("quick", "full"):
        raise unknown("profile", cfg.profile, ("quick", "full"))
    if cfg.sampler not in SAMPLERS:
        raise unknown("sampler", cfg.sampler, SAMPLERS)
    for m in cfg.metrics or ():
        if m not in METRICS:
            raise unknown("metric", m, METRICS)
    if cfg.shard is not None and cfg.merge:
        raise UserError("--shard runs one shard; merging is `lmconv-bench merge RUN_DIR`: use one or the other")
    if cfg.shard is not None and not 0 <= cfg.shard[0] < cfg.shard[1]:
        raise UserError(f"--shard must be I/N with 0 <= I < N, got {cfg.shard[0]}/{cfg.shard[1]}")


# ------------------------------------------------------------------------------ per-image work
def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def likelihoods(model, images: torch.Tensor, missing: torch.Tensor, perm: torch.Tensor,
                cond_perms: torch.Tensor, batch_size: int, device, costs=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image log-likelihoods in nats (float64 numpy [N] each).

    Returns ``(joint, cond, preceding)``: ``joint`` = log p(x) under ``perm``; ``cond`` = log p of
    the missing pixels under ``cond_perms`` ([N, H*W], one order per image) = log p(x_miss | x_obs)
    when the order is observed-first; ``preceding`` = log p of the missing pixels under ``perm``
    itself (each sees only the pixels before it), taken from the joint pass at no extra cost.
    When ``cond_perms`` equals ``perm`` for every image, the second pass is skipped.
    ``costs``: optional ``(joint_cost, cond_cost)`` :class:`~lmconv_bench.models.base.Cost` s to
    which each forward pass is added (the conditional one gets the joint pass when it reuses it).
    """
    joint, cond, preceding = [], [], []
    same = bool((cond_perms == perm.expand_as(cond_perms)).all())
    for sl in _batches(len(images), batch_size):
        x = images[sl].to(device)
        miss = missing[sl].to(device)
        lp = model.log_prob(x, perm.to(device)).double()
        joint.append(lp.flatten(1).sum(1).cpu())
        preceding.append((lp * miss).flatten(1).sum(1).cpu())
        lpc = lp if same else model.log_prob(x, cond_perms[sl].to(device)).double()
        cond.append((lpc * miss).flatten(1).sum(1).cpu())
        if costs is not None:
            costs[0].add(1, len(x))
            costs[1].add(1, len(x))
    return torch.cat(joint).numpy(), torch.cat(cond).numpy(), torch.cat(preceding).numpy()


@torch.no_grad()
def completions(model, images, missing, cond_perms, seeds, cfg: RunConfig, device, advance, cost=None) -> torch.Tensor:
    """Complete every image once per seed column: uint8 [N, K, C, H, W]; the samplers add their
    work to ``cost`` (a :class:`~lmconv_bench.models.base.Cost`), if given."""
    out = []
    for sl in _batches(len(images), cfg.batch_size):
        ks = []
        for k in range(seeds.shape[1]):
            done = model.complete(
                images[sl].to(device), missing[sl].to(device), cond_perms[sl].to(device), seeds[sl, k],
                temperature=cfg.temperature, sampler=cfg.sampler, cost=cost,
            )
            ks.append(done.cpu())
            advance(sl.stop - sl.start)
        out.append(torch.stack(ks, 1))
    return torch.cat(out)


# ------------------------------------------------------------------------------ grid
@dataclass
class ModelEntry:
    """One loaded checkpoint of a run.

    ``trained``: its trained orders; ``task_masks``: its ``trained_task_masks``; ``n_params``: its
    parameter count; ``label``: what tables call it (family, preset, training orders, size).
    """

    path: str
    model: Any
    sha256: str
    name: str  # registry name
    preset: str
    trained: tuple[str, ...]
    task_masks: tuple[str, ...] = ()
    n_params: int = 0

    @property
    def single_order(self) -> bool:
        """An any-order network trained on one plain order only (the fixed-order control); it is
        evaluated under that order alone, as it is (no observed-first reordering)."""
        return not self.model.fixed_order and len(self.trained) == 1 and not self.task_masks

    @property
    def label(self) -> str:
        c = self.model.config
        return model_label(self.name, self.preset, self.trained, self.task_masks, self.n_params, c.height, c.width)


def model_label(name: str, preset: str, trained: tuple[str, ...], task_masks: tuple[str, ...], n_params: int,
                height: int, width: int) -> str:
    """``lmconv-small [s_curve+center_last, task masks] 468k``: family-preset, training orders
    (family names where every variant of the family was trained), whether task masks were, and
    the parameter count in thousands."""
    fams = list(dict.fromkeys(o.split("/")[0] for o in trained))
    whole = all(set(O.parse_spec(f, height, width)) <= set(trained) for f in fams)
    what = "+".join(fams) if whole else "+".join(trained)
    if task_masks:
        what += ", task masks"
    return f"{name}-{preset} [{what}] {round(n_params / 1000)}k"


def is_single_order_label(label: str) -> bool:
    """Whether a :func:`model_label` names a model trained on one plain order (a control)."""
    import re

    m = re.search(r"\[([^\]]*)\]", label)
    return bool(m) and "/" in m.group(1) and "+" not in m.group(1) and "task masks" not in m.group(1)


@dataclass(frozen=True)
class Effective:
    """The order a cell actually runs, and what the checkpoint knows of it.

    ``name``: ``observed_first(<order>)`` where the order was reordered, else the order's name;
    ``perms``: long ``[N, H*W]``, one per image; ``trained``: it is a trained order (see
    ``coverage.in_training_distribution``); ``coverage``: ``coverage.trained_coverage``.
    """

    name: str
    perms: torch.Tensor
    trained: bool
    coverage: float


def diversity(samples: torch.Tensor, n_bits: int) -> float:
    """Mean pairwise LPIPS between the K completions ``[K, C, H, W]`` of one image (K >= 2)."""
    from .metrics.perceptual import lpips_distance

    pairs = [(a, b) for a in range(len(samples)) for b in range(a + 1, len(samples))]
    ia, ib = (torch.tensor(p) for p in zip(*pairs))
    return float(lpips_distance(samples[ia], samples[ib], n_bits=n_bits).mean())


def _nats_arrays(nats: dict[str, Any]) -> dict[str, Any]:
    """A likelihood cell's stored nats with its per-image lists as float arrays."""
    return {k: np.asarray(v) if k in ("joint", "cond", "preceding", "n_miss") else v for k, v in nats.items()}


def _context(perms: torch.Tensor, missing: torch.Tensor) -> str:
    return "all_observed" if bool(O.is_observed_first(perms, missing).all()) else "preceding_only"


def _row(base: dict, metric: str, value: float, n: int, stderr=float("nan"), lo=float("nan"), hi=float("nan"), **kw):
    return {**base, "metric": metric, "value": float(value), "unit": METRIC_UNITS[metric], "n": int(n),
            "stderr": float(stderr), "ci_low": float(lo), "ci_high": float(hi), "nfe": float("nan"),
            "wall_s": float("nan"), **kw}


def _summary_row(base, metric, per_image: np.ndarray, seed: int, **kw):
    from .metrics.stats import summarize

    values = np.asarray(per_image, dtype=np.float64)
    if not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise UserError(
            f"{metric} of {base.get('model_label', base['model'])} {base['order']} on task {base['task']} is NaN or "
            f"infinite for {n_bad} of {len(values)} images (a degenerate mask or a broken checkpoint); "
            "check the task's mask parameters and the checkpoint"
        )
    s = summarize(values, seed=seed)
    return _row(base, metric, s["mean"], s["n"], s["stderr"], s["ci_low"], s["ci_high"], **kw)


def command_line(argv: list[str]) -> str:
    """The command as a user would type it: ``lmconv-bench ...`` rather than the script's full path."""
    import shlex

    prog = Path(argv[0]).name if argv else "lmconv-bench"
    if prog in ("__main__.py", "lmconv_bench"):
        prog = "lmconv-bench"
    return " ".join([prog, *(shlex.quote(a) for a in argv[1:])])


class Grid:
    """Runs one ``RunConfig``; see the module docstring."""

    def __init__(self, cfg: RunConfig, ctx: dist.DistContext, argv: list[str] | None = None):
        validate(cfg)
        self.cfg, self.ctx = cfg, ctx
        self.tasks: list[TaskConfig] = resolve_tasks(cfg.task, cfg.dataset)
        self.metrics = {t.name: [m for m in (cfg.metrics or t.metrics)] for t in self.tasks}
        self.models = self._load_models()
        hashes = {e.path: e.sha256 for es in self.models.values() for e in es}
        rc = cfg.result_config(hashes, {t.name: t.content_hash() for t in self.tasks})
        from .records import config_hash

        self.run_id = f"{self.tasks[0].name if len(self.tasks) == 1 else cfg.task}-{config_hash(rc)[:10]}"
        out = Path(cfg.out) if cfg.out else Path("results/runs") / self.run_id
        self.run = RunDir(out, rc, write=ctx.is_main)
        self.argv = argv or sys.argv
        self.show = ctx.is_main and cfg.progress
        self.mode = "merge" if cfg.merge else "shard" if cfg.shard is not None else "collective"
        if self.mode != "collective" and ctx.distributed:
            raise UserError("--shard and merge run as single processes; drop torchrun (or drop --shard and let torchrun split the images)")

    # -- setup ------------------------------------------------------------------------------
    def _load_models(self) -> dict[str, list[ModelEntry]]:
        from .checkpoints import load_checkpoint, read_config

        paths = list(self.cfg.checkpoints)
        if not paths:
            from .reference import reference_checkpoints, reference_dir

            paths = [str(p) for t in self.tasks for p in reference_checkpoints(t.dataset)]
            lacking = sorted({t.dataset for t in self.tasks} - {read_config(p).dataset for p in paths})
            if lacking:
                raise UserError(
                    f"no --checkpoint given and no reference checkpoint for {', '.join(lacking)} in {reference_dir()}; "
                    "pass --checkpoint PATH (train one with `lmconv-bench train`), or set LMCONV_BENCH_REFERENCE_DIR "
                    "to a folder of reference checkpoints"
                )
        by_ds: dict[str, list[ModelEntry]] = {t.dataset: [] for t in self.tasks}
        for p in dict.fromkeys(paths):
            c = read_config(p)
            if c.dataset not in by_ds:
                # a checkpoint for another dataset than every selected task: a user error
                if not any(c.dataset == t.dataset for t in self.tasks):
                    info = get_dataset_info(self.tasks[0].dataset)
                    raise UserError(
                        f"checkpoint {p} is for dataset {c.dataset} ({c.height}x{c.width}x{c.channels}, "
                        f"{c.n_bits} bits) but the task uses {info.name} ({info.height}x{info.width}x"
                        f"{info.channels}, {info.n_bits} bits); pass a checkpoint trained on {info.name}"
                    )
            model, meta = load_checkpoint(p, expect_dataset=c.dataset, map_location=self.ctx.device)
            n_params = sum(t.numel() for t in model.parameters())
            by_ds[c.dataset].append(ModelEntry(p, model, meta["sha256"], c.model, c.preset, c.trained_orders,
                                               c.trained_task_masks, n_params))
        for t in self.tasks:
            if not by_ds[t.dataset]:
                raise UserError(f"no checkpoint for dataset {t.dataset} (task {t.name}); pass --checkpoint PATH")
        return by_ds

    def manifest(self, wall: float | None = None) -> dict[str, Any]:
        from .checkpoints import provenance

        m = {
            "run_id": self.run_id,
            "command": command_line(self.argv),
            "tasks": [t.to_dict() for t in self.tasks],
            "checkpoints": {e.path: e.sha256 for es in self.models.values() for e in es},
            "device": str(self.ctx.device),
            "world_size": self.ctx.world_size,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "sampler": self.cfg.sampler,
            "samples_per_image": self.cfg.samples,
            "wall_time_s": wall,
            "run_config": {k: v for k, v in asdict(self.cfg).items() if k not in ("shard", "merge", "progress", "out")},
            **provenance(),
        }
        if any("lpips" in ms for ms in self.metrics.values()):
            from .metrics import perceptual

            m["lpips"] = perceptual.describe()
        if any({"fid", "kid"} & set(ms) for ms in self.metrics.values()):
            from .metrics import fidelity

            m["fidelity"] = fidelity.describe()
        return m

    # -- main loop ----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Everything that can fail on bad input, before anything is written: the orders of every
        model, the images, and the masks' geometry (a conditional metric needs at least one
        missing and one observed pixel per image)."""
        self.prepared: dict[str, tuple[ImageSet, torch.Tensor]] = {}
        self.occluded: dict[str, dict[str, float]] = {}  # task -> image id -> fraction of pixels missing
        for task in self.tasks:
            info = get_dataset_info(task.dataset)
            O.parse_spec(self.cfg.orders, info.height, info.width)  # a typo is an error even if no model uses it
            data = self._images(task)
            missing = make_masks(task.mask_family, task.mask_params, info.height, info.width, data.ids, self.cfg.seed)
            conditional = {"cond_nll_bpd", *COMPLETION_METRICS} & set(self.metrics[task.name])
            n_miss = missing.flatten(1).sum(1)
            bad = [i for i, m in zip(data.ids, n_miss.tolist()) if m == 0 or m == info.height * info.width]
            if conditional and bad:
                what = "no missing pixel" if n_miss[data.ids.index(bad[0])] == 0 else "no observed pixel"
                raise UserError(
                    f"task {task.name}: the mask of image {bad[0]} has {what} ({len(bad)} of {len(data.ids)} images), "
                    f"so {', '.join(sorted(conditional))} cannot be measured; change the mask parameters in {task.source or task.name}"
                )
            self.prepared[task.name] = (data, missing)
            self.occluded[task.name] = dict(zip(data.ids, missing.flatten(1).double().mean(1).tolist()))

    def run_all(self) -> RunDir:
        """Every cell of the grid (after :meth:`prepare`, which it runs if not yet done)."""
        t0 = time.time()
        if not hasattr(self, "prepared"):
            self.prepare()
        self.run.open(self.manifest(), clean=self.mode == "collective")
        image_ids: dict[str, list[str]] = {}
        for task in self.tasks:
            image_ids[task.name] = self.run_task(task)
        if self.mode == "shard":  # records come from `merge`, once every shard is done
            return self.run
        if self.ctx.is_main:
            from .report import comparisons_for_run

            self.run.rebuild(comparisons=comparisons_for_run(self.run.path))
            wall = time.time() - t0
            n_evals = sum(len(ids) for ids in image_ids.values()) * max(len(self.run.all_cells()), 1) / max(len(self.tasks), 1)
            self.run.write_manifest({**self.manifest(wall), "image_ids": image_ids,
                                     "images_per_s": n_evals / wall if wall > 0 else None,
                                     "images_per_s_note": "image x cell evaluations per second of this invocation "
                                                          "(cells finished earlier, e.g. before a resume, count too)"})
        dist.barrier()
        return self.run

    def _images(self, task: TaskConfig) -> ImageSet:
        if self.cfg.image_ids is not None:
            return load_split(task.dataset, task.split, self.cfg.data_root, ids=list(self.cfg.image_ids))
        n = self.cfg.limit or task.profile(self.cfg.profile).n_images
        return load_split(task.dataset, task.split, self.cfg.data_root, limit=n)

    def run_task(self, task: TaskConfig) -> list[str]:
        info = get_dataset_info(task.dataset)
        h, w = info.height, info.width
        data, missing = self.prepared[task.name]
        if self.mode == "shard":
            shard = list(range(self.cfg.shard[0], len(data.ids), self.cfg.shard[1]))
        else:
            shard = list(dist.shard_indices(len(data.ids), self.ctx.rank, self.ctx.world_size))
        metrics = self.metrics[task.name]
        for entry in self.models[task.dataset]:
            if entry.model.fixed_order:
                names = [entry.model.fixed_order]
            elif entry.single_order:
                names = list(entry.trained)
            else:
                names = O.parse_spec(self.cfg.orders, h, w)
            nats: dict[str, dict[str, np.ndarray]] = {}
            for name in names:
                if {"test_bpd", "cond_nll_bpd"} & set(metrics):
                    nats[name] = self._likelihood_cell(task, entry, name, data, missing, shard)
                if set(COMPLETION_METRICS) & set(metrics):
                    self._completion_cell(task, entry, name, data, missing, shard)
            if len(names) > 1 and {"test_bpd", "cond_nll_bpd"} & set(metrics) and self.mode != "shard":
                self._ensemble_cell(task, entry, names, data, nats)
        return data.ids

    def _base(self, task: TaskConfig, entry: ModelEntry, order: str, eff: Effective) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "task": task.name, "task_version": task.version, "dataset": task.dataset,
            "split": task.split, "profile": self.cfg.profile if self.cfg.limit is None else f"{self.cfg.profile}-limit{self.cfg.limit}",
            "model": entry.name, "preset": entry.preset, "model_label": entry.label, "n_params": entry.n_params,
            "checkpoint_sha256": entry.sha256, "order": order, "effective_order": eff.name,
            "order_trained": eff.trained, "trained_coverage": eff.coverage, "seed": self.cfg.seed,
        }

    def _plain(self, entry: ModelEntry, name: str, n: int, h: int, w: int) -> Effective:
        """The order ``name`` run as it is, for ``n`` images."""
        perm = O.get_order(name, h, w)
        if entry.model.fixed_order or name in entry.trained:
            return Effective(name, perm.expand(n, -1), True, 1.0)
        cov = trained_coverage(perm, entry.trained, h, w, **self._kernel(entry))
        return Effective(name, perm.expand(n, -1), False, cov)

    @staticmethod
    def _kernel(entry: ModelEntry) -> dict[str, int]:
        return {"k": int(getattr(entry.model, "kernel_size", 3)), "max_dilation": int(getattr(entry.model, "max_dilation", 2))}

    def _effective(self, task: TaskConfig, entry: ModelEntry, name: str, missing: torch.Tensor) -> Effective:
        """The order the conditional metrics of ``name`` run: observed-first for any-order models
        (unless it already is, or the model is a single-order control), else ``name`` itself."""
        h, w = missing.shape[1:]
        plain = self._plain(entry, name, len(missing), h, w)
        if entry.model.fixed_order or entry.single_order or bool(O.is_observed_first(plain.perms[0], missing).all()):
            return plain
        perms = O.observed_first(plain.perms[0], missing)
        trained = in_training_distribution(name, task.mask_family, task.mask_params, entry.trained, entry.task_masks)
        cov = 1.0 if trained else trained_coverage(perms, entry.trained, h, w, **self._kernel(entry))
        return Effective(f"observed_first({name})", perms, trained, cov)

    def _likelihood_cell(self, task, entry, name, data, missing, shard) -> dict[str, np.ndarray]:
        key = cell_key(task.name, task.content_hash()[:12], entry.sha256[:12], name, "likelihood")
        if self._cell_done(key):
            if not self.ctx.is_main or self.mode == "shard":  # a shard's part holds no records
                return {}
            return _nats_arrays(self.run.load_cell(key)["nats"])
        h, w = missing.shape[1:]
        plain, eff = self._plain(entry, name, len(missing), h, w), self._effective(task, entry, name, missing)
        idx = torch.tensor(shard, dtype=torch.long)

        def compute():
            t0, costs = time.perf_counter(), (Cost(), Cost())
            with progress_bar(1, f"{task.name} {entry.name} {name}: likelihood", self.show) as adv:
                got = likelihoods(entry.model, data.images[idx], missing[idx], plain.perms[0], eff.perms[idx],
                                  self.cfg.batch_size, self.ctx.device, costs)
                adv(1)
            return (shard, *[g.tolist() for g in got],
                    [time.perf_counter() - t0, costs[0].image_passes, costs[1].image_passes])

        parts = self._collect(key, f"{task.name} {entry.name} {name} likelihood", len(data.ids), compute)
        if parts is None:
            return {}
        full, spent = np.zeros((3, len(data.ids))), np.zeros(3)
        for sh, *vals, used in parts:
            for i, v in enumerate(vals):
                full[i, sh] = v
            spent += used
        c_dims = get_dataset_info(task.dataset).channels
        n_miss = missing.flatten(1).sum(1).double().numpy() * c_dims
        ctx = _context(eff.perms, missing)
        nats = {"joint": full[0].tolist(), "cond": full[1].tolist(), "preceding": full[2].tolist(),
                "n_miss": n_miss.tolist(), "context": ctx, "effective": [eff.name, eff.trained, eff.coverage],
                "plain": [plain.name, plain.trained, plain.coverage], "reordered": eff.name != plain.name,
                "wall_s": float(spent[0]), "nfe": [float(spent[1]) / len(data.ids), float(spent[2]) / len(data.ids)]}
        rows, per_image = self._likelihood_rows(task, entry, name, data.ids, nats, h * w * c_dims)
        self.run.save_cell(key, rows, per_image, {"nats": nats})
        return _nats_arrays(nats)

    def _likelihood_rows(self, task, entry, name, ids, nats, dims) -> tuple[list, list]:
        """Rows of one likelihood cell (a single order or an ensemble) from its per-image nats:
        ``test_bpd`` (under the plain order), ``cond_nll_bpd`` under the effective order, and, where
        that was reordered, ``cond_nll_bpd`` under the plain order (``context = preceding_only``)
        with their per-image difference ``context_gain_bpd`` (preceding-only minus effective)."""
        metrics = self.metrics[task.name]
        plain, eff = (Effective(n, None, bool(t), float(c)) for n, t, c in (nats["plain"], nats["effective"]))
        n_miss = np.asarray(nats["n_miss"])
        test_bpd = -np.asarray(nats["joint"]) / (dims * LN2)
        cond_bpd = -np.asarray(nats["cond"]) / (n_miss * LN2)
        prec_bpd = -np.asarray(nats["preceding"]) / (n_miss * LN2)
        rows, per_image = [], []

        nfe_joint, nfe_cond = nats["nfe"]

        def add(metric, values, e: Effective, context, nfe):
            base = self._base(task, entry, name, e)
            rows.append(_summary_row(base, metric, values, self.cfg.seed, context=context, nfe=nfe, wall_s=nats["wall_s"]))
            per_image.extend(self._per_image(base, metric, ids, values, context=context))

        if "test_bpd" in metrics:
            add("test_bpd", test_bpd, plain, "unconditional", nfe_joint)
        if "cond_nll_bpd" in metrics:
            add("cond_nll_bpd", cond_bpd, eff, nats["context"], nfe_cond)
            if nats["reordered"]:
                add("cond_nll_bpd", prec_bpd, plain, "preceding_only", nfe_joint)
                add("context_gain_bpd", prec_bpd - cond_bpd, eff, nats["context"], nfe_joint + nfe_cond)
        return rows, per_image

    def _collect(self, key: str, what: str, n_images: int, compute) -> list[tuple] | None:
        """The per-image parts of a cell, ``[(indices, *values), ...]``, on the process that writes
        the records (None elsewhere): all-gathered from the torchrun ranks; or, for ``--shard``,
        this shard's part saved to disk (None: the records come at merge); or, for ``merge``, read
        from every shard (``compute`` is not called)."""
        from . import shards

        if self.mode == "merge":
            return shards.load_parts(self.run.path, key, n_images, what)
        payload = compute()
        if self.mode == "shard":
            shards.save_part(self.run.path, key, self.cfg.shard, payload)
            return None
        parts = dist.all_gather_object(payload)
        return parts if self.ctx.is_main else None

    def _cell_done(self, key: str) -> bool:
        """Whether a cell is already stored (for a shard: its part); rank 0 decides and tells the
        other ranks."""
        if self.mode == "shard":
            from .shards import has_part

            return has_part(self.run.path, key, self.cfg.shard)
        done = self.run.has_cell(key) if self.ctx.is_main else None
        if self.ctx.distributed:
            done = dist.broadcast_object(done)
        return bool(done)

    def _per_image(self, base, metric, ids, values, samples=None, context=""):
        samples = samples if samples is not None else [0] * len(ids)
        return [{"run_id": base["run_id"], "task": base["task"], "model": base["model"],
                 "model_label": base["model_label"], "checkpoint_sha256": base["checkpoint_sha256"],
                 "order": base["order"], "effective_order": base["effective_order"], "context": context,
                 "metric": metric, "image_id": i, "sample": int(s), "value": float(v),
                 "occluded_fraction": self.occluded[base["task"]][i]}
                for i, s, v in zip(ids, samples, values)]

    def _ensemble_cell(self, task, entry, names, data, nats) -> None:
        if not self.ctx.is_main:
            return
        from .metrics.stats import logmeanexp

        label = f"ensemble({self.cfg.orders})"
        key = cell_key(task.name, task.content_hash()[:12], entry.sha256[:12], label, "likelihood")
        if self.run.has_cell(key):
            return
        info = get_dataset_info(task.dataset)
        mix = {k: logmeanexp(np.stack([nats[n][k] for n in names]), dim=0).tolist() for k in ("joint", "cond", "preceding")}
        # the mixture sees every observed pixel iff each member does (the order check per member)
        ctx = "all_observed" if all(nats[n]["context"] == "all_observed" for n in names) else "preceding_only"
        reordered = any(nats[n]["effective"][0] != nats[n]["plain"][0] for n in names)

        def members(kind):
            return [all(nats[n][kind][1] for n in names), float(np.mean([nats[n][kind][2] for n in names]))]

        # an ensemble's effective order is its own name (its members' reordered forms, or their
        # plain forms in the preceding-only row, which the `context` column tells apart)
        mix.update(n_miss=nats[names[0]]["n_miss"], context=ctx, reordered=reordered,
                   effective=[label, *members("effective")], plain=[label, *members("plain")],
                   wall_s=float(sum(nats[n]["wall_s"] for n in names)),
                   nfe=[float(sum(nats[n]["nfe"][i] for n in names)) for i in (0, 1)])
        rows, per_image = self._likelihood_rows(task, entry, label, data.ids, mix,
                                                info.height * info.width * info.channels)
        self.run.save_cell(key, rows, per_image)

    def _completion_cell(self, task, entry, name, data, missing, shard) -> None:
        key = cell_key(task.name, task.content_hash()[:12], entry.sha256[:12], name, "completion", self.cfg.samples)
        if self._cell_done(key):
            return
        metrics = self.metrics[task.name]
        eff = self._effective(task, entry, name, missing)
        cond_perms = eff.perms
        k = self.cfg.samples
        seeds = torch.tensor([[stable_seed(self.cfg.seed, i, name, s) for s in range(k)] for i in data.ids],
                             dtype=torch.long)
        idx = torch.tensor(shard, dtype=torch.long)

        def compute():
            t0, cost = time.perf_counter(), Cost()
            with progress_bar(len(shard) * k, f"{task.name} {entry.name} {name}: completing", self.show) as adv:
                comp = completions(entry.model, data.images[idx], missing[idx], cond_perms[idx], seeds[idx],
                                   self.cfg, self.ctx.device, adv, cost)
            lp = div = None
            n_bits = get_dataset_info(task.dataset).n_bits
            if "lpips" in metrics:
                from .metrics.perceptual import lpips_distance

                # one call per image (its K samples): the values do not depend on which images
                # share a shard, a rank or a batch
                lp = [lpips_distance(comp[j], data.images[i].unsqueeze(0).expand_as(comp[j]), n_bits=n_bits).tolist()
                      for j, i in enumerate(shard)]
            if "diversity" in metrics and k >= 2:
                div = [diversity(comp[j], n_bits) for j in range(len(shard))]
            return (shard, comp, lp, div, [time.perf_counter() - t0, cost.image_passes])

        parts = self._collect(key, f"{task.name} {entry.name} {name} completion", len(data.ids), compute)
        if parts is None:
            return
        n = len(data.ids)
        comp_all = torch.zeros(n, k, *data.images.shape[1:], dtype=torch.uint8)
        lp_all, div_all, spent = np.zeros((n, k)), np.zeros(n), np.zeros(2)
        for sh, c, l, dv, used in parts:
            spent += used
            comp_all[sh] = c
            if l is not None:
                lp_all[sh] = l
            if dv is not None:
                div_all[sh] = dv
        t_metrics = time.perf_counter()
        base = self._base(task, entry, name, eff)
        ctx = _context(cond_perms, missing)
        rows, per_image = [], []
        if "lpips" in metrics:
            rows.append(_summary_row(base, "lpips", lp_all.mean(1), self.cfg.seed, context=ctx))
            ids = [i for i in data.ids for _ in range(k)]
            per_image += self._per_image(base, "lpips", ids, lp_all.flatten(), [s for _ in data.ids for s in range(k)],
                                         context=ctx)
        rows_px, per_px = self._pixel_rows(task, base, data, missing, comp_all, ctx)
        rows += rows_px
        per_image += per_px
        if "diversity" in metrics:
            if k >= 2:
                rows.append(_summary_row(base, "diversity", div_all, self.cfg.seed, context=ctx))
                per_image += self._per_image(base, "diversity", data.ids, div_all, context=ctx)
            elif self.show:
                console().print(f"note: diversity needs --samples >= 2 (got {k}); not written for {task.name} {name}")
        if {"fid", "kid"} & set(metrics):
            from .metrics import fidelity

            info = get_dataset_info(task.dataset)
            ref = self._reference_features(task)
            gen = fidelity.inception_features(comp_all.flatten(0, 1), n_bits=info.n_bits, progress=self.show)
            res = fidelity.fid_kid(gen, ref, seed=self.cfg.seed)
            n_gen = len(gen)
            if "fid" in metrics:
                rows.append(_row(base, "fid", res["fid"], n_gen, context=ctx))
            if "kid" in metrics:
                rows.append(_row(base, "kid", res["kid_mean"], n_gen, stderr=res["kid_stderr"], context=ctx))
        for r in rows:  # per completion: the sampler's work; seconds: sampling and metrics
            r.update(nfe=float(spent[1]) / (n * k), wall_s=float(spent[0]) + time.perf_counter() - t_metrics)
        self._save_examples(key, data, missing, comp_all, task=task.name, label=f"{entry.label} {eff.name}")
        self.run.save_cell(key, rows, per_image)

    def _pixel_rows(self, task, base, data, missing, comp_all, ctx) -> tuple[list, list]:
        """psnr, ssim (whole image) and l1_hole (missing pixels) of every completion; the rows hold
        per-image means over the K samples, per_image.csv every sample."""
        from .metrics import pixelwise

        metrics = self.metrics[task.name]
        n, k = comp_all.shape[:2]
        n_bits = get_dataset_info(task.dataset).n_bits
        truth = data.images.unsqueeze(1).expand_as(comp_all).flatten(0, 1)
        flat = comp_all.flatten(0, 1)
        fns = {"psnr": lambda: pixelwise.psnr(flat, truth, n_bits),
               "ssim": lambda: pixelwise.ssim(flat, truth, n_bits),
               "l1_hole": lambda: pixelwise.l1_hole(flat, truth, missing.repeat_interleave(k, 0), n_bits)}
        rows, per_image = [], []
        ids = [i for i in data.ids for _ in range(k)]
        samples = [s for _ in data.ids for s in range(k)]
        for metric, fn in fns.items():
            if metric not in metrics:
                continue
            v = fn().numpy().reshape(n, k)
            rows.append(_summary_row(base, metric, v.mean(1), self.cfg.seed, context=ctx))
            per_image += self._per_image(base, metric, ids, v.flatten(), samples, context=ctx)
        return rows, per_image

    def _reference_features(self, task: TaskConfig):
        from .metrics import fidelity

        size = task.profile(self.cfg.profile).fid_reference_size
        info = get_dataset_info(task.dataset)
        ref = load_split(task.dataset, task.reference_split, self.cfg.data_root, limit=size)
        key = {"dataset": task.dataset, "split": task.reference_split, "ids": ref.ids,
               "preprocessing": f"{info.name}:{info.height}x{info.width}x{info.channels}:{info.n_bits}bit"}
        return fidelity.reference_features(key, lambda: ref.images, progress=self.show)

    def _save_examples(self, key: str, data: ImageSet, missing: torch.Tensor, comp: torch.Tensor,
                       task: str, label: str, n_show: int = 8):
        """Keep the first few completions (sample 0) for the report's completion grids."""
        import io

        from .io_utils import atomic_write_bytes

        buf = io.BytesIO()
        n_bits = get_dataset_info(data.name).n_bits
        np.savez_compressed(buf, task=np.array(task), label=np.array(label), n_bits=np.array(n_bits),
                            ids=np.array(data.ids[:n_show]), truth=data.images[:n_show].numpy(),
                            missing=missing[:n_show].numpy(), completion=comp[:n_show, 0].numpy())
        atomic_write_bytes(self.run.path / "examples" / f"{key}.npz", buf.getvalue())


def run(cfg: RunConfig, argv: list[str] | None = None, summary: bool = True) -> Path:
    """Run the grid (one process or torchrun); returns the run directory.

    ``summary``: print the table of results at the end (when ``cfg.progress`` too).
    """
    import contextlib

    from .io_utils import writer_lock

    with dist.distributed(cfg.device) as ctx:
        grid = Grid(cfg, ctx, argv)
        grid.prepare()  # every input checked before anything is created
        with contextlib.ExitStack() as lock:
            name = f".lock-shard-{cfg.shard[0]}-of-{cfg.shard[1]}" if cfg.shard is not None else ".lock"
            what = f"shard {cfg.shard[0]}/{cfg.shard[1]} of the run directory" if cfg.shard is not None else "run directory"
            dist.on_main(lock.enter_context, writer_lock(grid.run.path, what, name))
            rundir = grid.run_all()
        if ctx.is_main and cfg.progress and summary:
            print_summary(rundir.path)
    return rundir.path


def merge(run_dir: str | Path, progress: bool = True, data_root: str | None = None, device: str = "auto") -> Path:
    """``lmconv-bench merge RUN_DIR``: records of a run whose cells were computed by ``--shard``
    processes (see :mod:`lmconv_bench.shards`); the same records as an unsharded run."""
    import json

    run_dir = Path(run_dir)
    mpath = run_dir / "manifest.json"
    try:
        rc = json.loads(mpath.read_text())["run_config"]
    except FileNotFoundError:
        raise UserError(f"{run_dir} has no manifest.json; pass the --out of `lmconv-bench run ... --shard I/N`") from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{mpath} is unreadable or was not written by a sharded run; rerun the shards into a new --out") from None
    for key in ("checkpoints", "metrics", "image_ids"):
        if rc.get(key) is not None:
            rc[key] = tuple(rc[key])
    cfg = RunConfig(**{**rc, "out": str(run_dir), "merge": True, "progress": progress,
                       "data_root": data_root or rc.get("data_root"), "device": device})
    return run(cfg, argv=["lmconv-bench", "merge", str(run_dir)], summary=progress)


def print_summary(path: Path) -> None:
    """One-line-per-row summary table of a run's records (stderr)."""
    from rich.table import Table

    from .records import read_records

    df = read_records(path)
    table = Table(title=f"results: {path}")
    for col in ("task", "model", "order", "metric", "value", "± stderr", "n", "context"):
        table.add_column(col)
    for r in df.itertuples():
        err = "" if (isinstance(r.stderr, float) and math.isnan(r.stderr)) else f"{r.stderr:.4f}"
        table.add_row(r.task, r.model, r.order, r.metric, f"{r.value:.4f}", err, str(r.n), str(r.context))
    console().print(table)
