"""Task definitions: frozen dataclasses behind the declarative YAML files in ``tasks/``.

A task file may ``include:`` another file (path relative to itself); mappings merge
recursively and the including file wins. Files whose name starts with ``_`` are bases, not
tasks. Example::

    include: _mnist.yaml          # dataset: mnist, and everything from _base.yaml
    name: mnist_center
    mask: {family: center}

Unknown keys and values are rejected with the file, the key, the allowed values and a
"did you mean" suggestion.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError, check_name, did_you_mean, unknown
from .masks import FAMILIES, check_params

METRICS = ("test_bpd", "cond_nll_bpd", "lpips", "fid", "kid", "psnr", "ssim", "l1_hole", "diversity")
COMPLETION_METRICS = ("lpips", "fid", "kid", "psnr", "ssim", "l1_hole", "diversity")
"""Metrics computed from completions (the others from likelihoods)."""
PROFILES = ("quick", "full")
SPLITS = ("train", "valid", "test")

_TASK_KEYS = ("include", "name", "version", "description", "dataset", "split", "mask", "metrics",
              "reference_split", "profiles")
_PROFILE_KEYS = ("n_images", "fid_reference_size")


@dataclass(frozen=True)
class Profile:
    """How much of the data a profile uses.

    n_images: test images evaluated (None = the whole split).
    fid_reference_size: real images in the FID/KID reference set (None = the whole reference split).
    """

    n_images: int | None
    fid_reference_size: int | None


@dataclass(frozen=True)
class TaskConfig:
    """One completion task: a dataset split, an occlusion mask family and what to measure."""

    name: str
    version: int
    dataset: str
    split: str
    mask_family: str
    mask_params: dict[str, Any]
    metrics: tuple[str, ...]
    reference_split: str
    profiles: dict[str, Profile]
    description: str = ""
    source: str = field(default="", compare=False)

    @property
    def family(self) -> str:
        return self.mask_family

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise unknown("profile", name, self.profiles)
        return self.profiles[name]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d

    def content_hash(self) -> str:
        """sha256 of the task's definition (not its file path)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------ loading
