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
from .cells.completion import completion_rows, completions, per_image_work, save_examples
from .cells.fidelity import fidelity_rows, reference_features
from .cells.likelihood import cell_nats, ensemble_nats, likelihood_rows, likelihoods, nats_arrays
from .cells.model_entry import Effective, ModelEntry, context_of, effective_order, plain_order
from .cells.rows import RowMaker
from .config import COMPLETION_METRICS, METRICS, TaskConfig, resolve_tasks
from .data import ImageSet, get_dataset_info, load_split
from .errors import UserError, unknown
from .masks import make_masks
from .models.base import Cost
from .progress import console, progress_bar
from .records import RunDir, cell_key
from .seeding import stable_seed

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


# ------------------------------------------------------------------------------ grid
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
        # rank 0 alone checks and creates the directory, and its UserError is raised on every rank:
        # a rank that looked on its own could find rank 0's half-made directory and refuse it
        dist.on_main(self._open_run_dir)
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

    def _open_run_dir(self) -> None:
        self.run.open(self.manifest(), clean=self.mode == "collective")

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

    def _rows(self, task: TaskConfig, entry: ModelEntry, order: str, eff: Effective) -> RowMaker:
        """The row maker of one cell: the columns its rows share."""
        base = {
            "run_id": self.run_id, "task": task.name, "task_version": task.version, "dataset": task.dataset,
            "split": task.split, "profile": self.cfg.profile if self.cfg.limit is None else f"{self.cfg.profile}-limit{self.cfg.limit}",
            "model": entry.name, "preset": entry.preset, "model_label": entry.label, "n_params": entry.n_params,
            "checkpoint_sha256": entry.sha256, "order": order, "effective_order": eff.name,
            "order_trained": eff.trained, "trained_coverage": eff.coverage, "seed": self.cfg.seed,
        }
        return RowMaker(base, self.cfg.seed, self.occluded[task.name])

    def _likelihood_cell(self, task, entry, name, data, missing, shard) -> dict[str, np.ndarray]:
        """``test_bpd`` / ``cond_nll_bpd`` of one order (see :mod:`.cells.likelihood`); returns its
        per-image nats for the ensemble (empty where this process writes no records)."""
        key = cell_key(task.name, task.content_hash()[:12], entry.sha256[:12], name, "likelihood")
        if self._cell_done(key):
            if not self.ctx.is_main or self.mode == "shard":  # a shard's part holds no records
                return {}
            return nats_arrays(self.run.load_cell(key)["nats"])
        h, w = missing.shape[1:]
        plain, eff = plain_order(entry, name, len(missing), h, w), effective_order(task, entry, name, missing)
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
        c_dims = get_dataset_info(task.dataset).channels
        n_miss = missing.flatten(1).sum(1).double().numpy() * c_dims
        nats = cell_nats(parts, len(data.ids), n_miss, context_of(eff.perms, missing), plain, eff)
        rows, per_image = likelihood_rows(nats, data.ids, h * w * c_dims, self.metrics[task.name],
                                          lambda e: self._rows(task, entry, name, e))
        self.run.save_cell(key, rows, per_image, {"nats": nats})
        return nats_arrays(nats)

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

    def _ensemble_cell(self, task, entry, names, data, nats) -> None:
        """The order ensemble of ``names`` from their cells' nats (rank 0 only; no network pass)."""
        if not self.ctx.is_main:
            return
        label = f"ensemble({self.cfg.orders})"
        key = cell_key(task.name, task.content_hash()[:12], entry.sha256[:12], label, "likelihood")
        if self.run.has_cell(key):
            return
        info = get_dataset_info(task.dataset)
        mix = ensemble_nats({n: nats[n] for n in names}, label)
        rows, per_image = likelihood_rows(mix, data.ids, info.height * info.width * info.channels,
                                          self.metrics[task.name], lambda e: self._rows(task, entry, label, e))
        self.run.save_cell(key, rows, per_image)

    def _completion_cell(self, task, entry, name, data, missing, shard) -> None:
        """K completions per image under the effective order and their metrics (see
        :mod:`.cells.completion` and :mod:`.cells.fidelity`)."""
        key = cell_key(task.name, task.content_hash()[:12], entry.sha256[:12], name, "completion", self.cfg.samples)
        if self._cell_done(key):
            return
        metrics, k = self.metrics[task.name], self.cfg.samples
        n_bits = get_dataset_info(task.dataset).n_bits
        eff = effective_order(task, entry, name, missing)
        seeds = torch.tensor([[stable_seed(self.cfg.seed, i, name, s) for s in range(k)] for i in data.ids],
                             dtype=torch.long)
        idx = torch.tensor(shard, dtype=torch.long)

        def compute():
            t0, cost = time.perf_counter(), Cost()
            with progress_bar(len(shard) * k, f"{task.name} {entry.name} {name}: completing", self.show) as adv:
                comp = completions(entry.model, data.images[idx], missing[idx], eff.perms[idx], seeds[idx],
                                   batch_size=self.cfg.batch_size, temperature=self.cfg.temperature,
                                   sampler=self.cfg.sampler, device=self.ctx.device, advance=adv, cost=cost)
            lp, div = per_image_work(comp, data.images[idx], metrics, n_bits)
            return (shard, comp, lp, div, [time.perf_counter() - t0, cost.image_passes])

        parts = self._collect(key, f"{task.name} {entry.name} {name} completion", len(data.ids), compute)
        if parts is None:
            return
        n = len(data.ids)
        comp_all = torch.zeros(n, k, *data.images.shape[1:], dtype=torch.uint8)
        lp_all, div_all, spent = np.zeros((n, k)), np.zeros(n), np.zeros(2)
        for sh, c, lp, dv, used in parts:
            spent += used
            comp_all[sh] = c
            if lp is not None:
                lp_all[sh] = lp
            if dv is not None:
                div_all[sh] = dv
        t_metrics = time.perf_counter()
        make, ctx = self._rows(task, entry, name, eff), context_of(eff.perms, missing)
        note = console().print if self.show else None
        rows, per_image = completion_rows(make, data.ids, data.images, missing, comp_all, lp_all, div_all, metrics,
                                          n_bits, ctx, note)
        if {"fid", "kid"} & set(metrics):
            ref = reference_features(task, self.cfg.profile, self.cfg.data_root, self.show)
            rows += fidelity_rows(make, comp_all, ref, metrics, n_bits, self.cfg.seed, ctx, self.show)
        for r in rows:  # per completion: the sampler's work; seconds: sampling and metrics
            r.update(nfe=float(spent[1]) / (n * k), wall_s=float(spent[0]) + time.perf_counter() - t_metrics)
        save_examples(self.run.path / "examples" / f"{key}.npz", data.ids, data.images, missing, comp_all,
                      task=task.name, label=f"{entry.label} {eff.name}", n_bits=n_bits)
        self.run.save_cell(key, rows, per_image)


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
