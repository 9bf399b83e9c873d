"""Likelihood cells: per-image log-likelihoods in nats → ``test_bpd``, ``cond_nll_bpd`` and
``context_gain_bpd`` rows in bits per dimension; order ensembles of them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import check_interrupt
from .model_entry import Effective
from .rows import RowMaker

LN2 = math.log(2.0)
NATS_ARRAYS = ("joint", "cond", "preceding", "n_miss")


def batches(n: int, size: int):
    """Slices ``[start, stop)`` covering ``range(n)`` in steps of ``size``."""
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
    for sl in batches(len(images), batch_size):
        check_interrupt()
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


def cell_nats(parts: Sequence[tuple], n_images: int, n_miss: np.ndarray, context: str, plain: Effective,
              eff: Effective) -> dict[str, Any]:
    """The stored form of a likelihood cell from its per-image parts ``[(indices, joint, cond,
    preceding, [seconds, joint passes, cond passes]), ...]``: per-image lists in nats, the number of
    missing dimensions per image, the context, both orders' labels, seconds and passes per image."""
    full, spent = np.zeros((3, n_images)), np.zeros(3)
    for sh, *vals, used in parts:
        for i, v in enumerate(vals):
            full[i, sh] = v
        spent += used
    return {"joint": full[0].tolist(), "cond": full[1].tolist(), "preceding": full[2].tolist(),
            "n_miss": n_miss.tolist(), "context": context, "effective": [eff.name, eff.trained, eff.coverage],
            "plain": [plain.name, plain.trained, plain.coverage], "reordered": eff.name != plain.name,
            "wall_s": float(spent[0]), "nfe": [float(spent[1]) / n_images, float(spent[2]) / n_images]}


def nats_arrays(nats: dict[str, Any]) -> dict[str, Any]:
    """A likelihood cell's stored nats with its per-image lists as float arrays."""
    return {k: np.asarray(v) if k in NATS_ARRAYS else v for k, v in nats.items()}


def likelihood_rows(nats: dict[str, Any], ids: Sequence[str], dims: int, metrics: Sequence[str],
                    rows_for: Callable[[Effective], RowMaker]) -> tuple[list, list]:
    """Rows of one likelihood cell (a single order or an ensemble) from its per-image nats:
    ``test_bpd`` (under the plain order, over ``dims`` dimensions per image), ``cond_nll_bpd`` under
    the effective order, and, where that was reordered, ``cond_nll_bpd`` under the plain order
    (``context = preceding_only``) with their per-image difference ``context_gain_bpd``
    (preceding-only minus effective). ``rows_for(order)`` gives the row maker of either order."""
    plain, eff = (Effective(n, None, bool(t), float(c)) for n, t, c in (nats["plain"], nats["effective"]))
    n_miss = np.asarray(nats["n_miss"])
    test_bpd = -np.asarray(nats["joint"]) / (dims * LN2)
    cond_bpd = -np.asarray(nats["cond"]) / (n_miss * LN2)
    prec_bpd = -np.asarray(nats["preceding"]) / (n_miss * LN2)
    nfe_joint, nfe_cond = nats["nfe"]
    rows, per_image = [], []

    def add(metric, values, e: Effective, context, nfe):
        make = rows_for(e)
        rows.append(make.summary(metric, values, context=context, nfe=nfe, wall_s=nats["wall_s"]))
        per_image.extend(make.per_image(metric, ids, values, context=context))

    if "test_bpd" in metrics:
        add("test_bpd", test_bpd, plain, "unconditional", nfe_joint)
    if "cond_nll_bpd" in metrics:
        add("cond_nll_bpd", cond_bpd, eff, nats["context"], nfe_cond)
        if nats["reordered"]:
            add("cond_nll_bpd", prec_bpd, plain, "preceding_only", nfe_joint)
            add("context_gain_bpd", prec_bpd - cond_bpd, eff, nats["context"], nfe_joint + nfe_cond)
    return rows, per_image


def ensemble_nats(members: dict[str, dict[str, Any]], label: str) -> dict[str, Any]:
    """The nats of an order ensemble from its members' (order name → :func:`nats_arrays`):
    log of the uniform mean of the members' likelihoods, per image. It sees every observed pixel
    iff each member does; its effective order is its own name ``label`` (the members' reordered
    forms, or their plain forms in the preceding-only row, which the ``context`` column tells
    apart), trained iff every member's is, with the members' mean coverage."""
    from ..metrics.stats import logmeanexp

    names = list(members)
    mix = {k: logmeanexp(np.stack([members[n][k] for n in names]), dim=0).tolist() for k in ("joint", "cond", "preceding")}
    ctx = "all_observed" if all(members[n]["context"] == "all_observed" for n in names) else "preceding_only"
    reordered = any(members[n]["effective"][0] != members[n]["plain"][0] for n in names)

    def label_of(kind):
        return [label, all(members[n][kind][1] for n in names), float(np.mean([members[n][kind][2] for n in names]))]

    mix.update(n_miss=members[names[0]]["n_miss"], context=ctx, reordered=reordered,
               effective=label_of("effective"), plain=label_of("plain"),
               wall_s=float(sum(members[n]["wall_s"] for n in names)),
               nfe=[float(sum(members[n]["nfe"][i] for n in names)) for i in (0, 1)])
    return mix
