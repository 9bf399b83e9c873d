"""A loaded checkpoint of a run, and the order each of its cells actually runs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from .. import orders as O
from ..config import TaskConfig
from ..coverage import in_training_distribution, trained_coverage


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

    @property
    def kernel(self) -> dict[str, int]:
        """The network's kernel size and largest dilation (what :func:`trained_coverage` compares)."""
        return {"k": int(getattr(self.model, "kernel_size", 3)), "max_dilation": int(getattr(self.model, "max_dilation", 2))}


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
    m = re.search(r"\[([^\]]*)\]", label)
    return bool(m) and "/" in m.group(1) and "+" not in m.group(1) and "task masks" not in m.group(1)


@dataclass(frozen=True)
class Effective:
    """The order a cell actually runs, and what the checkpoint knows of it.

    ``name``: ``observed_first(<order>)`` where the order was reordered, else the order's name;
    ``perms``: long ``[N, H*W]``, one per image (None where only the labels are needed);
    ``trained``: it is a trained order (see ``coverage.in_training_distribution``);
    ``coverage``: ``coverage.trained_coverage``, in [0, 1].
    """

    name: str
    perms: torch.Tensor | None
    trained: bool
    coverage: float


def plain_order(entry: ModelEntry, name: str, n: int, h: int, w: int) -> Effective:
    """The order ``name`` run as it is, for ``n`` images of ``h`` x ``w`` pixels."""
    perm = O.get_order(name, h, w)
    if entry.model.fixed_order or name in entry.trained:
        return Effective(name, perm.expand(n, -1), True, 1.0)
    cov = trained_coverage(perm, entry.trained, h, w, **entry.kernel)
    return Effective(name, perm.expand(n, -1), False, cov)


def effective_order(task: TaskConfig, entry: ModelEntry, name: str, missing: torch.Tensor) -> Effective:
    """The order the conditional metrics of ``name`` run on the masks ``missing`` (bool
    ``[N, H, W]``): observed-first for any-order models (unless it already is, or the model is a
    single-order control), else ``name`` itself."""
    h, w = missing.shape[1:]
    plain = plain_order(entry, name, len(missing), h, w)
    if entry.model.fixed_order or entry.single_order or bool(O.is_observed_first(plain.perms[0], missing).all()):
        return plain
    perms = O.observed_first(plain.perms[0], missing)
    trained = in_training_distribution(name, task.mask_family, task.mask_params, entry.trained, entry.task_masks)
    cov = 1.0 if trained else trained_coverage(perms, entry.trained, h, w, **entry.kernel)
    return Effective(f"observed_first({name})", perms, trained, cov)


def context_of(perms: torch.Tensor, missing: torch.Tensor) -> str:
    """``all_observed`` where every image's order visits its observed pixels first, else
    ``preceding_only`` (each missing pixel sees only the pixels before it)."""
    return "all_observed" if bool(O.is_observed_first(perms, missing).all()) else "preceding_only"
