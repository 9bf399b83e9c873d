"""The records of one cell: summary rows (``records.csv``) and per-image rows (``per_image.csv``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError
from ..records import METRIC_UNITS


@dataclass(frozen=True)
class RowMaker:
    """Makes the rows of one cell.

    ``base``: the columns every row of the cell shares (run, task, model, order, effective order,
    ``order_trained``, ``trained_coverage``, seed ...); ``seed``: the bootstrap seed of the
    confidence intervals; ``occluded``: image id → fraction of its pixels missing, in [0, 1].
    """

    base: dict[str, Any]
    seed: int
    occluded: dict[str, float]

    def value(self, metric: str, value: float, n: int, stderr=float("nan"), lo=float("nan"), hi=float("nan"), **kw) -> dict:
        """One number (e.g. FID over all completions) in ``metric``'s unit; ``n``: what it counts."""
        return {**self.base, "metric": metric, "value": float(value), "unit": METRIC_UNITS[metric], "n": int(n),
                "stderr": float(stderr), "ci_low": float(lo), "ci_high": float(hi), "nfe": float("nan"),
                "wall_s": float("nan"), **kw}

    def summary(self, metric: str, per_image, **kw) -> dict:
        """Mean over images with its standard error and bootstrap 95% CI; refuses NaN or inf."""
        from ..metrics.stats import summarize

        values = np.asarray(per_image, dtype=np.float64)
        if not np.isfinite(values).all():
            n_bad = int((~np.isfinite(values)).sum())
            raise UserError(
                f"{metric} of {self.base.get('model_label', self.base['model'])} {self.base['order']} on task "
                f"{self.base['task']} is NaN or infinite for {n_bad} of {len(values)} images (a degenerate mask or "
                "a broken checkpoint); check the task's mask parameters and the checkpoint"
            )
        s = summarize(values, seed=self.seed)
        return self.value(metric, s["mean"], s["n"], s["stderr"], s["ci_low"], s["ci_high"], **kw)

    def per_image(self, metric: str, ids, values, samples=None, context: str = "") -> list[dict]:
        """One row per image (and sample: ``samples`` gives each value's sample index, default 0)."""
        b = self.base
        samples = samples if samples is not None else [0] * len(ids)
        return [{"run_id": b["run_id"], "task": b["task"], "model": b["model"], "model_label": b["model_label"],
                 "checkpoint_sha256": b["checkpoint_sha256"], "order": b["order"],
                 "effective_order": b["effective_order"], "context": context, "metric": metric, "image_id": i,
                 "sample": int(s), "value": float(v), "occluded_fraction": self.occluded[i]}
                for i, s, v in zip(ids, samples, values)]