def tasks_dir() -> Path:
    """The directory of the shipped task files (package data ``lmconv_bench.tasks``)."""
    return Path(str(resources.files("lmconv_bench.tasks")))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise UserError(f"task file {path} includes itself (cycle: {' -> '.join(map(str, seen))})")
    if not path.is_file():
        raise UserError(f"task file {path} not found; list tasks with `lmconv-bench tasks`")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "parse error"
        raise UserError(f"task file {path} is not valid YAML ({first}); fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"task file {path} must hold a mapping of keys, got {type(data).__name__}")
    for key in data:
        if key not in _TASK_KEYS:
            raise UserError(
                f"unknown key {key!r} in task file {path}{did_you_mean(key, _TASK_KEYS)}; "
                f"allowed: {', '.join(_TASK_KEYS)}"
            )
    inc = data.pop("include", None)
    if inc:
        base = _read_yaml(path.parent / str(inc), (*seen, path))
        data = _merge(base, data)
    return data


def _profile(raw: Any, name: str, where: str) -> Profile:
    if not isinstance(raw, dict):
        raise UserError(f"profile {name!r} in {where} must be a mapping with keys {', '.join(_PROFILE_KEYS)}")
    for key in raw:
        if key not in _PROFILE_KEYS:
            raise UserError(
                f"unknown key {key!r} in profile {name!r} of {where}{did_you_mean(key, _PROFILE_KEYS)}; "
                f"allowed: {', '.join(_PROFILE_KEYS)}"
            )
    vals = {}
    for key in _PROFILE_KEYS:
        v = raw.get(key)
        if v is not None and not (isinstance(v, int) and v > 0):
            raise UserError(f"{key} of profile {name!r} in {where} must be a positive integer or null, got {v!r}")
        vals[key] = v
    return Profile(**vals)


def load_task_file(path: str | Path) -> TaskConfig:
    """Load and validate one task YAML (following ``include:``)."""
    from .data import DATASETS

    path = Path(path)
    where = str(path)
    d = _read_yaml(path)
    for key in ("dataset", "mask", "metrics", "profiles"):
        if key not in d:
            raise UserError(f"task file {where} is missing the key {key!r}")
    name = check_name(d.get("name") or path.stem, f"task name in {where}")
    if d["dataset"] not in DATASETS:
        raise unknown("dataset", d["dataset"], DATASETS, where)
    info = DATASETS[d["dataset"]]
    split = d.get("split", "test")
    if split not in info.splits:
        raise unknown(f"split of dataset {d['dataset']!r}", split, info.splits, where)
    ref_split = d.get("reference_split", "train")
    if ref_split not in info.splits:
        raise unknown(f"reference_split of dataset {d['dataset']!r}", ref_split, info.splits, where)
    mask = d["mask"]
    if not isinstance(mask, dict) or "family" not in mask:
        raise UserError(f"'mask' in {where} must be a mapping with a 'family' key, e.g. {{family: center}}")
    mask = dict(mask)
    family = mask.pop("family")
    if family not in FAMILIES:
        raise unknown("mask family", family, FAMILIES, where)
    params = check_params(family, mask, where)
    metrics = d["metrics"]
    if not isinstance(metrics, list) or not metrics:
        raise UserError(f"'metrics' in {where} must be a non-empty list drawn from {', '.join(METRICS)}")
    for m in metrics:
        if m not in METRICS:
            raise unknown("metric", m, METRICS, where)
    profiles_raw = d["profiles"]
    if not isinstance(profiles_raw, dict):
        raise UserError(f"'profiles' in {where} must map {' and '.join(PROFILES)} to sizes")
    for p in profiles_raw:
        if p not in PROFILES:
            raise unknown("profile", p, PROFILES, where)
    for p in PROFILES:
        if p not in profiles_raw:
            raise UserError(f"task file {where} must define the {p!r} profile")
    version = d.get("version", 1)
    if not isinstance(version, int):
        raise UserError(f"'version' in {where} must be an integer, got {version!r}")
    return TaskConfig(
        name=str(name),
        version=version,
        dataset=d["dataset"],
        split=split,
        mask_family=family,
        mask_params=params,
        metrics=tuple(metrics),
        reference_split=ref_split,
        profiles={p: _profile(profiles_raw[p], p, where) for p in PROFILES},
        description=str(d.get("description", "")),
        source=str(path),
    )


def task_names() -> list[str]:
    """Names of the shipped tasks (file stems, bases excluded), sorted."""
    return sorted(p.stem for p in tasks_dir().glob("*.yaml") if not p.name.startswith("_"))


def get_task(name: str) -> TaskConfig:
    """A shipped task by full name, e.g. ``cifar10_top_half``."""
    names = task_names()
    if name not in names:
        raise unknown("task", name, names)
    return load_task_file(tasks_dir() / f"{name}.yaml")


def resolve_tasks(task: str, dataset: str | None = None) -> list[TaskConfig]:
    """Interpret ``--task`` (and ``--dataset``) as in the CLI contract.

    ``task`` is a full name (``cifar10_top_half``), a path to a task YAML, or a family
    (``top_half``) combined with ``dataset`` (default ``mnist``; ``all`` = every dataset).
    """
    from .data import DATASETS

    if task.endswith((".yaml", ".yml")) or Path(task).is_file():
        if dataset is not None:
            raise UserError("--dataset cannot be combined with a task file path; set 'dataset' in the file")
        return [load_task_file(task)]
    if task in FAMILIES:
        ds = dataset or "mnist"
        if ds == "all":
            datasets = list(DATASETS)
        elif ds in DATASETS:
            datasets = [ds]
        else:
            raise unknown("dataset", ds, (*DATASETS, "all"))
        return [get_task(f"{d}_{task}") for d in datasets]
    t = get_task(task) if task in task_names() else None
    if t is None:
        raise unknown("task", task, (*task_names(), *FAMILIES))
    if dataset is not None and dataset != t.dataset:
        raise UserError(f"task {task!r} is defined on dataset {t.dataset!r}, not {dataset!r}; drop --dataset "
                        f"or use the family name with --dataset {dataset}")
    return [t]
