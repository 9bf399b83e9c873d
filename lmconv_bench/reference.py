"""Reference checkpoints shipped with the repository (``results/checkpoints/reference/``).

``lmconv-bench run`` without ``--checkpoint`` evaluates these. Each is a ``.safetensors`` file
with a model card (``<name>.md``) beside it. The directory can be overridden with
``LMCONV_BENCH_REFERENCE_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path


def reference_dir() -> Path:
    env = os.environ.get("LMCONV_BENCH_REFERENCE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "results" / "checkpoints" / "reference"


def reference_checkpoints(dataset: str) -> list[Path]:
    """Reference checkpoints whose config is for ``dataset``, sorted by file name."""
    from .checkpoints import read_config

    d = reference_dir()
    if not d.is_dir():
        return []
    return [p for p in sorted(d.glob("*.safetensors")) if read_config(p).dataset == dataset]
