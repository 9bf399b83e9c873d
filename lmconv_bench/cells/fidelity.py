"""Fidelity cells: the completions of a cell against the task's reference split → ``fid`` and
``kid`` rows (one number each over all N x K completions; KID with its jackknife stderr)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import TaskConfig
from ..data import get_dataset_info, load_split
from .rows import RowMaker


def reference_features(task: TaskConfig, profile: str, data_root: str | None, progress: bool):
    """Inception features of the task's reference split (the profile's ``fid_reference_size``
    images), cached on disk by their ids and preprocessing."""
    from ..metrics import fidelity

    size = task.profile(profile).fid_reference_size
    info = get_dataset_info(task.dataset)
    ref = load_split(task.dataset, task.reference_split, data_root, limit=size)
    key = {"dataset": task.dataset, "split": task.reference_split, "ids": ref.ids,
           "preprocessing": f"{info.name}:{info.height}x{info.width}x{info.channels}:{info.n_bits}bit"}
    return fidelity.reference_features(key, lambda: ref.images, progress=progress)


def fidelity_rows(make: RowMaker, comp: torch.Tensor, ref, metrics: Sequence[str], n_bits: int, seed: int,
                  context: str, progress: bool) -> list[dict]:
    """``fid`` and/or ``kid`` rows of completions ``comp`` uint8 ``[N, K, C, H, W]`` against the
    reference features ``ref`` (:func:`reference_features`)."""
    from ..metrics import fidelity

    gen = fidelity.inception_features(comp.flatten(0, 1), n_bits=n_bits, progress=progress)
    res = fidelity.fid_kid(gen, ref, seed=seed)
    rows = []
    if "fid" in metrics:
        rows.append(make.value("fid", res["fid"], len(gen), context=context))
    if "kid" in metrics:
        rows.append(make.value("kid", res["kid_mean"], len(gen), stderr=res["kid_stderr"], context=context))
    return rows
