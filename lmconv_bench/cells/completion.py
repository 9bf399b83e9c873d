"""Completion cells: K completions per image → ``lpips``, ``psnr``, ``ssim``, ``l1_hole`` and
``diversity`` rows (per-image means over the K samples; ``per_image.csv`` holds every sample)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import check_interrupt
from .likelihood import batches
from .rows import RowMaker


@torch.no_grad()
def completions(model, images, missing, cond_perms, seeds, *, batch_size: int, temperature: float, sampler: str,
                device, advance, cost=None) -> torch.Tensor:
    """Complete every image once per seed column: ``images`` uint8 ``[N, C, H, W]``, ``missing``
    bool ``[N, H, W]``, ``cond_perms`` long ``[N, H*W]``, ``seeds`` long ``[N, K]`` → uint8
    ``[N, K, C, H, W]``; the samplers add their work to ``cost`` (a
    :class:`~lmconv_bench.models.base.Cost`), if given."""
    out = []
    for sl in batches(len(images), batch_size):
        ks = []
        for k in range(seeds.shape[1]):
            check_interrupt()
            done = model.complete(
                images[sl].to(device), missing[sl].to(device), cond_perms[sl].to(device), seeds[sl, k],
                temperature=temperature, sampler=sampler, cost=cost,
            )
            ks.append(done.cpu())
            advance(sl.stop - sl.start)
        out.append(torch.stack(ks, 1))
    return torch.cat(out)


def diversity(samples: torch.Tensor, n_bits: int) -> float:
    """Mean pairwise LPIPS between the K completions ``[K, C, H, W]`` of one image (K >= 2)."""
    from ..metrics.perceptual import lpips_distance

    pairs = [(a, b) for a in range(len(samples)) for b in range(a + 1, len(samples))]
    ia, ib = (torch.tensor(p) for p in zip(*pairs))
    return float(lpips_distance(samples[ia], samples[ib], n_bits=n_bits).mean())


def _psnr(flat, truth, missing, n_bits):
    from ..metrics import pixelwise

    return pixelwise.psnr(flat, truth, n_bits)


def _ssim(flat, truth, missing, n_bits):
    from ..metrics import pixelwise

    return pixelwise.ssim(flat, truth, n_bits)


def _l1_hole(flat, truth, missing, n_bits):
    from ..metrics import pixelwise

    return pixelwise.l1_hole(flat, truth, missing, n_bits)


SAMPLE_METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "psnr": _psnr,
    "ssim": _ssim,
    "l1_hole": _l1_hole,
}
"""Metrics of one completion against its ground truth, computed after all completions are in:
``fn(completions [M, C, H, W] uint8, truth [M, C, H, W] uint8, missing [M, H, W] bool, n_bits)``
→ float ``[M]``. A new one is a function here plus its name in ``config.METRICS`` and
``config.COMPLETION_METRICS`` and its unit in ``records.METRIC_UNITS``."""


def per_image_work(comp: torch.Tensor, truth: torch.Tensor, metrics: Sequence[str], n_bits: int) -> tuple:
    """The metrics a shard computes beside its completions (they need the network's device or
    LPIPS, and depend only on each image's own samples): ``(lpips [n][K] | None, diversity [n] | None)``
    for completions ``[n, K, C, H, W]`` and their ground truths ``[n, C, H, W]``."""
    lp = div = None
    if "lpips" in metrics:
        from ..metrics.perceptual import lpips_distance

        # one call per image (its K samples): the values do not depend on which images share a
        # shard, a rank or a batch
        lp = [lpips_distance(c, t.unsqueeze(0).expand_as(c), n_bits=n_bits).tolist() for c, t in zip(comp, truth)]
    if "diversity" in metrics and comp.shape[1] >= 2:
        div = [diversity(c, n_bits) for c in comp]
    return lp, div


def completion_rows(make: RowMaker, ids: Sequence[str], truth: torch.Tensor, missing: torch.Tensor,
                    comp: torch.Tensor, lp: np.ndarray, div: np.ndarray, metrics: Sequence[str], n_bits: int,
                    context: str, note: Callable[[str], None] | None = None) -> tuple[list, list]:
    """Rows of a completion cell except FID/KID: ``comp`` uint8 ``[N, K, C, H, W]`` against
    ``truth`` ``[N, C, H, W]``; ``lp`` ``[N, K]`` and ``div`` ``[N]`` from :func:`per_image_work`.
    ``note``: where to say that diversity needs K >= 2."""
    n, k = comp.shape[:2]
    sample_ids = [i for i in ids for _ in range(k)]
    samples = [s for _ in ids for s in range(k)]
    rows, per_image = [], []
    if "lpips" in metrics:
        rows.append(make.summary("lpips", lp.mean(1), context=context))
        per_image += make.per_image("lpips", sample_ids, lp.flatten(), samples, context=context)
    flat = comp.flatten(0, 1)
    truth_k = truth.unsqueeze(1).expand_as(comp).flatten(0, 1)
    missing_k = missing.repeat_interleave(k, 0)
    for metric, fn in SAMPLE_METRICS.items():
        if metric in metrics:
            v = fn(flat, truth_k, missing_k, n_bits).numpy().reshape(n, k)
            rows.append(make.summary(metric, v.mean(1), context=context))
            per_image += make.per_image(metric, sample_ids, v.flatten(), samples, context=context)
    if "diversity" in metrics:
        if k >= 2:
            rows.append(make.summary("diversity", div, context=context))
            per_image += make.per_image("diversity", ids, div, context=context)
        elif note is not None:
            note(f"note: diversity needs --samples >= 2 (got {k}); not written for {make.base['task']} {make.base['order']}")
    return rows, per_image


def save_examples(path: Path, ids: Sequence[str], truth: torch.Tensor, missing: torch.Tensor, comp: torch.Tensor,
                  task: str, label: str, n_bits: int, n_show: int = 8) -> None:
    """Keep the first ``n_show`` completions (sample 0) for the report's completion grids, as an
    ``.npz`` at ``path`` (written atomically)."""
    from ..io_utils import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, task=np.array(task), label=np.array(label), n_bits=np.array(n_bits),
                        ids=np.array(ids[:n_show]), truth=truth[:n_show].numpy(),
                        missing=missing[:n_show].numpy(), completion=comp[:n_show, 0].numpy())
    atomic_write_bytes(path, buf.getvalue())
