"""scripts/gpu_check.sh runs in CI with --device cpu, so the GPU script cannot rot."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_gpu_check_script_passes_on_cpu(tmp_path, data_root):
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", str(root / "scripts" / "gpu_check.sh"), "--device", "cpu"], capture_output=True,
                       text=True, timeout=1500, env={**os.environ, "OUT": str(tmp_path)})
    lines = r.stdout.splitlines()
    verdicts = [ln for ln in lines if ln.split(" ", 1)[0] in ("PASS", "FAIL", "SKIP")]
    assert r.returncode == 0, r.stdout + r.stderr
    items = {ln.split(":", 1)[0].split(" ", 1)[1] for ln in verdicts}
    assert items == {"pytest -m cuda", "cached == naive (float64)", "bench conv", "bench complete",
                     "torchrun 2 processes", "training throughput"}
    assert all(ln.startswith("PASS") for ln in verdicts), verdicts
    assert (tmp_path / "bench_conv.json").exists() and (tmp_path / "bench_complete.json").exists()
